"""Brightness and bleaching per step, and the normalisation loaders should apply.

Raw camera values are stored untouched. Per step we measure the brightness (mean above the offset) and the
signal level (99.9th percentile above the offset) on the registered common area. Brightness grows with the
pinhole (more light through) while bleaching lowers it with acquisition order; with ``log b = a + g log p -
k n`` (p pinhole, n acquisition order) both are separable only when the order is not the pinhole order, so
the bleaching rate is reported when identifiable and ``None`` (with the reason) otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dehaze.store import summarize

PEAK_PERCENTILE = 99.9  # the p999 of dehaze.store.summarize


def step_brightness(steps: np.ndarray, offset_adu: float) -> tuple[list[float], list[float]]:
    """(mean, p99.9) above the offset per step of (h, [z,] y, x) camera values."""
    means, peaks = [], []
    for t in range(steps.shape[0]):
        # statistics of the raw values, then the offset (no float64 copy of the whole step); the p99.9 of
        # every other pixel, from a histogram for integer values (summarize: exact, as np.percentile)
        means.append(float(steps[t].mean(dtype=np.float64)) - offset_adu)
        peaks.append(summarize(steps[t][..., ::2, ::2].ravel())[5] - offset_adu)
    return means, peaks


def bleaching(brightness: list[float], pinhole: list[float], order: list[int]) -> dict[str, Any]:
    """Bleaching per acquired frame (fraction lost), fitted with a power law in the pinhole size."""
    b, p, n = np.asarray(brightness), np.asarray(pinhole), np.asarray(order, dtype=float)
    if len(b) < 4 or np.any(b <= 0):
        return {"per_frame": None, "reason": "needs at least 4 steps with positive brightness"}
    design = np.column_stack([np.ones_like(p), np.log(p), -n])
    if np.linalg.matrix_rank(design, tol=1e-6) < 3 or abs(np.corrcoef(np.log(p), n)[0, 1]) > 0.98:
        return {"per_frame": None, "reason": "not identifiable: the steps were acquired in pinhole order"}
    coef, *_ = np.linalg.lstsq(design, np.log(b), rcond=None)
    return {"per_frame": float(1.0 - np.exp(-coef[2])), "reason": "fit log b = a + g log(pinhole) - k order"}


def normalization(offset_adu: float, brightness: list[float], peaks: list[float], bleach: dict[str, Any]) -> dict[str, Any]:
    """What loaders should apply: subtract the offset, then scale each step by its own signal level."""
    return {
        "kind": "offset_percentile",
        "offset_adu": offset_adu,
        "percentile": PEAK_PERCENTILE,
        "per_step": True,
        "note": "raw values stored; loaders subtract offset_adu and divide each step by its p99.9 (step_stats)",
        "brightness_mean_adu": brightness,
        "brightness_p999_adu": peaks,
        "relative_brightness": [x / brightness[0] if brightness[0] else None for x in brightness],
        "bleaching": bleach,
    }
