"""``dehaze train ... --dry-run``: what a training run would read and write, checked and printed, nothing
written (no run directory, no latent cache)."""

from __future__ import annotations

import json
from pathlib import Path

from dehaze.errors import UserError
from dehaze.runs import RUN_FILE, check_run_dir, checkpoint_step, extension, read_run
from training.config import MODEL_KINDS, TrainConfig
from training.data import open_training_stores, split_fields


def describe_training(kind: str, data: list[str | Path], run_dir: str | Path, cfg: TrainConfig, *, resume: bool = False,
                      base_run: str | Path | None = None) -> str:
    """The resolved config (every default filled in), the data the run would read (fields for training and
    validation), its base run and what it would do in ``run_dir``: the checks of ``dehaze train`` that need
    no work, with a one-line UserError where the run itself would refuse."""
    run_dir = Path(run_dir)
    stores = open_training_stores(data)
    train_fields, val_fields = split_fields(stores, cfg.data.val_fraction, cfg.seed)
    lines = [f"resolved {kind} config: " + json.dumps(cfg.model_dump(mode="json"))]
    for store in stores:
        shape = store.image(store.fields[0]).shape
        lines.append(f"data: {store.path} ({len(store.fields)} field(s) of {tuple(shape)}, {store.n_steps} steps)")
    lines.append(f"fields: {len(train_fields)} for training, {len(val_fields)} held out for validation")
    base_kind = MODEL_KINDS[kind].base
    if base_kind is not None and not MODEL_KINDS[kind].base_optional:  # a latent trainer: resolved from its base
        if base_run is None:
            raise UserError(f"`dehaze train {kind}` builds on a {base_kind!r} run: pass --base RUN_DIR")
        base = read_run(base_run)
        if base.kind != base_kind:
            raise UserError(f"--base {base_run}: is a {base.kind!r} run; {kind} builds on a {base_kind!r} run")
        lines.append(f"base: {base_run} ({base.kind} run; fields of the model config it decides are filled in when training starts)")
        lines.append(f"would write {run_dir} (run of {cfg.steps} steps)")
        return "\n".join(lines)
    from training.loop import resolve_image_setup, run_info

    resolved, norm = resolve_image_setup(kind, stores, cfg, base_run, run_dir, resume)  # as the run itself resolves it
    lines[0] = f"resolved {kind} config: " + json.dumps(resolved.model_dump(mode="json"))  # with what the data decide
    info = run_info(kind, resolved, norm, stores, None)
    resuming = check_run_dir(run_dir, info, resume)
    if resuming:
        reached, old = checkpoint_step(run_dir), extension(run_dir, info)
        budget = f", budget extended from {old} to {cfg.steps} steps" if old is not None else ""
        lines.append(f"would resume {run_dir} at step {reached} of {cfg.steps}{budget}")
    elif (run_dir / RUN_FILE).is_file():
        lines.append(f"would restart {run_dir} (it holds only another run's failed start)")
    else:
        lines.append(f"would write {run_dir}: run.json, checkpoint.pt every {cfg.log.ckpt_every} steps, log.csv, tb/")
    return "\n".join(lines)
