#!/usr/bin/env python
"""The flow sampler's ODE solver and step count, side by side on one trained flow run: Euler 10 / 20 / 40
steps and Heun 10 (19 network evaluations, as Euler 20), each scored as ``dehaze evaluate`` scores a sampling
method: the K-sample mean's PSNR, one sample's FRC resolution and its power above half Nyquist against the
clean image's (1: in distribution; an MMSE blur is below, leftover noise above).

Needs a finished flow study in ``--work`` (``python benchmarks/study.py --flow --work DIR``: its test ladder,
flow run and UNet prediction); predicts the test ladder with K = 4 samples per setting (uncalibrated std) into
``DIR/flow-solver/``.

    python benchmarks/flow_solver.py --work DIR   # ~12 min on 2 cores; writes results/flow_solver_cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from machine import machine_info, write_result
from study import settings

from dehaze.evaluate import evaluate
from dehaze.predict import predict
from dehaze.predict_config import PredictConfig

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = 4
SETTINGS = {"euler-10": ("euler", 10), "euler-20": ("euler", 20), "heun-10": ("heun", 10), "euler-40": ("euler", 40)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dehaze-study-cpu"), help="a finished flow study's folder")
    args = parser.parse_args()
    work, t0 = args.work, time.perf_counter()
    unet = work / "predictions" / "one-shot-unet.zarr"
    missing = [p for p in (work / "test.zarr", work / "runs" / "flow", unet) if not p.exists()]
    if missing:
        parser.error(f"{missing[0]} is missing: run python benchmarks/study.py --flow --work {work} first")
    cfg, rows = settings("cpu"), {}
    for name, (solver, steps) in SETTINGS.items():
        out = work / "flow-solver" / name
        out.mkdir(parents=True, exist_ok=True)
        t_pred = time.perf_counter()
        store = predict([work / "runs" / "flow"], work / "test.zarr", out / "pred.zarr",
                        PredictConfig(strategy="flow", samples=SAMPLES, flow_steps=steps, flow_solver=solver, seed=0,
                                      device="cpu", write_samples=True, calibrated_std=False),
                        replace_stale=True, show_progress=False)[0]
        predict_s = time.perf_counter() - t_pred
        report = evaluate([store.path, unet], work / "test.zarr", out / "report", target=cfg.target)
        flow, ref = report["methods"]["flow"], report["methods"]["one-shot-unet"]["steps"]
        per = flow["posterior"]["per_step"]
        rows[name] = {"solver": solver, "ode_steps": steps, "predict_s": predict_s,
                      "psnr_mean_of_k": {t: v["mean"]["psnr"] for t, v in flow["steps"].items()},
                      "mean_minus_unet_db": {t: flow["steps"][t]["mean"]["psnr"] - ref[t]["mean"]["psnr"] for t in ref},
                      "sample_frc_um": {t: v["frc_um"]["sample"] for t, v in per.items()},
                      "unet_frc_um": {t: v["frc_um"]["unet"] for t, v in per.items()},
                      "sample_high_frequency_power_ratio": {t: v["high_frequency_power_ratio"]["sample"] for t, v in per.items()}}
        print(f"{name}: mean - UNet " + " ".join(f"{v:+.2f}" for v in rows[name]["mean_minus_unet_db"].values())
              + " dB; sample HF power " + " ".join(f"{v:.2f}" for v in rows[name]["sample_high_frequency_power_ratio"].values()))
    write_result(RESULTS / "flow_solver_cpu.json", {
        "benchmark": "flow_solver", "command": f"python benchmarks/flow_solver.py --work {work}", "samples": SAMPLES,
        "what": "flow sampler settings on one trained run (the flow study's): K-sample mean PSNR against the UNet, one "
                "sample's FRC resolution and high-frequency power ratio against the clean image, per input step",
        "settings": rows, "wall_s": time.perf_counter() - t0, "machine": machine_info()})


if __name__ == "__main__":
    main()
