"""Registration of a pinhole series: every step aligned to the cleanest one, sub-pixel, robust to haze.

Method (shapes for one field of T+1 steps):

1. ``prepare``: each step -> one 2-D plane (z mean), the central ``window_px`` square, mean removed,
   times a Hann window (no edge artefacts), -> its 2-D FFT.
2. ``match``: phase correlation of two prepared planes with a band-pass weight on the whitened cross-power
   spectrum (a difference of Gaussians in frequency: haze, which lives at low frequencies, and pixel noise,
   at high ones, are down-weighted) -> integer peak -> refined to 1/upsample px by evaluating the inverse
   DFT on a fine grid around the peak (matrix-multiply DFT). Confidence: the peak-to-sidelobe ratio (PSR).
3. ``register_steps``: pairwise matches to the reference and between neighbours (t-1, t); a weighted least
   squares over all confident matches gives each step's shift (so a hazy step weakly matched to the
   reference is chained through its neighbours); the loop-closure misfit of the matches is the residual.
4. ``apply_shifts``: cubic-spline (or whole-pixel) shifts, then the crop common to all steps.

Shifts are in pixels, (dy, dx): the correction to apply to a step so that it lies on the reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from acquisition.manifest import Registration


@dataclass
class Match:
    """The shift that best aligns a moving plane on a reference, and how sure the match is."""

    shift: np.ndarray  # (2,) dy, dx: shift to apply to the moving plane
    confidence: float  # peak-to-sidelobe ratio


@dataclass
class RegistrationResult:
    """Per-step shifts of a field onto its reference step, their confidence and the loop-closure misfit."""

    shifts: np.ndarray  # (h, 2) float64, (dy, dx) per step, reference step 0.0
    confidence: np.ndarray  # (h,) PSR of the best match that placed each step (inf for the reference)
    residual_px: float  # RMS loop-closure misfit of the matches used (px)
    matches: dict[tuple[int, int], Match]


def _plane(step: np.ndarray) -> np.ndarray:
    """([z,] y, x) -> (y, x) float32: the mean over z (drift during a series is lateral). float32 is ample:
    the shift estimate depends on the image's phase, not on its last bits, and halves the work."""
    stack = step.reshape(-1, *step.shape[-2:])
    return stack[0].astype(np.float32) if len(stack) == 1 else stack.mean(axis=0, dtype=np.float64).astype(np.float32)


def _haze_width(cfg: Registration) -> int:
    """Width of the box filter applied twice to estimate the haze: ~ a Gaussian of sigma band_px[1]/2
    (variance 2 (w^2-1)/12), at a fraction of its cost."""
    return max(3, int(round(math.sqrt(6 * (cfg.band_px[1] / 2) ** 2 + 1))) | 1)


def _max_offset_px(cfg: Registration) -> int:
    """Largest whole-pixel offset at which :func:`match` reads a window (the whole-pixel shift, then up to
    two rounds of a further pixel)."""
    window = cfg.window_px
    return int(math.ceil(cfg.max_shift_px if cfg.max_shift_px is not None else window / 4)) + 2


def prepare(step: np.ndarray, cfg: Registration) -> np.ndarray:
    """One step's plane without its haze (minus a Gaussian blur of band_px[1]), float32 (y, x).

    Removing the smooth haze before windowing matters: a bright haze times the window would leak
    low-frequency energy that does not move with the structure. Done once per step, not per match, and only
    on the centred region the matches read (the window, the largest offset and the filter's reach on each
    side): the same values there as filtering the whole plane, at ~3/4 of the cost for a 512^2 plane.
    """
    plane = _plane(step)
    width = _haze_width(cfg)
    margin = _max_offset_px(cfg) + 2 * (width // 2)
    region = []
    for n in plane.shape:
        w = min(n, cfg.window_px)
        # symmetric, so the central window stays central (see _crop); the whole axis when it is too short
        fits = (n - w) // 2 >= margin
        region.append(slice((n - w) // 2 - margin, (n - w) // 2 + w + margin) if fits else slice(0, n))
    plane = plane[tuple(region)]
    haze = ndimage.uniform_filter(ndimage.uniform_filter(plane, width, mode="nearest"), width, mode="nearest")
    return plane - haze


def _crop(plane: np.ndarray, cfg: Registration, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The central (up to window_px) square of ``plane``, moved by ``offset`` px (edge values beyond the plane)."""
    ny, nx = plane.shape
    wy, wx = min(ny, cfg.window_px), min(nx, cfg.window_px)
    y0, x0 = (ny - wy) // 2 + offset[0], (nx - wx) // 2 + offset[1]
    if 0 <= y0 and y0 + wy <= ny and 0 <= x0 and x0 + wx <= nx:
        return plane[y0 : y0 + wy, x0 : x0 + wx]
    pad = ((max(0, -y0), max(0, y0 + wy - ny)), (max(0, -x0), max(0, x0 + wx - nx)))
    return np.pad(plane, pad, mode="edge")[y0 + pad[0][0] : y0 + pad[0][0] + wy, x0 + pad[1][0] : x0 + pad[1][0] + wx]


_FFT_WORKERS = 1  # the caller runs fields side by side in threads; a 256^2 FFT gains nothing from more
TAPER = 0.3  # fraction of a Tukey window's width that tapers (a full Hann window biases blurred steps)


def _tukey(n: int, alpha: float) -> np.ndarray:
    """Tukey window: flat centre, cosine tapers over alpha/2 of the width on each side."""
    x = (np.arange(n) + 0.5) / n
    w = np.ones(n)
    edge = alpha / 2
    lo, hi = x < edge, x > 1 - edge
    w[lo] = 0.5 * (1 - np.cos(np.pi * x[lo] / edge))
    w[hi] = 0.5 * (1 - np.cos(np.pi * (1 - x[hi]) / edge))
    return w


@functools.lru_cache(maxsize=8)
def _window(shape: tuple[int, int]) -> np.ndarray:
    w = np.outer(_tukey(shape[0], TAPER), _tukey(shape[1], TAPER)).astype(np.float32)
    w.flags.writeable = False
    return w


def _spectrum(crop: np.ndarray) -> np.ndarray:
    """Half spectrum (rfft2, complex64, (ny, nx // 2 + 1)) of the mean-free crop times a Tukey window (no edge
    artefacts). The image is real, so the other half is its mirror: half the work of a full FFT."""
    return sfft.rfft2((crop - crop.mean(dtype=np.float64)).astype(np.float32) * _window(crop.shape), workers=_FFT_WORKERS)


@functools.lru_cache(maxsize=8)
def _band(shape: tuple[int, int], band_px: tuple[float, float]) -> np.ndarray:
    """Weight on the half spectrum of a ``shape`` crop passing structure between band_px[0] and band_px[1]
    pixels (difference of Gaussians)."""
    fy = sfft.fftfreq(shape[0])[:, None]
    fx = sfft.rfftfreq(shape[1])[None, :]
    f2 = fy**2 + fx**2
    small, large = band_px
    # a Gaussian of sigma s px has a transfer exp(-2 pi^2 s^2 f^2)
    band = (np.exp(-2 * math.pi**2 * (small / 2) ** 2 * f2) - np.exp(-2 * math.pi**2 * (large / 2) ** 2 * f2)).astype(np.float32)
    band.flags.writeable = False
    return band


@functools.lru_cache(maxsize=8)
def _lags(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Signed integer lags (dy (ny, 1), dx (1, nx)) of each element of a correlation of ``shape``."""
    return sfft.fftfreq(shape[0], 1 / shape[0])[:, None], sfft.fftfreq(shape[1], 1 / shape[1])[None, :]


@functools.lru_cache(maxsize=8)
def _half_columns(nx: int) -> np.ndarray:
    """Weight that makes a sum over the half spectrum's columns equal the real part of the sum over the whole
    spectrum: 2 for a column whose mirror is missing, 1 for the zero (and Nyquist) column, which hold both
    signs already."""
    weight = np.full(nx // 2 + 1, 2.0)
    weight[0] = 1.0
    if nx % 2 == 0:
        weight[-1] = 1.0
    weight.flags.writeable = False
    return weight


def _upsampled_correlation(half: np.ndarray, shape: tuple[int, int], centre: np.ndarray, step: float,
                           reach: float) -> tuple[np.ndarray, np.ndarray]:
    """The real correlation whose half spectrum (rfft2) is ``half``, interpolated by its DFT on a grid of step
    ``step`` px within ±reach px of ``centre``; returns it and the grid offsets.

    Direct matrix products (n_fine x ny) @ (ny x nx/2) @ (nx/2 x n_fine): cheap because the fine grid is
    small. A Nyquist row or column (even sizes) stands for +1/2 and -1/2 cycles/px alike, so it enters as
    cos(pi y): the interpolant is real and symmetric, and exact at whole lags.
    """
    offsets = _grid(step, reach)
    ys, xs = centre[0] + offsets, centre[1] + offsets
    # e^(2 pi i (centre + offset) f) = e^(2 pi i centre f) e^(2 pi i offset f): the offsets' part is the same
    # at every call (cached), the centre's is one vector
    fy, fx = sfft.fftfreq(shape[0]), sfft.rfftfreq(shape[1])
    rows = _offset_phases(shape[0], step, reach, False) * np.exp(2j * math.pi * centre[0] * fy)
    cols = _offset_phases(shape[1], step, reach, True) * np.exp(2j * math.pi * centre[1] * fx)[:, None]
    if shape[0] % 2 == 0:
        rows[:, shape[0] // 2] = np.cos(math.pi * ys)
    if shape[1] % 2 == 0:
        cols[-1] = np.cos(math.pi * xs)
    return (rows.astype(half.dtype) @ half @ cols.astype(half.dtype)).real, offsets


def _grid(step: float, reach: float) -> np.ndarray:
    """Offsets k * step for |k| <= round(reach / step): symmetric, and 0 is on it (a grid from -reach that
    missed 0 by half a step gave identical images a shift of 0.01 px and cost them a row and a column)."""
    k = int(round(reach / step))
    return step * np.arange(-k, k + 1, dtype=np.float64)


@functools.lru_cache(maxsize=32)
def _offset_phases(n: int, step: float, reach: float, half: bool) -> np.ndarray:
    """e^(2 pi i offset f) for the grid offsets of :func:`_upsampled_correlation` and the frequencies f of an
    axis of n: (offsets, n) for a whole axis, or (n // 2 + 1, offsets) times the half-spectrum column weights
    for the half axis. Read-only (callers multiply into new arrays)."""
    offsets = _grid(step, reach)
    if half:
        phases = np.exp(2j * math.pi * np.outer(sfft.rfftfreq(n), offsets)) * _half_columns(n)[:, None]
    else:
        phases = np.exp(2j * math.pi * np.outer(offsets, sfft.fftfreq(n)))
    phases.flags.writeable = False
    return phases


def _refine_peak(half: np.ndarray, shape: tuple[int, int], peak: np.ndarray, upsample: int) -> np.ndarray:
    """The correlation peak near ``peak`` (whole px) to 1/upsample px: a 0.1-px grid over ±0.75 px, then a
    1/upsample grid over ±0.1 px around its best point (the peak is smooth at that scale, so two small grids
    find what one fine grid over ±0.75 px would, at a fifth of the matrix products)."""
    coarse_step = max(0.1, 1.0 / upsample)
    for step, reach in ((coarse_step, 0.75), (1.0 / upsample, coarse_step)):
        fine, offsets = _upsampled_correlation(half, shape, peak, step, reach)
        fy, fx = np.unravel_index(int(np.argmax(fine)), fine.shape)
        peak = peak + np.array([offsets[fy], offsets[fx]])
        if coarse_step <= 1.0 / upsample:
            break
    return peak


def match(ref: np.ndarray, mov: np.ndarray, cfg: Registration, ref_f: np.ndarray | None = None,
          mov_f: np.ndarray | None = None) -> Match:
    """Shift that aligns ``mov`` on ``ref`` (prepared planes), with its confidence.

    A whole-pixel phase correlation of the central windows first; then the window of ``mov`` is moved by
    that many pixels (the same structure now lies in both windows, so no bias from structure entering and
    leaving them) and the remainder is measured to 1/upsample px. ``ref_f``/``mov_f``: the central
    windows' spectra if already computed (a step takes part in several matches).
    """
    ny, nx = _crop(ref, cfg).shape
    shape = (ny, nx)
    ref_f = _spectrum(_crop(ref, cfg)) if ref_f is None else ref_f
    mov_f = _spectrum(_crop(mov, cfg)) if mov_f is None else mov_f
    first = _phase_correlation(ref_f, mov_f, cfg, shape)
    total = np.round(first.shift)
    if cfg.upsample > 1:
        for _ in range(2):  # a second round only when the first remainder exceeded half a pixel
            offset = (-int(total[0]), -int(total[1]))
            rest = _remainder(ref_f, _spectrum(_crop(mov, cfg, offset)), cfg, shape)
            total = total + rest
            if np.all(np.abs(rest) <= 0.5):
                break
            total = np.round(total)
    return Match(shift=total, confidence=first.confidence)


def _whitened_cross(ref_f: np.ndarray, mov_f: np.ndarray, cfg: Registration, shape: tuple[int, int]) -> np.ndarray:
    """Cross-power half spectrum of two crops' spectra, whitened (cfg.whitening) and band-passed."""
    cross = ref_f * np.conj(mov_f)
    magnitude = np.abs(cross)
    magnitude += 1e-12 * magnitude.max() + 1e-30
    # one real weight, band / magnitude^whitening, then one complex product (not a division and a product)
    weight = np.sqrt(magnitude, out=magnitude) if cfg.whitening == 0.5 else np.power(magnitude, np.float32(cfg.whitening), out=magnitude)
    cross *= np.divide(_band(shape, tuple(cfg.band_px)), weight, out=weight)
    return cross


def _phase_correlation(ref_f: np.ndarray, mov_f: np.ndarray, cfg: Registration, shape: tuple[int, int]) -> Match:
    """Band-passed phase correlation of two half spectra: whole-pixel peak and its PSR confidence."""
    corr = sfft.irfft2(_whitened_cross(ref_f, mov_f, cfg, shape), s=shape, workers=_FFT_WORKERS)
    ny, nx = shape
    max_shift = cfg.max_shift_px if cfg.max_shift_px is not None else min(ny, nx) / 4
    # only shifts within max_shift are candidates
    iy, ix = np.unravel_index(int(np.argmax(np.where(_allowed(shape, max_shift), corr, -np.inf))), shape)
    dy, dx = _lags(shape)
    peak = np.array([dy[iy, 0], dx[0, ix]], dtype=np.float64)
    # confidence: peak against the sidelobes (everything beyond 2 px of the peak, wrapping): their moments
    # are the whole surface's less the 5x5 around the peak (no mask over the whole surface)
    near = corr[np.ix_(np.arange(iy - 2, iy + 3) % ny, np.arange(ix - 2, ix + 3) % nx)].astype(np.float64)
    n_side = corr.size - near.size
    flat = corr.ravel().astype(np.float64)
    mean = (flat.sum() - near.sum()) / n_side
    var = max(0.0, (flat @ flat - np.sum(near * near)) / n_side - mean * mean)
    psr = float((corr[iy, ix] - mean) / (math.sqrt(var) + 1e-30))
    return Match(shift=peak, confidence=psr)


@functools.lru_cache(maxsize=8)
def _allowed(shape: tuple[int, int], max_shift: float) -> np.ndarray:
    """Lags of a correlation of ``shape`` within ±max_shift px on both axes (bool, (ny, nx))."""
    dy, dx = _lags(shape)
    allowed = (np.abs(dy) <= max_shift) & (np.abs(dx) <= max_shift)
    allowed.flags.writeable = False
    return allowed


def _remainder(ref_f: np.ndarray, mov_f: np.ndarray, cfg: Registration, shape: tuple[int, int]) -> np.ndarray:
    """The shift left between two nearly aligned crops (within ±1.5 px), to 1/upsample px: the best of the
    3x3 whole-pixel lags, then the refined peak; all by direct DFTs of the few lags needed (no full inverse
    FFT, no confidence: the whole-pixel match gave that)."""
    cross = _whitened_cross(ref_f, mov_f, cfg, shape)
    lags, offsets = _upsampled_correlation(cross, shape, np.zeros(2), step=1.0, reach=1.0)
    iy, ix = np.unravel_index(int(np.argmax(lags)), lags.shape)
    return _refine_peak(cross, shape, np.array([offsets[iy], offsets[ix]]), cfg.upsample)


def register_steps(steps: np.ndarray, cfg: Registration) -> RegistrationResult:
    """Shifts of every step of ``steps`` (h, [z,] y, x) onto ``cfg.reference_step``."""
    h = steps.shape[0]
    ref = min(cfg.reference_step, h - 1)
    prepared = [prepare(steps[t], cfg) for t in range(h)]
    spectra = [_spectrum(_crop(p, cfg)) for p in prepared]
    pairs = {(ref, t) for t in range(h) if t != ref} | {(t - 1, t) for t in range(1, h)}
    matches = {(i, j): match(prepared[i], prepared[j], cfg, spectra[i], spectra[j]) for i, j in sorted(pairs)}
    # least squares over confident matches: x_j - x_i = s_ij (x: position of step t in the reference frame)
    used = [(i, j, mt) for (i, j), mt in matches.items() if mt.confidence >= cfg.min_confidence]
    shifts = np.zeros((h, 2))
    confidence = np.zeros(h)
    confidence[ref] = np.inf
    for i, j, mt in used:
        confidence[i] = max(confidence[i], mt.confidence)
        confidence[j] = max(confidence[j], mt.confidence)
    unknown = [t for t in range(h) if t != ref]
    col = {t: k for k, t in enumerate(unknown)}
    if used and unknown:
        a = np.zeros((len(used), len(unknown)))
        b = np.zeros((len(used), 2))
        w = np.sqrt([mt.confidence for _, _, mt in used])
        for r, (i, j, mt) in enumerate(used):
            # the correction s_ij aligns step j on step i: position_j = position_i + s_ij
            if j in col:
                a[r, col[j]] = 1.0
            if i in col:
                a[r, col[i]] = -1.0
            b[r] = mt.shift
        sol, *_ = np.linalg.lstsq(a * w[:, None], b * w[:, None], rcond=None)
        for t, k in col.items():
            shifts[t] = sol[k]
        misfit = a @ sol - b
        residual = float(np.sqrt(np.mean(np.sum(misfit**2, axis=1)))) if len(used) > len(unknown) else 0.0
    else:
        residual = 0.0
    # a step no confident match reaches stays unregistered: confidence 0 (the caller refuses it)
    reached = {ref}
    changed = True
    while changed:
        changed = False
        for i, j, _ in used:
            if (i in reached) != (j in reached):
                reached |= {i, j}
                changed = True
    for t in range(h):
        if t not in reached:
            confidence[t] = 0.0
    return RegistrationResult(shifts=shifts, confidence=confidence, residual_px=residual, matches=matches)


def valid_box(shifts: np.ndarray, shape_yx: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the region every shifted step covers (output pixel p reads input p - shift)."""
    ny, nx = shape_yx
    y0 = int(math.ceil(max(0.0, shifts[:, 0].max()) - 1e-6))
    y1 = int(math.floor(ny - 1 + min(0.0, shifts[:, 0].min()) + 1e-6)) + 1
    x0 = int(math.ceil(max(0.0, shifts[:, 1].max()) - 1e-6))
    x1 = int(math.floor(nx - 1 + min(0.0, shifts[:, 1].min()) + 1e-6)) + 1
    return y0, y1, x0, x1


def _keys_weights(frac: float) -> np.ndarray:
    """4-tap cubic-convolution weights (Keys, a = -0.5) reading positions i-2 .. i+1 for a shift of ``frac`` in [0, 1)."""
    x = np.abs(np.arange(-2, 2) + frac)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


BLOCK_PX = 1 << 16  # pixels shifted at a time (rows of a plane): the float32 work stays in the CPU cache (~3x
# quicker at 2048^2 than whole planes), and each numpy call is long enough that its GIL-held overhead is
# small, so fields shifted side by side in threads scale (at 512^2, 32-row blocks did not scale at all)


def _source_index(n: int, whole: float, first: int, stop: int) -> np.ndarray:
    """Input index read for positions ``first .. stop-1`` of a line of ``n`` moved by ``whole`` px, before
    clamping (a value outside 0 .. n-1 is a filter tap beyond the edge)."""
    return np.arange(first, stop) - int(whole)


def _tap_sum(a: np.ndarray, w: np.ndarray, axis: int, n: int) -> np.ndarray:
    """out[i] = w0 a[i] + w1 a[i+1] + w2 a[i+2] + w3 a[i+3] for i < n along ``axis`` (a holds n + 3 values)."""
    take = lambda k: a[(slice(None),) * (a.ndim + axis) + (slice(k, k + n),)]  # noqa: E731
    out = take(0) * np.float32(w[0])
    for k in range(1, 4):
        out += take(k) * np.float32(w[k])
    return out


def _beyond_edges(work: np.ndarray, index: np.ndarray, n: int, axis: int, line: Callable[[int], np.ndarray]) -> None:
    """Taps one pixel beyond an edge (index -1 or n) of ``work`` (gathered with ``index`` clamped) get Keys'
    boundary value f(-1) = 3 f(0) - 3 f(1) + f(2) (and its mirror at n): the interpolation stays exact for
    quadratics up to the edge, where a repeated edge pixel pulled row 0 towards row 1 (on a ramp shifted by
    -0.3 px, 1022 where 1030 is right). Taps further out only reach pixels outside the kept (valid) area.
    ``line(i)``: input line i as gathered along the other axis (float32)."""
    if n < 3:
        return
    for beyond, (a, b, c) in ((-1, (0, 1, 2)), (n, (n - 1, n - 2, n - 3))):
        hit = np.flatnonzero(index == beyond)
        if hit.size:
            value = 3 * line(a) - 3 * line(b) + line(c)
            for k in hit:
                work[(slice(None),) * (work.ndim + axis) + (k,)] = value


def _shift_plane(plane: np.ndarray, shift_px: np.ndarray, out: np.ndarray) -> None:
    """One (y, x) plane moved by (dy, dx) px into ``out``: output pixel p reads input p - shift. Whole pixels
    by index gathers (values untouched, edge values repeated beyond the plane); the fraction by separable
    4-tap cubic convolution (Keys, the four input pixels around the point read; interpolating:
    integer shifts change nothing), with Keys' boundary values for a tap one pixel beyond an edge (see
    :func:`_beyond_edges`), so every pixel of the valid area (:func:`valid_box`) is interpolated from the
    plane, never copied from a neighbour; integers rounded and clipped. Done in blocks of rows of about
    BLOCK_PX pixels."""
    ny, nx = plane.shape
    rows_per_block = max(1, BLOCK_PX // nx)
    whole = np.floor(shift_px + 1e-9)
    frac = shift_px - whole
    wy, wx = (_keys_weights(f) if f >= 1e-9 else None for f in frac)
    cols_at = _source_index(nx, whole[1], -2, nx + 1) if wx is not None else _source_index(nx, whole[1], 0, nx)
    cols = np.clip(cols_at, 0, nx - 1)
    info = np.iinfo(plane.dtype) if np.issubdtype(plane.dtype, np.integer) else None
    for r0 in range(0, ny, rows_per_block):
        r1 = min(ny, r0 + rows_per_block)
        rows_at = _source_index(ny, whole[0], r0 - 2, r1 + 1) if wy is not None else _source_index(ny, whole[0], r0, r1)
        rows = np.clip(rows_at, 0, ny - 1)
        block = np.take(np.take(plane, rows, axis=0), cols, axis=1)  # two 1-D gathers: 4x quicker than one 2-D
        if wy is None and wx is None:
            out[r0:r1] = block
            continue
        work = block.astype(np.float32)
        if wy is not None:
            _beyond_edges(work, rows_at, ny, -2, lambda i: np.take(plane[i], cols).astype(np.float32))
        if wx is not None:
            # (work and rows bound now: the callback runs inside this iteration)
            def column(j: int, work: np.ndarray = work, rows: np.ndarray = rows) -> np.ndarray:
                hit = np.flatnonzero(cols_at == j)
                return work[:, int(hit[0])].copy() if hit.size else np.take(plane[:, j], rows).astype(np.float32)

            _beyond_edges(work, cols_at, nx, -1, column)
        if wy is not None:
            work = _tap_sum(work, wy, -2, r1 - r0)
        if wx is not None:
            work = _tap_sum(work, wx, -1, nx)
        if info is not None:
            np.rint(work, out=work)
            np.clip(work, info.min, info.max, out=work)
        out[r0:r1] = work


def apply_shifts(steps: np.ndarray, shifts: np.ndarray, mode: str = "subpixel") -> np.ndarray:
    """Every step of (h, [z,] y, x) moved by its (dy, dx) px (see :func:`_shift_plane`), keeping the dtype.
    ``mode`` "integer": shifts rounded to whole pixels (raw values untouched)."""
    out = np.empty_like(steps)
    ny, nx = steps.shape[-2:]
    for t in range(steps.shape[0]):
        s = np.asarray(shifts[t], dtype=np.float64) if mode == "subpixel" else np.round(shifts[t])
        planes_out = out[t].reshape(-1, ny, nx)  # a view: out is contiguous
        for plane, plane_out in zip(steps[t].reshape(-1, ny, nx), planes_out):
            _shift_plane(plane, s, plane_out)
    return out
