"""The poster's criteria of a good posterior (../shared/seeds/003_*.txt), measured on a prediction store of a
sampling strategy (K > 1 samples: flow, one-shot-hdn, latent with --samples):

1. the K-sample mean matches a one-shot MMSE estimate: its PSNR against the one-shot UNet's, per step;
2. each sample is in distribution: the FRC resolution of single samples and of the mean against the clean
   image, and the radially averaged power spectrum of each against the clean image's. An MMSE estimate
   loses high-frequency power (ratio < 1); a sample from the posterior keeps the clean image's (ratio ~ 1).
   Summarised as the high-frequency power ratio: power above half the Nyquist frequency, estimate / clean;
3. the spread tells where the data are ambiguous: the calibration error of the std against the error of the
   mean (:mod:`dehaze.calibration`, binned RMSE against root mean variance).

Single-sample criteria need the samples themselves (``dehaze predict --write-samples``); without them those
entries are null and ``samples_written`` is false. Images are (y, x) or (z, y, x) (middle plane), ADU.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dehaze.calibration import reliability
from dehaze.metrics import frc_resolution_um

SAMPLES_SCORED = 4  # single samples scored per (field, step): FRC and spectra are averaged over them
HIGH_FREQUENCY_FROM = 0.5  # of the Nyquist frequency


def _plane(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    return img if img.ndim == 2 else img[img.shape[0] // 2]


def radial_power_spectrum(img: np.ndarray, pixel_size_um: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles/µm, mean |F|^2 per ring) of a (y, x) image with its mean removed and a 2-D Hann
    window, on the rings :func:`dehaze.metrics.frc_curve` uses (DC left out)."""
    a = np.asarray(img, dtype=np.float64)
    dy, dx = pixel_size_um
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    power = np.abs(np.fft.fft2((a - a.mean()) * win)) ** 2
    k = np.sqrt(np.fft.fftfreq(a.shape[0], d=dy)[:, None] ** 2 + np.fft.fftfreq(a.shape[1], d=dx)[None, :] ** 2)
    width = 1.0 / min(a.shape[0] * dy, a.shape[1] * dx)
    n_rings = int(round(0.5 / max(dy, dx) / width))
    ring = np.round(k / width).astype(np.int64)
    keep = (ring >= 1) & (ring <= n_rings)
    total = np.bincount(ring[keep], weights=power[keep], minlength=n_rings + 1)[1:]
    count = np.bincount(ring[keep], minlength=n_rings + 1)[1:]
    return np.arange(1, n_rings + 1) * width, total / np.maximum(count, 1)


def high_frequency_power_ratio(est: np.ndarray, clean: np.ndarray, pixel_size_um: tuple[float, float]) -> float:
    """Power above HIGH_FREQUENCY_FROM x Nyquist of ``est`` over that of ``clean`` (1: as much fine detail
    as the clean image; an MMSE blur gives < 1; noise gives > 1)."""
    freq, p_est = radial_power_spectrum(est, pixel_size_um)
    _, p_clean = radial_power_spectrum(clean, pixel_size_um)
    hi = freq >= HIGH_FREQUENCY_FROM * freq[-1]
    return float(p_est[hi].sum() / max(p_clean[hi].sum(), 1e-30))


def criteria(store: Any, x0_of: Callable[[str], np.ndarray], steps: list[int], spacing: tuple[float, float],
             unet: Any | None = None) -> dict[str, Any]:
    """The criteria of one sampling strategy's prediction ``store`` (see the module docstring); ``x0_of(field)``
    gives the target x_0; ``unet``: the one-shot UNet's prediction store of the same input, the MMSE reference."""
    fields = store.fields
    written = all("samples" in store.root[f] for f in fields)
    per_step: dict[str, dict[str, Any]] = {}
    stds, errors = [], []
    spectra: dict[str, Any] = {}
    for t in steps:
        frc_mean, frc_sample, frc_unet, hf_mean, hf_sample, hf_unet, gap = [], [], [], [], [], [], []
        for i, f in enumerate(fields):
            x0 = _plane(x0_of(f))
            mean = _plane(store.image(f)[t])
            frc_mean.append(frc_resolution_um(mean, x0, spacing))
            hf_mean.append(high_frequency_power_ratio(mean, x0, spacing))
            full_mean, std = np.asarray(store.image(f)[t], np.float64), np.asarray(store.extra(f, "std")[t], np.float64)
            stds.append(std.ravel())
            errors.append((full_mean - np.asarray(x0_of(f), np.float64)).ravel())
            if unet is not None:
                u = _plane(unet.image(f)[t])
                frc_unet.append(frc_resolution_um(u, x0, spacing))
                hf_unet.append(high_frequency_power_ratio(u, x0, spacing))
                gap.append(_psnr(mean, x0) - _psnr(u, x0))
            if written:
                samples = store.root[f]["samples"]
                for j in range(min(SAMPLES_SCORED, samples.shape[1])):
                    s = _plane(samples[t, j])
                    frc_sample.append(frc_resolution_um(s, x0, spacing))
                    hf_sample.append(high_frequency_power_ratio(s, x0, spacing))
            if i == 0 and t == steps[-1]:  # the haziest input: the figure's spectra
                freq, p_clean = radial_power_spectrum(x0, spacing)
                spectra = {"field": f, "step": t, "frequency_per_um": freq.tolist(), "clean": p_clean.tolist(),
                           "mean": radial_power_spectrum(mean, spacing)[1].tolist()}
                if written:
                    spectra["sample"] = radial_power_spectrum(_plane(store.root[f]["samples"][t, 0]), spacing)[1].tolist()
                if unet is not None:
                    spectra["unet"] = radial_power_spectrum(_plane(unet.image(f)[t]), spacing)[1].tolist()

        def avg(values: list[float]) -> float | None:
            return float(np.mean(values)) if values else None

        per_step[str(t)] = {
            "mean_minus_unet_psnr_db": avg(gap),
            "frc_um": {"mean": avg(frc_mean), "sample": avg(frc_sample), "unet": avg(frc_unet)},
            "high_frequency_power_ratio": {"mean": avg(hf_mean), "sample": avg(hf_sample), "unet": avg(hf_unet)},
        }
    rel = reliability(np.concatenate(stds), np.concatenate(errors))
    return {
        "samples": store.meta.prediction.strategy.get("samples"),
        "samples_written": written,
        "samples_scored_per_field_and_step": min(SAMPLES_SCORED, store.meta.prediction.strategy.get("samples") or 1) if written else 0,
        "std_calibration_applied": store.meta.prediction.strategy.get("std_calibration"),
        "per_step": per_step,
        "calibration": rel.to_json(),
        "spectra_at_haziest_step": spectra,
        "_reliability": rel,  # for the figure; dropped from the JSON
    }


def _psnr(pred: np.ndarray, x0: np.ndarray) -> float:
    from dehaze.metrics import psnr

    return psnr(pred, x0)
