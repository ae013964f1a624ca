"""Point-spread functions for every pinhole step, from microsim's vectorial model.

Physics comes from microsim (``microsim.psf.vectorial_rz``: the Richards-Wolf vectorial r-z profile of a
point source). What this module adds is speed and the fixes for microsim 0.0.12's pitfalls:

* excitation and emission profiles are computed separately (microsim's ``Simulation`` uses the emission
  wavelength for both);
* the excitation and emission PSFs are built once per ladder; each pinhole step only costs one small
  convolution of the emission PSF with the pinhole disk (microsim rebuilds both for every step);
* the lateral window is sized for the largest pinhole, so wide pinholes are not clipped (saturation);
* the widefield step uses the emission PSF alone (no pinhole).

Conventions match microsim: a pinhole of ``a`` AU is a disk of radius ``a * 0.61 * lambda_em / NA``.

Photon budget (``Optics.psf_normalization``):

* ``"physical"`` (the default): light is conserved, not each step's PSF. A focused beam carries the same
  power through every plane, so the excitation PSF is scaled to sum 1 over its in-focus plane (microsim's
  profile conserves the per-plane sum to 0.3 % when the window holds the whole cone; a field-sized window
  drops the part of a far plane's cone that lies outside it). The emission PSF is scaled the same way: each
  plane holds all the light the objective collects from a point source, and the pinhole is a transmission
  mask over it (the fraction of each pixel inside the disk), not renormalised: the detection efficiency of a
  source at r is the share of its emission PSF inside the pinhole, at most 1 (the encircled energy, ~84 %
  inside 1 AU for an in-focus Airy disk). Confocal PSF = excitation x detection, as it comes; widefield =
  the emission PSF (uniform illumination of the same dose: what a fully open pinhole tends to). A wider
  pinhole passes more light, widefield passes all of it, and a pinhole of 0 passes nothing.
* ``"sum"``: microsim's ``make_confocal_psf(normalize="sum")``: binary pinhole disk, and every step's PSF
  (the widefield one too) scaled to sum 1 over its window, which keeps the photon budget constant across
  steps (hazy steps get dimmer). Kept for agreement with microsim and for stores made before the budget.

Symmetry is where the speed comes from. A PSF of an odd window is centred on a pixel and depends on the
radius only, so it is even in x and in y: one quadrant holds it (:class:`FoldedPsf`), its 2-D transforms are
real type-I discrete cosine transforms of that quadrant, and the pinhole convolution is a product of
those. When the optics make the intensity even in z as well (a point source at the coverslip with design
= actual media, which is what :func:`objective_for` gives, unless the specimen index is below the NA),
the r-z profile is computed for z >= 0 only and mirrored; :func:`z_symmetric` checks this numerically on a
small probe before relying on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
from microsim.psf import vectorial_rz
from microsim.schema.lens import ObjectiveLens
from scipy import fft

from dehaze.manifests import Optics
from simulation.even_dft import dct2_even, even_fast_len

RZ_OVERSAMPLING = 3  # microsim's default radial oversampling (sf)
Z_SYMMETRY_RTOL = 1e-9  # largest |I(r, z) - I(r, -z)| / max I accepted as "even in z" on the probe
Z_SYMMETRY_PROBE_NX = 16  # lateral size of the probe profile (the symmetry does not depend on it)


def objective_for(optics: Optics) -> ObjectiveLens:
    """Microsim objective for our optics settings (design values equal to the experimental ones).

    The NA goes in by its alias ``na``: microsim 0.0.12's ``ObjectiveLens(numerical_aperture=...)`` is
    silently ignored (the field is not populated by name) and leaves the default NA 1.4. Its NA-below-
    immersion check reads the name, though, so both are given.
    """
    return ObjectiveLens(
        na=optics.na,
        numerical_aperture=optics.na,
        immersion_medium_ri=optics.immersion_ri,
        immersion_medium_ri_spec=optics.immersion_ri,
        specimen_ri=optics.specimen_ri,
    )


def centered_z_um(nz: int, dz_um: float) -> np.ndarray:
    """Axial positions (µm) of ``nz`` planes centred on the focal plane (microsim's convention)."""
    half = (nz - 1) * dz_um / 2
    return np.linspace(-half, half, nz)


# ------------------------------------------------------------------------------------------ folding


def unfold(half: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Mirror the upper half (indices ``n // 2 ..``) of an axis that is even about its centre to all ``n``.

    Works for odd ``n`` (the centre index is stored once) and even ``n`` (the centre lies between two
    indices).
    """
    if half.shape[axis] != n - n // 2:
        raise ValueError(f"axis {axis} holds {half.shape[axis]} entries, not the upper half of {n}")
    lower = np.flip(half, axis=axis)
    lower = lower[(slice(None),) * (axis % half.ndim) + (slice(0, n // 2),)]
    return np.concatenate([lower, half], axis=axis)


def _fold_weights(n: int) -> np.ndarray:
    """How often each entry of an odd axis' upper half occurs in the whole axis (centre once, others twice)."""
    w = np.full(n - n // 2, 2.0)
    w[0] = 1.0
    return w


@dataclass(frozen=True)
class FoldedPsf:
    """An (nz, n, n) PSF (n, nz odd) stored by its symmetry.

    ``quadrant[k, i, j]`` is the PSF at plane ``cz + k`` (``z_symmetric``; ``k`` = 0..cz) or plane ``k``
    (otherwise), row ``c + i`` and column ``c + j`` (``c = n // 2``); the PSF is even in y and x about
    ``c``, and in z about ``cz = nz // 2`` when ``z_symmetric``.
    """

    quadrant: np.ndarray
    nz: int
    n: int
    z_symmetric: bool

    def full(self) -> np.ndarray:
        """The (nz, n, n) PSF."""
        q = unfold(unfold(self.quadrant, self.n, axis=-1), self.n, axis=-2)
        return unfold(q, self.nz, axis=0) if self.z_symmetric else q


def _plane_sums(quadrant: np.ndarray, n: int) -> np.ndarray:
    """Sum over each whole (n, n) plane of the PSF whose folded quadrant is ``quadrant`` (one per stored plane)."""
    w = _fold_weights(n)
    return np.einsum("zyx,y,x->z", quadrant, w, w)


def _full_sum(quadrant: np.ndarray, nz: int, n: int, z_symmetric: bool) -> float:
    """Sum over the whole (nz, n, n) window of the PSF whose folded quadrant is ``quadrant``."""
    sums = _plane_sums(quadrant, n)
    return float(sums @ _fold_weights(nz)) if z_symmetric else float(sums.sum())


def in_focus_plane(psf: FoldedPsf) -> int:
    """Index of the in-focus plane (the window's centre) in ``psf.quadrant``."""
    return 0 if psf.z_symmetric else psf.nz // 2


def per_plane_power(psf: FoldedPsf) -> FoldedPsf:
    """``psf`` scaled so that its in-focus plane sums to 1: the power a focused beam carries through every plane."""
    total = float(_plane_sums(psf.quadrant[in_focus_plane(psf)][None], psf.n)[0])
    return FoldedPsf(psf.quadrant / total, psf.nz, psf.n, psf.z_symmetric)


def plane_sums(psf: FoldedPsf) -> np.ndarray:
    """(nz,) sum of each plane of the full PSF, from its folded quadrant."""
    sums = _plane_sums(np.asarray(psf.quadrant, dtype=np.float64), psf.n)
    return unfold(sums, psf.nz, axis=0) if psf.z_symmetric else sums


# ------------------------------------------------------------------------------------------ r-z profile


def _rz(objective: ObjectiveLens, wavelength_um: float, z_um: np.ndarray, n: int, dx_um: float) -> np.ndarray:
    """Microsim's r-z intensity profile at axial positions ``z_um``, for an (n, n) window."""
    zv_m = tuple(np.asarray(z_um, dtype=np.float64) * 1e-6)
    return np.asarray(
        vectorial_rz(zv_m, n, (0, 0, 0), dx_um, wavelength_um, objective=objective, sf=RZ_OVERSAMPLING),
        dtype=np.float64,
    )


def z_symmetric(objective: ObjectiveLens, wavelength_um: float, nz: int, dz_um: float, dx_um: float) -> bool:
    """Whether microsim's PSF is even in z for these optics (I(r, z) == I(r, -z) to ``Z_SYMMETRY_RTOL``).

    Checked on a small profile (``Z_SYMMETRY_PROBE_NX`` pixels) at the window's smallest and largest
    distances from focus: the symmetry comes from the optical path difference being odd in z and the
    aperture terms being real, neither of which depends on the lateral sampling.
    """
    z = centered_z_um(nz, dz_um)
    pos = z[z > 0]
    if pos.size == 0:
        return True  # a single plane
    probe = np.array([pos.min(), pos.max()])
    rz = _rz(objective, wavelength_um, np.concatenate([-probe, probe]), Z_SYMMETRY_PROBE_NX, dx_um)
    below, above = rz[:2], rz[2:]
    scale = float(np.abs(rz).max())
    if not np.all(np.isfinite(rz)) or scale == 0.0:
        return False
    return float(np.abs(below - above).max()) <= Z_SYMMETRY_RTOL * scale


def _rz_planes(
    objective: ObjectiveLens, wavelength_um: float, nz: int, dz_um: float, n: int, dx_um: float, symmetric: bool
) -> np.ndarray:
    """r-z profile at the planes ``nz // 2 ..`` (``symmetric``: the others are their mirror) or at all planes."""
    z = centered_z_um(nz, dz_um)
    return _rz(objective, wavelength_um, z[nz // 2 :] if symmetric else z, n, dx_um)


def _interpolate_quadrant(rz: np.ndarray, n: int) -> np.ndarray:
    """(planes, n - n//2, n - n//2) profile at the pixels ``[n//2:, n//2:]`` of an (n, n) window.

    Linear interpolation of the r-z profile at each pixel's radius, as ``microsim.psf.rz_to_xyz``
    (``map_coordinates(order=1)``), vectorised over planes.
    """
    d = np.arange(n // 2, n) - (n - 1) / 2
    r = np.hypot(d[:, None], d[None, :]).ravel() * RZ_OVERSAMPLING
    i0 = np.floor(r).astype(np.intp)
    w = r - i0
    planes = rz[:, i0] * (1.0 - w) + rz[:, i0 + 1] * w
    return planes.reshape(rz.shape[0], d.size, d.size)


def vectorial_planes(
    objective: ObjectiveLens, wavelength_um: float, nz: int, dz_um: float, n: int, dx_um: float
) -> np.ndarray:
    """(nz, n, n) float64 vectorial widefield PSF of one wavelength, normalised to sum 1.

    Same values as ``microsim.psf.vectorial_psf_centered``: microsim's r-z profile, linearly interpolated
    at each pixel's radius. Only one quadrant is interpolated (the radius map is even in x and y), and
    only the planes z >= 0 are computed when :func:`z_symmetric` holds.
    """
    symmetric = z_symmetric(objective, wavelength_um, nz, dz_um, dx_um)
    rz = _rz_planes(objective, wavelength_um, nz, dz_um, n, dx_um, symmetric)
    planes = unfold(unfold(_interpolate_quadrant(rz, n), n, axis=-1), n, axis=-2)
    if symmetric:
        planes = unfold(planes, nz, axis=0)
    return planes / planes.sum()


def folded_vectorial_psf(
    objective: ObjectiveLens, wavelength_um: float, nz: int, dz_um: float, n: int, dx_um: float, symmetric: bool
) -> FoldedPsf:
    """:func:`vectorial_planes` as a :class:`FoldedPsf` (``nz`` and ``n`` odd), float64, full sum 1.

    ``symmetric``: fold z as well (the caller checked :func:`z_symmetric`).
    """
    if nz % 2 == 0 or n % 2 == 0:
        raise ValueError(f"a folded PSF needs an odd window, not {nz} planes of {n} x {n}")
    q = _interpolate_quadrant(_rz_planes(objective, wavelength_um, nz, dz_um, n, dx_um, symmetric), n)
    q /= _full_sum(q, nz, n, symmetric)
    return FoldedPsf(q, nz, n, symmetric)


# ------------------------------------------------------------------------------------------ pinholes


def pinhole_disk(n: int, pinhole_au: float, em_wavelength_um: float, na: float, dx_um: float) -> np.ndarray:
    """(n, n) pinhole mask projected to the sample: a disk of diameter ``pinhole_au`` Airy units."""
    radius = pinhole_au * 0.61 * em_wavelength_um / na / dx_um
    x = np.arange(n) - n // 2
    return (np.hypot(x[:, None], x[None, :]) <= radius).astype(np.float64)


def folded_pinhole_disk(n: int, pinhole_au: float, em_wavelength_um: float, na: float, dx_um: float) -> np.ndarray:
    """Quadrant ``[n//2:, n//2:]`` of :func:`pinhole_disk` (n odd), cropped to the disk's support."""
    quadrant = pinhole_disk(n, pinhole_au, em_wavelength_um, na, dx_um)[n // 2 :, n // 2 :]
    h = int(np.count_nonzero(quadrant[0]))  # the centre row reaches furthest
    return quadrant[:h, :h]


PINHOLE_SUBSAMPLES = 32  # per pixel side, for the fraction of each pixel inside the pinhole


def pinhole_transmission(n: int, pinhole_au: float, em_wavelength_um: float, na: float, dx_um: float) -> np.ndarray:
    """Quadrant ``[n//2:, n//2:]`` of the pinhole's transmission mask (n odd), cropped to its support.

    Each value is the fraction of the pixel's area inside the disk of diameter ``pinhole_au`` Airy units
    (``PINHOLE_SUBSAMPLES`` squared points per pixel), so the transmitted area is that of the disk and
    changes continuously with the pinhole (microsim's binary disk jumps by whole pixels, and its pinhole of
    0 still passes the centre pixel). A pinhole of 0 is a (1, 1) zero.
    """
    radius = pinhole_au * 0.61 * em_wavelength_um / na / dx_um
    if radius <= 0:
        return np.zeros((1, 1))
    m = min(n - n // 2, int(np.ceil(radius + 0.5)))  # pixels i with i - 0.5 < radius
    sub = (np.arange(PINHOLE_SUBSAMPLES) + 0.5) / PINHOLE_SUBSAMPLES - 0.5
    coord2 = (np.arange(m)[:, None] + sub[None, :]) ** 2  # (pixel, subsample) squared offsets
    inside = coord2[:, None, :, None] + coord2[None, :, None, :] <= radius**2  # (m, m, S, S)
    return inside.mean(axis=(2, 3))


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


def _pinhole_convolutions(em: FoldedPsf, disks: dict[float, np.ndarray], workers: int) -> dict[float, np.ndarray]:
    """Quadrants of (emission PSF * pinhole disk), ``same``-cropped linear 2-D convolutions, per pinhole.

    Both are even about their centre pixel, so the convolution is a product of type-I DCTs on a period
    long enough that no wrapped-around term reaches the window (n + disk half-width). float32: the
    transforms' round-off (~1e-7 of each plane's peak) is far below what the float32 PSFs keep anyway.
    """
    m = em.quadrant.shape[-1]
    out = {au: np.zeros(em.quadrant.shape, np.float32) for au, disk in disks.items() if not disk.any()}  # passes nothing
    disks = {au: disk for au, disk in disks.items() if au not in out}
    if not disks:
        return out
    size = even_fast_len(em.n + max(d.shape[-1] for d in disks.values()))
    em_f = dct2_even(em.quadrant.astype(np.float32), (size, size), workers)
    for au, disk in disks.items():
        prod = em_f * dct2_even(disk.astype(np.float32), (size, size), workers)
        prod = fft.idct(prod, type=1, axis=-2, workers=workers)[..., :m, :]
        out[au] = fft.idct(prod, type=1, axis=-1, workers=workers)[..., :m]
    return out


# ------------------------------------------------------------------------------------------ ladder


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


# the return type follows ``folded`` (callers that fold get FoldedPsf s, the others arrays)
@overload
def ladder_psfs(
    optics: Optics, window: PsfWindow, pinhole_au: list[float | None], workers: int = 1, folded: Literal[False] = False
) -> list[np.ndarray]: ...
@overload
def ladder_psfs(
    optics: Optics, window: PsfWindow, pinhole_au: list[float | None], workers: int = 1, *, folded: Literal[True]
) -> list[FoldedPsf]: ...
@overload
def ladder_psfs(
    optics: Optics, window: PsfWindow, pinhole_au: list[float | None], workers: int = 1, folded: bool = False
) -> list[np.ndarray] | list[FoldedPsf]: ...
def ladder_psfs(
    optics: Optics, window: PsfWindow, pinhole_au: list[float | None], workers: int = 1, folded: bool = False
) -> list[np.ndarray] | list[FoldedPsf]:
    """One (nz, n, n) float32 PSF per step; ``None`` is the widefield step.

    Confocal PSF = excitation PSF x (emission PSF convolved with the pinhole mask), the model of
    ``microsim.psf.make_confocal_psf``, with the true excitation wavelength. Normalised as
    ``optics.psf_normalization`` says (module docstring): ``"physical"``, light as it is (in-focus planes
    of the excitation and emission PSFs sum to 1, the pinhole a transmission mask); ``"sum"``, each PSF
    scaled to sum 1 (microsim). The window must be odd (:func:`psf_window`'s are). ``folded``: return
    :class:`FoldedPsf` s (float32 quadrants) instead of the full arrays, which is all the forward model
    needs.
    """
    objective = objective_for(optics)
    ex_um, em_um = optics.ex_wavelength_nm * 1e-3, optics.em_wavelength_nm * 1e-3
    confocal = [a for a in pinhole_au if a is not None]
    dz, dx = optics.z_step_um, optics.pixel_size_um
    symmetric = z_symmetric(objective, em_um, window.nz, dz, dx) and (
        not confocal or z_symmetric(objective, ex_um, window.nz, dz, dx)
    )
    args = (window.nz, dz, window.n, dx, symmetric)
    physical = optics.psf_normalization == "physical"
    em = folded_vectorial_psf(objective, em_um, *args)
    ex = folded_vectorial_psf(objective, ex_um, *args) if confocal else None
    mask = pinhole_transmission if physical else folded_pinhole_disk
    if physical:
        em, ex = per_plane_power(em), (per_plane_power(ex) if ex is not None else None)  # ex is None iff not confocal
    disks = {au: mask(window.n, au, em_um, optics.na, dx) for au in confocal}
    detection = _pinhole_convolutions(em, disks, workers)
    out_folded: list[FoldedPsf] = []
    out_full: list[np.ndarray] = []  # two lists, one return type each (see the overloads)
    for au in pinhole_au:
        if au is None:
            q = em.quadrant
        else:
            assert ex is not None  # a confocal step: confocal is not empty, so ex was computed
            q = detection[au] * ex.quadrant  # float64
            if not physical:
                q /= _full_sum(q, window.nz, window.n, symmetric)
        psf = FoldedPsf(q.astype(np.float32), window.nz, window.n, symmetric)
        if folded:
            out_folded.append(psf)
        else:
            out_full.append(psf.full())
    return out_folded if folded else out_full
