"""Registration on a simulated haze ladder (microsim pinhole sweep) with known drift."""

from __future__ import annotations

import numpy as np
import pytest
from acq_data import ome_xml, write_ome
from scipy import ndimage

from acquisition.ingest import ingest
from acquisition.manifest import AcquisitionManifest, Registration
from acquisition.register import apply_shifts, register_steps, valid_box
from dehaze.manifests import SimulationManifest
from dehaze.store import open_ladder
from simulation.ladder import plan_ladder, simulate_field

DRIFT = np.array([[0.0, 0.0], [2.7, -1.3], [-3.2, 4.6], [5.4, 2.1]])  # px, correction per step


@pytest.fixture(scope="module")
def simulated() -> np.ndarray:
    """(4, 96, 96) uint16 camera values: 0.5, 1, 2 AU and widefield, one field."""
    m = SimulationManifest.model_validate(
        {"volume": {"field_shape_yx": [96, 96], "nz": 8}, "pinhole": {"steps_au": [0.5, 1.0, 2.0]}, "n_fields": 1, "sample": {"density": 2.0}}
    )
    return simulate_field(plan_ladder(m), 0).image


def _drifted(image: np.ndarray) -> np.ndarray:
    """Each step moved by -DRIFT (Fourier shift of the periodic simulated field), then the central 64x64."""
    out = [np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image[t].astype(float)), -DRIFT[t])).real for t in range(4)]
    return np.clip(np.rint(np.stack(out)), 0, 65535).astype(np.uint16)[:, 16:80, 16:80]


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))


def test_simulated_series_residual_below_a_tenth_of_a_pixel(simulated):
    result = register_steps(_drifted(simulated), Registration())
    assert _rms(result.shifts, DRIFT) <= 0.1
    assert np.all(result.confidence[1:] >= Registration().min_confidence)


def test_simulated_series_through_ingest(simulated, tmp_path):
    steps = _drifted(simulated)
    for t, au in enumerate([0.5, 1.0, 2.0, 8.0]):  # files in any order: the names do not sort by pinhole
        xml = ome_xml([{"pinhole": au * 40}], (64, 64), pixel_um=0.05)
        write_ome(tmp_path / f"{'dcba'[t]}.ome.tif", steps[t][None], xml)
    report = ingest(tmp_path, tmp_path / "out.zarr", AcquisitionManifest(files="*.ome.tif", um_per_au=40), show_progress=False)
    store = open_ladder(tmp_path / "out.zarr")
    assert store.meta.pinhole_au == pytest.approx([0.5, 1.0, 2.0, 8.0])
    assert _rms(store.extra("field_000", "shifts")[...], DRIFT) <= 0.1
    assert report.residual_px[0] < 0.3


def test_weak_direct_match_is_chained_through_neighbours():
    rng = np.random.default_rng(1)
    base = ndimage.gaussian_filter(rng.random((160, 160)), 1.5) * 4000
    shifts = np.array([[0.0, 0.0], [1.5, 2.25], [3.0, 4.5], [4.5, 6.75]])
    steps, content = [], base
    for t in range(4):
        if t:  # each step keeps 50% of its neighbour's structure: step 3 shares only 1/8 with step 0
            content = 0.5 * content + 0.5 * ndimage.gaussian_filter(rng.random((160, 160)), 1.5) * 4000
        steps.append(ndimage.shift(content, -shifts[t], order=3)[48:112, 48:112] + rng.normal(0, 3, (64, 64)))
    cfg = Registration(min_confidence=6.0)
    result = register_steps(np.stack(steps), cfg)
    assert result.matches[(0, 3)].confidence < cfg.min_confidence  # the direct match is too weak to be used
    assert _rms(result.shifts, shifts) <= 0.2  # half the structure changes at every step: harder than drift alone


def test_valid_box_and_integer_shift_exact():
    img = np.arange(4 * 20 * 20, dtype=np.uint16).reshape(4, 20, 20)
    shifts = np.array([[0, 0], [2, -3], [-1, 1], [0.0, 0.0]])
    assert valid_box(shifts, (20, 20)) == (2, 19, 1, 17)
    moved = apply_shifts(img, shifts, "subpixel")
    assert np.array_equal(moved[1, 2:, :17], img[1, :18, 3:])


def test_skimage_cross_check(simulated):
    skreg = pytest.importorskip("skimage.registration")
    steps = _drifted(simulated)
    ours = register_steps(steps, Registration()).shifts
    theirs = np.array([skreg.phase_cross_correlation(steps[0], steps[t], upsample_factor=50)[0] for t in range(4)])
    assert _rms(ours, DRIFT) <= _rms(theirs, DRIFT) + 0.05


@pytest.mark.parametrize("shape", [(16, 16), (16, 15), (15, 16), (15, 15)])
def test_half_spectrum_dft_is_the_fourier_interpolant(shape):
    """The direct DFT of a half spectrum (used to refine peaks) equals Fourier interpolation of the real
    signal (scipy.signal.resample, Nyquist split in two) at whole and half-pixel lags, for even and odd sizes."""
    from scipy import fft as sfft
    from scipy import signal

    from acquisition.register import _upsampled_correlation

    a = np.random.default_rng(0).normal(size=shape)
    twice = signal.resample(signal.resample(a, 2 * shape[0], axis=0), 2 * shape[1], axis=1)
    grid, offsets = _upsampled_correlation(sfft.rfft2(a), shape, np.array([3.0, 5.0]), step=0.5, reach=1.5)
    rows, cols = (2 * (3 + offsets)).astype(int) % (2 * shape[0]), (2 * (5 + offsets)).astype(int) % (2 * shape[1])
    assert np.allclose(grid / np.prod(shape), twice[np.ix_(rows, cols)], atol=1e-12)


@pytest.mark.parametrize("shape", [(257, 300), (300, 301), (512, 512), (600, 459)])
def test_prepare_on_a_region_equals_the_whole_plane(shape):
    """prepare filters only the region the matches read: what _crop takes from it at every offset a match
    can use is what filtering the whole plane gives."""
    from acquisition.register import _crop, _haze_width, _max_offset_px, prepare

    cfg = Registration()
    plane = np.random.default_rng(1).poisson(200, shape).astype(np.float32)
    width = _haze_width(cfg)
    whole = plane - ndimage.uniform_filter(ndimage.uniform_filter(plane, width, mode="nearest"), width, mode="nearest")
    prepared = prepare(plane.astype(np.uint16), cfg)
    reach = _max_offset_px(cfg)
    for offset in [(0, 0), (reach, -reach), (-reach, reach), (7, 3)]:
        assert np.allclose(_crop(prepared, cfg, offset), _crop(whole, cfg, offset), atol=1e-3)


@pytest.mark.parametrize("shift", [(-0.3, 0.0), (0.3, 0.0), (0.0, -0.3), (0.0, 0.45), (-1.3, 2.7), (0.2, -0.6)])
def test_subpixel_shift_of_a_ramp_is_exact_up_to_the_edges(shift):
    """Every pixel of the kept area is interpolated from the plane (Keys' boundary values one pixel beyond an
    edge), never copied from its neighbour: a ramp stays a ramp, row 0 and column 0 included."""
    yy, xx = np.mgrid[:32, :40]
    ramp = (1000 + 100 * yy + 7 * xx).astype(np.uint16)
    out = apply_shifts(ramp[None], np.array([shift]))[0]
    y0, y1, x0, x1 = valid_box(np.array([shift, (0.0, 0.0)]), ramp.shape)
    expected = 1000 + 100 * (yy - shift[0]) + 7 * (xx - shift[1])
    assert np.abs(out - expected)[y0:y1, x0:x1].max() <= 0.5  # rounding back to uint16 only
    if shift[0] < 0:
        assert y0 == 0  # row 0 is kept, and right
        assert out[0, x0] == pytest.approx(expected[0, x0], abs=0.5)


def test_identical_steps_register_to_exactly_zero_and_keep_every_row():
    rng = np.random.default_rng(3)
    plane = (ndimage.gaussian_filter(rng.random((96, 96)), 1.5) * 4000).astype(np.uint16)
    stack = np.stack([plane] * 3)
    result = register_steps(stack, Registration())
    assert np.abs(result.shifts).max() <= 1e-3
    assert valid_box(result.shifts, plane.shape) == (0, 96, 0, 96)
    assert np.array_equal(apply_shifts(stack, result.shifts), stack)
