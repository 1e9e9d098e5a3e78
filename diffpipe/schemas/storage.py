"""Where artifacts live."""

from __future__ import annotations

from .base import Strict


class StorageSpec(Strict):
    """The artifact store: any fsspec URI (a local path, `file://`, `memory://`, `s3://…`)."""

    root: str = "artifacts"
    """Artifact root; a relative path is taken from the directory `diffpipe` runs in."""
    verify_on_load: bool = True
    """Recompute checksums of an artifact before it is reused (a corrupt one is rebuilt)."""
