"""The study's orchestration: simulate a ladder, train every model (side by side where they are
independent), predict with every strategy, evaluate (``dehaze study`` and ``dehaze demo``).

Each stage keeps its outputs in the study folder and is skipped when already complete, so an interrupted
study resumes where it stopped (training runs continue with --resume semantics). A prediction made with
other settings (samples, alpha, tile, or retrained runs) is made again; a run whose trainer section was
edited is trained again, with the runs that build on it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from dehaze.errors import UserError
from dehaze.study_config import TRAIN_ORDER, StudyConfig
from training.config import MODEL_KINDS, TrainConfig

TEST_SEED_OFFSET = 1000  # the held-out test ladder of a study: the training manifest with seed + 1000
Say = Callable[[str], None]


def held_out_manifest(manifest: Any, n_fields: int) -> Any:
    """The manifest of a study's held-out test ladder: ``n_fields`` fields of the training manifest's physics,
    seed + TEST_SEED_OFFSET (no field of the training ladder)."""
    return manifest.model_copy(update={"n_fields": n_fields, "seed": manifest.seed + TEST_SEED_OFFSET})


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def study_train_configs(cfg: StudyConfig) -> dict[str, TrainConfig]:
    """The validated training config of every trainer a study names (kind -> TrainConfig), in training
    order: each section merged onto the trainer's defaults with the same merge as ``train --config``."""
    from dehaze.config import build_model
    from training.config import train_config_dict
    from training.preflight import check_train_config

    out = {kind: build_model(TrainConfig, train_config_dict(kind, cfg.trainers[kind], {"device": cfg.device}), [],
                             f"study trainers.{kind}")
           for kind in TRAIN_ORDER if kind in cfg.trainers}
    for kind, train_cfg in out.items():
        check_train_config(train_cfg, f"study trainers.{kind}")
    missing = [k for k in out if MODEL_KINDS[k].base is not None and not MODEL_KINDS[k].base_optional
               and MODEL_KINDS[k].base not in out]  # an optional base (a warm start) is used when the study trains it
    if missing:
        raise UserError(f"study trainers: {missing[0]} builds on {MODEL_KINDS[missing[0]].base}; add that trainer too")
    return out


def run_study(cfg: StudyConfig, output: Path, quiet: bool, echo: Say = print) -> Path:
    """Simulate, train every model, predict with every strategy, evaluate; returns the report folder.
    ``echo`` prints the results (the ladder's summary, the PSNR table); progress goes to stderr."""
    from dehaze.store import output_lock

    with output_lock(output):  # a second study into this folder is refused while this one runs
        return _run_study(cfg, output, quiet, echo)


def _run_study(cfg: StudyConfig, output: Path, quiet: bool, echo: Say) -> Path:
    from dehaze.evaluate import current_report, psnr_table
    from dehaze.evaluate import evaluate as run_evaluate
    from dehaze.figures import step_montage
    from dehaze.manifests import load_simulation_manifest
    from dehaze.predict import RESTORING_KINDS
    from dehaze.predict import predict as run_predict
    from dehaze.runs import checkpoint_step
    from dehaze.store import describe_ladder, make_output_folder
    from simulation.ladder import simulate_ladder

    # Validate everything before any work: a bad trainer section must not leave a half-made study behind.
    manifest = load_simulation_manifest(cfg.simulation, cfg.simulation_set)
    train_cfgs = study_train_configs(cfg)
    make_output_folder(output, "the study folder", "choose another -o")
    say: Say = (lambda msg: None) if quiet else _stderr
    say("[1/4] simulating the ladder")
    ladder = simulate_ladder(manifest, output / "ladder.zarr", workers=2, show_progress=not quiet).store
    echo(describe_ladder(ladder))
    labels = [("widefield" if t in ladder.meta.widefield_steps else f"step {t}: {au:g} AU") for t, au in enumerate(ladder.meta.pinhole_au)]
    step_montage(ladder.image(ladder.fields[0])[...], labels, output / "montage.png", title="the ladder: step 0 cleanest ... haziest")
    test = ladder
    if cfg.test_fields:
        test_manifest = held_out_manifest(manifest, cfg.test_fields)
        say(f"[1/4] simulating the held-out test ladder ({cfg.test_fields} fields, seed {test_manifest.seed})")
        test = simulate_ladder(test_manifest, output / "test.zarr", workers=2, show_progress=not quiet).store
    runs = {kind: output / "runs" / kind for kind in train_cfgs}
    for kind in stale_runs(train_cfgs, runs):  # the study owns its runs: one of an edited section is retrained
        say(f"[2/4] {kind}: its trainer section changed since {runs[kind]} was trained; training it again")
        shutil.rmtree(runs[kind])
    todo = {kind: c for kind, c in train_cfgs.items() if checkpoint_step(runs[kind]) < c.steps}  # new, or interrupted
    train_all(todo, ladder.path, runs, cfg.jobs, say, quiet, threads=cfg.threads_per_trainer)
    say("[3/4] predicting with every strategy")
    stores = run_predict([runs[k] for k in RESTORING_KINDS if k in runs], test.path, output / "predictions", cfg.predict,
                         replace_stale=True, show_progress=not quiet)  # the study owns its folder
    report = current_report([s.path for s in stores], test.path, output / "report", target=cfg.target)
    if report is not None:
        say("[4/4] the report is up to date (the same predictions)")
    else:
        say("[4/4] evaluating")
        report = run_evaluate([s.path for s in stores], test.path, output / "report", target=cfg.target)
    for line in psnr_table(report):
        echo(line)
    return output / "report"


def _train_one(kind: str, data: Path, run: Path, train_cfg: TrainConfig, base_run: Path | None, quiet: bool,
               threads: int | None) -> str:
    """One trainer, resumed if its run folder holds an interrupted run (also the body of a worker process)."""
    from training.loop import train as run_training

    if threads:
        import torch

        torch.set_num_threads(threads)
    run_training(kind, [data], run, train_cfg, resume=(run / "run.json").is_file(), base_run=base_run, show_progress=not quiet)
    return kind


def _base_run(kind: str, runs: dict[str, Path]) -> Path | None:
    base = MODEL_KINDS[kind].base
    return runs.get(base) if base else None


def train_all(todo: dict[str, TrainConfig], data: Path, runs: dict[str, Path], jobs: int, say: Say, quiet: bool,
              threads: int | None = None) -> None:
    """Train every run of ``todo`` (kind -> config), at most ``jobs`` at a time, each after the run it builds on.

    Side by side, each trainer runs in its own process and no progress bar (they would interleave); one at a
    time, in this process. Each gets ``threads`` torch threads, or (None) an equal share of the cores among
    the trainers running at once (one at a time: torch's own default).
    """
    if jobs == 1 or len(todo) <= 1:
        import torch

        before = torch.get_num_threads()
        try:
            for i, (kind, train_cfg) in enumerate(todo.items()):
                say(f"[2/4] training {kind} ({i + 1}/{len(todo)})")
                _train_one(kind, data, runs[kind], train_cfg, _base_run(kind, runs), quiet, threads)
        finally:
            torch.set_num_threads(before)  # this process goes on to predict with its own count
        return
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cores = os.cpu_count() or 1
    waiting: dict[str, TrainConfig] = dict(todo)
    running: dict[Any, str] = {}  # future -> kind
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            blocked = set(waiting) | set(running.values())
            ready = [k for k in waiting if MODEL_KINDS[k].base not in blocked][: jobs - len(running)]
            # the cores are shared among what runs now: a trainer left alone (the latent chain) gets them all
            at_once = len(running) + len(ready)
            share = threads or max(1, cores // max(1, at_once))
            for kind in ready:
                say(f"[2/4] training {kind} ({at_once} at a time, {share} torch thread(s) for it)")
                running[pool.submit(_train_one, kind, data, runs[kind], waiting.pop(kind), _base_run(kind, runs), True,
                                    share)] = kind
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind = running.pop(future)
                future.result()  # re-raises a trainer's error here (the pool waits for the other one to stop)
                say(f"[2/4] trained {kind}")


def stale_runs(train_cfgs: dict[str, TrainConfig], runs: dict[str, Path]) -> list[str]:
    """Kinds whose run folder holds a run of another config than the study's section (and the runs that
    build on one of those). Model fields a trainer resolves from its base run (None in the section) are
    not compared."""
    from dehaze.runs import RUN_FILE, read_run

    stale: list[str] = []
    for kind, train_cfg in train_cfgs.items():
        if MODEL_KINDS[kind].base in stale:
            stale.append(kind)
            continue
        if not (runs[kind] / RUN_FILE).is_file():
            continue
        old, new = read_run(runs[kind]).config.model_dump(mode="json"), train_cfg.model_dump(mode="json")
        for key, value in new["model"].items():
            if value is None:
                old["model"][key] = None
        if old != new:
            stale.append(kind)
    return stale
