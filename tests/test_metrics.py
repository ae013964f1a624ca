"""Metrics against hand-checked cases (DESIGN §7): PSNR, range-invariant PSNR, SSIM, MS-SSIM, FRC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dehaze.metrics import frc_curve, frc_resolution_um, ms_ssim, ms_ssim_scales, psnr, psnr_range_invariant, ssim


def _structure(shape=(64, 64), seed=0) -> np.ndarray:
    """Smooth random structure in [0, ~100] with a wide range of spatial frequencies."""
    rng = np.random.default_rng(seed)
    return 100.0 * gaussian_filter(rng.random(shape), 1.0)


def test_psnr_of_a_known_mse_and_range():
    truth = np.zeros((4, 4))
    truth[0, 0] = 10.0  # range 10
    pred = truth + 1.0  # MSE 1 -> 10 log10(100 / 1) = 20 dB
    assert psnr(pred, truth) == pytest.approx(20.0)
    assert psnr(pred, truth, data_range=100.0) == pytest.approx(40.0)
    assert psnr(truth, truth) == math.inf


def test_range_invariant_psnr_ignores_gain_and_offset():
    truth = _structure()
    pred = truth + np.random.default_rng(1).normal(0, 5, truth.shape)
    ref = psnr_range_invariant(pred, truth)
    assert psnr_range_invariant(3.0 * pred + 250.0, truth) == pytest.approx(ref, abs=1e-9)
    assert psnr_range_invariant(0.01 * pred - 4.0, truth) == pytest.approx(ref, abs=1e-9)
    assert psnr_range_invariant(7.0 * truth + 1.0, truth) > 200  # identical up to gain/offset
    # hand check: a constant prediction is fitted to 0 = the normalised truth's mean -> MSE = var = 1
    tn = (truth - truth.mean()) / truth.std()
    assert psnr_range_invariant(np.full_like(truth, 5.0), truth) == pytest.approx(20 * math.log10(tn.max() - tn.min()))


def test_ssim_identical_constant_case_and_noise():
    truth = _structure()
    assert ssim(truth, truth) == pytest.approx(1.0)
    # constant images a vs b: sigmas are 0, so SSIM = (2ab + C1) / (a² + b² + C1) with C1 = (0.01 R)²
    a, b, c1 = 0.5, 0.25, 0.01**2
    got = ssim(np.full((16, 16), a), np.full((16, 16), b), data_range=1.0)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    rng = np.random.default_rng(2)
    values = [ssim(truth + rng.normal(0, s, truth.shape), truth) for s in (1, 5, 20)]
    assert 1 > values[0] > values[1] > values[2]


def test_ssim_matches_scikit_image_gaussian_ssim():
    from skimage.metrics import structural_similarity

    truth = _structure((48, 40))
    pred = truth + np.random.default_rng(3).normal(0, 4, truth.shape)
    ref = structural_similarity(
        pred, truth, data_range=np.ptp(truth), gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(pred, truth) == pytest.approx(ref, abs=1e-12)


def test_ssim_offset_removes_a_pedestal_but_keeps_structure():
    truth = _structure()
    dim = 0.5 * truth + np.random.default_rng(8).normal(0, 1, truth.shape)  # half the signal
    for fn in (ssim, ms_ssim):
        ref = fn(dim, truth)
        assert fn(dim + 100.0, truth + 100.0, offset=100.0) == pytest.approx(ref, abs=1e-12)  # offset-invariant
        assert fn(dim + 100.0, truth + 100.0) > ref + 0.05  # a pedestal pushes the luminance term towards 1
        scrambled = np.random.default_rng(9).permutation(dim.ravel()).reshape(dim.shape)
        assert fn(scrambled + 100.0, truth + 100.0, offset=100.0) < ref - 0.3  # a structure change still lowers it
    assert ssim(truth + 100.0, truth + 100.0, offset=100.0) == pytest.approx(1.0)


def test_ms_ssim_identical_scales_and_ordering():
    truth = _structure((64, 64))
    assert ms_ssim(truth, truth) == pytest.approx(1.0)
    assert [ms_ssim_scales(s) for s in [(176, 200), (175, 300), (64, 64), (12, 12), (10, 40)]] == [5, 4, 3, 1, 0]
    small = _structure((16, 16))
    noisy = small + np.random.default_rng(4).normal(0, 5, small.shape)
    assert ms_ssim(noisy, small) == pytest.approx(ssim(noisy, small))  # one scale: plain SSIM
    rng = np.random.default_rng(5)
    values = [ms_ssim(truth + rng.normal(0, s, truth.shape), truth) for s in (1, 5, 20)]
    assert 1 > values[0] > values[1] > values[2] > 0


def test_frc_identical_images_reach_nyquist():
    truth = _structure((64, 48))
    freq, frc = frc_curve(truth, truth, 0.1)
    assert np.allclose(frc, 1.0)
    assert freq[-1] == pytest.approx(0.5 / 0.1)  # rings up to Nyquist, in cycles/µm
    assert frc_resolution_um(truth, truth, 0.1) == pytest.approx(0.2)  # 2 pixels
    assert frc_resolution_um(truth, truth, (0.1, 0.2)) == pytest.approx(0.4)
    rng = np.random.default_rng(6)
    assert frc_resolution_um(rng.random((64, 64)), rng.random((64, 64)), 0.1) > 1.0  # independent noise


def test_frc_resolution_worsens_with_blur():
    truth = _structure((64, 64))
    rng = np.random.default_rng(7)
    res = [frc_resolution_um(gaussian_filter(truth, s) + rng.normal(0, 0.05, truth.shape), truth, 0.05) for s in (0.5, 1, 2, 4)]
    assert res == sorted(res) and res[-1] > 1.5 * res[0]


@pytest.mark.parametrize("fn", [psnr, psnr_range_invariant, ssim, ms_ssim, frc_curve])
def test_shape_mismatch_and_non_2d_inputs_are_errors(fn):
    with pytest.raises(ValueError, match="differs"):
        fn(np.zeros((16, 16)), np.ones((16, 17)))
    with pytest.raises(ValueError, match="2-D"):
        fn(np.zeros((2, 16, 16)), np.ones((2, 16, 16)))


def test_an_exact_posterior_sample_resolves_coarser_than_the_mmse_but_keeps_the_clean_power():
    """Gaussian toy with a closed-form posterior (benchmarks/posterior_frc_theory.py): per frequency, Wiener
    MMSE m and a sample m + e' with e' ~ the posterior. Theory: FRC(sample) = FRC(m)^2 < FRC(m), while the
    sample's high-frequency power is the clean image's and the MMSE's is lower (the poster's criterion (b))."""
    from dehaze.posterior import high_frequency_power_ratio

    n, noise_std, rng = 128, 0.05, np.random.default_rng(0)
    k = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    prior = 1.0 / (1.0 + (k / 0.08) ** 2) ** 2
    prior *= n**4 / prior.sum()  # E|X(k)|^2 for a unit-variance image (numpy's unnormalised FFT)
    otf, noise_power = np.exp(-2 * (np.pi * 1.5 * k) ** 2), n * n * noise_std**2
    post_var = prior * noise_power / (otf**2 * prior + noise_power)

    def field(power):
        return np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * np.sqrt(power) / n))

    x = field(prior)
    y = np.real(np.fft.ifft2(otf * np.fft.fft2(x))) + noise_std * rng.standard_normal((n, n))
    mmse = np.real(np.fft.ifft2(otf * prior / (otf**2 * prior + noise_power) * np.fft.fft2(y)))
    sample = mmse + field(post_var)
    _, frc_mmse = frc_curve(mmse, x)
    _, frc_sample = frc_curve(sample, x)
    resolved = frc_mmse > 1 / 7
    assert np.abs(frc_sample - frc_mmse**2)[resolved].mean() < 0.05
    assert frc_resolution_um(sample, x, 0.1) > frc_resolution_um(mmse, x, 0.1)
    assert high_frequency_power_ratio(sample, x, (0.1, 0.1)) == pytest.approx(1.0, abs=0.1)
    assert high_frequency_power_ratio(mmse, x, (0.1, 0.1)) < 0.5
