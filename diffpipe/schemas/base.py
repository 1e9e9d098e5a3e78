"""Base model for every schema: unknown fields are errors, defaults are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A schema node: `extra="forbid"`, validated defaults, attribute docstrings as field descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
        frozen=False,
    )
