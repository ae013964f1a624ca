"""The pixel InDI restorer's recipe variants on the CPU study's ladders, without the rest of the study.

    python benchmarks/pixel_recipe.py                                  # the default and every pixel variant
    python benchmarks/pixel_recipe.py --variant default --variant source-point-only

Simulates the study's training and held-out ladders (``benchmarks/study.py`` settings('cpu'), the same seeds:
the same pixels as the study's), trains the default pixel section and each variant of ``study.ABLATIONS["pixel"]``
asked for (one torch thread each, as the study: the same weights on any core count), predicts the held-out
ladder with the walk (delta 0.25), the early walk and the one-shot estimate, and writes
``benchmarks/results/pixel_recipe_cpu.json``: per variant the PSNR per source step and the walk's margin over
its own one-shot estimate (the issue's goal: >= 0 at every source step), with machine info. Trained runs in
``--work`` are reused (a second invocation with more variants trains only those); two invocations with
different variants may run side by side on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from machine import machine_info
from study import ABLATIONS, PIXEL_STRATEGIES, RESULTS, run_ablations, settings

from dehaze.study_config import StudyConfig

VARIANTS = {"default": {}, **{name: overrides for name, overrides, _ in ABLATIONS["pixel"]}}


def _ladders(cfg: StudyConfig, work: Path) -> None:
    """The study's training and held-out ladders (dehaze.study's seeds) in ``work``; a complete store is kept,
    an interrupted one resumed (simulate_ladder's own rule)."""
    from dehaze.manifests import load_simulation_manifest
    from dehaze.study import held_out_manifest
    from simulation.ladder import simulate_ladder

    manifest = load_simulation_manifest(cfg.simulation, cfg.simulation_set)
    work.mkdir(parents=True, exist_ok=True)
    simulate_ladder(manifest, work / "ladder.zarr", workers=2, show_progress=False)
    simulate_ladder(held_out_manifest(manifest, cfg.test_fields), work / "test.zarr", workers=2, show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dehaze-pixel-recipe"), help="working folder (resumable)")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), default=None,
                        help="train and score only these (repeatable); default: all")
    args = parser.parse_args()
    cfg = settings("cpu")
    torch.set_num_threads(cfg.threads_per_trainer or 1)
    t0 = time.perf_counter()
    _ladders(cfg, args.work)
    chosen = args.variant or list(VARIANTS)
    found = run_ablations(cfg, args.work, {"pixel": [(name, VARIANTS[name], PIXEL_STRATEGIES) for name in chosen]})
    variants = {}
    for name in chosen:
        methods = found[f"pixel:{name}"]["methods"]
        by = {s: methods[s]["psnr_per_input_step"] for s in PIXEL_STRATEGIES}
        walk, early, one = by["pixel-indi"], by["pixel-indi-early"], by["pixel-one-shot"]
        variants[name] = {"overrides": VARIANTS[name], "psnr_per_input_step": by,
                          "walk_minus_one_shot_db": {t: walk[t] - one[t] for t in one},
                          "early_minus_one_shot_db": {t: early[t] - one[t] for t in one},
                          "walk_ge_one_shot_every_source_step": min(walk[t] - one[t] for t in one) >= 0}
    out = RESULTS / "pixel_recipe_cpu.json"
    recorded = json.loads(out.read_text())["variants"] if out.is_file() else {}
    result = {"benchmark": "pixel_recipe", "setting": "the CPU study's ladders and pixel section (benchmarks/study.py settings('cpu'))",
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
              "wall_s": round(time.perf_counter() - t0, 1), "variants": {**recorded, **variants}}
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, v in variants.items():
        margins = " ".join(f"{m:+.2f}" for m in v["walk_minus_one_shot_db"].values())
        print(f"{name:<20} from x_T: walk {list(v['psnr_per_input_step']['pixel-indi'].values())[-1]:.2f} dB, "
              f"one-shot {list(v['psnr_per_input_step']['pixel-one-shot'].values())[-1]:.2f} dB; walk - one-shot per source step: {margins}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
