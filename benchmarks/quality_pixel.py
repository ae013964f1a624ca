#!/usr/bin/env python
"""Quality run, end to end: simulate -> train UNet and pixel restorer -> predict -> evaluate -> record.

Reduced CPU run of the study's pixel-space picture (DESIGN §6-7): the one-shot UNet baseline (CARE-like)
and the time-conditioned pixel restorer with InDI sampling (``pixel-indi``), scored per input step against
the step-0 camera image (``data.target=camera``), next to the hazy input itself.

Data: the ``paper-like`` ladder (512 x 512 fields, 8 steps) to train on (the trainer holds 25 % of its
fields out for validation), and a separate held-out test ladder simulated from the same manifest with
another seed (fields never seen in training) that predictions and the evaluation use. Every step is the
``dehaze`` command line; the commands are recorded in the JSON.

Usage (from the repository root)::

    python benchmarks/quality_pixel.py --threads 1 --parallel   # full reduced CPU run (about 50 min on 2 cores)
    python benchmarks/quality_pixel.py --quick       # smoke version (< 1 min on an idle machine; not written to results/)

Full run: 32 training fields, 8 held-out test fields, UNet and pixel restorer with base_channels 16, depth 3,
2000 steps of batch 16 of 64 x 64 patches, Adam lr 1e-3 (cosine), data.num_workers 1; tiles of 256.

Results: ``benchmarks/results/quality_pixel_cpu.json``, ``quality_pixel_cpu.png`` (the PSNR-per-step
figure of ``dehaze evaluate``, one-shot methods as a line at their mean) and ``quality_pixel_cpu_steps.png``
(every method per step). Large outputs (stores, runs, report) go to ``--workdir`` (default under /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_info, write_result

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
MIN_GAIN_DB = 0.5  # "clearly beats the hazy input": at least this PSNR gain at every step

FULL = {
    "manifest": "paper-like", "train_fields": 32, "test_fields": 8, "test_seed": 7,
    "train": {"steps": 2000, "batch_size": 16, "patch_size": 64, "model.base_channels": 16, "model.depth": 3,
              "data.num_workers": 1, "data.target": "camera", "optim.lr": 1e-3, "log.val_every": 100, "log.ckpt_every": 100},
    "tile": 256, "margin": 32,
}
QUICK = {
    "manifest": "default", "train_fields": 8, "test_fields": 2, "test_seed": 7,
    "train": {"steps": 30, "batch_size": 8, "patch_size": 32, "model.base_channels": 8, "model.depth": 2,
              "data.num_workers": 0, "data.target": "camera", "optim.lr": 1e-3, "log.val_every": 10, "log.ckpt_every": 10},
    "tile": 64, "margin": 16,  # a 64-px tile with the default 32-px margin would step by 4 px
}


def dehaze_exe() -> str:
    exe = Path(sys.executable).with_name("dehaze")
    return str(exe) if exe.exists() else "dehaze"


def run(cmd: list[str], log: list[dict], label: str) -> float:
    """Run one command (output streamed), record it with its wall time; stop on failure."""
    text = " ".join(shlex.quote(c) for c in cmd)
    print(f"\n$ {text}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - t0
    log.append({"step": label, "command": text, "wall_s": round(wall, 1), "rc": proc.returncode})
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode}): {text}")
    return wall


def run_parallel(cmds: dict[str, list[str]], log: list[dict]) -> dict[str, float]:
    """Run the trainers side by side (one core each with --threads 1); wall time of each, stop on failure."""
    t0, procs, wall = time.perf_counter(), {}, {}
    for kind, cmd in cmds.items():
        print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)} &", flush=True)
        procs[kind] = subprocess.Popen(cmd, cwd=REPO)
    for kind, proc in procs.items():
        rc = proc.wait()
        wall[kind] = time.perf_counter() - t0
        text = " ".join(shlex.quote(c) for c in cmds[kind])
        log.append({"step": f"train {kind} (in parallel)", "command": text, "wall_s": round(wall[kind], 1), "rc": rc})
        if rc != 0:
            for other in procs.values():
                other.kill()
            raise SystemExit(f"train {kind} failed (exit {rc}): {text}")
    return wall


def final_val_psnr(run_dir: Path) -> list[dict]:
    """(step, val_psnr) rows of a run's log.csv."""
    rows = []
    path = run_dir / "log.csv"
    if path.is_file():
        import csv

        for row in csv.DictReader(path.open()):
            if row["name"] == "val_psnr":
                rows.append({"step": int(row["step"]), "val_psnr_db": float(row["value"])})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke version (< 1 min): tiny ladder, tiny models, a few steps")
    p.add_argument("--workdir", type=Path, default=None, help="stores, runs and report (default /tmp/dehaze-quality[-quick])")
    p.add_argument("--train-fields", type=int, default=None, help="fields of the training ladder (default 32, the manifest's)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps of each trainer")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra training override key=value (both trainers)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch/OpenMP threads of every command (OMP_NUM_THREADS); 1 avoids oversubscription on a busy 2-core machine")
    p.add_argument("--parallel", action="store_true", help="train UNet and pixel restorer at the same time (use with --threads 1 on 2 cores)")
    p.add_argument("--keep", action="store_true", help="reuse stores and runs already in --workdir (default: start clean)")
    p.add_argument("--output", type=Path, default=None, help="JSON to write (default benchmarks/results/quality_pixel_cpu.json; quick: workdir)")
    args = p.parse_args(argv)

    plan = json.loads(json.dumps(QUICK if args.quick else FULL))
    if args.train_fields:
        plan["train_fields"] = args.train_fields
    if args.steps:
        plan["train"]["steps"] = args.steps
    for item in args.overrides:
        key, _, value = item.partition("=")
        plan["train"][key] = value
    work = args.workdir or Path("/tmp/dehaze-quality" + ("-quick" if args.quick else ""))
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every dehaze command below
    exe, log = dehaze_exe(), []
    load_start = [round(x, 2) for x in os.getloadavg()]
    t_start = time.perf_counter()

    train_store, test_store = work / "train.zarr", work / "test.zarr"
    manifest = plan["manifest"]
    run([exe, "simulate", manifest, "-o", str(train_store), "--workers", "2", "-q", "--set", f"n_fields={plan['train_fields']}"], log, "simulate train ladder")
    run([exe, "simulate", manifest, "-o", str(test_store), "--workers", "2", "-q", "--set", f"n_fields={plan['test_fields']}",
         "--set", f"seed={plan['test_seed']}"], log, "simulate held-out test ladder")

    sets = [a for k, v in plan["train"].items() for a in ("--set", f"{k}={v}")]
    runs = {kind: work / f"run_{kind}" for kind in ("unet", "pixel")}
    todo = {kind: [exe, "train", kind, "--data", str(train_store), "-o", str(run_dir), "-q", *sets]
            for kind, run_dir in runs.items() if not (args.keep and (run_dir / "checkpoint.pt").is_file())}
    train_s = (run_parallel(todo, log) if args.parallel
               else {kind: run(cmd, log, f"train {kind}") for kind, cmd in todo.items()})
    predict_s, preds = {}, {kind: work / f"pred_{kind}.zarr" for kind in runs}
    for kind, run_dir in runs.items():
        predict_s[kind] = run([exe, "predict", str(run_dir), "--input", str(test_store), "-o", str(preds[kind]), "--tile", str(plan["tile"]),
                               "--margin", str(plan["margin"]), "-q", "--overwrite"], log, f"predict {kind}")
    report = work / "report"
    evaluate_s = run([exe, "evaluate", *map(str, preds.values()), "--truth", str(test_store), "--report", str(report)], log, "evaluate")

    # ---- the record ----------------------------------------------------------------------------------
    metrics = json.loads((report / "metrics.json").read_text())
    steps = metrics["steps"]
    # our names for the report's methods, found by the store each was read from
    by_store = {str(test_store): "hazy_input", str(preds["unet"]): "unet", str(preds["pixel"]): "pixel-indi"}
    names = {"hazy_input": "hazy input", "unet": "UNet (one-shot)", "pixel-indi": "pixel restorer (InDI, delta 1)"}
    table = {}
    for report_key, entry in metrics["methods"].items():
        key = by_store.get(str(entry.get("store")), report_key)
        table[key] = {
            "label": names.get(key, key),
            "report_key": report_key,
            "psnr_db": {str(t): round(entry["steps"][str(t)]["mean"]["psnr"], 3) for t in steps},
            "ssim": {str(t): round(entry["steps"][str(t)]["mean"]["ssim"], 4) for t in steps},
            "psnr_range_invariant_db": {str(t): round(entry["steps"][str(t)]["mean"]["psnr_range_invariant"], 3) for t in steps},
            "mean_over_steps": {"psnr_db": round(entry["mean_over_steps"]["psnr"], 3), "ssim": round(entry["mean_over_steps"]["ssim"], 4)},
        }
    hazy = table["hazy_input"]["psnr_db"]
    gains = {key: {str(t): round(table[key]["psnr_db"][str(t)] - hazy[str(t)], 3) for t in steps} for key in table if key != "hazy_input"}
    unet_ok = all(g >= MIN_GAIN_DB for g in gains["unet"].values())

    print("\nPSNR (dB) vs camera x_0, mean over the held-out test fields:")
    print(f"  {'method':<34}" + "".join(f"{'t=' + str(t):>8}" for t in steps))
    for row in table.values():
        print(f"  {row['label']:<34}" + "".join(f"{row['psnr_db'][str(t)]:>8.2f}" for t in steps))
    for key, g in gains.items():
        print(f"  {'gain ' + key:<34}" + "".join(f"{g[str(t)]:>+8.2f}" for t in steps))
    print(f"UNet beats the hazy input by >= {MIN_GAIN_DB} dB at every step: {unet_ok}")

    record = {
        "benchmark": "quality_pixel",
        "setting": "quick smoke run" if args.quick else "reduced CPU run",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine_info(),
        "data": {"manifest": manifest, "train_store_fields": plan["train_fields"], "validation_split": "25 % of the training fields (by field)",
                 "test_store": f"{manifest} with seed={plan['test_seed']}, {plan['test_fields']} fields: held out (never trained on)",
                 "target": "camera (step-0 camera image)", "psnr": metrics["conventions"]["psnr"]},
        "training": {"overrides": plan["train"], "wall_s": {k: round(v, 1) for k, v in train_s.items()},
                     "val_psnr_db": {kind: final_val_psnr(run_dir) for kind, run_dir in runs.items()}},
        "prediction": {"tile": plan["tile"], "margin": plan["margin"], "strategies": {"unet": "one-shot-unet", "pixel": "pixel-indi (delta 1: t steps from step t)"},
                       "wall_s": {k: round(v, 1) for k, v in predict_s.items()}},
        "evaluate_wall_s": round(evaluate_s, 1),
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "torch_threads": args.threads or "torch default",
        "load_average_1_5_15min": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()],
                                   "note": "a shared machine: wall times include other users' load"},
        "steps": steps,
        "methods": table,
        "psnr_gain_over_hazy_db": gains,
        "unet_beats_hazy_by_min_gain": {"min_gain_db": MIN_GAIN_DB, "ok": unet_ok},
        "commands": log,
        "workdir": str(work),
    }
    out = args.output or (work / "quality_pixel_quick.json" if args.quick else RESULTS_DIR / "quality_pixel_cpu.json")
    write_result(out, record)
    png = out.with_suffix(".png")
    shutil.copyfile(report / "psnr_per_step.png", png)
    # the report's figure draws one-shot methods as a line at their mean; this one shows every step
    from dehaze.figures import StepCurve, psnr_per_step_plot

    steps_png = out.with_name(out.stem + "_steps.png")
    curves = [StepCurve(label=row["label"], values=[row["psnr_db"][str(t)] for t in steps],
                        kind="identity" if key == "hazy_input" else "iterative") for key, row in table.items()]
    psnr_per_step_plot(steps, curves, steps_png, title=f"PSNR per input step vs camera x_0, {record['setting']} "
                       f"(held-out {manifest} fields)", ylabel="PSNR (dB)")
    print(f"wrote {out}, {png} and {steps_png}")
    return 0 if unet_ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
