"""Reference to a published artifact: what stage tasks return, as JSON."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Strict

ArtifactKind = Literal["dataset", "checkpoint", "samples", "metrics"]


class ArtifactRef(Strict):
    """A content-addressed artifact in the store; its digest names it."""

    uri: str
    """Location relative to the artifact root, e.g. `objects/ab/ab12…`."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Digest over the sorted (path, file digest, size) list of the artifact's files."""
    nbytes: int = Field(ge=0)
    """Total size of the artifact's files in bytes."""
    kind: ArtifactKind
    """What the artifact holds."""
    schema_version: int = 1
    """Layout version of the artifact kind."""
