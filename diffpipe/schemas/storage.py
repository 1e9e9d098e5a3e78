"""Where artifacts live."""

from __future__ import annotations

from pydantic import Field

from .base import Strict


class StorageSpec(Strict):
    """The artifact store: any fsspec URI (a local path, `file://`, `memory://`, `s3://…`)."""

    root: str = "artifacts"
    """Artifact root; a relative path is taken from the directory `diffpipe` runs in."""
    verify_on_load: bool = True
    """Recompute checksums of an artifact before it is reused (a corrupt one is rebuilt)."""
    lease_ttl_s: float = Field(default=60.0, gt=0)
    """Seconds a stage's lease on its cache key lives without a heartbeat (a killed run's lease expires after it)."""
