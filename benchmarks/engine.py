#!/usr/bin/env python
"""Benchmark: the inference engine (``dehaze.engine.predict_field``) against a naive loop, same models.

Workload: the **7-step latent strategy** ``latent-direct`` on an 8-step ladder: a synthetic (8, H, W)
float32 zarr field; by default (``--schedule fixed``) every one of its 8 planes walks the full schedule
7 -> 0 (so "Mpx/s" = 8 * H * W / s is the throughput of the 7-step strategy), and, as in ``dehaze
predict``, the x_0 estimate at every step is recorded for the haziest plane (the trajectory).
``--schedule ladder`` walks h -> 0 from each plane h instead (what ``dehaze predict`` runs).

Models are untrained (throughput does not depend on training): ``HVAE`` from the ``small`` preset on
CPU (``hdn-reference`` on CUDA), a time-conditioned ``LatentNet`` restorer and a ``LatentCycleGAN``
(n_steps = 7) with the HVAE's level channels, all ``.eval()``. On CPU the latent nets use width 32 and
time embedding 32 (the CPU quickstart's settings, dehaze/study_config.py); on CUDA the defaults (64, 64).
The latent nets' output convolutions start at zero (identity maps); they get small random weights here so
that the restorer and the degradation really change the latents and the agreement check means something.

* **engine**: ``predict_field`` into a temp prediction store (``create_ladder``): tile rows streamed from
  the zarr source, tiles x K samples batched per forward pass, channels-last networks and tensors
  (``prepare_bundle``, as ``dehaze predict``), fp32 on CPU / bf16 autocast on CUDA, intermediate decodes
  only for the recorded plane, per-row progress.
* **engine_bf16** (CPUs with AVX512-BF16/AMX): the engine with ``--precision bf16``.
* **naive** ("what a first implementation would do"): the whole plane read and normalised, the same
  tiling (``tile_geometry``: same tile/margin, same multiple), and for each tile the same strategy
  function on a batch of 1, fp32, contiguous, the trajectory callback passed on every plane (every step's
  estimate decoded, kept only for the haziest plane), then each of the K posterior samples on a batch of 1
  and their std, inner crops stitched, and the three arrays written to a temp prediction store at the end
  (``write_field``).
* **naive_lean**: naive with the callback only on the recorded plane: the engine's saving on decodes
  taken away, so ``naive_lean/engine`` is what batching and the memory format alone buy.

K posterior samples (as ``dehaze predict`` draws them for the latent strategies): one walk per tile on
posterior means, its estimate the mean, and K samples of the HVAE posterior around it (the spec's
``posterior``); the engine draws the K together, the naive loop one at a time.

Agreement: the walk is deterministic, so the engine's and naive's estimates (and the trajectory) must
agree to float tolerance at any K; with K = 16 the two sides draw their samples differently, so their
spread is compared as a ratio (mean std, within 15 %). (The flow section, whose every sample is its own
walk, compares the K-sample means against their expected sampling spread instead.)

Timing: engine and naive alternate (E N, N E, ...), medians of wall time (and CPU time) are reported.
Also a tile-batch-size sweep of the engine (CPU) and a cProfile of one engine run. On CUDA: Mpx/s,
achieved TFLOP/s (``torch.utils.flop_counter.FlopCounterMode`` on one batch, scaled to the run) and peak
memory for 2048^2 and 8192^2 inputs (bounded: similar peaks).

Usage (from the repository root)::

    python benchmarks/engine.py            # full CPU run (a few minutes on 2 cores)
    python benchmarks/engine.py --quick    # tiny smoke run (< 30 s)
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import functools
import io
import json
import pstats
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import zarr

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from machine import load1, machine_info, sync, write_result  # noqa: E402

from dehaze.engine import EngineOptions, predict_field, prepare_bundle  # noqa: E402
from dehaze.models.hvae import HVAE  # noqa: E402
from dehaze.models.latent import LatentCycleGAN, LatentNet  # noqa: E402
from dehaze.normalization import Normalization  # noqa: E402
from dehaze.store import DatasetMeta, LadderStore, PredictionInfo, create_ladder  # noqa: E402
from dehaze.strategies import STRATEGIES, ModelBundle, Strategy, StrategyParams, schedule_for  # noqa: E402
from dehaze.tiling import tile_geometry  # noqa: E402
from training.config import HVAE_PRESETS  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STRATEGY = "latent-direct"
N_PLANES = 8  # an 8-step ladder: steps 0..7
T_MAX = N_PLANES - 1  # the 7-step walk 7 -> 0
GOAL = {"cpu": 2.0, "cuda": 5.0}
NORM = Normalization(offset=100.0, scale=1000.0)
FIELD = "field_000"


# ------------------------------------------------------------------------------------------ helpers


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


# ------------------------------------------------------------------------------------------ models & data


@dataclass(frozen=True)
class ModelConfig:
    preset: str
    width: int
    time_embed_dim: int


def build_bundle(cfg: ModelConfig, device: torch.device, seed: int = 0) -> ModelBundle:
    """Untrained HVAE + latent restorer + CycleGAN degradation (n_steps = 7), eval mode, on ``device``."""
    torch.manual_seed(seed)
    hvae = HVAE(**HVAE_PRESETS[cfg.preset])
    channels = [hvae.latent_channels] * hvae.levels
    restorer = LatentNet(channels, cfg.width, time_embed_dim=cfg.time_embed_dim)
    gan = LatentCycleGAN(channels, T_MAX, LatentNet(channels, cfg.width, time_embed_dim=cfg.time_embed_dim), width=cfg.width)
    with torch.no_grad():  # zero-initialised outputs would make R and G identity maps: perturb them
        for net in [restorer, *gan.G.nets[1:]]:
            for conv in net.outputs:
                conv.weight.normal_(0.0, 0.02)
    return ModelBundle(hvae=hvae.to(device).eval(), latent=restorer.to(device).eval(), degradation=gan.to(device).eval())


def schedule_fn(kind: str) -> Callable[[int], list[float]]:
    spec = STRATEGIES[STRATEGY]
    if kind == "fixed":  # every plane walks the full 7-step schedule
        return lambda h: schedule_for(spec, T_MAX)
    return lambda h: schedule_for(spec, h)


def make_source(path: Path, height: int, width: int, seed: int = 0) -> zarr.Array:
    """A synthetic (8, H, W) float32 ladder field (ADU-like values, hazier with the step) in a zarr store."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((min(height, 256) + 8, min(width, 256) + 8)).astype(np.float32)
    for _ in range(3):  # cheap smoothing: structures a few pixels wide
        base = 0.25 * (np.roll(base, 1, 0) + np.roll(base, -1, 0) + np.roll(base, 1, 1) + np.roll(base, -1, 1))
    reps = (-(-height // base.shape[0]), -(-width // base.shape[1]))
    truth = np.maximum(np.tile(base, reps)[:height, :width], 0) * 4.0
    arr = zarr.open(str(path), mode="w", shape=(N_PLANES, height, width), chunks=(1, 256, 256), dtype="float32")
    for h in range(N_PLANES):
        w = h / T_MAX
        plane = (1 - 0.6 * w) * truth + 0.4 * w * float(truth.mean())
        plane = NORM.offset + NORM.scale * 0.3 * plane + rng.normal(0, 5.0, plane.shape).astype(np.float32)
        arr[h] = plane.astype(np.float32)
    return arr


def new_store(path: Path, label: str) -> LadderStore:
    if path.exists():
        shutil.rmtree(path)
    identity = {"benchmark": "engine", "label": label}
    meta = DatasetMeta(source="prediction", manifest=identity, manifest_sha256=f"bench-{label}", n_steps=N_PLANES,
                       pinhole_au=[None] * N_PLANES, spatial_axes=["y", "x"], pixel_size_um={"y": 1.0, "x": 1.0},
                       fields=[FIELD], prediction=PredictionInfo(method=STRATEGY, run_dirs=[], input_store="synthetic",
                                                                  input_sha256="synthetic"))
    store, _ = create_ladder(path, meta)
    return store


def read_result(store: LadderStore) -> dict[str, np.ndarray]:
    g = store.root[FIELD]
    return {name: g[name][...] for name in ("0", "std", "trajectory") if name in g}


# ------------------------------------------------------------------------------------------ the two sides


@dataclass(frozen=True)
class Job:
    tile: int
    margin: int
    samples: int
    batch_size: int
    schedule: str
    device: torch.device
    seed: int = 0
    precision: str = "fp32"  # the engine's EngineOptions.precision (auto: bf16 on CUDA)


_PREPARED: dict[tuple[int, bool], ModelBundle] = {}


def engine_bundle(bundle: ModelBundle, opts: EngineOptions) -> ModelBundle:
    """The engine's copy of ``bundle`` in its memory format (as ``dehaze predict`` prepares it); the naive
    side keeps the original, contiguous fp32 networks."""
    key = (id(bundle), opts.channels_last)
    if key not in _PREPARED:
        _PREPARED[key] = prepare_bundle(copy.deepcopy(bundle), opts)
    return _PREPARED[key]


def strategy_for(job: Job) -> Strategy:
    """The benchmarked strategy's walk (deterministic: it runs on posterior means; with K > 1 both sides draw
    the K samples around its estimate with the spec's posterior, as ``dehaze predict`` does)."""
    return STRATEGIES[STRATEGY].fn


POSTERIOR = STRATEGIES[STRATEGY].posterior  # (bundle, x0 (B, 1, H, W), K) -> (K, B, 1, H, W)


def run_engine(bundle: ModelBundle, source: zarr.Array, job: Job, out_path: Path) -> tuple[LadderStore, float, float]:
    """predict_field into a fresh prediction store; (store, wall s, cpu s)."""
    opts = EngineOptions(tile=job.tile, margin=job.margin, batch_size=job.batch_size, samples=job.samples, trajectory=True,
                         seed=job.seed, precision=job.precision)
    b = engine_bundle(bundle, opts)
    sync(job.device)
    t0, c0 = time.perf_counter(), time.process_time()
    store = new_store(out_path, "engine")
    predict_field(strategy_for(job), b, schedule_fn(job.schedule), source, NORM, store, FIELD, 0, opts, job.device,
                  multiple=bundle.hvae.multiple, show_progress=False, posterior=POSTERIOR)
    sync(job.device)
    return store, time.perf_counter() - t0, time.process_time() - c0


@torch.no_grad()
def run_naive(bundle: ModelBundle, source: zarr.Array, job: Job, out_path: Path, lean: bool = False) -> tuple[LadderStore, float, float]:
    """Per plane, per tile, per sample: the strategy on a batch of 1 in fp32; (store, wall s, cpu s).

    The strategy gets the trajectory callback on every plane (it keeps what the haziest plane reports), so
    every step's estimate is decoded; ``lean``: only on the recorded plane, as the engine does."""
    fn, sched, b = strategy_for(job), schedule_fn(job.schedule), bundle
    k, dev = job.samples, job.device
    height, width = source.shape[-2:]
    pad_h, pad_w, th, tw, rows, cols = tile_geometry(height, width, job.tile, job.margin, bundle.hvae.multiple)
    sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(job.seed)
    mean_out = np.zeros((N_PLANES, height, width), np.float32)
    std_out = np.zeros_like(mean_out)
    traj_out = np.full((N_PLANES, height, width), np.nan, np.float32)
    for h in range(N_PLANES):
        plane = NORM.apply(source[h])
        if pad_h != height or pad_w != width:
            mode = "reflect" if min(plane.shape) > max(pad_h - height, pad_w - width) else "edge"
            plane = np.pad(plane, ((0, pad_h - height), (0, pad_w - width)), mode=mode)
        record = h == N_PLANES - 1
        for y0, ylo, yhi in rows:
            for x0, xlo, xhi in cols:
                x = torch.from_numpy(np.ascontiguousarray(plane[y0 : y0 + th, x0 : x0 + tw]))[None, None].to(dev)
                traj: dict[int, np.ndarray] = {}

                # (record and traj bound now: the callback runs inside this iteration)
                def callback(t: float, est: torch.Tensor, record: bool = record, traj: dict = traj) -> None:
                    if record and float(t).is_integer():
                        traj[int(t)] = est[0, 0].float().cpu().numpy().copy()

                estimate = fn(b, x, sched(h), callback=callback if (record or not lean) else None)
                # K > 1: the posterior samples around the walk's estimate, one at a time
                draws = [estimate] if k == 1 else [POSTERIOR(b, estimate, 1)[0] for _ in range(k)]
                stack = np.stack([d[0, 0].float().cpu().numpy() for d in draws])
                ys, xs = slice(ylo, min(yhi, height)), slice(xlo, min(xhi, width))
                cy, cx = slice(ylo - y0, min(yhi, height) - y0), slice(xlo - x0, min(xhi, width) - x0)
                if ys.start >= height or xs.start >= width:
                    continue
                mean_out[h, ys, xs] = estimate[0, 0].float().cpu().numpy()[cy, cx]
                std_out[h, ys, xs] = stack.std(0)[cy, cx]
                for t, e in traj.items():  # one walk per tile: its estimates are the trajectory
                    traj_out[t, ys, xs] = e[cy, cx]
    store = new_store(out_path, "naive")
    store.write_field(FIELD, NORM.invert(mean_out), extras={"std": std_out * np.float32(NORM.scale),
                                                            "trajectory": NORM.invert(traj_out)})
    sync(dev)
    return store, time.perf_counter() - t0, time.process_time() - c0


# ------------------------------------------------------------------------------------------ FLOPs


def flops_per_image(bundle: ModelBundle, job: Job, th: int, tw: int) -> dict[str, float]:
    """FLOPs of the strategy per tile image (FlopCounterMode on one batch of ``batch_size`` images),
    without and with the trajectory callback (decode at every step)."""
    from torch.utils.flop_counter import FlopCounterMode

    n = max(1, job.batch_size)
    b, fn = bundle, strategy_for(job)
    x = torch.zeros(n, 1, th, tw, device=job.device)
    out = {}
    for label, cb in (("plain", None), ("trajectory", lambda t, e: None)):
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            fn(b, x, schedule_fn("fixed")(T_MAX), callback=cb)
        out[label] = fc.get_total_flops() / n
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        POSTERIOR(b, x, 1)
    out["posterior_sample"] = fc.get_total_flops() / n
    return out


def run_flops(bundle: ModelBundle, job: Job, height: int, width: int) -> tuple[float, float]:
    """Total FLOPs spent on one (8, height, width) field (tiles x K images, fixed schedule; NaN otherwise):
    (the engine: intermediate decodes on the recorded plane only, the naive loop: decodes on every plane)."""
    if job.schedule != "fixed":
        return float("nan"), float("nan")
    _, _, th, tw, rows, cols = tile_geometry(height, width, job.tile, job.margin, bundle.hvae.multiple)
    per = flops_per_image(bundle, job, th, tw)
    walks = len(rows) * len(cols)  # one walk per tile and plane, then K > 1 posterior samples around it
    sampling = walks * N_PLANES * job.samples * per["posterior_sample"] if job.samples > 1 else 0.0
    return (walks * ((N_PLANES - 1) * per["plain"] + per["trajectory"]) + sampling,
            walks * N_PLANES * per["trajectory"] + sampling)


# ------------------------------------------------------------------------------------------ comparisons


def compare_k1(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float = 1e-3, samples: int = 1) -> dict[str, Any]:
    """Engine vs naive on the walk's posterior means: same estimates up to ``tol`` (normalised units): float
    rounding for fp32, bf16's 8-bit mantissa for the bf16 engine. ``samples`` K > 1: the K posterior samples
    around the estimate are drawn differently on the two sides, so their spread is compared as a ratio of
    mean stds (within 15 %) instead of being 0."""
    d0 = np.abs(a["0"] - b["0"]) / NORM.scale
    fin = np.isfinite(a["trajectory"]) & np.isfinite(b["trajectory"])
    dt_ = np.abs(a["trajectory"][fin] - b["trajectory"][fin]) / NORM.scale
    same_nan = bool(np.array_equal(np.isnan(a["trajectory"]), np.isnan(b["trajectory"])))
    rel = float(np.linalg.norm(a["0"] - b["0"]) / np.linalg.norm(b["0"] - NORM.offset))
    res = {
        "max_abs_diff_normalised": float(d0.max()),
        "rel_l2_minus_offset": rel,
        "trajectory_max_abs_diff_normalised": float(dt_.max()) if dt_.size else 0.0,
        "trajectory_same_nan_pattern": same_nan,
        "std_max_engine": float(a["std"].max()), "std_max_naive": float(b["std"].max()),
        "tolerance_normalised": tol,
    }
    if samples == 1:
        spread_ok = res["std_max_engine"] == 0 and res["std_max_naive"] == 0
    else:
        res["std_ratio_engine_over_naive"] = float(a["std"].mean() / b["std"].mean())
        spread_ok = 0.85 < res["std_ratio_engine_over_naive"] < 1.15
    res["agree"] = bool(res["max_abs_diff_normalised"] < tol and res["trajectory_max_abs_diff_normalised"] < tol and same_nan
                        and spread_ok)
    return res


def compare_k(a: dict[str, np.ndarray], b: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    """K-sample statistics: means of the estimate and the std, and the mean difference vs its sampling spread."""
    diff = a["0"] - b["0"]
    sigma = np.sqrt(0.5 * (a["std"] ** 2 + b["std"] ** 2)) * np.sqrt(k / (k - 1))  # unbiased per-pixel std
    expected = np.sqrt(2.0 / k) * sigma
    z = float(np.sqrt(np.mean(diff**2)) / np.sqrt(np.mean(expected**2)))
    res = {
        "mean_of_estimate": {"engine": float(a["0"].mean()), "naive": float(b["0"].mean())},
        "mean_of_std": {"engine": float(a["std"].mean()), "naive": float(b["std"].mean())},
        "std_ratio_engine_over_naive": float(a["std"].mean() / b["std"].mean()),
        "rms_mean_diff_over_expected_spread": z,
        "note": "rms(engine mean - naive mean) / rms(sqrt(2/K) * per-pixel std): ~1 when both estimate the same "
                "posterior mean with independent draws",
    }
    res["consistent"] = bool(0.7 < z < 1.4 and 0.85 < res["std_ratio_engine_over_naive"] < 1.15)
    return res


# ------------------------------------------------------------------------------------------ sections


def cpu_has_bf16() -> bool:
    """Native bf16 matrix instructions (AVX512-BF16 or AMX): where bf16 autocast pays on a CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


SIDES = {  # name: what it is (run_side runs it)
    "engine": "predict_field: tiles x samples batched, channels-last, fp32 on CPU (bf16 autocast on CUDA)",
    "engine_bf16": "the engine with bf16 autocast on CPU (--precision bf16)",
    "naive": "per tile, per sample, batch of 1, fp32; the trajectory callback on every plane",
    "naive_lean": "naive, but the callback (a decode per step) only on the recorded plane, as the engine",
}


def run_side(side: str, bundle: ModelBundle, source: zarr.Array, job: Job, out_path: Path) -> tuple[LadderStore, float, float]:
    if side == "engine_bf16":
        return run_engine(bundle, source, Job(**{**job.__dict__, "precision": "bf16"}), out_path)
    if side == "engine":
        return run_engine(bundle, source, job, out_path)
    return run_naive(bundle, source, job, out_path, lean=side == "naive_lean")


def side_by_side(bundle: ModelBundle, source: zarr.Array, job: Job, repeats: int, tmp: Path, label: str,
                 sides: Sequence[str] = ("engine", "naive")) -> dict[str, Any]:
    """One untimed warm-up run per side, then alternating runs of every side (order reversed on odd repeats);
    medians, Mpx/s, ratios, agreement."""
    height, width = source.shape[-2:]
    mpx = N_PLANES * height * width / 1e6
    times: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    results: dict[str, dict[str, np.ndarray]] = {}
    for side in sides:  # untimed: oneDNN/cuDNN build kernels for this tile shape and batch on a side's first run
        run_side(side, bundle, source, job, tmp / f"{label}_{side}_warm.zarr")
    load_before = load1()
    for r in range(repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            store, wall, cpu_s = run_side(side, bundle, source, job, tmp / f"{label}_{side}.zarr")
            times[side].append(wall)
            cpu[side].append(cpu_s)
            if side not in results:
                results[side] = read_result(store)
            print(f"  [{label}] {side:11s} run {r + 1}/{repeats}: {wall:7.2f} s wall, {cpu_s:7.2f} s cpu "
                  f"({mpx / wall:.4f} Mpx/s)", flush=True)
    med = {s: median(v) for s, v in times.items()}
    med_cpu = {s: median(v) for s, v in cpu.items()}
    _, _, th, tw, rows, cols = tile_geometry(height, width, job.tile, job.margin, bundle.hvae.multiple)
    flops_engine, flops_all_decodes = run_flops(bundle, job, height, width)
    flops = {s: flops_all_decodes if s == "naive" else flops_engine for s in sides}
    engines = [s for s in sides if s.startswith("engine")]
    naives = [s for s in sides if s.startswith("naive")]
    out = {
        "shape": [N_PLANES, height, width], "samples": job.samples, "tile": job.tile, "margin": job.margin,
        "tile_shape": [th, tw], "tiles_per_plane": [len(rows), len(cols)], "batch_size": job.batch_size,
        "schedule": job.schedule, "megapixels": mpx, "repeats": repeats, "sides": {s: SIDES[s] for s in sides},
        "wall_s": times, "cpu_s": cpu, "median_wall_s": med, "median_cpu_s": med_cpu,
        "mpx_per_s": {s: mpx / v for s, v in med.items()},
        # headline: the engine (fp32 on CPU) against the naive loop; every engine against every naive side below
        "ratio_wall": med["naive"] / med["engine"], "ratio_cpu": med_cpu["naive"] / med_cpu["engine"],
        "ratios_wall": {f"{n}/{e}": med[n] / med[e] for n in naives for e in engines},
        "ratios_cpu": {f"{n}/{e}": med_cpu[n] / med_cpu[e] for n in naives for e in engines},
        "gflop": {s: f / 1e9 for s, f in flops.items()},
        "achieved_gflop_per_s": {s: flops[s] / v / 1e9 for s, v in med.items()},
        "load_average_1min": {"before": load_before, "after": load1()},
    }
    per_pass = max(1, job.batch_size // job.samples)
    out["images_per_forward_engine"] = min(per_pass, len(cols)) * job.samples
    agreement = {}
    for side in sides:
        if side == "naive":
            continue
        if side == "naive_lean":  # the same loop, seed and draws: only the skipped decodes differ
            same = all(np.array_equal(results[side][k], results["naive"][k], equal_nan=True) for k in results["naive"])
            agreement["naive_lean_vs_naive"] = {"identical": same}
            continue
        tol = 2e-2 if side == "engine_bf16" else 1e-3
        agreement[f"{side}_vs_naive"] = compare_k1(results[side], results["naive"], tol, job.samples)
    out["agreement"] = agreement
    return out


def batch_sweep(bundle: ModelBundle, source: zarr.Array, job: Job, sizes: list[int], tmp: Path, repeats: int) -> dict[str, Any]:
    height, width = source.shape[-2:]
    mpx = N_PLANES * height * width / 1e6
    _, _, _, _, rows, cols = tile_geometry(height, width, job.tile, job.margin, bundle.hvae.multiple)
    walls: dict[int, list[float]] = {bs: [] for bs in sizes}
    cpus: dict[int, list[float]] = {bs: [] for bs in sizes}
    for r in range(repeats):
        for bs in (sizes if r % 2 == 0 else sizes[::-1]):
            _, wall, cpu_s = run_engine(bundle, source, Job(**{**job.__dict__, "batch_size": bs}), tmp / f"sweep_{bs}.zarr")
            walls[bs].append(wall)
            cpus[bs].append(cpu_s)
            print(f"  [sweep] batch_size {bs:2d}: {wall:7.2f} s wall, {cpu_s:7.2f} s cpu ({mpx / wall:.4f} Mpx/s)", flush=True)
    return {
        "shape": [N_PLANES, height, width], "tile": job.tile, "margin": job.margin, "samples": job.samples,
        "tiles_per_row": len(cols), "rows": len(rows), "repeats": repeats,
        "wall_s": {str(bs): v for bs, v in walls.items()},
        "cpu_s": {str(bs): v for bs, v in cpus.items()},
        "mpx_per_s": {str(bs): mpx / median(v) for bs, v in walls.items()},
        "mpx_per_cpu_s": {str(bs): mpx / median(v) for bs, v in cpus.items()},
        "images_per_forward": {str(bs): min(max(1, bs // job.samples), len(cols)) * job.samples for bs in sizes},
    }


def identity_strategy(bundle: Any, x: torch.Tensor, schedule: Sequence[float], *, callback: Any = None) -> torch.Tensor:
    """No model: reports x at every step of the schedule. What is left is the engine's own cost."""
    if callback:
        for t in schedule[:-1]:
            callback(float(t), x)
        callback(0.0, x)
    return x


def run_identity(source: zarr.Array, job: Job, out_path: Path) -> float:
    opts = EngineOptions(tile=job.tile, margin=job.margin, batch_size=job.batch_size, samples=job.samples, trajectory=True)
    t0 = time.perf_counter()
    store = new_store(out_path, "identity")
    predict_field(identity_strategy, ModelBundle(), schedule_fn(job.schedule), source, NORM, store, FIELD, 0, opts,
                  job.device, multiple=16, show_progress=False)
    return time.perf_counter() - t0


def overhead_section(source: zarr.Array, job: Job, tmp: Path, repeats: int, profile: bool) -> dict[str, Any]:
    """The engine with an identity strategy: reads, normalisation, tiling, batching copies, mean/std,
    stitching, zarr writes and progress records; the ceiling on engine Mpx/s whatever the model's speed."""
    height, width = source.shape[-2:]
    mpx = N_PLANES * height * width / 1e6
    walls = []
    for r in range(repeats):
        walls.append(run_identity(source, job, tmp / "identity.zarr"))
        print(f"  [overhead] identity strategy run {r + 1}/{repeats}: {walls[-1]:.2f} s ({mpx / walls[-1]:.2f} Mpx/s)", flush=True)
    out: dict[str, Any] = {"shape": [N_PLANES, height, width], "tile": job.tile, "margin": job.margin,
                           "batch_size": job.batch_size, "samples": job.samples, "wall_s": walls,
                           "mpx_per_s": mpx / median(walls)}
    if profile:
        out["profile"] = profile_call(lambda: run_identity(source, job, tmp / "identity_prof.zarr"))
    return out


def profile_call(fn: Callable[[], Any], top: int = 15) -> dict[str, Any]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    wall = time.perf_counter() - t0
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    text = text[text.find("   ncalls"):] if "   ncalls" in text else text
    # cumulative time of the engine's parts (seconds, under the profiler)
    wanted = {
        "predict_field": ("dehaze/engine.py", "predict_field"),
        "run_tiles (strategy + copies)": ("dehaze/engine.py", "run_tiles"),
        "latent_loop (the strategy)": ("dehaze/strategies.py", "latent_loop"),
        "_read_rows (zarr read + normalise + pad)": ("dehaze/engine.py", "_read_rows"),
        "Normalization.apply": ("dehaze/normalization.py", "apply"),
        "Normalization.invert": ("dehaze/normalization.py", "invert"),
        "set_field_progress (attrs per tile row)": ("dehaze/store.py", "set_field_progress"),
        "zarr Array.__setitem__ (row writes)": ("zarr/core.py", "__setitem__"),
        "zarr Array.__getitem__ (reads)": ("zarr/core.py", "__getitem__"),
        "torch conv2d": ("~", "<built-in method torch.conv2d"),
        "torch std (K-sample spread)": ("~", "<method 'std' of"),
        "zarr chunk encode (compression)": ("zarr/core.py", "_encode_chunk"),
        "zarr chunk decode": ("zarr/core.py", "_decode_chunk"),
        "numpy stack": ("numpy", "stack"),
    }
    parts: dict[str, dict[str, float]] = {}
    for label, (file_part, func) in wanted.items():
        cum, tot, calls = 0.0, 0.0, 0
        for (fname, _, fn_name), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
            if (file_part == "~" and fname == "~" and fn_name.startswith(func)) or (file_part in fname and fn_name == func):
                cum, tot, calls = cum + ct, tot + tt, calls + nc
        if calls:
            parts[label] = {"cumulative_s": round(cum, 4), "calls": calls}
    total = stats.total_tt  # type: ignore[attr-defined]
    return {"wall_s_under_profiler": wall, "total_tt_s": total, "parts": parts, "top_tottime": text}


# ------------------------------------------------------------------------------------------ CUDA section


def cuda_section(args: argparse.Namespace, tmp: Path, device: torch.device) -> dict[str, Any]:
    """Engine vs naive on the GPU (hdn-reference), Mpx/s, achieved TFLOP/s and peak memory vs input size."""
    cfg = ModelConfig(args.gpu_preset, 64, 64)
    bundle = build_bundle(cfg, device)
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else str(device),
                           "models": cfg.__dict__, "amp_bf16": True}
    warm = make_source(tmp / "gpu_warm.zarr", 64, 64)
    run_engine(bundle, warm, Job(64, 8, 1, 8, args.schedule, device), tmp / "gpu_warm_out.zarr")
    run_naive(bundle, warm, Job(64, 8, 1, 8, args.schedule, device), tmp / "gpu_warm_out.zarr")
    for k, size in ((1, args.gpu_size), (16, args.gpu_size16)):
        src = make_source(tmp / f"gpu_src_{size}.zarr", size, size)
        job = Job(args.gpu_tile, args.gpu_margin, k, args.gpu_batch, args.schedule, device, precision="auto")
        print(f"GPU K={k}: {size}x{size}", flush=True)
        res[f"k{k}"] = side_by_side(bundle, src, job, args.gpu_repeats, tmp, f"gpu_k{k}", ("engine", "naive", "naive_lean"))
        shutil.rmtree(tmp / f"gpu_src_{size}.zarr", ignore_errors=True)
    res["memory"] = {}
    for size in args.gpu_mem_sizes:
        src = make_source(tmp / f"gpu_mem_{size}.zarr", size, size)
        job = Job(args.gpu_tile, args.gpu_margin, 1, args.gpu_batch, args.schedule, device, precision="auto")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _, wall, _ = run_engine(bundle, src, job, tmp / f"gpu_mem_{size}_out.zarr")
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        flops, _ = run_flops(bundle, job, size, size)
        mpx = N_PLANES * size * size / 1e6
        res["memory"][str(size)] = {"wall_s": wall, "mpx_per_s": mpx / wall, "achieved_tflop_per_s": flops / wall / 1e12,
                                    "tflop": flops / 1e12, "peak_memory_allocated_gib": None if peak is None else peak / 2**30}
        print(f"GPU {size}^2: {wall:.1f} s, {mpx / wall:.2f} Mpx/s, {flops / wall / 1e12:.2f} TFLOP/s, peak "
              f"{res['memory'][str(size)]['peak_memory_allocated_gib']} GiB", flush=True)
        shutil.rmtree(tmp / f"gpu_mem_{size}.zarr", ignore_errors=True)
        shutil.rmtree(tmp / f"gpu_mem_{size}_out.zarr", ignore_errors=True)
    return res


# ------------------------------------------------------------------------------------------ main


# ------------------------------------------------------------------------------------------ the flow sampler
FLOW_K, FLOW_STEPS = 16, 20  # issue #13: K = 16 posterior samples, 20 Euler steps


def build_flow_bundle(seed: int = 0) -> ModelBundle:
    """An untrained flow restorer of the CPU study's size (base 16, depth 3), its head perturbed (a
    zero-initialised head gives a zero velocity: every sample would be its own noise)."""
    from dehaze.models.flow import FlowNet

    torch.manual_seed(seed)
    net = FlowNet(base_channels=16, depth=3, time_embed_dim=64, target_scale=0.1)
    with torch.no_grad():
        net.unet.head.weight.normal_(0.0, 0.02)
    return ModelBundle(flow=net.eval())


def flow_strategy(steps: int) -> Strategy:
    return functools.partial(STRATEGIES["flow"].fn, params=StrategyParams(flow_steps=steps))


def run_flow_engine(bundle: ModelBundle, source: zarr.Array, job: Job, out_path: Path, steps: int) -> tuple[LadderStore, float, float]:
    """predict_field with the flow strategy (noise keyed by pixel position, tiles x K per pass)."""
    opts = EngineOptions(tile=job.tile, margin=job.margin, batch_size=job.batch_size, samples=job.samples, trajectory=False,
                         seed=job.seed, precision=job.precision)
    b = engine_bundle(bundle, opts)
    t0, c0 = time.perf_counter(), time.process_time()
    store = new_store(out_path, "engine-flow")
    predict_field(flow_strategy(steps), b, lambda h: [float(h), 0.0], source, NORM, store, FIELD, 0, opts, job.device,
                  multiple=bundle.flow.multiple, show_progress=False, needs_noise=True)
    return store, time.perf_counter() - t0, time.process_time() - c0


@torch.no_grad()
def run_flow_naive(bundle: ModelBundle, source: zarr.Array, job: Job, out_path: Path, steps: int) -> tuple[LadderStore, float, float]:
    """Per plane, per tile, per sample: the flow strategy on a batch of 1 (its own torch.randn noise), fp32."""
    fn, k = flow_strategy(steps), job.samples
    height, width = source.shape[-2:]
    pad_h, pad_w, th, tw, rows, cols = tile_geometry(height, width, job.tile, job.margin, bundle.flow.multiple)
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(job.seed)
    mean_out = np.zeros((N_PLANES, height, width), np.float32)
    std_out = np.zeros_like(mean_out)
    for h in range(N_PLANES):
        plane = NORM.apply(source[h])
        if pad_h != height or pad_w != width:
            plane = np.pad(plane, ((0, pad_h - height), (0, pad_w - width)), mode="reflect")
        for y0, ylo, yhi in rows:
            for x0, xlo, xhi in cols:
                x = torch.from_numpy(np.ascontiguousarray(plane[y0 : y0 + th, x0 : x0 + tw]))[None, None]
                stack = np.stack([fn(bundle, x, [float(h), 0.0])[0, 0].numpy() for _ in range(k)])
                ys, xs = slice(ylo, min(yhi, height)), slice(xlo, min(xhi, width))
                if ys.start >= height or xs.start >= width:
                    continue
                cy, cx = slice(ylo - y0, min(yhi, height) - y0), slice(xlo - x0, min(xhi, width) - x0)
                mean_out[h, ys, xs] = stack.mean(0)[cy, cx]
                std_out[h, ys, xs] = stack.std(0)[cy, cx]
    store = new_store(out_path, "naive-flow")
    store.write_field(FIELD, NORM.invert(mean_out), extras={"std": std_out * np.float32(NORM.scale)})
    return store, time.perf_counter() - t0, time.process_time() - c0


def flow_section(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The flow strategy with K = 16 and 20 Euler steps: engine against the naive loop, alternating runs,
    medians and the wall-time ratio; agreement by statistics (the two sides draw different noise)."""
    cpu = torch.device("cpu")
    bundle = build_flow_bundle()
    src = make_source(tmp / "src_flow.zarr", *args.flow_size)
    job = Job(args.tile, args.margin, FLOW_K, args.batch_size, "fixed", cpu)
    steps = 2 if args.quick else FLOW_STEPS
    mpx = N_PLANES * args.flow_size[0] * args.flow_size[1] / 1e6
    print(f"flow K={FLOW_K}, {steps} Euler steps: field {N_PLANES}x{args.flow_size[0]}x{args.flow_size[1]}, tile {args.tile}", flush=True)
    sides = {"engine": run_flow_engine, "naive": run_flow_naive}
    for name, fn in sides.items():  # untimed warm-up
        fn(bundle, src, job, tmp / f"flow_{name}_warm.zarr", steps)
    times: dict[str, list[float]] = {s: [] for s in sides}
    cpu_s: dict[str, list[float]] = {s: [] for s in sides}
    results = {}
    load_before = load1()
    for r in range(args.repeats16):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            store, wall, c = sides[name](bundle, src, job, tmp / f"flow_{name}.zarr", steps)
            times[name].append(wall)
            cpu_s[name].append(c)
            results.setdefault(name, read_result(store))
            print(f"  [flow] {name:6s} run {r + 1}/{args.repeats16}: {wall:7.2f} s wall ({mpx / wall:.4f} Mpx/s)", flush=True)
    med = {s: median(v) for s, v in times.items()}
    med_cpu = {s: median(v) for s, v in cpu_s.items()}
    _, _, th, tw, rows, cols = tile_geometry(*args.flow_size, job.tile, job.margin, bundle.flow.multiple)
    return {"strategy": "flow", "samples": FLOW_K, "flow_steps": steps, "solver": "euler",
            "model": "FlowNet base_channels 16, depth 3, time_embed_dim 64 (untrained, head N(0, 0.02))",
            "shape": [N_PLANES, *args.flow_size], "tile": job.tile, "margin": job.margin, "tile_shape": [th, tw],
            "tiles_per_plane": [len(rows), len(cols)], "batch_size": job.batch_size,
            "images_per_forward_engine": min(max(1, job.batch_size // FLOW_K), len(cols)) * FLOW_K,
            "network_evaluations_per_run": N_PLANES * len(rows) * len(cols) * FLOW_K * steps,
            "repeats": args.repeats16, "wall_s": times, "cpu_s": cpu_s, "median_wall_s": med, "median_cpu_s": med_cpu,
            "mpx_per_s": {s: mpx / v for s, v in med.items()},
            "ratio_wall": med["naive"] / med["engine"], "ratio_cpu": med_cpu["naive"] / med_cpu["engine"],
            "agreement": compare_k(results["engine"], results["naive"], FLOW_K),
            "sides": {"engine": "predict_field: tiles x K per pass, channels-last, noise keyed by pixel position",
                      "naive": "per plane, per tile, per sample: the flow strategy on a batch of 1, fp32, torch.randn noise"},
            "load_average_1min": {"before": load_before, "after": load1()}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, smoke test (< 30 s)")
    p.add_argument("--schedule", choices=("fixed", "ladder"), default="fixed",
                   help="fixed: every plane walks 7 -> 0 (default); ladder: plane h walks h -> 0 (as dehaze predict)")
    p.add_argument("--size1", type=int, nargs=2, default=None, metavar=("H", "W"), help="K=1 field size")
    p.add_argument("--size16", type=int, nargs=2, default=None, metavar=("H", "W"), help="K=16 field size")
    p.add_argument("--sweep-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="batch-sweep field size")
    p.add_argument("--tile", type=int, default=None)
    p.add_argument("--margin", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8, help="engine images per forward pass (EngineOptions default 8)")
    p.add_argument("--repeats", type=int, default=None, help="alternating repeats per side for K=1")
    p.add_argument("--repeats16", type=int, default=None, help="alternating repeats per side for K=16")
    p.add_argument("--sweep", type=str, default="1,4,8,16", help="batch sizes for the engine sweep")
    p.add_argument("--sweep-repeats", type=int, default=1)
    p.add_argument("--overhead-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="field size for the identity-strategy (engine overhead) run; 0 0 skips it")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine 2 threads spin against other "
                        "processes and timings vary by 10x or more; 0 keeps torch's default)")
    p.add_argument("--compare-with", type=Path, default=None,
                   help="an earlier result JSON (e.g. before an engine change): its key numbers go in 'previous_run'")
    p.add_argument("--gpu-size", type=int, default=1024, help="CUDA: K=1 side-by-side field size")
    p.add_argument("--gpu-size16", type=int, default=256, help="CUDA: K=16 side-by-side field size")
    p.add_argument("--gpu-mem-sizes", type=int, nargs="+", default=[2048, 8192], help="CUDA: engine-only sizes")
    p.add_argument("--gpu-tile", type=int, default=256)
    p.add_argument("--gpu-margin", type=int, default=32)
    p.add_argument("--gpu-batch", type=int, default=16)
    p.add_argument("--gpu-repeats", type=int, default=2)
    p.add_argument("--gpu-preset", default="hdn-reference")
    p.add_argument("--flow-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="flow (K=16, 20 steps) field size")
    p.add_argument("--flow-only", action="store_true", help="only the flow section (written to engine_flow_cpu[_quick].json)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    q = args.quick
    args.size1 = args.size1 or ([32, 64] if q else [64, 400])
    args.size16 = args.size16 or ([16, 16] if q else [48, 48])
    args.flow_size = args.flow_size or ([16, 16] if q else [64, 64])
    args.sweep_size = args.sweep_size or ([32, 64] if q else [64, 784])
    args.tile = args.tile or (32 if q else 64)
    args.margin = args.margin if args.margin is not None else 8
    args.repeats = args.repeats or (1 if q else 4)
    args.repeats16 = args.repeats16 or (1 if q else 3)
    args.overhead_size = args.overhead_size or ([128, 256] if q else [1024, 2048])
    if q and args.sweep == "1,4,8,16":
        args.sweep = "1,8"
    if q:
        args.gpu_size, args.gpu_size16, args.gpu_mem_sizes, args.gpu_repeats = 128, 64, [256, 512], 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    cfg = ModelConfig("tiny", 8, 8) if args.quick else ModelConfig("small", 32, 32)
    bundle = build_bundle(cfg, cpu)
    n_params = {k: sum(p.numel() for p in getattr(bundle, k).parameters()) for k in ("hvae", "latent")}
    n_params["degradation_G"] = sum(p.numel() for p in bundle.degradation.G.parameters())
    record: dict[str, Any] = {
        "benchmark": "engine",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "quick": args.quick,
        "machine": machine_info(),
        "strategy": STRATEGY,
        "schedule": args.schedule,
        "schedule_note": ("every plane walks 7 -> 0; trajectory recorded for the haziest plane" if args.schedule == "fixed"
                          else "plane h walks h -> 0 (dehaze predict); trajectory for the haziest plane"),
        "mpx_definition": "8 planes x H x W output pixels per second (each plane one full strategy walk)",
        "models_cpu": {**cfg.__dict__, "parameters": n_params, "latent_output_convs": "perturbed N(0, 0.02)"},
        "normalization": NORM.model_dump(),
        "goal_ratio": GOAL,
        "threads_note": (f"torch threads {torch.get_num_threads()} for both sides" + (
            " (pinned: on a shared 2-core machine 2 threads spin against other processes)" if args.threads == 1 else "")),
    }
    print(f"engine benchmark: {STRATEGY}, schedule {args.schedule}, models {cfg}, {torch.get_num_threads()} threads, "
          f"load {load1():.2f}", flush=True)
    t_start = time.perf_counter()
    if args.flow_only:
        with tempfile.TemporaryDirectory(prefix="dehaze-bench-engine-") as tmpdir:
            record["flow_k16"] = flow_section(args, Path(tmpdir))
        record["total_benchmark_s"] = time.perf_counter() - t_start
        f = record["flow_k16"]
        print(f"flow K={f['samples']} x {f['flow_steps']} steps {f['shape']}: " + ", ".join(
            f"{side} {v:.4f} Mpx/s" for side, v in f["mpx_per_s"].items()) + f"; naive/engine {f['ratio_wall']:.2f}x wall, "
              f"{f['ratio_cpu']:.2f}x cpu; agreement {json.dumps(f['agreement'])}")
        write_result(args.out or RESULTS_DIR / ("engine_flow_cpu_quick.json" if args.quick else "engine_flow_cpu.json"), record)
        return 0
    with tempfile.TemporaryDirectory(prefix="dehaze-bench-engine-") as tmpdir:
        tmp = Path(tmpdir)
        # warm-up (oneDNN kernels, allocator), untimed
        warm = make_source(tmp / "warm.zarr", 32, 32)
        run_engine(bundle, warm, Job(32, 0, 1, 8, args.schedule, cpu), tmp / "warm_out.zarr")
        run_naive(bundle, warm, Job(32, 0, 1, 8, args.schedule, cpu), tmp / "warm_out.zarr")

        src1 = make_source(tmp / "src1.zarr", *args.size1)
        job1 = Job(args.tile, args.margin, 1, args.batch_size, args.schedule, cpu)
        print(f"K=1: field {N_PLANES}x{args.size1[0]}x{args.size1[1]}, tile {args.tile}, margin {args.margin}", flush=True)
        sides = ("engine", *(("engine_bf16",) if cpu_has_bf16() else ()), "naive", "naive_lean")
        record["cpu_bf16_native"] = cpu_has_bf16()
        record["k1"] = side_by_side(bundle, src1, job1, args.repeats, tmp, "k1", sides)

        src16 = make_source(tmp / "src16.zarr", *args.size16)
        job16 = Job(args.tile, args.margin, 16, args.batch_size, args.schedule, cpu)
        print(f"K=16: field {N_PLANES}x{args.size16[0]}x{args.size16[1]}, tile {args.tile}", flush=True)
        record["k16"] = side_by_side(bundle, src16, job16, args.repeats16, tmp, "k16", sides)

        sizes = [int(s) for s in args.sweep.split(",") if s]
        if sizes:
            src_s = src1 if args.sweep_size == args.size1 else make_source(tmp / "src_sweep.zarr", *args.sweep_size)
            print(f"batch sweep {sizes}: field {N_PLANES}x{args.sweep_size[0]}x{args.sweep_size[1]}", flush=True)
            record["batch_sweep"] = batch_sweep(bundle, src_s, job1, sizes, tmp, args.sweep_repeats)
        if not args.no_profile:
            print("profiling one engine run (K=1)", flush=True)
            record["profile"] = profile_call(lambda: run_engine(bundle, src1, job1, tmp / "profile.zarr"))
        if args.overhead_size[0] > 0:
            src_o = make_source(tmp / "src_overhead.zarr", *args.overhead_size)
            job_o = Job(256, 32, 1, args.batch_size, args.schedule, cpu)
            print(f"engine overhead (identity strategy): field {N_PLANES}x{args.overhead_size[0]}x{args.overhead_size[1]}, "
                  "tile 256, margin 32", flush=True)
            record["engine_overhead"] = overhead_section(src_o, job_o, tmp, args.repeats, not args.no_profile)

        record["flow_k16"] = flow_section(args, tmp)
        if torch.cuda.is_available():
            record["gpu"] = cuda_section(args, tmp, torch.device("cuda"))
        else:
            record["gpu"] = "not available"
    record["total_benchmark_s"] = time.perf_counter() - t_start

    # ---- report
    print()
    for key in ("k1", "k16"):
        r = record[key]
        print(f"{key.upper():4s} {r['shape']} tile {r['tile_shape']} x {r['tiles_per_plane']}: " + ", ".join(
            f"{side} {v:.4f} Mpx/s" for side, v in r["mpx_per_s"].items()) + f"; {r['achieved_gflop_per_s']['engine']:.1f} GFLOP/s engine")
        print("     ratios (wall | cpu): " + ", ".join(f"{k} {v:.2f}x | {r['ratios_cpu'][k]:.2f}x" for k, v in r["ratios_wall"].items()))
        print(f"     agreement: {json.dumps(r['agreement'])}")
    if "batch_sweep" in record:
        s = record["batch_sweep"]
        print(f"batch sweep {s['shape']}, {s['tiles_per_row']} tiles per row (Mpx/s wall | per cpu-s): " + ", ".join(
            f"bs {k}: {v:.4f} | {s['mpx_per_cpu_s'][k]:.4f} ({s['images_per_forward'][k]} img/pass)" for k, v in s["mpx_per_s"].items()))
    if "profile" in record:
        print("\nprofile of one engine run (K=1), parts (cumulative s): " + json.dumps(record["profile"]["parts"]))
        print(record["profile"]["top_tottime"])
    if "engine_overhead" in record:
        o = record["engine_overhead"]
        print(f"engine overhead ceiling (identity strategy, {o['shape']}): {o['mpx_per_s']:.2f} Mpx/s")
        if "profile" in o:
            print("  parts (cumulative s): " + json.dumps(o["profile"]["parts"]))
            print(o["profile"]["top_tottime"])
    if args.compare_with:
        prev = json.loads(args.compare_with.read_text())
        record["previous_run"] = {
            "file": str(args.compare_with), "command": prev.get("command"), "date": prev.get("machine", {}).get("date"),
            **{key: {"shape": prev[key]["shape"], "mpx_per_s": prev[key]["mpx_per_s"], "ratio_wall": prev[key]["ratio_wall"],
                     "ratio_cpu": prev[key]["ratio_cpu"], "ratios_wall": prev[key].get("ratios_wall")}
               for key in ("k1", "k16") if key in prev},
            **({"batch_sweep_mpx_per_s": prev["batch_sweep"]["mpx_per_s"]} if "batch_sweep" in prev else {}),
            **({"engine_overhead_mpx_per_s": prev["engine_overhead"]["mpx_per_s"]} if "engine_overhead" in prev else {}),
        }
        print("previous run: " + json.dumps(record["previous_run"]))
    goal = GOAL["cpu"]
    for key in ("k1", "k16"):
        for name, ratio in record[key]["ratios_wall"].items():
            print(f"goal {goal:.0f}x on CPU, {key}, {name}: {ratio:.2f}x {'met' if ratio >= goal else 'NOT met'}")
    print(f"total {record['total_benchmark_s']:.1f} s")
    out = args.out or RESULTS_DIR / ("engine_cpu_quick.json" if args.quick else "engine_cpu.json")
    write_result(out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
