"""Stage functions (Prefect-free): importing this package registers every stage and data kind."""

from . import data, evaluate, pretrain, sample

__all__ = ["data", "evaluate", "pretrain", "sample"]
