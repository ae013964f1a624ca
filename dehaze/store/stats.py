"""Per-step intensity statistics of a store (camera values): computed from subsamples when a writer finishes."""

from __future__ import annotations

from typing import Any

import numpy as np

from dehaze.store.ladder import LadderStore
from dehaze.store.meta import StepStats

_PERCENTILES = (0.001, 0.999)  # the p01 and p999 of StepStats (and of summarize), as fractions
_HISTOGRAM_MAX_BINS = 1 << 20  # integer samples spanning fewer values are summarised from their histogram


def summarize(values: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(mean, std, min, max, p01, p999) of a 1-D sample; percentiles interpolated linearly, as np.percentile.

    Integer camera values (the usual case) go through one bincount: exact, and ~10x quicker than a partial
    sort of a million values. Others: float64 accumulators for the moments and one partial sort.
    """
    lo_v, hi_v = values.min(), values.max()
    pos = np.array(_PERCENTILES) * (len(values) - 1)
    lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
    if values.dtype.kind in "ui" and int(hi_v) - int(lo_v) < _HISTOGRAM_MAX_BINS:
        # offsets from the minimum: in the native type for unsigned values (never negative), in int64 for
        # signed ones (int16 spanning more than 32767 would wrap)
        offsets = values - lo_v if values.dtype.kind == "u" else values.astype(np.int64) - int(lo_v)
        counts = np.bincount(offsets.astype(np.intp, copy=False))
        levels = np.arange(len(counts), dtype=np.float64) + float(lo_v)
        mean = float(counts @ levels) / len(values)
        std = float(np.sqrt(counts @ (levels - mean) ** 2 / len(values)))
        # the k-th smallest value (0-based) is the first level whose cumulative count exceeds k
        order_stat = lambda k: levels[np.searchsorted(np.cumsum(counts), k, side="right")]  # noqa: E731
        at_lo, at_hi = order_stat(lo), order_stat(hi)
    else:
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        # float32 is exact for float32 and 16-bit camera values; wider ones keep float64
        work = values.astype(np.float64 if values.dtype.itemsize > 4 or values.dtype.kind in "iu" else np.float32)
        work.partition(sorted({*lo, *hi}))
        at_lo, at_hi = work[lo].astype(np.float64), work[hi].astype(np.float64)
    p01, p999 = at_lo + (pos - lo) * (at_hi - at_lo)
    return mean, std, float(lo_v), float(hi_v), float(p01), float(p999)


def step_stats_from_samples(samples_per_step: list[np.ndarray], haze: list[float | None] | None = None) -> list[StepStats]:
    """Aggregate statistics per step from (possibly subsampled) camera values of all fields."""
    out = []
    for t, values in enumerate(samples_per_step):
        mean, std, vmin, vmax, p01, p999 = summarize(np.asarray(values).ravel())  # native dtype: no float64 copy
        out.append(StepStats(mean=mean, std=std, min=vmin, max=vmax, p01=p01, p999=p999, haze_index=None if haze is None else haze[t]))
    return out


STATS_PIXELS_PER_STEP = 2_000_000  # subsample cap when computing dataset statistics


def stats_samples(image: Any, n_fields: int) -> list[np.ndarray]:
    """Per-step strided subsample of one field's (h, [z,] y, x) camera values (numpy or zarr array), at most
    ``STATS_PIXELS_PER_STEP // n_fields`` values per step: the field's share of the dataset statistics."""
    per_field_px = max(1, STATS_PIXELS_PER_STEP // n_fields)
    stride = max(1, int(np.sqrt(np.prod(image.shape[1:]) / per_field_px)))
    return [np.asarray(image[t])[..., ::stride, ::stride].ravel() for t in range(image.shape[0])]


def finalize_with_step_stats(store: LadderStore, samples: list[list[np.ndarray]] | None = None, **updates: Any) -> None:
    """Compute per-step statistics from the written fields (subsampled) and mark the store complete.

    ``samples``: per field, :func:`stats_samples` of the image just written, when the writer still holds it
    (saves reading the store back; same values). A field's ``info["haze_index"]`` (one value per step,
    simulation only) is averaged into the stats; stores without it get ``haze_index: None``. ``updates`` are
    further dataset-level values to record.
    """
    fields = store.fields
    if samples is None:
        samples = [stats_samples(store.image(f), len(fields)) for f in fields]
    haze = np.zeros(store.n_steps)
    has_haze = True
    for f in fields:
        values = store.field_meta(f).info.get("haze_index")
        if values is None:
            has_haze = False
        else:
            haze += np.asarray(values, dtype=np.float64)
    per_step = [np.concatenate([field_samples[t] for field_samples in samples]) for t in range(store.n_steps)]
    stats = step_stats_from_samples(per_step, list(haze / len(fields)) if has_haze else None)
    store.finalize(step_stats=stats, **updates)
