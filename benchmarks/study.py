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
from machine import machine_info

from dehaze.predict_config import PredictConfig
from dehaze.runs import checkpoint_step, read_run_report
from dehaze.study import run_study
from dehaze.study_config import StudyConfig

RESULTS = Path(__file__).resolve().parent / "results"


def settings(kind: str) -> StudyConfig:
    """Trainer sizes per setting. ``gpu`` follows the reference settings of DESIGN §6."""
    if kind == "gpu":
        common = {"batch_size": 32, "patch_size": 64, "log": {"val_every": 500, "ckpt_every": 500}, "data": {"num_workers": 4}}
        return StudyConfig(simulation="paper-like", test_fields=8, trainers={
            "unet": {**common, "steps": 20000, "model": {"base_channels": 32, "depth": 3}},
            "pixel": {**common, "steps": 20000, "model": {"base_channels": 32, "depth": 3}},
            "hdn": {**common, "steps": 30000, "model": {"preset": "hdn-reference"}},
            "hvae": {**common, "steps": 30000, "model": {"preset": "hdn-reference"}},
            "latent": {**common, "steps": 20000, "patch_size": 128, "model": {"width": 128}},
            "degradation": {**common, "steps": 10000, "patch_size": 128, "model": {"width": 64}},
        })
    if kind == "quick":
        common = {"batch_size": 4, "patch_size": 32, "log": {"val_every": 50, "ckpt_every": 50}}
        sim = ["n_fields=3", "volume.field_shape_yx=[96, 96]", "volume.nz=16"]
        return StudyConfig(simulation="paper-like", simulation_set=sim, predict={"samples": 2}, test_fields=1, jobs=2, trainers={
            "unet": {**common, "steps": 40, "model": {"base_channels": 8, "depth": 2}},
            "pixel": {**common, "steps": 40, "model": {"base_channels": 8, "depth": 2}},
            "hdn": {**common, "steps": 30, "model": {"preset": "tiny"}},
            "hvae": {**common, "steps": 30, "model": {"preset": "tiny"}},
            "latent": {**common, "steps": 30, "model": {"width": 8, "time_embed_dim": 8}},
            "degradation": {**common, "steps": 20, "model": {"width": 8}},
        })
    # Reduced CPU setting: the paper-like physics (8 steps, 32-plane volume) on fewer, smaller fields and
    # small networks, so that the whole study fits in well under an hour on 2 cores: two trainers side by
    # side (one core each), scored on 2 held-out fields of another seed. HDN draws its default 16 posterior
    # samples (predict.samples: null); the latent walks run on posterior means.
    common = {"batch_size": 8, "patch_size": 64, "log": {"val_every": 200, "ckpt_every": 200}}
    sim = ["n_fields=8", "volume.field_shape_yx=[256, 256]"]
    # one torch thread per trainer whatever the load or the core count (torch's CPU sums depend on it)
    return StudyConfig(simulation="paper-like", simulation_set=sim, test_fields=2, jobs=2, threads_per_trainer=1, trainers={
        "unet": {**common, "steps": 800, "model": {"base_channels": 16, "depth": 3}, "optim": {"lr": 1e-3}},
        "pixel": {**common, "steps": 800, "model": {"base_channels": 16, "depth": 3, "sample_delta": 0.25}, "optim": {"lr": 1e-3}},
        "hdn": {**common, "steps": 800, "model": {"preset": "small"}, "optim": {"lr": 1e-3}},
        "hvae": {**common, "steps": 800, "model": {"preset": "small"}, "optim": {"lr": 1e-3}},
        "latent": {**common, "steps": 600, "model": {"width": 32, "time_embed_dim": 32}, "optim": {"lr": 1e-3}},
        "degradation": {**common, "steps": 800, "model": {"width": 32}},
        # warm-started from the pixel run (same base_channels, depth and time_embed_dim): measured against
        # from scratch in FLOW_ABLATIONS; lr 3e-4 measured against 1e-4 and 1e-3 with the clean-estimate loss
        # (benchmarks/flow_finetune.py)
        "flow": {**common, "steps": 800, "model": {"base_channels": 16, "depth": 3}, "optim": {"lr": 3e-4}},
    })


PIXEL_STRATEGIES = ["pixel-indi", "pixel-indi-early", "pixel-one-shot"]  # what a pixel recipe variant changes
# Variants trained beside the study's runs (same data, same steps), each scored with the strategies it changes:
# kind -> (name, overrides of the trainer section, strategies). They measure the recipe choices with and without. (The
# residual restorers were measured on this ladder by a first run with residual: true; README, "The restorers".)
ABLATIONS = {
    "pixel": [("no-walk-loss", {"model": {"walk_weight": 0.0}}, PIXEL_STRATEGIES),
              # the walk loss on the state one sampler step from x_s reaches (the default, uniform, jumps to t ~ U(0, s))
              ("walk-span-one-step", {"model": {"walk_span": "one-step"}}, PIXEL_STRATEGIES),
              # no training samples at t = s exactly (the earlier recipe; the default puts a quarter there)
              ("no-source-point", {"model": {"source_fraction": 0.0}}, PIXEL_STRATEGIES),
              # the earlier path noise (the default is 0; see PixelModel.path_noise_std)
              ("path-noise-0.01", {"model": {"path_noise_std": 0.01}}, PIXEL_STRATEGIES),
              # x_t alone (the earlier recipe; the default reads the source image x_s beside it at every step)
              ("no-source-image", {"model": {"source_image": False}}, PIXEL_STRATEGIES),
              # more of the path's samples at t = s (1.0: every one; the states below s then come from the walk
              # loss alone). Why: with x_s read beside x_t, a path sample at t < s teaches only the identity
              # x_0 = (s x_t - t x_s) / (s - t), under which a walk hands back its first estimate
              # (tests/test_indi.py); the walk loss's states teach a refinement. Measured (benchmarks/pixel_recipe.py):
              # not kept, the walk falls further below its one-shot (README, "What this says")
              ("source-point-half", {"model": {"source_fraction": 0.5}}, PIXEL_STRATEGIES),
              ("source-point-only", {"model": {"source_fraction": 1.0}}, PIXEL_STRATEGIES)],
}
# The flow restorer's recipe, measured (--flow): from scratch against the study's default warm start from the
# pixel run, scored with the flow strategy. (The velocity parametrisation from scratch is HazeMatching's recipe,
# which the issue measured 3-4 dB below the UNet; ("scratch-velocity", {"model": {"parametrisation": "velocity"}, "optim": {"lr": 1e-3}}, ["flow"])
# adds it: another ~20 min on 2 shared cores, not recorded.)
FLOW_ABLATIONS = {
    "flow": [("scratch-x0", {"model": {"parametrisation": "x0"}, "optim": {"lr": 1e-3}}, ["flow"])],
}
FLOW_TRAINERS = ("unet", "pixel", "flow")  # --flow: the study's runs the flow restorer is judged against
# Slower variants (--degradation-ablations; 5-15 min each on 2 idle cores, the per-step CycleGAN the slowest)
DEGRADATION_ABLATIONS = {
    "degradation": [("walk-finetuned-R", {"model": {"restorer_walk_weight": 1.0}}, ["latent-direct", "latent-cold", "latent-combine-dr"]),
                    ("cyclegan", {"model": {"preset": "cyclegan"}}, ["latent-direct", "latent-cold"])],
}
LATENT_SAMPLES_CHECK = 4  # K of the in-distribution check: the one-shot latent estimate with K samples vs K = 1


def _walk_summary(entry: dict) -> dict:
    traj = entry.get("trajectory", {})
    return {"psnr_along_walk_from_xT": dict(zip(map(str, traj.get("steps", [])), traj.get("psnr", []))),
            "drift_db_per_step": traj.get("drift_db_per_step"),
            "psnr_per_input_step": {t: v["mean"]["psnr"] for t, v in entry["steps"].items()}}


def run_ablations(cfg: StudyConfig, work: Path, variants: dict, samples: int | None = None) -> dict:
    """Train each variant of ABLATIONS next to the study's runs, predict the test ladder with the strategies
    it changes, and score them; plus the one-shot latent estimate with K posterior samples."""
    from dehaze.config import build_model
    from dehaze.evaluate import evaluate
    from dehaze.predict import predict
    from dehaze.runs import read_run_report
    from training.config import TrainConfig, train_config_dict
    from training.loop import train

    out = {}
    test, runs = work / "test.zarr", work / "runs"
    for kind, kind_variants in variants.items():
        for name, overrides, strategies in kind_variants:
            run = work / "ablations" / f"{kind}-{name}"
            # the study's section with the overrides merged on, validated as a new config (a preset fills its fields)
            variant_cfg = build_model(TrainConfig, train_config_dict(kind, cfg.trainers[kind], {"device": cfg.device},
                                                                     overrides), [], f"ablation {kind} {name}")
            if checkpoint_step(run) < variant_cfg.steps:
                print(f"[ablation] training {kind} {name}")
                # an ablation of the flow restorer is its recipe from scratch: no warm start
                train(kind, [work / "ladder.zarr"], run, variant_cfg, resume=(run / "run.json").is_file(),
                      base_run=runs / "latent" if kind == "degradation" else None, show_progress=False)
            (work / "ablations" / f"pred-{kind}-{name}").mkdir(exist_ok=True)
            stores = [predict([run], test, work / "ablations" / f"pred-{kind}-{name}" / f"{s}.zarr", PredictConfig(strategy=s, seed=0, device=cfg.device, samples=samples),
                              replace_stale=True, show_progress=False)[0] for s in strategies]
            report = evaluate([st.path for st in stores], test, work / "ablations" / f"report-{kind}-{name}", target=cfg.target)
            out[f"{kind}:{name}"] = {"overrides": overrides,
                                     "methods": {k: _walk_summary(v) for k, v in report["methods"].items() if k != "hazy_input"}}
            check = read_run_report(run).get("degradation_check")
            if check:
                out[f"{kind}:{name}"]["degradation_check"] = check
    if not (runs / "degradation").is_dir():  # a study without the latent chain (--flow)
        return out
    k = LATENT_SAMPLES_CHECK
    stores = [predict([runs / "degradation"], test, work / "ablations" / f"pred-latent-one-shot-k{kk}.zarr", 
                      PredictConfig(strategy="latent-one-shot", samples=kk, seed=0, device=cfg.device), replace_stale=True, show_progress=False)[0] for kk in (1, k)]
    report = evaluate([st.path for st in stores], test, work / "ablations" / "report-latent-samples", target=cfg.target)
    per = [report["methods"][key]["steps"] for key in report["methods"] if key != "hazy_input"]
    out["latent-one-shot:samples"] = {
        "k": k, "psnr_k1": {t: v["mean"]["psnr"] for t, v in per[0].items()},
        f"psnr_k{k}": {t: v["mean"]["psnr"] for t, v in per[1].items()},
        "loss_db": {t: per[0][t]["mean"]["psnr"] - per[1][t]["mean"]["psnr"] for t in per[0]}}
    return out


FLOW_ABLATION_K = 4  # samples of the ablations' predictions (2 shared cores: K = 16 takes ~10 min per run)


def _k_sample_mean_psnr(store: Path, truth: Path, target: str, k: int) -> dict[str, float]:
    """PSNR per input step of the mean of the first ``k`` written samples (fields averaged)."""
    from dehaze.evaluate import target_image
    from dehaze.metrics import psnr
    from dehaze.store import open_ladder

    pred, tr = open_ladder(store), open_ladder(truth)
    out = {}
    for t in range(1, pred.n_steps):
        out[str(t)] = float(sum(psnr(pred.root[f]["samples"][t, :k].mean(0), target_image(tr, f, target)) for f in pred.fields) / len(pred.fields))
    return out


def run_flow(cfg: StudyConfig, work: Path, ablations: bool = True) -> Path:
    """--flow: the flow restorer beside the runs it is judged against (FLOW_TRAINERS, the study's sections and
    ladders), its ablations, the std calibration (per input step, and pooled over the steps beside it) fitted
    on one held-out field and scored on the other, and the posterior criteria of ``dehaze evaluate``; writes
    results/flow_cpu.json and its figures."""
    from dehaze.calibration import cross_fit

    t0 = time.perf_counter()
    reused = sorted(k for k in FLOW_TRAINERS if checkpoint_step(work / "runs" / k) >= cfg.trainers[k]["steps"])
    sub = cfg.model_copy(update={"trainers": {k: cfg.trainers[k] for k in FLOW_TRAINERS},
                                 "predict": PredictConfig(strategy="all", device=cfg.device, write_samples=True)})
    report_dir = run_study(sub, work, quiet=False)
    report = json.loads((report_dir / "metrics.json").read_text())
    found = {}
    if ablations:  # scored with K = FLOW_ABLATION_K, against the default's mean of its first K written samples
        found = run_ablations(sub, work, FLOW_ABLATIONS, samples=FLOW_ABLATION_K)
        found["flow:warm-start (default)"] = {f"psnr_k{FLOW_ABLATION_K}_mean_per_input_step": _k_sample_mean_psnr(
            work / "predictions" / "flow.zarr", work / "test.zarr", cfg.target, FLOW_ABLATION_K)}
    ablations = found
    flow_store = work / "predictions" / "flow.zarr"
    calibration = cross_fit(flow_store, work / "test.zarr", target=cfg.target, figure=RESULTS / "flow_cpu_reliability.png")
    pooled = cross_fit(flow_store, work / "test.zarr", target=cfg.target, pooled=True)  # one scale for all steps, beside it
    isotonic = cross_fit(flow_store, work / "test.zarr", target=cfg.target, method="isotonic")  # a monotone map per step
    t_max = max(report["steps"])
    methods = {k: {"psnr_per_input_step": {t: v["mean"]["psnr"] for t, v in e["steps"].items()},
                   "frc_um_per_input_step": {t: v["mean"]["frc_resolution_um"] for t, v in e["steps"].items()},
                   "posterior": e.get("posterior")} for k, e in report["methods"].items()}
    unet, flow = methods["one-shot-unet"]["psnr_per_input_step"], methods["flow"]["psnr_per_input_step"]
    gap = {t: flow[t] - unet[t] for t in unet}
    post = methods["flow"]["posterior"] or {}
    unet_frc = methods["one-shot-unet"]["frc_um_per_input_step"]  # < 0: the single sample resolves finer than the UNet
    finer = {t: e["frc_um"]["sample"] - unet_frc[t] for t, e in post.get("per_step", {}).items() if e["frc_um"]["sample"] is not None}
    def worst_gaps(fits: dict) -> list[float]:
        return [g for fit in fits["fits"] for g in fit["scored_on_others"]["relative_gap_per_bin"] if g is not None]

    gaps, gaps_isotonic = worst_gaps(calibration), worst_gaps(isotonic)
    result = {
        "benchmark": "flow", "setting": "the reduced CPU study (benchmarks/study.py settings('cpu')): unet, pixel and flow only",
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
        "wall_s": round(time.perf_counter() - t0, 1), "trainers_reused_from_an_earlier_run": reused,
        "train_wall_s": {k: float((work / "runs" / k / "log.csv").read_text().split()[-1].split(",")[-1]) for k in FLOW_TRAINERS},
        "target": report["target"], "flow_config": cfg.trainers["flow"], "predict": sub.predict.model_dump(mode="json"),
        "methods": methods, "ablations": ablations or "not run (--no-ablations)", "calibration": calibration,
        "calibration_pooled_over_steps": pooled, "calibration_isotonic_per_step": isotonic,
        "goals": {
            "k_sample_mean_within_0.3db_of_unet_every_step": {"measured_db": gap, "reached": min(gap.values()) >= -0.3},
            "single_samples_finer_frc_than_unet_every_step": {"measured_um": finer, "reached": bool(finer) and max(finer.values()) < 0},
            "calibrated_std_within_10pct_every_bin_held_out": {"measured_max": max(gaps) if gaps else None,
                                                               "measured_max_isotonic": max(gaps_isotonic) if gaps_isotonic else None,
                                                               "reached": bool(gaps) and min(max(gaps), max(gaps_isotonic or [1.0])) <= 0.10},
        },
        "from_xT": {"unet_db": unet[str(t_max)], "flow_mean_db": flow[str(t_max)]},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flow_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    for name in ("psnr_per_step.png", "posterior.png"):
        if (report_dir / name).is_file():
            shutil.copy(report_dir / name, RESULTS / f"flow_cpu_{name}")
    print(f"wrote {RESULTS / 'flow_cpu.json'} ({result['wall_s'] / 60:.1f} min)")
    for name, g in result["goals"].items():
        print(f"  goal {name}: {'reached' if g['reached'] else 'NOT reached'}")
    return RESULTS / "flow_cpu.json"


def goals(methods: dict, ablations: dict, check: dict | None) -> dict:
    """The issue's targets, each with the number measured and whether it was reached."""
    latent = {k: v for k, v in methods.items() if k.startswith("latent-") and not v["one_shot"]
              and k not in ("latent-oracle", "latent-identity")}  # the study's variants; the two references apart
    end = {k: list(v["psnr_along_walk_from_xT"].values())[-1] for k, v in methods.items() if v["psnr_along_walk_from_xT"]}
    t_max = max(int(t) for t in methods["hazy_input"]["psnr_per_input_step"])
    hazy, unet = methods["hazy_input"]["psnr_per_input_step"][str(t_max)], methods["one-shot-unet"]["psnr_per_input_step"][str(t_max)]
    iterative = {k: end[k] for k in list(latent) + ["pixel-indi", "pixel-indi-early"] if k in end}
    best = max(iterative, key=iterative.get) if iterative else None
    direct = methods.get("latent-direct", {}).get("drift_db_per_step")
    indi, one = methods.get("pixel-indi", {}), methods.get("pixel-one-shot", {})
    indi_margin = {t: indi["psnr_per_input_step"][t] - one["psnr_per_input_step"][t] for t in one.get("psnr_per_input_step", {})}
    early = methods.get("pixel-indi-early", {})
    early_margin = {t: early["psnr_per_input_step"][t] - one["psnr_per_input_step"][t] for t in one.get("psnr_per_input_step", {})
                    if t in early.get("psnr_per_input_step", {})}
    residuals = {t: v["residual"] for t, v in (check or {}).get("per_step", {}).items() if v["used_by_loops"]}
    samples_loss = ablations.get("latent-one-shot:samples", {}).get("loss_db", {})

    def goal(value, reached: bool) -> dict:
        return {"measured": value, "reached": bool(reached)}

    return {
        "latent_direct_drift_ge_-1.1_db_per_step": goal(direct, direct is not None and direct >= -1.1),
        "every_latent_variant_ends_above_hazy_xT": goal({k: end[k] - hazy for k in latent}, all(end[k] > hazy for k in latent)),
        "best_iterative_within_1db_of_unet_from_xT": goal({"best": best, "db": iterative.get(best), "unet": unet},
                                                          best is not None and iterative[best] >= unet - 1.0),
        "pixel_indi_walk_ge_its_one_shot_every_source_step": goal(indi_margin, indi_margin and min(indi_margin.values()) >= 0),
        # the walk stopped at t = 1 (pixel-indi-early), beside the goal: not the walk the goal names
        "pixel_indi_early_ge_its_one_shot_every_source_step": goal(early_margin, early_margin and min(early_margin.values()) >= 0),
        "beyond: best_iterative_ge_unet": goal(iterative.get(best), best is not None and iterative[best] >= unet),
        "beyond: latent_direct_drift_ge_-0.3": goal(direct, direct is not None and direct >= -0.3),
        "degradation_residual_le_0.2_every_step_used": goal(residuals, residuals and max(residuals.values()) <= 0.2),
        "latent_k_samples_lose_le_0.3db_at_xT": goal(samples_loss.get(str(t_max)), samples_loss and samples_loss[str(t_max)] <= 0.3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smoke run (tiny models, a few minutes)")
    group.add_argument("--gpu", action="store_true", help="reference-sized run (needs CUDA)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (resumable)")
    parser.add_argument("--no-ablations", action="store_true", help="skip the recipe variants trained beside the study")
    parser.add_argument("--flow", action="store_true", help="the flow restorer beside unet and pixel only (results/flow_cpu.json; "
                        "work folder /tmp/dehaze-study-<setting>-flow by default)")
    parser.add_argument("--degradation-ablations", action="store_true",
                        help="also train the degradation variants (walk-finetuned R, the seed's CycleGAN): slow on a CPU")
    parser.add_argument("--ablation", action="append", default=None, metavar="KIND:NAME",
                        help="train only these variants (repeatable), e.g. pixel:no-source-point")
    args = parser.parse_args()
    kind = "quick" if args.quick else ("gpu" if args.gpu else "cpu")
    if kind == "gpu" and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    chosen = {**ABLATIONS, **(DEGRADATION_ABLATIONS if args.degradation_ablations else {})}
    if args.ablation:
        known = {f"{k}:{v[0]}" for k, vs in chosen.items() for v in vs}
        if unknown := sorted(set(args.ablation) - known):
            parser.error(f"--ablation {', '.join(unknown)}: not one of {', '.join(sorted(known))}")
        chosen = {k: [v for v in vs if f"{k}:{v[0]}" in args.ablation] for k, vs in chosen.items()}
    cfg = settings(kind)
    work = args.work or Path(f"/tmp/dehaze-study-{kind}{'-flow' if args.flow else ''}")
    if args.flow:
        run_flow(cfg, work, ablations=not args.no_ablations)
        return
    # the flow restorer is recorded apart (--flow): its K = 16 predictions alone take 7 min on 2 idle cores
    cfg = cfg.model_copy(update={"trainers": {k: v for k, v in cfg.trainers.items() if k != "flow"}})
    # what an earlier run in this folder already finished (run_study skips it): wall_s then covers the rest
    reused = sorted(kind for kind, part in cfg.trainers.items()
                    if part.get("steps") is not None and checkpoint_step(work / "runs" / kind) >= part["steps"])
    t0 = time.perf_counter()
    report_dir = run_study(cfg, work, quiet=False)
    # --no-ablations trains no variant; the latent K-samples check (predictions of the study's own runs) always runs
    ablations = run_ablations(cfg, work, {} if args.no_ablations else chosen)
    wall_s = time.perf_counter() - t0
    report = json.loads((report_dir / "metrics.json").read_text())
    summary = {}
    for key, entry in report["methods"].items():
        traj = entry.get("trajectory", {})
        walk = list(map(str, traj.get("steps", [])))  # t = T ... 1: one point per estimate (conventions.trajectory)

        # (walk, traj and entry bound now: both are called inside this iteration)
        def along(metric: str, walk: list = walk, traj: dict = traj) -> dict[str, float | None]:
            return dict(zip(walk, traj.get(metric, [])))

        def per_input_step(metric: str, entry: dict = entry) -> dict[str, float | None]:
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
        "setting": {"cpu": "reduced CPU run (8 training fields of 256x256 on the paper-like optics, small networks, HDN K=16; "
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
        "degradation_check": read_run_report(work / "runs" / "degradation").get("degradation_check"),
        "ablations": ablations,
    }
    result["goals"] = goals(summary, ablations, result["degradation_check"])
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
    for name, g in result["goals"].items():
        print(f"  goal {name}: {'reached' if g['reached'] else 'NOT reached'} ({g['measured']})")


if __name__ == "__main__":
    main()
