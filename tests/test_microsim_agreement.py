"""Our fast simulator reproduces microsim 0.0.12's own numbers.

* ``simulation.optics.vectorial_planes`` == ``microsim.psf.vectorial_psf_centered``;
* the confocal PSFs of ``simulation.optics.ladder_psfs`` == ``microsim.psf.make_confocal_psf`` (with the
  true excitation and emission wavelengths, which microsim's ``Simulation`` cannot pass), in the
  microsim-compatible mode ``optics.psf_normalization: sum`` (every step's PSF sums to 1);
* in the default physical mode the same PSFs, light conserved: each normalised to sum 1 is microsim's up to
  the pinhole's edge pixels (a transmission mask instead of a binary disk), and the confocal steps'
  relative brightness is that of microsim's unnormalised PSFs (``normalize=False``);
* ``PlaneConvolver`` with microsim-shaped PSFs == ``Simulation.optical_image()`` (noise free, photons/s),
  for widefield and for confocal with a small pinhole.

For the last check our side mirrors what ``Simulation`` does internally (see
``microsim.schema.modality._simple_psf._PSFModality._summed_weighted_psf``): one spectral bin, whose
centroid wavelength is used for excitation *and* emission, a PSF scaled by the bin's emission rate, and
the PSF window microsim picks: lateral size ``_pick_nx(field nx)`` (odd; ``max_psf_radius_aus`` has no
effect), widefield ``(nz + 1, nx + 1)`` (``cached_psf``), confocal ``(nz, nx)``.

microsim must stay offline (mock fluorophore, FITC filters are analytic) and must not write its PSF disk
cache: the fixture sets ``MICROSIM_CACHE=0``, points microsim's cache dir at a temporary directory and
makes any network connection fail.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

microsim_psf = pytest.importorskip("microsim.psf")

from microsim.schema import Confocal, Settings, Simulation, Widefield  # noqa: E402
from microsim.schema.modality._simple_psf import _pick_nx, bin_spectrum  # noqa: E402
from microsim.schema.settings import CacheSettings  # noqa: E402

from dehaze.manifests import Optics, load_simulation_manifest  # noqa: E402
from simulation.forward import PlaneConvolver  # noqa: E402
from simulation.optics import (  # noqa: E402
    PsfWindow,
    fftconvolve_same_2d,
    ladder_psfs,
    objective_for,
    pinhole_disk,
    vectorial_planes,
)
from simulation.sample import render_truth  # noqa: E402

OPTICS = Optics(psf_normalization="sum")  # NA 1.4 oil, 488/525 nm, 50 nm pixels, 0.2 µm planes; microsim's budget


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(autouse=True)
def offline_microsim(monkeypatch, tmp_path):
    """No PSF disk cache (nor one in $HOME), no network."""
    import microsim.util

    monkeypatch.setenv("MICROSIM_CACHE", "0")
    monkeypatch.setattr(microsim.util, "_MICROSIM_CACHE", tmp_path / "microsim-cache")

    def no_network(*args, **kwargs):
        raise AssertionError("microsim tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    yield
    assert not (tmp_path / "microsim-cache").exists(), "microsim wrote a disk cache"


# --------------------------------------------------------------------------------------------- PSFs


@pytest.mark.parametrize(("wavelength_um", "nz", "n"), [(0.525, 9, 33), (0.488, 8, 32)])
def test_vectorial_planes_equal_microsim(wavelength_um, nz, n):
    objective = objective_for(OPTICS)
    dz, dx = OPTICS.z_step_um, OPTICS.pixel_size_um
    ours = vectorial_planes(objective, wavelength_um, nz, dz, n, dx)
    ref = microsim_psf.vectorial_psf_centered(
        nz=nz, dz=dz, nx=n, dxy=dx, wvl=wavelength_um, objective=objective, normalize="sum"
    )
    assert ours.shape == ref.shape == (nz, n, n)
    assert rel_l2(ours, ref) <= 1e-5


def test_ladder_confocal_psfs_equal_microsim_make_confocal_psf():
    window = PsfWindow(nz=9, n=41)  # odd: the centre is a voxel
    steps = [0.5, 2.0, None]
    psfs = ladder_psfs(OPTICS, window, steps)
    objective = objective_for(OPTICS)
    ex_um, em_um = OPTICS.ex_wavelength_nm * 1e-3, OPTICS.em_wavelength_nm * 1e-3
    common = dict(nz=window.nz, dz=OPTICS.z_step_um, nx=window.n, dxy=OPTICS.pixel_size_um, objective=objective)
    for au, ours in zip(steps[:-1], psfs[:-1]):
        ref = microsim_psf.make_confocal_psf(ex_wvl_um=ex_um, em_wvl_um=em_um, pinhole_au=au, normalize="sum", **common)
        assert ours.shape == ref.shape
        assert rel_l2(ours, ref) <= 1e-4, au
        # and the excitation wavelength matters: microsim's Simulation (ex = em) would be visibly different
        ex_eq_em = microsim_psf.make_confocal_psf(ex_wvl_um=em_um, em_wvl_um=em_um, pinhole_au=au, **common)
        assert rel_l2(ours, ex_eq_em) > 1e-2
    widefield = microsim_psf.vectorial_psf_centered(wvl=em_um, normalize="sum", **common)
    assert rel_l2(psfs[-1], widefield) <= 1e-5


def test_physical_budget_is_microsims_model_with_the_light_kept():
    """Default mode: microsim's PSF shapes, and microsim's own unnormalised PSFs' brightness ratios."""
    window = PsfWindow(nz=9, n=41)
    steps = [0.5, 1.0, 2.0, 4.0]
    psfs = ladder_psfs(Optics(), window, steps)
    objective = objective_for(OPTICS)
    ex_um, em_um = OPTICS.ex_wavelength_nm * 1e-3, OPTICS.em_wavelength_nm * 1e-3
    common = dict(nz=window.nz, dz=OPTICS.z_step_um, nx=window.n, dxy=OPTICS.pixel_size_um, objective=objective,
                  ex_wvl_um=ex_um, em_wvl_um=em_um)
    raw = []
    for au, ours in zip(steps, psfs):
        ref = microsim_psf.make_confocal_psf(pinhole_au=au, normalize="sum", **common)
        # only the pinhole's edge pixels differ (fractional transmission vs microsim's all-or-nothing disk)
        assert rel_l2(ours / ours.sum(), ref) <= (3e-2 if au < 2 else 3e-3), au
        raw.append(float(microsim_psf.make_confocal_psf(pinhole_au=au, normalize=False, **common).sum()))
    ours_sum = [float(p.sum()) for p in psfs]
    assert all(b > 1.5 * a for a, b in zip(ours_sum, ours_sum[1:])), ours_sum  # brighter with the pinhole
    # where the binary disk's area is the disk's (>= 2 AU: within 1 %), the brightness ratio is microsim's
    assert ours_sum[3] / ours_sum[2] == pytest.approx(raw[3] / raw[2], rel=1e-2)


# ---------------------------------------------------------------------------- noise-free images


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    m = load_simulation_manifest(None, ["volume.nz=16", "volume.field_shape_yx=[64,64]", "sample.density=1.5"])
    t = render_truth(m, 0)
    assert t.shape == (16, 64, 64) and t.sum() > 0
    return t


def microsim_settings() -> Settings:
    return Settings(
        random_seed=0,
        cache=CacheSettings(read=False, write=False),
        spectral_bins_per_emission_channel=1,
        np_backend="numpy",
    )


def ours_like_microsim(sim: Simulation, truth: np.ndarray, z_out: list[int]) -> np.ndarray:
    """Our PlaneConvolver with the PSF, window and weight microsim's Simulation uses."""
    settings = sim.settings
    rates = sim.filtered_emission_rates().isel(c=0, f=0)
    binned = bin_spectrum(rates, bins=1, threshold_percentage=settings.spectral_bin_threshold_percentage)
    assert binned.sizes["w"] == 1
    wavelength_nm, weight = float(binned.w.values[0]), float(binned.values[0])
    assert 500 < wavelength_nm < 550 and weight > 0  # FITC band on the flat mock fluorophore

    nz, _, nx = truth.shape
    n = _pick_nx(nx, OPTICS.pixel_size_um, settings.max_psf_radius_aus, wavelength_nm, OPTICS.na)
    objective, wl_um = objective_for(OPTICS), wavelength_nm * 1e-3
    dz, dx = OPTICS.z_step_um, OPTICS.pixel_size_um
    if isinstance(sim.modality, Widefield):
        psf = vectorial_planes(objective, wl_um, nz + 1, dz, n + 1, dx)
    else:
        em = vectorial_planes(objective, wl_um, nz, dz, n, dx)  # excitation = emission, as in microsim
        psf = em * fftconvolve_same_2d(em, pinhole_disk(n, sim.modality.pinhole_au, wl_um, OPTICS.na, dx))
        psf /= psf.sum()
    conv = PlaneConvolver(truth.shape, psf.shape)
    return conv.planes(conv.transform(truth), conv.transform(psf), z_out) * np.float32(weight)


@pytest.mark.parametrize("modality", [Widefield(), Confocal(pinhole_au=0.5)], ids=["widefield", "confocal-0.5AU"])
def test_fast_path_matches_microsim_optical_image(truth, modality):
    dz, dx = OPTICS.z_step_um, OPTICS.pixel_size_um
    sim = Simulation.from_ground_truth(
        truth,
        scale=(dz, dx, dx),
        modality=modality,
        objective_lens=objective_for(OPTICS),
        settings=microsim_settings(),
    )
    ref = np.asarray(sim.optical_image())  # (C, Z, Y, X) photons/s
    assert ref.shape == (1, *truth.shape)
    zc = truth.shape[0] // 2
    z_out = [0, zc, truth.shape[0] - 1]  # focal plane, plus both ends to pin down the z convention
    ours = ours_like_microsim(sim, truth, z_out)
    assert rel_l2(ours[1], ref[0, zc]) <= 1e-3
    for plane, z in zip(ours, z_out):
        assert rel_l2(plane, ref[0, z]) <= 1e-3, z
