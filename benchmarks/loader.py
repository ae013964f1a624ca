#!/usr/bin/env python
"""Benchmark: is the Zarr patch loader ever the bottleneck of training?

The same short training (``training.loop.train``, the normal path) runs twice in one process: once
streaming patches from the ladder store (Zarr, the default) and once from an in-memory copy of the same
arrays (``train(..., in_memory=True)``: the same ``LadderPatches`` items, read from numpy). The ratio of
wall times zarr / in-memory is the loader's cost; the goal is <= 1.10.

Realistic setting: the ``paper-like`` store (512 x 512 fields, 8 steps), the UNet baseline (base_channels
32, depth 3), 64 x 64 patches, batch 16, 40 optimiser steps per timing, ``data.num_workers`` 0 and 2.
One warm-up pair of runs first (imports, store open, allocator); then the runs alternate
(zarr, mem, zarr, mem, ...) and the medians are compared, to beat the noise of a shared machine.
A loader-only pass (the DataLoader iterated without a model) shows the time per batch that the data costs.
On a CUDA machine the same runs also give GPU throughput in images/s.

Usage (from the repository root)::

    python benchmarks/loader.py                  # full run (a few minutes on 2 cores)
    python benchmarks/loader.py --quick          # tiny smoke run (seconds; not written to results/)
    python benchmarks/loader.py --profile        # + cProfile of one zarr run (top functions in the JSON)

The store is ``--store`` (default ``/tmp/dehaze-bench/paper.zarr``), simulated from ``paper-like`` if
missing. Results: ``benchmarks/results/loader_cpu.json`` (``loader_gpu.json`` on a CUDA machine).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

from dehaze.manifests import load_simulation_manifest
from dehaze.normalization import Normalization
from simulation.ladder import simulate_ladder
from training.config import TrainConfig
from training.data import LadderPatches, StepSampler, open_training_stores, split_fields
from training.loop import train
from training.tasks import TASKS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 1.10


def ensure_store(path: Path, n_fields: int | None) -> Path:
    if path.exists():
        return path
    over = [f"n_fields={n_fields}"] if n_fields else []
    print(f"simulating paper-like into {path} ...", flush=True)
    simulate_ladder(load_simulation_manifest("paper-like", over), path, workers=2, show_progress=False)
    return path


def make_cfg(args: argparse.Namespace, num_workers: int, device: str) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"kind": "unet", "base_channels": args.base_channels, "depth": args.depth},
        "steps": args.steps, "batch_size": args.batch_size, "patch_size": args.patch_size, "seed": 0,
        "device": device, "data": {"num_workers": num_workers},
        # one validation and one checkpoint at the end, as in any run (the same fixed cost on both sides)
        "log": {"log_every": 10, "val_every": 10_000, "ckpt_every": 10_000},
    })


class DataWait:
    """Seconds the training loop waits for its next batch (the training DataLoader only, not validation).

    Measured inside the same run as its wall time, so it does not suffer from the noise between runs on
    a shared machine: it is the loader's share of a run directly.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig = _BaseDataLoaderIter.__next__

    def __enter__(self) -> "DataWait":
        orig, me = self._orig, self

        def timed_next(it):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            try:
                return orig(it)
            finally:
                if getattr(it._dataset, "augment", False):  # training patches (validation ones are not augmented)
                    me.seconds += time.perf_counter() - t0

        _BaseDataLoaderIter.__next__ = timed_next
        return self

    def __exit__(self, *exc: object) -> None:
        _BaseDataLoaderIter.__next__ = self._orig


def timed_train(store: Path, cfg: TrainConfig, in_memory: bool, workdir: Path, counter: list[int]) -> tuple[float, float]:
    """(wall seconds of one whole train call, seconds of it spent waiting for training batches)."""
    counter[0] += 1
    run_dir = workdir / f"run_{cfg.device}_w{cfg.data.num_workers}_{counter[0]:03d}_{'mem' if in_memory else 'zarr'}"
    with DataWait() as wait:
        t0 = time.perf_counter()
        train("unet", [store], run_dir, cfg, show_progress=False, in_memory=in_memory)
        if cfg.device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return wall, wait.seconds


def loader_only(store: Path, cfg: TrainConfig, in_memory: bool) -> dict:
    """Iterate the training DataLoader alone (no model): seconds per batch the data costs."""
    stores = open_training_stores([store])
    norm = Normalization.from_stores(stores)
    train_fields, _ = split_fields(stores, cfg.data.val_fraction, cfg.seed)
    t0 = time.perf_counter()
    ds = LadderPatches([str(store)], train_fields, TASKS["unet"].sample_kind, cfg.patch_size, norm, cfg.seed,
                       cfg.steps * cfg.batch_size, augment=cfg.data.augment, in_memory=in_memory)
    t_open = time.perf_counter() - t0
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=StepSampler(0, cfg.steps, cfg.batch_size),
                        num_workers=cfg.data.num_workers)
    t0 = time.perf_counter()
    n = sum(1 for _ in loader)
    t_iter = time.perf_counter() - t0
    return {"dataset_setup_s": round(t_open, 4), "iterate_s": round(t_iter, 4), "batches": n,
            "s_per_batch": round(t_iter / max(n, 1), 5)}


def compare(store: Path, args: argparse.Namespace, num_workers: int, device: str, workdir: Path) -> dict:
    cfg = make_cfg(args, num_workers, device)
    counter = [0]
    print(f"[{device}, num_workers={num_workers}] warm-up ...", flush=True)
    warm = {"zarr": timed_train(store, cfg, False, workdir, counter), "mem": timed_train(store, cfg, True, workdir, counter)}
    times: dict[str, list[float]] = {"zarr": [], "mem": []}
    waits: dict[str, list[float]] = {"zarr": [], "mem": []}
    for r in range(args.repeats):
        order = ("zarr", "mem") if r % 2 == 0 else ("mem", "zarr")  # alternate who goes first
        for side in order:
            wall, wait = timed_train(store, cfg, side == "mem", workdir, counter)
            times[side].append(wall)
            waits[side].append(wait)
        print(f"  round {r + 1}/{args.repeats}: zarr {times['zarr'][-1]:.2f} s (data wait {waits['zarr'][-1]:.2f} s), "
              f"mem {times['mem'][-1]:.2f} s (data wait {waits['mem'][-1]:.2f} s)", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_wait = {k: statistics.median(v) for k, v in waits.items()}
    # In-run estimate, robust to the noise between runs: the zarr run with its data wait replaced by the
    # in-memory one, i.e. ratio = 1 + (wait_zarr - wait_mem) / (wall_zarr - wait_zarr + wait_mem), per run.
    per_run = [w_z / (w_z - d_z + med_wait["mem"]) for w_z, d_z in zip(times["zarr"], waits["zarr"])]
    images = cfg.steps * cfg.batch_size
    out = {
        "device": device,
        "num_workers": num_workers,
        "warmup_s": {k: round(v[0], 3) for k, v in warm.items()},
        "times_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "data_wait_s": {k: [round(x, 3) for x in v] for k, v in waits.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "median_data_wait_s": {k: round(v, 4) for k, v in med_wait.items()},
        "ratio_zarr_over_mem": round(med["zarr"] / med["mem"], 4),
        "ratio_in_run_estimate": round(statistics.median(per_run), 4),
        "data_wait_fraction_zarr": round(statistics.median([d / w for w, d in zip(times["zarr"], waits["zarr"])]), 4),
        "images_per_s": {k: round(images / v, 1) for k, v in med.items()},
        "loader_only": {"zarr": loader_only(store, cfg, False), "mem": loader_only(store, cfg, True)},
    }
    print(f"  median zarr {med['zarr']:.2f} s, mem {med['mem']:.2f} s -> ratio {out['ratio_zarr_over_mem']:.3f}; "
          f"in-run estimate {out['ratio_in_run_estimate']:.3f} (zarr data wait {100 * out['data_wait_fraction_zarr']:.1f} % of the run); "
          f"loader alone: zarr {out['loader_only']['zarr']['s_per_batch'] * 1e3:.1f} ms/batch, "
          f"mem {out['loader_only']['mem']['s_per_batch'] * 1e3:.1f} ms/batch", flush=True)
    # CPU the loader costs per step (measured alone), against a step of the zarr run: with workers the
    # decoding runs beside the model (no wait) but still takes CPU from it on a small machine
    per_step = med["zarr"] / cfg.steps
    out["loader_cpu_share_estimate"] = round((out["loader_only"]["zarr"]["s_per_batch"] - out["loader_only"]["mem"]["s_per_batch"]) / per_step, 4)
    out["meets_goal"] = out["ratio_zarr_over_mem"] <= GOAL_RATIO
    out["meets_goal_in_run_estimate"] = out["ratio_in_run_estimate"] <= GOAL_RATIO
    return out


def profile_zarr_run(store: Path, args: argparse.Namespace, workdir: Path, top: int = 25) -> list[str]:
    cfg = make_cfg(args, 0, "cpu")
    prof = cProfile.Profile()
    prof.enable()
    timed_train(store, cfg, False, workdir, [900])
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    text = buf.getvalue()
    print(text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("/tmp/dehaze-bench/paper.zarr"), help="paper-like ladder store (simulated if missing)")
    p.add_argument("--n-fields", type=int, default=None, help="fields when the store has to be simulated (default: the manifest's 32)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--workers", default="0,2", help="data.num_workers settings, comma separated")
    p.add_argument("--repeats", type=int, default=5, help="timed (zarr, mem) pairs per setting")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 avoids oversubscription on a busy machine)")
    p.add_argument("--profile", action="store_true", help="cProfile one zarr run (num_workers 0)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (small store, few steps); nothing written to results/")
    p.add_argument("--output", type=Path, default=None, help="JSON to write (default benchmarks/results/loader_{cpu,gpu}.json)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="dehaze-loader-"))
    if args.quick:  # the embedded default ladder (8 fields of 128 x 128), a tiny model, a few steps
        args.steps, args.repeats, args.base_channels, args.workers = 4, 1, 8, "0"
        if args.store == p.get_default("store"):
            args.store = workdir / "quick.zarr"
            simulate_ladder(load_simulation_manifest(None, []), args.store, workers=2, show_progress=False)
    else:
        ensure_store(args.store, args.n_fields)

    store = open_ladder_meta(args.store)
    result = {
        "benchmark": "loader",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine_info(),
        "store": {"path": str(args.store), **store},
        "setting": {"model": "unet", "base_channels": args.base_channels, "depth": args.depth, "patch_size": args.patch_size,
                    "batch_size": args.batch_size, "steps_per_timing": args.steps, "repeats": args.repeats,
                    "timing": "wall time of one whole training.loop.train call (set-up, steps, one validation, one checkpoint); "
                              "median over alternating runs after one warm-up pair"},
        "goal_ratio": GOAL_RATIO,
        "cpu": [],
        "gpu": "not available",
        "load_average_1_5_15min_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    out = args.output or RESULTS_DIR / ("loader_gpu.json" if torch.cuda.is_available() else "loader_cpu.json")
    for w in [int(x) for x in args.workers.split(",")]:
        result["cpu"].append(compare(args.store, args, w, "cpu", workdir))
        if not args.quick:  # keep what is measured so far
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**result, "partial": True}, indent=2) + "\n")
    if torch.cuda.is_available():
        result["gpu"] = {"name": torch.cuda.get_device_name(0),
                         "runs": [compare(args.store, args, w, "cuda", workdir) for w in [int(x) for x in args.workers.split(",")]]}
    if args.profile:
        result["profile_zarr_num_workers_0"] = profile_zarr_run(args.store, args, workdir)
    result["load_average_1_5_15min_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["ratio_summary"] = {f"num_workers={r['num_workers']}": {"wall_time_medians": r["ratio_zarr_over_mem"],
                                                                 "in_run_estimate": r["ratio_in_run_estimate"],
                                                                 "zarr_data_wait_fraction": r["data_wait_fraction_zarr"],
                                                                 "loader_cpu_share_estimate": r["loader_cpu_share_estimate"]} for r in result["cpu"]}

    text = json.dumps(result, indent=2) + "\n"
    if args.quick and args.output is None:
        print(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def open_ladder_meta(path: Path) -> dict:
    from dehaze.store import open_ladder

    s = open_ladder(path)
    return {"manifest": s.meta.manifest.get("name") if isinstance(s.meta.manifest, dict) else None,
            "fields": len(s.fields), "n_steps": s.n_steps, "field_shape": list(s.image(s.fields[0]).shape)}


if __name__ == "__main__":
    sys.exit(main())
