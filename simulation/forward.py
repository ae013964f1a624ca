"""Fast forward model: 3-D convolution of a truth volume, evaluated only at the kept planes.

``scipy.signal.fftconvolve(truth, psf, mode="same")`` (what microsim does) transforms the whole volume in
3-D for every pinhole step and then throws away all planes but the focal one. Here the truth is
transformed once per field (one 2-D FFT per plane), each step's PSF once per ladder (its OTF, reused for
every field), and an output plane is the inverse 2-D FFT of sum_z' T(z') * H(z0 - z'). The result equals
microsim's ``same``-mode linear convolution (zero padding, same cropping), not a circular one.

:class:`PlaneConvolver` takes any PSF; :class:`FoldedPlaneConvolver` (what the ladder uses) takes the
symmetric PSFs of :mod:`simulation.optics` and exploits their symmetry: real OTFs, and source planes at
the same distance from the output plane summed before they are transformed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft

from simulation.even_dft import dct2_even, even_fast_len

if TYPE_CHECKING:
    from simulation.optics import FoldedPsf


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


def _sum_planes(stack: np.ndarray, planes: list[int], out: np.ndarray) -> None:
    """``out = stack[planes[0]] + stack[planes[1]] + ...``, in that order."""
    np.copyto(out, stack[planes[0]])
    for z in planes[1:]:
        out += stack[z]


class FoldedPlaneConvolver:
    """:class:`PlaneConvolver` for :class:`~simulation.optics.FoldedPsf` s: the same planes, less work.

    A PSF even in y and x about its centre pixel, placed on the periodic grid with its centre at index 0,
    has a real transform (its OTF: a type-I DCT of its quadrant, half the memory of a complex one and a
    fraction of the work); the output then needs no cropping offset. When the PSF is also even in z,
    source planes at the same distance from an output plane share an OTF plane: they are added first and
    multiplied once (and, for a few kept planes, added before the transform: one 2-D FFT per distance
    instead of one per plane).

    OTFs: (planes, L_y//2+1, L_x//2+1) float32 (see :meth:`otf`); planes = the PSF's folded z axis
    (distance 0..cz from the output plane when ``z_symmetric``, else PSF planes 0..kz-1).
    """

    def __init__(self, truth_shape: tuple[int, int, int], psf_shape: tuple[int, int, int], z_symmetric: bool,
                 workers: int = 1) -> None:
        (_, ny, nx), (kz, ky, kx) = truth_shape, psf_shape
        if kz % 2 == 0 or ky % 2 == 0 or kx % 2 == 0:
            raise ValueError(f"a folded PSF has odd sides, not {psf_shape}")
        self.truth_shape = truth_shape
        self.psf_shape = psf_shape
        self.z_symmetric = z_symmetric
        self.workers = workers
        # Circular convolution with the PSF centred at index 0 equals the linear one on [0, n) when
        # L >= n + (k - 1) / 2 (nothing wraps into the field); the even extension needs L >= k.
        self.fft_shape = (even_fast_len(max(ny + (ky - 1) // 2, ky)), even_fast_len(max(nx + (kx - 1) // 2, kx)))

    def otf(self, psf: FoldedPsf) -> np.ndarray:
        """Real OTF of a :class:`~simulation.optics.FoldedPsf`: (planes, L_y//2+1, L_x//2+1) float32.

        Only the y frequencies 0..L_y/2 are stored: the OTF is even in y, so the negative ones (rows
        L_y/2+1..L_y-1 of an ``rfft2`` layout) are rows L_y/2-1..1.
        """
        if (psf.nz, psf.n, psf.n) != self.psf_shape or psf.z_symmetric != self.z_symmetric:
            raise ValueError("the PSF does not match this convolver's window or z symmetry")
        return dct2_even(np.asarray(psf.quadrant, dtype=np.float32), self.fft_shape, self.workers)

    def transform(self, stack: np.ndarray) -> np.ndarray:
        """(n, L_y, L_x//2+1) complex64 zero-padded 2-D transform of each plane of a float32 stack."""
        return fft.rfft2(np.asarray(stack, dtype=np.float32), self.fft_shape, workers=self.workers)

    def _groups(self, z0: int) -> tuple[int, list[list[int]]]:
        """(first OTF plane, source planes of each OTF plane from it on) for output plane ``z0``."""
        nz = self.truth_shape[0]
        cz = (self.psf_shape[0] - 1) // 2
        groups: dict[int, list[int]] = {}
        for z in range(max(0, z0 - cz), min(nz, z0 + cz + 1)):
            groups.setdefault(abs(z0 - z) if self.z_symmetric else z0 - z + cz, []).append(z)
        keys = sorted(groups)  # never empty: z0 itself is a source plane
        assert keys == list(range(keys[0], keys[0] + len(keys))), keys  # consecutive OTF planes
        return keys[0], [groups[k] for k in keys]

    def _accumulate(self, grouped_f: np.ndarray, otfs: Sequence[np.ndarray], first: int) -> np.ndarray:
        """(steps, ny, nx): each step's plane from the grouped source transforms."""
        ny, nx = self.truth_shape[1:]
        h = self.fft_shape[0] // 2 + 1
        pos, neg = grouped_f[:, :h], grouped_f[:, h:]  # y frequencies 0..L/2 and -(L/2-1)..-1
        acc = np.empty((len(otfs), *grouped_f.shape[1:]), dtype=np.complex64)
        for s, otf in enumerate(otfs):
            otf_neg = otf[:, h - 2 : 0 : -1]  # the OTF at -(L/2-1)..-1, a view
            acc_pos, acc_neg = acc[s, :h], acc[s, h:]
            np.multiply(pos[0], otf[first], out=acc_pos)
            np.multiply(neg[0], otf_neg[first], out=acc_neg)
            for k in range(1, len(grouped_f)):
                acc_pos += pos[k] * otf[first + k]
                acc_neg += neg[k] * otf_neg[first + k]
        return fft.irfft2(acc, self.fft_shape, workers=self.workers)[:, :ny, :nx]

    def planes(self, truth_f: np.ndarray, otf: np.ndarray, z_out: list[int]) -> np.ndarray:
        """(len(z_out), ny, nx) float32 convolution at the output planes ``z_out``.

        ``truth_f`` is :meth:`transform` of the truth, ``otf`` :meth:`otf` of the PSF.
        """
        return self.field_planes(None, [otf], z_out, truth_f=truth_f)[0]

    def field_planes(self, truth: np.ndarray | None, otfs: Sequence[np.ndarray], z_out: list[int],
                     truth_f: np.ndarray | None = None) -> np.ndarray:
        """(steps, len(z_out), ny, nx) float32: every step's output planes of one truth volume.

        ``otfs``: one :meth:`otf` per step. Source planes sharing an OTF plane are added before the 2-D
        transform when that takes fewer transforms than transforming each plane of ``truth`` once (a few
        kept planes), after it otherwise (and when ``truth_f`` is given).
        """
        nz, ny, nx = self.truth_shape
        groups = [self._groups(z0) for z0 in z_out]
        before = truth_f is None and sum(len(members) for _, members in groups) < nz
        if truth_f is None and not before:
            assert truth is not None, "field_planes needs the truth or its transform"
            truth_f = self.transform(truth)
        out = np.empty((len(otfs), len(z_out), ny, nx), dtype=np.float32)
        for i, (first, members) in enumerate(groups):
            if before:
                assert truth is not None  # before is chosen only when truth_f was not given
                grouped = np.empty((len(members), ny, nx), dtype=np.float32)
                for k, zs in enumerate(members):
                    _sum_planes(truth, zs, grouped[k])
                grouped_f = self.transform(grouped)
            else:
                assert truth_f is not None
                grouped_f = np.empty((len(members), *truth_f.shape[1:]), dtype=np.complex64)
                for k, zs in enumerate(members):
                    _sum_planes(truth_f, zs, grouped_f[k])
            out[:, i] = self._accumulate(grouped_f, otfs, first)
        return out
