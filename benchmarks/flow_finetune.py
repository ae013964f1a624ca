#!/usr/bin/env python
"""How fast the flow restorer may leave its warm start: the study's flow recipe at several learning rates
and budgets, each warm-started from the study's pixel run (or its UNet run), scored by its K-sample mean against the UNet.

Needs a finished CPU study in ``--work`` (``python benchmarks/study.py``: its ladder, test ladder, pixel run
and UNet prediction); trains each variant there (``flow-finetune/<name>``, resumable) and predicts the test
ladder with K = 4 samples, 20 Euler steps (K = 16 is the flow's default; 4 keeps the run to minutes).

    python benchmarks/flow_finetune.py      # ~25 min on 2 cores; writes results/flow_finetune_cpu.json
    python benchmarks/flow_finetune.py --variants lr1e-3 lr1e-4-1600-steps --out results/flow_finetune_longer_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from machine import machine_info, write_result
from study import settings

from dehaze.config import build_model
from dehaze.evaluate import evaluate
from dehaze.predict import predict
from dehaze.predict_config import PredictConfig
from dehaze.runs import checkpoint_step
from training.config import TrainConfig, train_config_dict
from training.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = 4
# name -> overrides of the study's flow section (800 steps, Adam; its lr is 1e-4, this script's finding, so
# every variant names its rate). The rate and budget variants were measured with the velocity MSE
# (loss_weight_exponent 1, HazeMatching's loss and the default then), so they name it too.
VELOCITY = {"model": {"loss_weight_exponent": 1.0}}
VARIANTS = {
    "lr1e-3": {"optim": {"lr": 1e-3}, **VELOCITY},
    "lr3e-4": {"optim": {"lr": 3e-4}, **VELOCITY},
    "lr1e-4": {"optim": {"lr": 1e-4}, **VELOCITY},
    "lr3e-4-3200-steps": {"optim": {"lr": 3e-4}, "steps": 3200, **VELOCITY},
    # the chosen rate for longer: does the warm start keep improving, or walk away as at 3e-4?
    "lr1e-4-1600-steps": {"optim": {"lr": 1e-4}, "steps": 1600, **VELOCITY},
    # warm-started from the study's UNet run instead of its pixel run (the UNet is 0.6 dB better from x_T)
    "lr1e-4-from-unet": {"optim": {"lr": 1e-4}, **VELOCITY},
    # the loss per flow time: the clean estimate's error weighted by 1/(1-tau)^(2q); q = 1 is the velocity MSE
    # above, q = 0 (the default now) the clean estimate's own MSE
    "lr1e-4-x0-loss": {"optim": {"lr": 1e-4}, "model": {"loss_weight_exponent": 0.0}},
    "lr1e-4-loss-exponent-0.5": {"optim": {"lr": 1e-4}, "model": {"loss_weight_exponent": 0.5}},
    # with the clean-estimate loss the warm start's estimate holds: does a higher rate or a longer run now
    # learn more (a wider spread) without losing the mean?
    "x0-loss-lr3e-4": {"optim": {"lr": 3e-4}, "model": {"loss_weight_exponent": 0.0}},
    "x0-loss-lr1e-3": {"optim": {"lr": 1e-3}, "model": {"loss_weight_exponent": 0.0}},
    "x0-loss-lr1e-4-1600-steps": {"optim": {"lr": 1e-4}, "steps": 1600, "model": {"loss_weight_exponent": 0.0}},
}
BASES = {"lr1e-4-from-unet": "unet"}  # variant -> the study run it warm-starts from (default: pixel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dehaze-study-cpu"), help="a finished CPU study's folder")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="run these only")
    parser.add_argument("--out", type=Path, default=RESULTS / "flow_finetune_cpu.json", help="result JSON")
    args = parser.parse_args()
    work, t0 = args.work, time.perf_counter()
    unet = work / "predictions" / "one-shot-unet.zarr"
    missing = [p for p in (work / "ladder.zarr", work / "test.zarr", work / "runs" / "pixel", unet) if not p.exists()]
    if missing:
        parser.error(f"{missing[0]} is missing: run python benchmarks/study.py (or pass --work) first")
    cfg, rows = settings("cpu"), {}
    for name, overrides in ((n, VARIANTS[n]) for n in args.variants):
        out = work / "flow-finetune" / name
        train_cfg = build_model(TrainConfig, train_config_dict("flow", cfg.trainers["flow"], {"device": "cpu"}, overrides), [], f"flow {name}")
        t_train = time.perf_counter()
        if checkpoint_step(out / "run") < train_cfg.steps:
            print(f"training flow {name}")
            train("flow", [work / "ladder.zarr"], out / "run", train_cfg, resume=(out / "run" / "run.json").is_file(),
                  base_run=work / "runs" / BASES.get(name, "pixel"), show_progress=False)
        t_pred = time.perf_counter()
        store = predict([out / "run"], work / "test.zarr", out / "pred.zarr", PredictConfig(strategy="flow", samples=SAMPLES, seed=0, device="cpu"),
                        replace_stale=True, show_progress=False)[0]
        t_end = time.perf_counter()
        report = evaluate([store.path, unet], work / "test.zarr", out / "report", target=cfg.target)
        flow, ref = report["methods"]["flow"]["steps"], report["methods"]["one-shot-unet"]["steps"]
        cal = report["methods"]["flow"]["posterior"]["calibration"]  # pooled over steps, uncalibrated
        ratio = sorted(v / e for v, e in zip(cal["rmv"], cal["rmse"]) if e > 0)
        rows[name] = {"overrides": overrides, "base": BASES.get(name, "pixel"), "steps": train_cfg.steps, "lr": train_cfg.optim.lr,
                      "psnr_mean_of_k": {t: v["mean"]["psnr"] for t, v in flow.items()},
                      "mean_minus_unet_db": {t: flow[t]["mean"]["psnr"] - ref[t]["mean"]["psnr"] for t in flow},
                      # the raw spread against the error of the mean, per std bin (1: the std is the error)
                      "spread_over_error_per_bin": {"min": ratio[0], "median": ratio[len(ratio) // 2], "max": ratio[-1]},
                      "uce_uncalibrated_adu": cal["uce"],
                      "train_s_this_invocation": t_pred - t_train, "predict_s": t_end - t_pred}
        print(name, " ".join(f"t={t}: {v:+.2f}" for t, v in rows[name]["mean_minus_unet_db"].items()), "dB against the UNet")
    write_result(args.out, {
        "benchmark": "flow_finetune", "command": " ".join(["python benchmarks/flow_finetune.py", *sys.argv[1:]]),
        "samples": SAMPLES, "flow_steps": 20,
        "what": "flow K-sample mean PSNR (noise-free x_0 target) per input step, and its difference to the study's UNet, "
                "for warm-started flow runs at several learning rates and budgets",
        "variants": rows, "wall_s": time.perf_counter() - t0, "machine": machine_info()})


if __name__ == "__main__":
    main()
