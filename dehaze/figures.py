"""Figures a person looks at: step montages of a ladder (PNG, matplotlib's Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def step_montage(steps: np.ndarray, labels: list[str], path: str | Path, title: str = "", crop: int | None = 256) -> Path:
    """Write a one-row montage of a field's steps, (h, y, x), each stretched to its own 0.5-99.8 percentiles.

    A per-step stretch shows haze as it looks on a microscope screen: a grey veil that lowers contrast.
    ``crop`` keeps the central ``crop x crop`` pixels so fine structure stays visible.
    """
    steps = np.asarray(steps, dtype=np.float32)
    if crop is not None:
        y0 = max(0, (steps.shape[-2] - crop) // 2)
        x0 = max(0, (steps.shape[-1] - crop) // 2)
        steps = steps[..., y0 : y0 + crop, x0 : x0 + crop]
    n = steps.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.7), squeeze=False)
    for ax, img, label in zip(axes[0], steps, labels):
        lo, hi = np.percentile(img, [0.5, 99.8])
        ax.imshow(img, cmap="magma", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
