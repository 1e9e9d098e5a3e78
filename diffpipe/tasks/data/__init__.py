"""Data builders, one module per data kind; importing a module registers its domain."""

from . import digits, reasoning_domain
from .cei import domain as cei_domain
from .climate import domain as climate_domain

__all__ = ["cei_domain", "climate_domain", "digits", "reasoning_domain"]
