"""Intensity normalisation shared by training and inference: x_norm = (x - offset) / scale.

Derived from the stores' per-step statistics (one affine map for every step, so brightness differences
between steps survive), saved with each run, and inverted on predictions.
"""

from __future__ import annotations

import numpy as np

from dehaze.config import StrictModel
from dehaze.errors import UserError
from dehaze.store import LadderStore


class Normalization(StrictModel):
    """The affine map a run trains and predicts in: x_norm = (x_ADU - offset) / scale."""

    offset: float  # ADU subtracted (dark level: the lowest 0.1th percentile over steps)
    scale: float  # ADU divided (brightest 99.9th percentile over steps, minus the offset)

    @classmethod
    def from_stores(cls, stores: list[LadderStore]) -> Normalization:
        stats = [s for store in stores for s in (store.meta.step_stats or [])]
        if not stats:
            raise UserError(f"{stores[0].path}: store has no step statistics; run `dehaze check` on it")
        offset = min(s.p01 for s in stats)
        scale = max(s.p999 for s in stats) - offset
        return cls(offset=float(offset), scale=float(scale if scale > 0 else 1.0))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.offset) / self.scale).astype(np.float32)

    def invert(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) * self.scale + self.offset).astype(np.float32)
