"""diffpipe: declarative, cached, typed pipelines for the life of a diffusion model."""

__version__ = "0.1.0"
