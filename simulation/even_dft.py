"""Real DFTs of images even about their centre pixel (PSFs, pinhole disks): from one quadrant, by type-I
DCTs. Shared by the forward model (:mod:`simulation.forward`) and the PSF maker (:mod:`simulation.optics`),
which import it and not each other."""

from __future__ import annotations

import numpy as np
from scipy import fft


def even_fast_len(n: int) -> int:
    """Smallest even length >= n with a fast real FFT (a type-I DCT of N + 1 points is a real FFT of 2N)."""
    length = fft.next_fast_len(n, real=True)
    while length % 2:
        length = fft.next_fast_len(length + 1, real=True)
    return length


def dct2_even(quadrant: np.ndarray, shape: tuple[int, int], workers: int = 1) -> np.ndarray:
    """2-D DFT of a stack of images even about their centre pixel, from their quadrants; real.

    ``quadrant[..., i, j]`` holds an image at offsets (i, j) >= 0 from its centre. The image is placed on
    a periodic grid of even ``shape`` (L_y, L_x) with its centre at index 0; its DFT, real and even, is
    returned at frequencies 0..L_y/2 by 0..L_x/2: a type-I DCT of L/2 + 1 points along each axis. The
    quadrant must fit inside half a period (``quadrant.shape[-2:] <= (L_y/2, L_x/2)``).
    """
    (l_y, l_x), (q_y, q_x) = shape, quadrant.shape[-2:]
    if l_y % 2 or l_x % 2 or q_y > l_y // 2 or q_x > l_x // 2:
        raise ValueError(f"quadrant {(q_y, q_x)} does not fit the even period {shape}")
    out = fft.dct(quadrant, type=1, n=l_x // 2 + 1, axis=-1, workers=workers)
    return fft.dct(out, type=1, n=l_y // 2 + 1, axis=-2, workers=workers)
