"""The study, reproduced: train every model on the paper-like ladder, predict with every strategy, and
record the PSNR-per-step figure (../shared/seeds/figures/updated_results.png) and its numbers.

    python benchmarks/study.py                 # reduced CPU setting (says so in the result)
    python benchmarks/study.py --gpu           # the reference-sized setting, on a CUDA machine
    python benchmarks/study.py --quick         # a smoke run in a couple of minutes

Writes ``benchmarks/results/study_<setting>.json`` (per strategy: PSNR at every step of the walk from
x_T, drift in dB per step, PSNR/SSIM per input step; training settings and wall times; machine info) and
``benchmarks/results/study_<setting>.png``. Work goes to ``--work`` (default /tmp/dehaze-study-<setting>)
and resumes there if interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from dehaze.cli import _checkpoint_step, run_study
from dehaze.study_config import StudyConfig

from machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def settings(kind: str) -> StudyConfig:
    """Trainer sizes per setting. ``gpu`` follows the reference settings of DESIGN §6."""
    if kind == "gpu":
        common = {"batch_size": 32, "patch_size": 64, "log": {"val_every": 500, "ckpt_every": 500}, "data": {"num_workers": 4}}
        return StudyConfig(simulation="paper-like", samples=16, test_fields=8, trainers={
            "unet": {**common, "steps": 20000, "model": {"base_channels": 32, "depth": 3}},
            "pixel": {**common, "steps": 20000, "model": {"base_channels": 32, "depth": 3}},
            "hdn": {**common, "steps": 30000, "model": {"preset": "hdn-reference"}},
            "hvae": {**common, "steps": 30000, "model": {"preset": "hdn-reference"}},
            "latent": {**common, "steps": 20000, "patch_size": 128, "model": {"width": 128}},
            "degradation": {**common, "steps": 10000, "patch_size": 128, "model": {"width": 64, "lambda_sup": 1.0}},
        })
    if kind == "quick":
        common = {"batch_size": 4, "patch_size": 32, "log": {"val_every": 50, "ckpt_every": 50}}
        sim = ["n_fields=3", "volume.field_shape_yx=[96, 96]", "volume.nz=16"]
        return StudyConfig(simulation="paper-like", simulation_set=sim, samples=2, test_fields=1, jobs=2, trainers={
            "unet": {**common, "steps": 40, "model": {"base_channels": 8, "depth": 2}},
            "pixel": {**common, "steps": 40, "model": {"base_channels": 8, "depth": 2}},
            "hdn": {**common, "steps": 30, "model": {"preset": "tiny"}},
            "hvae": {**common, "steps": 30, "model": {"preset": "tiny"}},
            "latent": {**common, "steps": 30, "model": {"width": 8, "time_embed_dim": 8}},
            "degradation": {**common, "steps": 20, "model": {"width": 8, "lambda_sup": 1.0}},
        })
    # Reduced CPU setting: the paper-like physics (8 steps, 32-plane volume) on fewer, smaller fields and
    # small networks, so that the whole study fits in well under an hour on 2 cores: two trainers side by
    # side (one core each), scored on 2 held-out fields of another seed.
    common = {"batch_size": 8, "patch_size": 64, "log": {"val_every": 200, "ckpt_every": 200}}
    sim = ["n_fields=8", "volume.field_shape_yx=[256, 256]"]
    return StudyConfig(simulation="paper-like", simulation_set=sim, samples=2, test_fields=2, jobs=2, trainers={
        "unet": {**common, "steps": 800, "model": {"base_channels": 16, "depth": 3}, "optim": {"lr": 1e-3}},
        "pixel": {**common, "steps": 800, "model": {"base_channels": 16, "depth": 3}, "optim": {"lr": 1e-3}},
        "hdn": {**common, "steps": 800, "model": {"preset": "small"}, "optim": {"lr": 1e-3}},
        "hvae": {**common, "steps": 800, "model": {"preset": "small"}, "optim": {"lr": 1e-3}},
        "latent": {**common, "steps": 600, "model": {"width": 32, "time_embed_dim": 32}, "optim": {"lr": 1e-3}},
        "degradation": {**common, "steps": 400, "model": {"width": 32, "lambda_sup": 1.0}},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smoke run (tiny models, a few minutes)")
    group.add_argument("--gpu", action="store_true", help="reference-sized run (needs CUDA)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (resumable)")
    args = parser.parse_args()
    kind = "quick" if args.quick else ("gpu" if args.gpu else "cpu")
    if kind == "gpu" and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    cfg = settings(kind)
    work = args.work or Path(f"/tmp/dehaze-study-{kind}")
    # what an earlier run in this folder already finished (run_study skips it): wall_s then covers the rest
    reused = sorted(kind for kind, part in cfg.trainers.items()
                    if part.get("steps") is not None and _checkpoint_step(work / "runs" / kind) >= part["steps"])
    t0 = time.perf_counter()
    report_dir = run_study(cfg, work, quiet=False)
    wall_s = time.perf_counter() - t0
    report = json.loads((report_dir / "metrics.json").read_text())
    summary = {}
    for key, entry in report["methods"].items():
        traj = entry.get("trajectory", {})
        walk = list(map(str, traj.get("steps", [])))  # t = T ... 1: one point per estimate (conventions.trajectory)

        def along(metric: str) -> dict[str, float | None]:
            return dict(zip(walk, traj.get(metric, [])))

        def per_input_step(metric: str) -> dict[str, float | None]:
            return {t: v["mean"][metric] for t, v in entry["steps"].items()}

        summary[key] = {
            "one_shot": entry["one_shot"],
            "psnr_along_walk_from_xT": along("psnr"),
            "psnr_range_invariant_along_walk_from_xT": along("psnr_range_invariant"),
            "frc_um_along_walk_from_xT": along("frc_resolution_um"),
            "ssim_along_walk_from_xT": along("ssim"),
            "drift_db_per_step": traj.get("drift_db_per_step"),  # per transition: (last - first) / (points - 1)
            "drift_range_invariant_db_per_step": traj.get("drift_range_invariant_db_per_step"),
            "psnr_per_input_step": per_input_step("psnr"),
            "psnr_range_invariant_per_input_step": per_input_step("psnr_range_invariant"),
            "ssim_per_input_step": per_input_step("ssim"),
            "frc_um_per_input_step": per_input_step("frc_resolution_um"),
        }
    result = {
        "benchmark": "study",
        "setting": {"cpu": "reduced CPU run (8 training fields of 256x256 on the paper-like optics, small networks, K=2; "
                           "scored on 2 held-out fields of another seed)", "gpu": "reference-sized GPU run (scored on 8 held-out fields)",
                    "quick": "smoke run (tiny models): numbers are not meaningful"}[kind],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "wall_s": round(wall_s, 1),
        "trainers_reused_from_an_earlier_run": reused,
        "target": report["target"],
        "conventions": {k: report["conventions"][k] for k in ("trajectory", "psnr_range_invariant", "ssim_offset", "frc_resolution_um", "null")},
        "ssim_offset": report["ssim_offset"],
        "study_config": cfg.model_dump(mode="json"),
        "reference_from_the_study": {"unet_db": 31.7, "hdn_db": 32.9, "latent_start_db": 31.5,
                                     "direct_drift_db_per_step": -1.1, "best_variant_end_db": 29.9},
        "methods": summary,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"study_{kind}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(report_dir / "study_psnr.png", RESULTS / f"study_{kind}.png")
    print(f"wrote {RESULTS / f'study_{kind}.json'} and study_{kind}.png ({wall_s / 60:.1f} min)")

    def _db(value: float | None, spec: str = ".2f") -> str:  # null in metrics.json is infinite (conventions.null)
        return "inf" if value is None else format(value, spec)

    for key, s in summary.items():
        walk, ri = list(s["psnr_along_walk_from_xT"].values()), list(s["psnr_range_invariant_along_walk_from_xT"].values())
        ends = f"{_db(walk[0])} -> {_db(walk[-1])} dB (range-inv. {_db(ri[0])} -> {_db(ri[-1])})" if walk else ""
        print(f"  {key:<20} {ends:<44} drift {_db(s['drift_db_per_step'], '+.2f')} / {_db(s['drift_range_invariant_db_per_step'], '+.2f')} dB per transition")


if __name__ == "__main__":
    main()
