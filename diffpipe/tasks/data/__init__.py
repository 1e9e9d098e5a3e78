"""Data builders, one module per data kind; `registry` imports a domain's module on first use."""
