"""Data builders, one module per data kind; importing a module registers its domain."""

from . import digits

__all__ = ["digits"]
