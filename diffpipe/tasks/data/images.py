"""Image helpers shared by image domains: PNG sample grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from diffpipe.tasks.plotting import serialized


@serialized
def save_grid(images: torch.Tensor, path: Path, labels: torch.Tensor | None = None, columns: int = 10,
              max_images: int = 100, title: str = "") -> Path:
    """Save up to `max_images` single-channel images in [-1, 1] as a labelled PNG grid."""
    images = images[:max_images].float().clamp(-1, 1).cpu()
    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8 + (0.4 if title else 0)))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i, 0], cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            if labels is not None:
                ax.set_title(str(int(labels[i])), fontsize=7, pad=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
