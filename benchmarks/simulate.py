#!/usr/bin/env python
"""Benchmark: naive microsim pinhole sweep vs our planned simulator, on the same truth and steps.

Naive: one ``microsim.Simulation`` per pinhole step (``Confocal(pinhole_au)`` for each confocal step,
``Widefield()`` for the last), built with ``from_ground_truth`` on our MatsLines truth, then
``digital_image()`` with a CCD (QE 0.82, read noise 6 e-, 12 bit, offset 100, full well 18000). Each step
rebuilds its PSF over the whole field and does a full 3-D FFT convolution.

Ours: ``simulation.ladder.plan_ladder`` (PSFs + OTFs, once per ladder) + ``simulate_field`` (truth,
its 2-D transforms once, one inverse 2-D FFT per step and kept plane, camera noise) on the ``paper-like``
manifest geometry (32 x 512 x 512, 7 confocal steps + widefield).

Both sides run cold in one process: microsim's in-process caches (``vectorial_rz``, ``cached_psf``) are
cleared before each side, and ``MICROSIM_CACHE=0`` disables microsim's PSF disk cache. Both sides get the
same FFT threads (``--fft-workers``; microsim through ``scipy.fft.set_workers``).

Ours is timed as the manifest says (by default the physical photon budget, ``optics.psf_normalization:
physical``: a wider pinhole is brighter, which microsim's unit-sum PSFs are not; the cost is the same).

Agreement: our manifest's excitation and emission wavelengths are set to microsim's emission-bin centroid
(microsim uses that one wavelength for both); one more field is simulated (untimed) in the microsim-
compatible mode (``psf_normalization: sum``, brightness set on the cleanest step), and the noise-free focal
planes are compared after normalising each to unit L2 norm (our ``noise_free`` is ADU: its constant offset
is removed first). The timed field's brightness relative to microsim's, step by step, is recorded too
(``photon_budget``): it grows with the pinhole where microsim's stays constant.
microsim's own windows are off-centre (confocal: ``nz`` planes, even for even nz -> half a plane of
defocus; widefield: ``nx + 1`` pixels, even for even nx -> half a pixel lateral shift), so a second,
"like-for-like" number uses our ``PlaneConvolver`` with microsim-shaped PSFs: it isolates our arithmetic.

Usage (from the repository root)::

    python benchmarks/simulate.py            # full paper-like run (~1-2 min on 2 cores)
    python benchmarks/simulate.py --quick    # tiny smoke run (seconds)
    python benchmarks/simulate.py --size 256 --nz 16 --steps 0.5,1,2 --profile
"""

from __future__ import annotations

import os

os.environ["MICROSIM_CACHE"] = "0"  # before microsim is used: no PSF disk cache on either side
os.environ.setdefault("TQDM_DISABLE", "1")  # microsim's per-plane pinhole progress bars

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import pstats  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
from machine import machine_info, write_result  # noqa: E402
from microsim import psf as microsim_psf  # noqa: E402
from microsim.schema import Confocal, Settings, Simulation, Widefield  # noqa: E402
from microsim.schema.detectors import CameraCCD  # noqa: E402
from microsim.schema.modality._simple_psf import _pick_nx, bin_spectrum  # noqa: E402
from microsim.schema.settings import CacheSettings  # noqa: E402

from dehaze.manifests import SimulationManifest, load_simulation_manifest  # noqa: E402
from simulation.camera import expected_adu  # noqa: E402
from simulation.forward import PlaneConvolver  # noqa: E402
from simulation.ladder import plan_ladder, simulate_field  # noqa: E402
from simulation.optics import fftconvolve_same_2d, objective_for, pinhole_disk, vectorial_planes  # noqa: E402
from simulation.sample import render_truth  # noqa: E402

logging.getLogger("microsim").setLevel(logging.WARNING)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 20.0


# ------------------------------------------------------------------------------------------ helpers


def clear_microsim_caches() -> None:
    """Forget microsim's in-process r-z profiles and PSFs, so the next side pays for them."""
    microsim_psf.vectorial_rz.cache_clear()
    microsim_psf.cached_psf.cache_clear()


def unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def gpu_info() -> str | dict:
    """CUDA status. simulation/forward.py has no torch FFT variant yet, so nothing is timed on a GPU."""
    import torch

    if not torch.cuda.is_available():
        return "not available"
    return {
        "device": torch.cuda.get_device_name(0),
        "timed": False,
        "note": "CUDA is available but simulation/forward.py has no torch FFT variant to time",
    }


MICROSIM_COMPATIBLE = ["optics.psf_normalization=sum", "camera.peak_reference=cleanest"]


def build_manifest(args: argparse.Namespace, wavelength_nm: float | None = None,
                   extra: list[str] | None = None) -> SimulationManifest:
    overrides = list(args.set)
    if args.size is not None:
        overrides.append(f"volume.field_shape_yx=[{args.size},{args.size}]")
    if args.nz is not None:
        overrides.append(f"volume.nz={args.nz}")
    if args.steps is not None:
        overrides.append(f"pinhole.steps_au=[{args.steps}]")
    if args.no_widefield:
        overrides.append("pinhole.widefield_last=false")
    if wavelength_nm is not None:
        overrides += [f"optics.ex_wavelength_nm={wavelength_nm!r}", f"optics.em_wavelength_nm={wavelength_nm!r}"]
    return load_simulation_manifest(args.manifest, overrides + list(extra or []))


def microsim_simulation(manifest: SimulationManifest, truth: np.ndarray, pinhole_au: float | None) -> Simulation:
    o, c = manifest.optics, manifest.camera
    return Simulation.from_ground_truth(
        truth,
        scale=(o.z_step_um, o.pixel_size_um, o.pixel_size_um),
        modality=Widefield() if pinhole_au is None else Confocal(pinhole_au=pinhole_au),
        objective_lens=objective_for(o),
        detector=CameraCCD(
            qe=c.qe, read_noise=c.read_noise_e, bit_depth=c.bit_depth, offset=c.offset_adu, full_well=c.full_well_e
        ),
        exposure_ms=c.exposure_ms,
        settings=Settings(
            random_seed=0,
            cache=CacheSettings(read=False, write=False),
            spectral_bins_per_emission_channel=1,
            np_backend="numpy",
        ),
    )


def microsim_emission_bin(sim: Simulation) -> tuple[float, float]:
    """(centroid wavelength nm, emission rate) of microsim's single spectral bin (``_summed_weighted_psf``)."""
    rates = sim.filtered_emission_rates().isel(c=0, f=0)
    binned = bin_spectrum(
        rates, bins=sim.settings.spectral_bins_per_emission_channel,
        threshold_percentage=sim.settings.spectral_bin_threshold_percentage,
    )
    if binned.sizes["w"] != 1:
        raise RuntimeError("expected one spectral bin")
    return float(binned.w.values[0]), float(binned.values[0])


# ------------------------------------------------------------------------------------------ the two sides


def naive_field(manifest: SimulationManifest, truth: np.ndarray, keep_z: int, workers: int, tag: str) -> dict:
    """One microsim Simulation per step; timings and the noise-free focal plane of each step."""
    per_step, focal = [], []
    t_all, c_all = time.perf_counter(), time.process_time()
    with scipy.fft.set_workers(workers):
        for au in manifest.pinhole.pinhole_au:
            t0 = time.perf_counter()
            sim = microsim_simulation(manifest, truth, au)
            optical = sim.optical_image()  # (C, Z, Y, X) photons/s; digital_image() would compute it anyway
            digital = sim.digital_image(optical)
            assert digital.shape == (1, *truth.shape)
            per_step.append(time.perf_counter() - t0)
            focal.append(np.asarray(optical)[0, keep_z].copy())
            label = "widefield" if au is None else f"{au} AU"
            print(f"  naive {tag} step {label:>10}: {per_step[-1]:6.2f} s", flush=True)
    return {"seconds": time.perf_counter() - t_all, "cpu_s": time.process_time() - c_all, "per_step_s": per_step,
            "focal": np.stack(focal)}


def run_naive(manifest: SimulationManifest, truth: np.ndarray, keep_z: int, workers: int, n_fields: int) -> dict:
    """Field 0 cold (microsim caches cleared), then ``n_fields - 1`` more fields with microsim's in-process
    PSF cache warm (what a naive loop over fields in one process would pay per further field)."""
    clear_microsim_caches()
    cold = naive_field(manifest, truth, keep_z, workers, "cold")
    warm = [naive_field(manifest, render_truth(manifest, i), keep_z, workers, f"warm field {i}") for i in range(1, n_fields)]
    return {**cold, "warm_field_s": [w["seconds"] for w in warm], "warm_field_cpu_s": [w["cpu_s"] for w in warm]}


def profile_text(prof: cProfile.Profile, top: int = 15) -> str:
    """Top functions by own CPU time (the profiler's clock is ``time.process_time``: all threads)."""
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip() and not ln.lstrip().startswith(("Ordered", "List"))]
    return "\n".join(lines)


def run_ours(manifest: SimulationManifest, workers: int, n_fields: int, profile: bool) -> dict:
    clear_microsim_caches()
    # Timings come from unprofiled runs; with --profile, the plan and the first field are run once more
    # under cProfile afterwards (caches cleared again), so the profiler's overhead never enters them.
    t0, c0 = time.perf_counter(), time.process_time()
    plan = plan_ladder(manifest, fft_workers=workers)
    t_plan, c_plan = time.perf_counter() - t0, time.process_time() - c0
    fields_s, fields_cpu, first = [], [], None
    for i in range(n_fields):
        t0, c0 = time.perf_counter(), time.process_time()
        res = simulate_field(plan, i)
        fields_s.append(time.perf_counter() - t0)
        fields_cpu.append(time.process_time() - c0)
        first = first if first is not None else res
    profiles = {}
    if profile:
        del plan
        clear_microsim_caches()
        prof = cProfile.Profile(time.process_time)
        plan = prof.runcall(plan_ladder, manifest, fft_workers=workers)
        profiles["plan"] = profile_text(prof)
        prof = cProfile.Profile(time.process_time)
        prof.runcall(simulate_field, plan, 0)
        profiles["field"] = profile_text(prof)
    t0 = time.perf_counter()
    render_truth(manifest, 0)
    t_truth = time.perf_counter() - t0
    out = {
        "plan_s": t_plan,
        "plan_cpu_s": c_plan,
        "field_s": fields_s,
        "field_cpu_s": fields_cpu,
        "truth_render_s": t_truth,
        "window": [plan.window.nz, plan.window.n, plan.window.n],
        "result": first,
    }
    if profiles:
        out["profile"] = profiles
    return out


def like_for_like(manifest: SimulationManifest, truth: np.ndarray, keep_z: int, wavelength_nm: float,
                  workers: int) -> list[np.ndarray]:
    """Our PlaneConvolver with PSFs shaped exactly like microsim's (its off-centre windows included)."""
    o = manifest.optics
    nz, _, nx = truth.shape
    n = _pick_nx(nx, o.pixel_size_um, Settings().max_psf_radius_aus, wavelength_nm, o.na)
    objective, wl_um, dz, dx = objective_for(o), wavelength_nm * 1e-3, o.z_step_um, o.pixel_size_um
    out, conv_cache = [], {}
    em = None
    for au in manifest.pinhole.pinhole_au:
        if au is None:
            psf = vectorial_planes(objective, wl_um, nz + 1, dz, n + 1, dx)
        else:
            em = em if em is not None else vectorial_planes(objective, wl_um, nz, dz, n, dx)
            psf = em * fftconvolve_same_2d(em, pinhole_disk(n, au, wl_um, o.na, dx), workers=workers)
            psf /= psf.sum()
        if psf.shape not in conv_cache:
            conv = PlaneConvolver(truth.shape, psf.shape, workers=workers)
            conv_cache[psf.shape] = (conv, conv.transform(truth))
        conv, truth_f = conv_cache[psf.shape]
        out.append(conv.planes(truth_f, conv.transform(psf), [keep_z])[0])
    return out


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default="paper-like", help="built-in manifest name or YAML path (default paper-like)")
    p.add_argument("--size", type=int, help="lateral field size in pixels (square), overrides the manifest")
    p.add_argument("--nz", type=int, help="planes in the simulated volume, overrides the manifest")
    p.add_argument("--steps", help="comma-separated confocal pinhole diameters in AU, overrides the manifest")
    p.add_argument("--no-widefield", action="store_true", help="drop the widefield last step")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra manifest override")
    p.add_argument("--quick", action="store_true", help="tiny smoke run: --size 128 --nz 12 --steps 0.5,2")
    p.add_argument("--fields", type=int, default=1, help="fields simulated on our side (plan amortised over them)")
    p.add_argument("--naive-fields", type=int, default=1,
                   help="fields simulated by the naive loop: the first cold, the others with microsim's PSF cache warm")
    p.add_argument("--fft-workers", type=int, default=os.cpu_count() or 1, help="FFT threads for both sides")
    p.add_argument("--profile", action="store_true",
                   help="cProfile our plan and one field (separate runs after the timed ones); print and record the top functions")
    p.add_argument("--no-like-for-like", action="store_true", help="skip the like-for-like agreement check")
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/simulate_<host>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.size = args.size or 128
        args.nz = args.nz or 12
        args.steps = args.steps or "0.5,2"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = max(1, args.fft_workers)

    base = build_manifest(args)
    truth = render_truth(base, 0)  # identical for every wavelength override (same seed and geometry)
    wavelength_nm, weight = microsim_emission_bin(microsim_simulation(base, truth, None))
    manifest = build_manifest(args, wavelength_nm)
    keep = manifest.volume.kept_planes
    if len(keep) != 1:
        raise SystemExit("this benchmark compares one kept plane; use a manifest without keep_planes")
    keep_z = keep[0]
    steps = manifest.pinhole.pinhole_au
    labels = ["widefield" if a is None else f"{a:g} AU" for a in steps]
    print(f"truth {truth.shape}, {len(steps)} steps {labels}, kept plane {keep_z}, fft workers {workers}")
    print(f"microsim emission bin: {wavelength_nm:.3f} nm (ex = em in microsim), weight {weight:.4g} photons/s")

    load_before = os.getloadavg()
    print("naive microsim loop ...", flush=True)
    naive = run_naive(manifest, truth, keep_z, workers, max(1, args.naive_fields))
    print("ours (plan_ladder + simulate_field) ...", flush=True)
    ours = run_ours(manifest, workers, args.fields, args.profile)

    def focal_planes(res) -> np.ndarray:  # noqa: ANN001 - a FieldResult
        assert np.array_equal(res.truth, truth[keep_z]), "both sides must see the same truth"
        nf = res.noise_free if res.noise_free.ndim == 3 else res.noise_free[:, 0]
        zero = float(expected_adu(np.zeros(1, np.float32), manifest.camera)[0])
        return nf.astype(np.float64) - zero

    def scales_to(focal: np.ndarray) -> list[float]:
        return [float(np.vdot(a, b) / np.vdot(b, b)) for a, b in zip(focal, naive["focal"])]

    # agreement on the noise-free focal plane, shapes only (our values are ADU with one scale per field),
    # in the microsim-compatible mode; the timed (manifest's) mode's brightness per step against microsim's
    compatible = build_manifest(args, wavelength_nm, MICROSIM_COMPATIBLE)
    ours_focal = focal_planes(simulate_field(plan_ladder(compatible, fft_workers=workers), 0))
    errs = [rel_l2(unit(a), unit(b)) for a, b in zip(ours_focal, naive["focal"])]
    scales = scales_to(ours_focal)
    scale_spread = max(scales) / min(scales) - 1.0
    timed_focal = focal_planes(ours["result"])
    timed_scales = scales_to(timed_focal)
    budget = [x / timed_scales[0] for x in timed_scales]
    timed_errs = [rel_l2(unit(a), unit(b)) for a, b in zip(timed_focal, naive["focal"])]
    lfl_errs = None
    if not args.no_like_for_like:
        lfl = like_for_like(manifest, truth, keep_z, wavelength_nm, workers)
        lfl_errs = [rel_l2(a * np.float32(weight), b) for a, b in zip(lfl, naive["focal"])]

    load_after = os.getloadavg()

    def speedups(key_naive: str, key_plan: str, key_field: str, key_warm: str) -> dict:
        """Cold (plan + first field), per field (plan amortised), and a projected ladder of n_fields."""
        naive_s, plan_s = naive[key_naive], ours[key_plan]
        field = float(np.mean(ours[key_field]))
        d = {"naive_s": naive_s, "plan_s": plan_s, "field_s": field, "cold_s": plan_s + ours[key_field][0]}
        d["speedup_cold"] = naive_s / d["cold_s"]
        d["speedup_per_field"] = naive_s / field
        if naive[key_warm]:
            warm = float(np.mean(naive[key_warm]))
            n = manifest.n_fields  # a whole ladder: naive = cold field + warm fields; ours = plan + fields
            d.update(naive_warm_field_s=warm, speedup_warm_per_field=warm / field, ladder_fields=n,
                     ladder_naive_s=naive_s + (n - 1) * warm, ladder_ours_s=plan_s + n * field)
            d["speedup_ladder"] = d["ladder_naive_s"] / d["ladder_ours_s"]
        return d

    wall = speedups("seconds", "plan_s", "field_s", "warm_field_s")
    cpu = speedups("cpu_s", "plan_cpu_s", "field_cpu_s", "warm_field_cpu_s")
    ratio_cold, ratio_field = wall["speedup_cold"], wall["speedup_per_field"]

    w = 30
    rows = [
        ("naive microsim, cold field", "naive_s", "s"),
        ("ours: plan_ladder", "plan_s", "s"),
        ("ours: simulate_field", "field_s", "s"),
        ("ours: plan + 1 field", "cold_s", "s"),
        ("speed-up, cold (plan + 1)", "speedup_cold", "x"),
        ("speed-up, per field", "speedup_per_field", "x"),
        ("naive microsim, warm field", "naive_warm_field_s", "s"),
        ("speed-up, warm per field", "speedup_warm_per_field", "x"),
        (f"naive, {manifest.n_fields}-field ladder", "ladder_naive_s", "s"),
        (f"ours, {manifest.n_fields}-field ladder", "ladder_ours_s", "s"),
        ("speed-up, ladder (projected)", "speedup_ladder", "x"),
    ]
    print()
    print(f"{'':{w}}{'wall':>10}{'cpu':>10}")
    for label, key, unit_ in rows:
        if key not in wall:
            continue
        fmt = (lambda v: f"{v:9.2f}s") if unit_ == "s" else (lambda v: f"{v:9.1f}x")
        print(f"{label:{w}}{fmt(wall[key]):>10}{fmt(cpu[key]):>10}")
    print(f"(truth render inside simulate_field: {ours['truth_render_s']:.2f} s; naive gets the truth for free)")
    print(f"goal {GOAL_RATIO:.0f}x (wall): cold {'met' if ratio_cold >= GOAL_RATIO else 'NOT met'}, "
          f"per field {'met' if ratio_field >= GOAL_RATIO else 'NOT met'}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores "
          "(other processes skew wall times)")
    print()
    print(f"{'step':>10} {'naive s':>8} {'rel L2 (unit)':>14} {'like-for-like':>14} {'scale':>10}")
    for i, lab in enumerate(labels):
        lfl_txt = f"{lfl_errs[i]:14.2e}" if lfl_errs else f"{'-':>14}"
        print(f"{lab:>10} {naive['per_step_s'][i]:8.2f} {errs[i]:14.2e} {lfl_txt} {scales[i]:10.4g}")
    print(f"max rel L2 (ours vs microsim, unit-normalised): {max(errs):.3e}")
    if lfl_errs:
        print(f"max rel L2 like-for-like (microsim windows, absolute photons/s): {max(lfl_errs):.3e}")
    print(f"per-step scale ours/microsim spread: {scale_spread:.3e} (0 = same relative brightness across steps)")
    print(f"timed mode ({manifest.optics.psf_normalization}): brightness per step relative to microsim's, step 0 = 1: "
          + " ".join(f"{b:.3g}" for b in budget) + f"; shapes (unit-normalised rel L2) <= {max(timed_errs):.2e}")
    for part, text in ours.get("profile", {}).items():
        print(f"\ncProfile of our {part} (own CPU time, top entries):\n{text}")

    gpu = gpu_info()
    record = {
        "benchmark": "simulate",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine_info(),
        "gpu": gpu,
        "manifest": manifest.name,
        "psf_normalization_timed": manifest.optics.psf_normalization,
        "manifest_overrides": {
            "size": args.size, "nz": args.nz, "steps": args.steps, "no_widefield": args.no_widefield,
            "set": args.set, "ex_em_wavelength_nm": wavelength_nm,
        },
        "truth_shape": list(truth.shape),
        "steps_au": steps,
        "kept_plane": keep_z,
        "fft_workers": workers,
        "microsim_emission_bin": {"wavelength_nm": wavelength_nm, "weight_photons_per_s": weight},
        "naive": {
            "seconds": naive["seconds"], "cpu_s": naive["cpu_s"], "per_step_s": naive["per_step_s"],
            "warm_field_s": naive["warm_field_s"], "warm_field_cpu_s": naive["warm_field_cpu_s"],
        },
        "ours": {
            "plan_s": ours["plan_s"], "plan_cpu_s": ours["plan_cpu_s"], "field_s": ours["field_s"],
            "field_cpu_s": ours["field_cpu_s"], "truth_render_s": ours["truth_render_s"],
            "psf_window": ours["window"], "fields": args.fields,
        },
        "profile": ours.get("profile"),
        "speedup_cold": ratio_cold,
        "speedup_per_field": ratio_field,
        "wall": wall,
        "cpu": cpu,
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "photon_budget": {
            "psf_normalization": manifest.optics.psf_normalization,
            "brightness_relative_to_microsim_per_step": budget,
            "rel_l2_unit_normalised_per_step": timed_errs,
            "note": (
                "the timed field (the manifest's mode) against microsim's optical_image, step by step: scale "
                "ours/microsim divided by step 0's (microsim keeps every step's PSF at sum 1; the physical budget "
                "passes more light through a wider pinhole), and the shape difference"
            ),
        },
        "goal_speedup": GOAL_RATIO,
        "agreement": {
            "rel_l2_unit_normalised_per_step": errs,
            "max_rel_l2_unit_normalised": max(errs),
            "rel_l2_like_for_like_per_step": lfl_errs,
            "max_rel_l2_like_for_like": max(lfl_errs) if lfl_errs else None,
            "scale_ours_over_microsim_per_step": scales,
            "scale_spread": scale_spread,
            "mode": "microsim-compatible: " + ", ".join(MICROSIM_COMPATIBLE),
            "note": (
                "unit-normalised: our noise-free focal plane (ADU minus offset), simulated in the microsim-"
                "compatible mode, vs microsim optical_image, each "
                "scaled to unit L2 norm; differences come from microsim's off-centre PSF windows (confocal: nz "
                "planes, widefield: nx+1 pixels). like-for-like: our PlaneConvolver with microsim-shaped PSFs, "
                "times microsim's emission weight, vs microsim (absolute)."
            ),
        },
    }
    out = args.out or RESULTS_DIR / f"simulate_{re.sub(r'[^A-Za-z0-9_.-]', '_', socket.gethostname()) or 'cpu'}.json"
    write_result(out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
