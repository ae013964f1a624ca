"""Gaussian noise keyed by pixel position: the same value at an image pixel whatever tile it is read in.

A sampler that starts from noise (the flow restorer) gives a tiled prediction equal to the untiled one only
if a pixel's noise does not depend on the tile: the engine draws each tile's starting noise with
:func:`position_noise` at the tile's place in the field. Counter-based (splitmix64 of the key and the
(sample, y, x) counter, then Box-Muller): no state, any region in any order, the same numbers on every
machine. Cost: ~0.2 us per value on one busy core (16 samples of a 256 x 256 tile: 0.23 s measured,
against 20 network evaluations of those 16 tiles by the flow sampler).
"""

from __future__ import annotations

import numpy as np

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_COORD_BITS = 24  # y and x up to 16.7 M px (with the offset for the reflect-padded rows and columns below 0)
_OFFSET = 1 << 20


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN  # uint64 arrays wrap modulo 2**64, which the hash relies on
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def noise_key(*parts: int) -> int:
    """A well-mixed 64-bit key from integers (seed, field, step, plane ...)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1, np.uint64)[0])


def position_noise(key: int, y0: int, x0: int, height: int, width: int, samples: int) -> np.ndarray:
    """(samples, height, width) float32 standard normal values of the region starting at pixel (y0, x0);
    sample j's value at pixel (y, x) depends only on (key, j, y, x)."""
    with np.errstate(over="ignore"):
        j = np.arange(samples, dtype=np.uint64)[:, None, None]
        y = (np.arange(height, dtype=np.int64) + y0 + _OFFSET).astype(np.uint64)[None, :, None]
        x = (np.arange(width, dtype=np.int64) + x0 + _OFFSET).astype(np.uint64)[None, None, :]
        counter = (j << np.uint64(2 * _COORD_BITS)) | (y << np.uint64(_COORD_BITS)) | x
        a = _splitmix64(counter ^ np.uint64(key))
        b = _splitmix64(a)
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53  # (0, 1): log(u1) is finite
    u2 = (b >> np.uint64(11)).astype(np.float64) / 2.0**53
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)
