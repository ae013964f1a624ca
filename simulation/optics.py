"""Point-spread functions for every pinhole step, from microsim's vectorial model.

Physics comes from microsim (``microsim.psf.vectorial_rz``: the Richards-Wolf vectorial r-z profile of a
point source). What this module adds is speed and the fixes for microsim 0.0.12's pitfalls:

* excitation and emission profiles are computed separately (microsim's ``Simulation`` uses the emission
  wavelength for both);
* the excitation and emission PSFs are built once per ladder; each pinhole step only costs one FFT
  convolution of the emission PSF with the pinhole disk (microsim rebuilds both for every step);
* the lateral window is sized for the largest pinhole, so wide pinholes are not clipped (saturation);
* the widefield step uses the emission PSF alone (no pinhole).

Conventions match microsim: a pinhole of ``a`` AU is a disk of radius ``a * 0.61 * lambda_em / NA``; a PSF
is normalised to sum 1 over its window (energy conservation across steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from microsim.psf import vectorial_rz
from microsim.schema.lens import ObjectiveLens
from scipy import fft

from dehaze.manifests import Optics

RZ_OVERSAMPLING = 3  # microsim's default radial oversampling (sf)


def objective_for(optics: Optics) -> ObjectiveLens:
    """microsim objective for our optics settings (design values equal to the experimental ones)."""
    return ObjectiveLens(
        numerical_aperture=optics.na,
        immersion_medium_ri=optics.immersion_ri,
        immersion_medium_ri_spec=optics.immersion_ri,
        specimen_ri=optics.specimen_ri,
    )


def centered_z_um(nz: int, dz_um: float) -> np.ndarray:
    """Axial positions (µm) of ``nz`` planes centred on the focal plane (microsim's convention)."""
    half = (nz - 1) * dz_um / 2
    return np.linspace(-half, half, nz)


def radius_px(n: int) -> np.ndarray:
    """(n, n) distance of each pixel from the window centre ((n-1)/2, microsim's convention)."""
    c = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n]
    return np.hypot(yy - c, xx - c)


def vectorial_planes(
    objective: ObjectiveLens, wavelength_um: float, nz: int, dz_um: float, n: int, dx_um: float
) -> np.ndarray:
    """(nz, n, n) float64 vectorial widefield PSF of one wavelength, normalised to sum 1.

    Same values as ``microsim.psf.vectorial_psf_centered``: microsim's r-z profile, linearly interpolated
    at each pixel's radius. The interpolation is vectorised over planes (one gather instead of one
    ``map_coordinates`` call per plane), which is where the speed-up comes from.
    """
    zv_m = tuple(centered_z_um(nz, dz_um) * 1e-6)
    rz = np.asarray(
        vectorial_rz(zv_m, n, (0, 0, 0), dx_um, wavelength_um, objective=objective, sf=RZ_OVERSAMPLING),
        dtype=np.float64,
    )
    r = radius_px(n).ravel() * RZ_OVERSAMPLING
    i0 = np.floor(r).astype(np.intp)
    w = r - i0
    planes = rz[:, i0] * (1.0 - w) + rz[:, i0 + 1] * w
    planes = planes.reshape(nz, n, n)
    return planes / planes.sum()


def pinhole_disk(n: int, pinhole_au: float, em_wavelength_um: float, na: float, dx_um: float) -> np.ndarray:
    """(n, n) pinhole mask projected to the sample: a disk of diameter ``pinhole_au`` Airy units."""
    radius = pinhole_au * 0.61 * em_wavelength_um / na / dx_um
    x = np.arange(n) - n // 2
    return (np.hypot(x[:, None], x[None, :]) <= radius).astype(np.float64)


def fftconvolve_same_2d(stack: np.ndarray, kernel: np.ndarray, workers: int = 1) -> np.ndarray:
    """Linear 2-D convolution of each plane of ``stack`` with ``kernel``, cropped like scipy's ``same``."""
    n_y, n_x = stack.shape[-2:]
    k_y, k_x = kernel.shape
    shape = (fft.next_fast_len(n_y + k_y - 1, real=True), fft.next_fast_len(n_x + k_x - 1, real=True))
    out = fft.irfft2(
        fft.rfft2(stack, shape, workers=workers) * fft.rfft2(kernel, shape, workers=workers), shape, workers=workers
    )
    c_y, c_x = (k_y - 1) // 2, (k_x - 1) // 2
    return out[..., c_y : c_y + n_y, c_x : c_x + n_x]


def compact_pinhole_disk(n: int, pinhole_au: float, em_wavelength_um: float, na: float, dx_um: float) -> np.ndarray:
    """:func:`pinhole_disk` cropped to its support, its centre pixel kept in the middle (odd size).

    Convolving with it in ``same`` mode gives the same result as with the full (n, n) disk (only zeros are
    dropped), at a fraction of the FFT size. The full disk is returned when it reaches the window's edge.
    """
    disk = pinhole_disk(n, pinhole_au, em_wavelength_um, na, dx_um)
    c = n // 2
    h = int(pinhole_au * 0.61 * em_wavelength_um / na / dx_um) + 1  # every pixel of the disk is within h
    if h >= min(c, n - 1 - c):
        return disk
    return disk[c - h : c + h + 1, c - h : c + h + 1]


class SameConvolver2D:
    """:func:`fftconvolve_same_2d` of one stack with several kernels: the stack is transformed once."""

    def __init__(self, stack: np.ndarray, max_kernel_shape: tuple[int, int], workers: int = 1) -> None:
        self.n_y, self.n_x = stack.shape[-2:]
        k_y, k_x = max_kernel_shape
        # Circular convolution of length L equals the linear one on the cropped window when
        # L >= n + k - 1 - (k - 1) // 2 (wrapped-around terms land before the window); that bound grows
        # with k, so sizing for the largest kernel covers every smaller one.
        self.shape = (
            fft.next_fast_len(self.n_y + k_y - 1 - (k_y - 1) // 2, real=True),
            fft.next_fast_len(self.n_x + k_x - 1 - (k_x - 1) // 2, real=True),
        )
        self.workers = workers
        self.stack_f = fft.rfft2(stack, self.shape, workers=workers)

    def __call__(self, kernel: np.ndarray) -> np.ndarray:
        k_y, k_x = kernel.shape
        if self.n_y + k_y - 1 - (k_y - 1) // 2 > self.shape[0] or self.n_x + k_x - 1 - (k_x - 1) // 2 > self.shape[1]:
            raise ValueError(f"kernel {kernel.shape} is larger than this convolver was sized for")
        kernel_f = fft.rfft2(kernel, self.shape, workers=self.workers)
        out = fft.irfft2(self.stack_f * kernel_f, self.shape, workers=self.workers)
        c_y, c_x = (k_y - 1) // 2, (k_x - 1) // 2
        return out[..., c_y : c_y + self.n_y, c_x : c_x + self.n_x]


@dataclass(frozen=True)
class PsfWindow:
    """Size of the PSF window: ``nz`` planes by ``n`` x ``n`` pixels (n odd: the centre is a pixel)."""

    nz: int
    n: int


def psf_window(optics: Optics, field_shape_yx: tuple[int, int], nz: int, keep_planes: list[int], max_pinhole_au: float) -> PsfWindow:
    """Window large enough for every kept plane to see every simulated plane and for the widest pinhole.

    Axially: 2 * (largest distance from a kept plane to a volume edge) + 1 planes. Laterally: the whole
    field (haze from a defocused plane spreads over it), and at least the widest pinhole disk plus 4 AU
    of margin; odd, so the PSF centre falls on a pixel.
    """
    reach = max(max(z, nz - 1 - z) for z in keep_planes)
    au_px = optics.airy_diameter_um / optics.pixel_size_um
    need = int(np.ceil(max_pinhole_au * au_px + 8 * au_px)) + 1
    n = max(max(field_shape_yx), need)
    return PsfWindow(nz=2 * reach + 1, n=n + 1 - n % 2)


def ladder_psfs(
    optics: Optics, window: PsfWindow, pinhole_au: list[float | None], workers: int = 1
) -> list[np.ndarray]:
    """One (nz, n, n) float32 PSF per step, each normalised to sum 1; ``None`` is the widefield step.

    Confocal PSF = excitation PSF x (emission PSF convolved with the pinhole disk), the model of
    ``microsim.psf.make_confocal_psf``, with the true excitation wavelength.
    """
    objective = objective_for(optics)
    ex_um, em_um = optics.ex_wavelength_nm * 1e-3, optics.em_wavelength_nm * 1e-3
    args = (window.nz, optics.z_step_um, window.n, optics.pixel_size_um)
    em = vectorial_planes(objective, em_um, *args)
    ex = vectorial_planes(objective, ex_um, *args) if any(a is not None for a in pinhole_au) else None
    # Pinhole disks cropped to their support, and the emission PSF transformed once for every step: the
    # per-step cost is one small 2-D transform and one inverse transform of the stack.
    disks = {
        au: compact_pinhole_disk(window.n, au, em_um, optics.na, optics.pixel_size_um)
        for au in pinhole_au
        if au is not None
    }
    conv = SameConvolver2D(em, max(d.shape for d in disks.values()), workers=workers) if disks else None
    psfs = []
    for au in pinhole_au:
        if au is None:
            psf = em / em.sum()
        else:
            psf = conv(disks[au]) * ex  # one new array; normalised in place (large temporaries are slow)
            psf /= psf.sum()
        psfs.append(psf.astype(np.float32))
    return psfs
