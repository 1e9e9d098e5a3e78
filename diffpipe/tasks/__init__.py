"""Stage functions (Prefect-free), one module per stage kind; `registry` imports them on first use."""
