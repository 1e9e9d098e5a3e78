"""Stage functions (Prefect-free): importing this package registers every stage and data kind."""

from . import data, distill, evaluate, midtrain, pretrain, sample
from .rl import stage as rl_stage  # noqa: F401  (registers the rl stage)

__all__ = ["data", "distill", "evaluate", "midtrain", "pretrain", "sample"]
