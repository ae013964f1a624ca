"""The photon budget of opening a pinhole (issue #16): light is conserved, not each step's PSF.

Analytic facts, each a test: an in-focus point passes the encircled energy of its emission spot (~84 %
inside 1 AU for an Airy disk) and saturates as the pinhole opens; a thick uniform slab keeps growing; a
pinhole of 0 passes nothing and widefield passes everything. Then the ladder: the brightness reference
gets the manifest's peak photons, the built-in ladders get brighter with the pinhole without saturating
the camera, the store records the photon budget, and stores made before it still open but are not resumed.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy.special import j0, j1

from dehaze.errors import UserError
from dehaze.manifests import Optics, SimulationManifest, load_simulation_manifest
from dehaze.store import open_ladder
from simulation.camera import expected_adu
from simulation.ladder import PEAK_PERCENTILE, plan_ladder, simulate_field, simulate_ladder
from simulation.optics import (
    PsfWindow,
    folded_vectorial_psf,
    ladder_psfs,
    objective_for,
    per_plane_power,
    pinhole_transmission,
    plane_sums,
    unfold,
    z_symmetric,
)
from tests.conftest import TINY

OPTICS = Optics()  # NA 1.4 oil, 488/525 nm, 50 nm pixels, 0.2 µm planes, physical budget
# The manifest identity that stores of TINY recorded before the photon budget (manifests without
# optics.psf_normalization and camera.peak_reference).
TINY_SHA256_BEFORE_BUDGET = "b6e8224023e0cec0b088594626f88a284675e97e76c1ada0b13cc6bc4bef5502"


def beam(optics: Optics, window: PsfWindow, which: str) -> np.ndarray:
    """(nz, n, n) excitation or emission PSF at the physical scale: its in-focus plane sums to 1."""
    um = (optics.ex_wavelength_nm if which == "ex" else optics.em_wavelength_nm) * 1e-3
    objective = objective_for(optics)
    symmetric = z_symmetric(objective, um, window.nz, optics.z_step_um, optics.pixel_size_um)
    psf = folded_vectorial_psf(objective, um, window.nz, optics.z_step_um, window.n, optics.pixel_size_um, symmetric)
    return per_plane_power(psf).full()


def transmission_mask(optics: Optics, n: int, au: float) -> np.ndarray:
    """(n, n) pinhole transmission mask centred on the window's centre pixel."""
    q = pinhole_transmission(n, au, optics.em_wavelength_nm * 1e-3, optics.na, optics.pixel_size_um)
    full = np.zeros((n - n // 2, n - n // 2))
    full[: q.shape[0], : q.shape[1]] = q
    return unfold(unfold(full, n, axis=-1), n, axis=-2)


def airy_encircled_energy(pinhole_au: float) -> float:
    """Share of an Airy disk's energy inside a pinhole of that diameter: 1 - J0(v)^2 - J1(v)^2, v = 2 pi NA r / lambda."""
    v = np.pi * 1.22 * pinhole_au  # r = pinhole_au * 0.61 lambda / NA
    return float(1 - j0(v) ** 2 - j1(v) ** 2)


def test_objective_takes_the_manifests_na():
    """microsim's ObjectiveLens ignores numerical_aperture= (an alias trap): the NA must reach the PSF."""
    assert objective_for(Optics(na=0.9)).numerical_aperture == 0.9
    assert objective_for(Optics(na=0.3, immersion_ri=1.0, specimen_ri=1.0)).numerical_aperture == 0.3


def test_pinhole_transmission_is_the_disk_area():
    optics = OPTICS
    au_px = optics.airy_diameter_um / optics.pixel_size_um
    for au in (0.25, 0.5, 1.0, 3.0):
        radius = au * au_px / 2
        assert transmission_mask(optics, 129, au).sum() == pytest.approx(np.pi * radius**2, rel=2e-3), au
    assert not pinhole_transmission(129, 0.0, 0.525, 1.4, 0.05).any()


def test_in_focus_point_passes_the_encircled_energy_of_an_airy_disk():
    """Low NA (scalar Airy spot): the detection efficiency of an on-axis in-focus point is the analytic
    encircled energy inside the pinhole, ~84 % at 1 AU; it is not renormalised."""
    optics = Optics(na=0.3, immersion_ri=1.0, specimen_ri=1.0, pixel_size_um=0.2)
    au_px = optics.airy_diameter_um / optics.pixel_size_um
    window = PsfWindow(nz=1, n=int(40 * au_px) | 1)  # 40 AU: the rings beyond hold < 0.3 % of the light
    steps = [0.5, 1.0, 2.0, 4.0]
    c = window.n // 2
    ex = beam(optics, window, "ex")
    detected = [float(p[0, c, c] / ex[0, c, c]) for p in ladder_psfs(optics, window, steps)]
    for au, d in zip(steps, detected):
        assert d == pytest.approx(airy_encircled_energy(au), abs=0.02), (au, d)
    assert 0.82 < detected[1] < 0.86


def test_in_focus_point_passes_the_encircled_energy_at_high_na():
    """NA 1.4: the detection efficiency is the encircled energy of microsim's vectorial emission spot
    (wider than an Airy disk: ~76 % inside 1 AU), growing to 1."""
    window = PsfWindow(nz=1, n=129)
    steps = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    c = window.n // 2
    ex, em = beam(OPTICS, window, "ex")[0], beam(OPTICS, window, "em")[0]
    psfs = ladder_psfs(OPTICS, window, steps)
    encircled = [float((em * transmission_mask(OPTICS, window.n, au)).sum()) for au in steps]
    detected = [float(p[0, c, c] / ex[c, c]) for p in psfs]
    np.testing.assert_allclose(detected, encircled, rtol=1e-4)
    assert all(b > a for a, b in zip(detected, detected[1:])) and detected[-1] > 0.97
    assert 0.72 < detected[2] < 0.84


def test_in_focus_point_saturates_a_thick_slab_does_not():
    """All the light detected from an in-focus point (the in-focus plane's sum) saturates at 1 (widefield);
    the signal of a uniform slab filling the window (the sum of the whole PSF) about doubles per doubling
    of the pinhole, because a wider pinhole collects haze from ever further planes."""
    window = PsfWindow(nz=41, n=257)  # 8 µm thick, 12.8 µm wide
    steps = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, None]
    psfs = ladder_psfs(OPTICS, window, steps, folded=True)
    point = [float(plane_sums(p)[window.nz // 2]) for p in psfs]
    slab = [float(plane_sums(p).sum()) for p in psfs]
    assert all(b > a for a, b in zip(point, point[1:])), point
    assert point[-1] == pytest.approx(1.0, abs=1e-6)  # widefield passes all of an in-focus point's light
    assert point[4] / point[3] < 1.08 and point[5] > 0.97, point  # saturated by 8 AU
    assert point[1] / point[0] > 2  # ... not at 0.5 AU
    assert all(b > 1.5 * a for a, b in zip(slab[:-1], slab[1:-1])), slab  # no saturation up to 16 AU
    assert slab[-1] > slab[-2]


def test_pinhole_of_zero_passes_nothing_and_widefield_passes_everything():
    window = PsfWindow(nz=9, n=65)
    c = window.n // 2
    zero, huge, widefield = ladder_psfs(OPTICS, window, [0.0, 100.0, None])
    assert not zero.any()
    em, ex = beam(OPTICS, window, "em"), beam(OPTICS, window, "ex")
    np.testing.assert_allclose(widefield, em, rtol=1e-5, atol=1e-6 * em.max())  # all the emission light
    assert widefield[window.nz // 2].sum() == pytest.approx(1.0, rel=1e-6)
    # a pinhole wider than the window passes, at its centre, all the light of every plane
    np.testing.assert_allclose(huge[:, c, c] / ex[:, c, c], em.sum(axis=(1, 2)), rtol=1e-4)
    # microsim's normalisation, for contrast: every step sums to 1 whatever its pinhole
    for psf in ladder_psfs(Optics(psf_normalization="sum"), window, [0.5, 4.0, None]):
        assert psf.sum() == pytest.approx(1.0, rel=1e-5)


# ------------------------------------------------------------------------------------------- ladders


def _noise_free_photons(manifest: SimulationManifest, noise_free: np.ndarray) -> np.ndarray:
    """Photons/s from noise-free ADU (the inverse of simulation.camera.expected_adu)."""
    c = manifest.camera
    zero = float(expected_adu(np.zeros(1, np.float32), c)[0])
    per_photon = float(expected_adu(np.ones(1, np.float32), c)[0]) - zero
    return (noise_free.astype(np.float64) - zero) / per_photon


@pytest.mark.parametrize(("reference", "step"), [(1.0, 1), ("widefield", 3), ("cleanest", 0), (1.5, None)])
def test_brightness_reference_gets_the_peak_photons(reference, step):
    base = {**TINY, "volume": {"field_shape_yx": [48, 48], "nz": 8}, "n_fields": 1}
    m = SimulationManifest.model_validate({**base, "camera": {"peak_reference": reference}})
    result = simulate_field(plan_ladder(m), 0)
    assert result.image.shape[0] == m.pinhole.n_steps == 4  # a reference off the steps is not stored
    photons = _noise_free_photons(m, result.noise_free)
    if step is not None:
        assert np.percentile(photons[step], PEAK_PERCENTILE) == pytest.approx(m.camera.peak_photons_per_s, rel=1e-4)
    else:  # the same scale as a ladder that has 1.5 AU as a step
        with_step = SimulationManifest.model_validate(
            {**base, "pinhole": {"steps_au": [0.5, 1.0, 1.5, 2.0], "widefield_last": True}, "camera": {"peak_reference": 1.5}}
        )
        other = _noise_free_photons(with_step, simulate_field(plan_ladder(with_step), 0).noise_free)
        np.testing.assert_allclose(photons, other[[0, 1, 3, 4]], rtol=1e-4, atol=1e-3)
    means = photons.reshape(4, -1).mean(axis=1)
    assert all(b > a for a, b in zip(means, means[1:])), means  # brighter with the pinhole, whatever the reference


@pytest.mark.parametrize("name", ["default", "paper-like"])
def test_built_in_ladders_get_brighter_with_the_pinhole_without_saturating(tmp_path, name):
    m = load_simulation_manifest(name, ["n_fields=2"])
    store = simulate_ladder(m, tmp_path / f"{name}.zarr", show_progress=False).store
    stats = open_ladder(store.path).meta.step_stats
    mean, p999 = [s.mean for s in stats], [s.p999 for s in stats]
    assert all(b > a for a, b in zip(mean, mean[1:])), mean
    assert all(b > a for a, b in zip(p999, p999[1:])), p999
    assert mean[-1] - m.camera.offset_adu > 10 * (mean[0] - m.camera.offset_adu)  # widefield: much more light
    # the brightest pixel of the brightest step is far from the camera's full scale (12 bit = full well here)
    assert max(s.max for s in stats) < 0.5 * (2**m.camera.bit_depth - 1)
    meta = store.meta.photometry
    assert meta["psf_normalization"] == "physical" and meta["reference"] == "1 AU"
    assert meta["reference_step"] == m.pinhole.pinhole_au.index(1.0)
    assert meta["peak_photons_per_s"] == m.camera.peak_photons_per_s


def test_sum_mode_keeps_microsims_constant_budget_and_says_so(tmp_path):
    m = SimulationManifest.model_validate(
        {**TINY, "optics": {"psf_normalization": "sum"}, "camera": {"peak_reference": "cleanest"}}
    )
    store = simulate_ladder(m, tmp_path / "sum.zarr", show_progress=False).store
    mean = [s.mean for s in store.meta.step_stats]
    assert mean[-1] < mean[0]  # the constant budget: widefield dimmer than the smallest pinhole
    assert store.meta.photometry["psf_normalization"] == "sum"
    assert store.meta.photometry["reference"] == "0.5 AU" and store.meta.photometry["reference_step"] == 0
    assert store.meta.manifest["optics"]["psf_normalization"] == "sum"


def _make_it_look_older(path) -> None:
    """Rewrite a store's root metadata as the code before the photon budget wrote it."""
    attrs_path = path / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    meta = attrs["dehaze"]
    del meta["photometry"]
    del meta["manifest"]["optics"]["psf_normalization"], meta["manifest"]["camera"]["peak_reference"]
    meta["manifest_sha256"] = hashlib.sha256(json.dumps(meta["manifest"], sort_keys=True).encode()).hexdigest()
    attrs_path.write_text(json.dumps(attrs))


def test_store_made_before_the_budget_opens_and_a_rerun_is_another_manifest(cli, tmp_path, tiny_manifest_path):
    out = tmp_path / "old.zarr"
    simulate_ladder(SimulationManifest.model_validate(TINY), out, show_progress=False)
    _make_it_look_older(out)
    old = open_ladder(out)
    assert old.meta.manifest_sha256 == TINY_SHA256_BEFORE_BUDGET  # exactly what an older store holds
    assert old.meta.photometry is None and old.meta.status == "complete" and len(old.meta.step_stats) == 4
    before = old.image(old.fields[0])[...]
    # the same manifest file run again means other physics now: refused, not resumed or mixed in
    result = cli("simulate", tiny_manifest_path, "-o", out, "-q")
    assert result.exit_code == 2 and "different manifest" in result.stderr and "--overwrite" in result.stderr
    again = open_ladder(out)
    assert again.meta.manifest_sha256 == TINY_SHA256_BEFORE_BUDGET and np.array_equal(again.image(again.fields[0])[...], before)
    with pytest.raises(UserError, match="different manifest"):
        simulate_ladder(
            SimulationManifest.model_validate({**TINY, "optics": {"psf_normalization": "sum"}, "camera": {"peak_reference": "cleanest"}}),
            out, show_progress=False,
        )  # even in the compatible mode: the identity says which physics made it
    assert cli("simulate", tiny_manifest_path, "-o", out, "-q", "--overwrite").exit_code == 0
    assert open_ladder(out).meta.photometry["psf_normalization"] == "physical"
