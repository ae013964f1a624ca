"""``dehaze info STORE --png FILE``: a montage of one field's steps, each labelled with its pinhole and the
store's statistics of that step, for people who would rather look than read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dehaze.errors import UserError
from dehaze.figures import step_montage
from dehaze.store import LadderStore


def step_label(store: LadderStore, t: int) -> str:
    """``step t: <pinhole>`` and, where the store has them, the step's mean and p99.9 (ADU, all fields)."""
    meta = store.meta
    au, um = meta.pinhole_au[t], (meta.pinhole_um[t] if meta.pinhole_um else None)
    if t in meta.widefield_steps:
        pinhole = "widefield"
    else:
        pinhole = " / ".join(p for p in (f"{au:g} AU" if au is not None else "", f"{um:g} µm" if um is not None else "") if p) or "pinhole ?"
    label = f"step {t}: {pinhole}"
    if meta.step_stats:
        stats = meta.step_stats[t]
        label += f"\nmean {stats.mean:.4g}, p99.9 {stats.p999:.4g}"
        if stats.haze_index is not None:
            label += f"\nhaze index {stats.haze_index:.2f}"
    return label


def write_ladder_png(store: LadderStore, path: str | Path, field: str | None = None) -> Path:
    """Write the montage of ``field`` (default: the first) to ``path`` (PNG): every step side by side, the
    central 256 px, each stretched to its own percentiles; the middle plane of a 3-D field."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--png {path}: give a file name ending in .png")
    if path.is_dir():
        raise UserError(f"--png {path}: is a folder; give a file name ending in .png")
    if not path.parent.is_dir():
        raise UserError(f"--png {path}: folder {path.parent} does not exist")
    name = field or store.fields[0]
    if name not in store.fields:
        raise UserError(f"--field {name}: not in {store.path}; its fields: {', '.join(store.fields[:5])}"
                        f"{' ...' if len(store.fields) > 5 else ''}")
    image = store.image(name)
    mid = tuple(n // 2 for n in image.shape[1:-2])  # the middle z plane of a (h, z, y, x) field
    steps = np.stack([np.asarray(image[(t, *mid)]) for t in range(store.n_steps)])
    labels = [step_label(store, t) for t in range(store.n_steps)]
    tmp = path.with_name(path.name + ".tmp.png")
    step_montage(steps, labels, tmp, title=f"{store.path.name} {name}: step 0 cleanest ... haziest")
    tmp.replace(path)  # a finished PNG or none
    return path
