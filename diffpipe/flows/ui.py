"""Rendering helpers for what the Prefect UI shows."""

from __future__ import annotations

import base64
from pathlib import Path


def image_markdown(title: str, path: Path) -> str:
    """A markdown image with the PNG inlined as a data URI (the UI runs offline, no image server)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"**{title}**\n\n![{title}](data:image/png;base64,{data})\n"
