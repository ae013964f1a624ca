"""Image-quality metrics of a prediction against a clean target (DESIGN §7). Pure numpy, float64.

Every function takes two 2-D images of the same shape ``(y, x)`` — the prediction first, the target
(ground truth, x_0) second — and returns Python floats. Where a metric needs a data range it defaults to the
range of the *target* (``truth.max() - truth.min()``), the convention of the original study; pass
``data_range`` to fix it yourself (e.g. 4095 for a 12-bit camera).

- :func:`psnr` — PSNR in dB with the target's data range.
- :func:`psnr_range_invariant` — PSNR in dB after normalising the target to zero mean, unit std and
  rescaling the prediction by least squares onto it (insensitive to a gain and offset of the prediction).
- :func:`ssim`, :func:`ms_ssim` — structural similarity (Wang et al. 2004) and its multi-scale form
  (Wang et al. 2003); ``offset`` removes a camera pedestal from both images first (see :func:`ssim`).
- :func:`frc_curve`, :func:`frc_resolution_um` — Fourier ring correlation against the clean image and the
  resolution (µm) where it falls below a threshold: a microscopy-native sharpness measure.

Shape mismatches and images too small for a metric raise :class:`ValueError` (a programming error, not a
user error: the evaluation checks its stores before it computes anything).
"""

from __future__ import annotations

import math

import numpy as np

SSIM_SIGMA = 1.5
SSIM_WIN = 11  # taps of the Gaussian window (radius 5 = 3.5 sigma, as in Wang et al. and scikit-image)
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003
FRC_THRESHOLD = 1.0 / 7.0


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    if p.ndim != 2:
        raise ValueError(f"metrics take 2-D (y, x) images, got shape {p.shape}")
    return p, t


def _data_range(truth: np.ndarray, data_range: float | None) -> float:
    r = float(truth.max() - truth.min()) if data_range is None else float(data_range)
    if not r > 0:
        raise ValueError("data range is zero (constant target); pass data_range explicitly")
    return r


def _psnr_from_mse(mse: float, data_range: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


# ---- PSNR -------------------------------------------------------------------------------------------
def psnr(pred: np.ndarray, truth: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(R² / MSE)``.

    pred, truth: (y, x) images in the same units (e.g. camera ADU). R is ``data_range`` if given, else the
    range of the ground truth ``truth.max() - truth.min()``. Identical images give ``inf``.
    """
    p, t = _pair(pred, truth)
    return _psnr_from_mse(float(np.mean((p - t) ** 2)), _data_range(t, data_range))


def psnr_range_invariant(pred: np.ndarray, truth: np.ndarray) -> float:
    """Range-invariant PSNR in dB (the convention of CARE / HDN evaluations).

    The ground truth is normalised to zero mean and unit standard deviation; the prediction is then
    rescaled by least squares, ``a·pred + b`` with (a, b) minimising ``‖a·pred + b − truth_n‖²``, and the
    PSNR is computed against ``truth_n`` with the normalised truth's range ``truth_n.max() − truth_n.min()``.
    The value is therefore unchanged by any gain and offset of the prediction (any a ≠ 0, b). Identical
    images give ``inf`` or, after floating-point rounding, a very large value (> 200 dB).

    pred, truth: (y, x) images; units do not matter.
    """
    p, t = _pair(pred, truth)
    std = t.std()
    if not std > 0:
        raise ValueError("range-invariant PSNR needs a non-constant target")
    tn = (t - t.mean()) / std
    pc = p - p.mean()
    var = float(np.mean(pc**2))
    a = float(np.mean(pc * tn)) / var if var > 0 else 0.0
    fitted = a * pc  # tn has zero mean, so the best offset b leaves the fit zero-mean too
    return _psnr_from_mse(float(np.mean((fitted - tn) ** 2)), float(tn.max() - tn.min()))


# ---- SSIM / MS-SSIM ---------------------------------------------------------------------------------
def _gaussian_taps(sigma: float = SSIM_SIGMA, n: int = SSIM_WIN) -> np.ndarray:
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation with ``taps`` along y then x, keeping only the valid region (no padding)."""
    n = len(taps)
    ny, nx = img.shape[0] - n + 1, img.shape[1] - n + 1
    out_y = sum(w * img[k : k + ny, :] for k, w in enumerate(taps))
    return sum(w * out_y[:, k : k + nx] for k, w in enumerate(taps))


def _ssim_terms(p: np.ndarray, t: np.ndarray, data_range: float) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term over the valid region of the Gaussian window."""
    if min(p.shape) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {p.shape}")
    g = _gaussian_taps()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_p, mu_t = _filter_valid(p, g), _filter_valid(t, g)
    var_p = _filter_valid(p * p, g) - mu_p**2
    var_t = _filter_valid(t * t, g) - mu_t**2
    cov = _filter_valid(p * t, g) - mu_p * mu_t
    cs = (2 * cov + c2) / (var_p + var_t + c2)
    lum = (2 * mu_p * mu_t + c1) / (mu_p**2 + mu_t**2 + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def ssim(pred: np.ndarray, truth: np.ndarray, data_range: float | None = None, offset: float = 0.0) -> float:
    """Mean structural similarity (Wang et al. 2004), 1 for identical images.

    Gaussian window σ = 1.5 px, 11×11 taps; K1 = 0.01, K2 = 0.03; population (not sample) statistics;
    averaged over the valid region only (pixels whose whole window lies inside the image, i.e. 5-px
    borders are excluded — the same as scikit-image with ``gaussian_weights=True``). ``data_range`` defaults
    to the ground truth's range. pred, truth: (y, x) images, at least 11×11.

    offset: subtracted from both images before the local statistics, in their units (e.g. a camera's
    100-ADU pedestal). The luminance term ``(2 μp μt + C1) / (μp² + μt² + C1)`` compares local means as
    ratios to zero, so a pedestal drives it towards 1 whatever the brightness error; the contrast-structure
    term and the data range are unchanged by it. The default 0 is plain SSIM.
    """
    p, t = _pair(pred, truth)
    return _ssim_terms(p - offset, t - offset, _data_range(t, data_range))[0]


def _avg_pool2(img: np.ndarray) -> np.ndarray:
    ny, nx = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    v = img[:ny, :nx]
    return 0.25 * (v[0::2, 0::2] + v[1::2, 0::2] + v[0::2, 1::2] + v[1::2, 1::2])


def ms_ssim_scales(shape: tuple[int, int]) -> int:
    """How many scales (≤ 5) fit an image: the coarsest must still hold one 11×11 window."""
    n, size = 0, min(shape)
    while n < len(MS_SSIM_WEIGHTS) and size >= SSIM_WIN:
        n += 1
        size //= 2
    return n


def ms_ssim(pred: np.ndarray, truth: np.ndarray, data_range: float | None = None, offset: float = 0.0) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), 1 for identical images.

    ``Π_j cs_j^{w_j} · l_M^{w_M}``: the contrast-structure term at every scale and the luminance term at the
    coarsest, with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) and 2× average-pool downsampling
    between scales; the window, constants and valid-region averaging are those of :func:`ssim`, and
    ``data_range`` (default: the full-resolution truth's range) is the same at every scale.

    Small images: 5 scales need a shorter side ≥ 176 px (the coarsest scale must hold an 11-px window).
    Smaller images use as many scales as fit (:func:`ms_ssim_scales`) with the first weights renormalised to
    sum to 1; with one scale this is plain SSIM. Negative per-scale terms are clipped to 0 before the
    fractional powers (as common implementations do). pred, truth: (y, x) images, at least 11×11.
    offset: subtracted from both images first, as in :func:`ssim` (it matters for the luminance term).
    """
    p, t = _pair(pred, truth)
    r = _data_range(t, data_range)
    p, t = p - offset, t - offset
    n = ms_ssim_scales((p.shape[0], p.shape[1]))
    if n == 0:
        raise ValueError(f"MS-SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {p.shape}")
    w = np.asarray(MS_SSIM_WEIGHTS[:n]) / sum(MS_SSIM_WEIGHTS[:n])
    value = 1.0
    for j in range(n):
        full, cs = _ssim_terms(p, t, r)
        if j == n - 1:
            value *= max(full, 0.0) ** w[j]  # l_M · cs_M at the coarsest scale
        else:
            value *= max(cs, 0.0) ** w[j]
            p, t = _avg_pool2(p), _avg_pool2(t)
    return float(value)


# ---- Fourier ring correlation -------------------------------------------------------------------------
def _spacing(pixel_size_um: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(pixel_size_um, (tuple, list)):
        dy, dx = (float(v) for v in pixel_size_um)
    else:
        dy = dx = float(pixel_size_um)
    if not (dy > 0 and dx > 0):
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    return dy, dx


def _hann2d(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def frc_curve(a: np.ndarray, b: np.ndarray, pixel_size_um: float | tuple[float, float] = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two (y, x) images.

    Each image has its mean removed and is multiplied by a 2-D Hann window (no edge artefacts from the
    periodic FFT), then ``FRC(k) = Re Σ_ring A·B* / sqrt(Σ_ring |A|² · Σ_ring |B|²)`` over rings of width
    ``1 / min(ny·dy, nx·dx)`` from 0 to the Nyquist frequency ``1 / (2·max(dy, dx))``.

    pixel_size_um: one value or (dy, dx) in µm; with the default 1.0 the frequencies are in cycles/pixel.
    Returns ``(frequency, frc)``: ring-centre spatial frequencies in cycles/µm (excluding the DC ring) and the
    correlation in [-1, 1] (0 for a ring without power). Identical images give 1 everywhere.
    """
    p, t = _pair(a, b)
    dy, dx = _spacing(pixel_size_um)
    win = _hann2d((p.shape[0], p.shape[1]))
    fa = np.fft.fft2((p - p.mean()) * win)
    fb = np.fft.fft2((t - t.mean()) * win)
    ky = np.fft.fftfreq(p.shape[0], d=dy)[:, None]
    kx = np.fft.fftfreq(p.shape[1], d=dx)[None, :]
    k = np.sqrt(ky**2 + kx**2)
    width = 1.0 / min(p.shape[0] * dy, p.shape[1] * dx)
    nyquist = 0.5 / max(dy, dx)
    n_rings = int(round(nyquist / width))
    ring = np.round(k / width).astype(np.int64)  # ring i holds |k| in [(i-0.5)·w, (i+0.5)·w)
    keep = (ring >= 1) & (ring <= n_rings)
    idx = ring[keep]
    cross = np.bincount(idx, weights=np.real(fa * np.conj(fb))[keep], minlength=n_rings + 1)[1:]
    pa = np.bincount(idx, weights=(np.abs(fa) ** 2)[keep], minlength=n_rings + 1)[1:]
    pb = np.bincount(idx, weights=(np.abs(fb) ** 2)[keep], minlength=n_rings + 1)[1:]
    denom = np.sqrt(pa * pb)
    frc = np.divide(cross, denom, out=np.zeros_like(cross), where=denom > 0)
    freq = np.arange(1, n_rings + 1) * width
    return freq, np.clip(frc, -1.0, 1.0)


def frc_resolution_um(
    pred: np.ndarray,
    truth: np.ndarray,
    pixel_size_um: float | tuple[float, float],
    threshold: float = FRC_THRESHOLD,
) -> float:
    """FRC resolution in µm of a prediction against the clean image: ``1 / k*``.

    k* is the first spatial frequency (cycles/µm) where :func:`frc_curve` falls below ``threshold`` (the
    fixed 1/7 criterion), linearly interpolated between the two rings around the crossing. If the FRC never
    falls below it the result is the Nyquist limit ``2 · pixel`` (the larger pixel side): nothing finer can be
    resolved. Smaller is sharper.

    Note: FRC measures correlation per ring, so it is blind to a pure gain per frequency; a blur lowers it
    only where the attenuated signal sinks below the prediction's errors (noise, artefacts) — which is the
    practical case. pred, truth: (y, x) images; pixel_size_um: one value or (dy, dx) in µm.
    """
    freq, frc = frc_curve(pred, truth, pixel_size_um)
    dy, dx = _spacing(pixel_size_um)
    below = np.flatnonzero(frc < threshold)
    if below.size == 0:
        return 2.0 * max(dy, dx)
    i = int(below[0])
    if i == 0:
        k = freq[0]
    else:  # the crossing lies between ring i-1 (above) and ring i (below)
        f0, f1 = frc[i - 1], frc[i]
        k = freq[i - 1] + (f0 - threshold) / (f0 - f1) * (freq[i] - freq[i - 1])
    return float(1.0 / k)
