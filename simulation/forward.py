"""Fast forward model: 3-D convolution of a truth volume, evaluated only at the kept planes.

``scipy.signal.fftconvolve(truth, psf, mode="same")`` (what microsim does) transforms the whole volume in
3-D for every pinhole step and then throws away all planes but the focal one. Here the truth is
transformed once per field (one 2-D FFT per plane), each step's PSF once per ladder (its OTF, reused for
every field), and an output plane is the inverse 2-D FFT of sum_z' T(z') * H(z0 - z'). The result equals
microsim's ``same``-mode linear convolution (zero padding, same cropping), not a circular one.
"""

from __future__ import annotations

import numpy as np
from scipy import fft


class PlaneConvolver:
    """Linear 3-D convolution of (nz, ny, nx) volumes with (kz, ky, kx) PSFs, at chosen output planes.

    Output plane ``z0`` is plane ``z0`` of ``fftconvolve(truth, psf, mode="same")``.
    """

    def __init__(self, truth_shape: tuple[int, int, int], psf_shape: tuple[int, int, int], workers: int = 1) -> None:
        self.truth_shape = truth_shape
        self.psf_shape = psf_shape
        self.workers = workers
        (_, ny, nx), (_, ky, kx) = truth_shape, psf_shape
        self.crop_y, self.crop_x = (ky - 1) // 2, (kx - 1) // 2
        # Circular convolution of length L equals the linear one on the cropped window when
        # L >= n + k - 1 - crop: wrapped-around terms then land before the window.
        self.fft_shape = (
            fft.next_fast_len(ny + ky - 1 - self.crop_y, real=True),
            fft.next_fast_len(nx + kx - 1 - self.crop_x, real=True),
        )

    def transform(self, stack: np.ndarray) -> np.ndarray:
        """(n, L_y, L_x//2+1) complex64 zero-padded 2-D transform of each plane of a float32 stack."""
        return fft.rfft2(np.asarray(stack, dtype=np.float32), self.fft_shape, workers=self.workers)

    def planes(self, truth_f: np.ndarray, otf: np.ndarray, z_out: list[int]) -> np.ndarray:
        """(len(z_out), ny, nx) float32 convolution at the output planes ``z_out``.

        ``truth_f`` and ``otf`` are :meth:`transform` of the truth and of the PSF.
        """
        nz, ny, nx = self.truth_shape
        kz = self.psf_shape[0]
        cz = (kz - 1) // 2
        out = np.empty((len(z_out), ny, nx), dtype=np.float32)
        for i, z0 in enumerate(z_out):
            # PSF plane index for source plane z' is z0 + cz - z'; keep the z' where it exists. Those z' are
            # a contiguous range and their PSF planes a reversed contiguous range: slices (views), not
            # fancy-indexed copies of both stacks.
            z_lo, z_hi = max(0, z0 + cz - kz + 1), min(nz, z0 + cz + 1)
            if z_lo >= z_hi:
                out[i] = 0
                continue
            k_lo, k_hi = z0 + cz - (z_hi - 1), z0 + cz - z_lo
            acc = np.einsum("zyx,zyx->yx", truth_f[z_lo:z_hi], otf[k_lo : k_hi + 1][::-1])
            full = fft.irfft2(acc, self.fft_shape, workers=self.workers)
            out[i] = full[self.crop_y : self.crop_y + ny, self.crop_x : self.crop_x + nx]
        return out
