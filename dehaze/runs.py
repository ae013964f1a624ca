"""Run directories: the resolved config, checkpoints and logs of one training run.

Layout::

    RUN_DIR/
      run.json           {"format": 1, "kind": ..., "config": TrainConfig, "normalization": ...,
                          "data": [{"path": ..., "manifest_sha256": ...}], "dehaze_version": ...}
      checkpoint.pt      state_dicts (model, optimiser, scheduler, EMA), step, RNG; torch.save of plain
                         tensors/dicts only, so it loads with ``weights_only=True``; written atomically
      log.csv, tb/       training logs (CSV and TensorBoard event files)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from dehaze import __version__
from dehaze.config import StrictModel, format_validation_error
from dehaze.errors import UserError
from dehaze.normalization import Normalization
from training.config import MODEL_KINDS, TrainConfig

RUN_FORMAT = 1
RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
REPORT_FILE = "report.json"  # what a finished run measured about itself (e.g. how far the degradation moves)


class DataRef(StrictModel):
    """A store a run was trained on: its path and the sha256 of the manifest that made it."""

    path: str
    manifest_sha256: str


class RunInfo(StrictModel):
    """A run's resolved description (run.json): trainer, config, normalisation, data, base run, history."""

    format: int = RUN_FORMAT
    dehaze_version: str = __version__
    kind: str
    config: TrainConfig
    normalization: Normalization
    data: list[DataRef]
    base_run: str | None = None  # the run this one builds on (latent trainers build on an HVAE run)
    # changes made to the run on --resume: a larger budget {"at_step", "steps_from", "steps_to", "time"}, or
    # another machine {"at_step", "trained_with", "time"}
    history: list[dict[str, Any]] = []
    # where it was trained (dehaze.device.environment): not part of the run's identity, so a resume elsewhere
    # continues, but recorded, because it decides the last digits (None: a run from before it was recorded)
    trained_with: dict[str, Any] | None = None

    def differences(self, other: RunInfo) -> list[str]:
        """Dotted keys of trainer, config, data and base run where ``other`` differs (empty: the same run)."""
        keep = {"kind", "config", "data", "base_run"}
        return _differing_keys(self.model_dump(mode="json", include=keep), other.model_dump(mode="json", include=keep))

    def same_run(self, other: RunInfo) -> bool:
        """Same trainer, config and data: a run that --resume may continue."""
        return not self.differences(other)


EXTENDABLE = ("config.steps",)  # what --resume may change: a larger budget (the schedule is recomputed)


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b))
                for k in _differing_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))]
    return [] if a == b else [prefix or "<root>"]


def read_run(run_dir: str | Path) -> RunInfo:
    """The run's resolved description; a one-line UserError if it is missing, foreign or too new."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: not a dehaze run directory (no {RUN_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: unreadable run description (not JSON)") from None
    if isinstance(raw, dict) and isinstance(raw.get("format"), int) and raw["format"] > RUN_FORMAT:
        raise UserError(f"{path}: run format {raw['format']} is newer than this dehaze ({RUN_FORMAT}); upgrade dehaze")
    model = raw.get("config", {}).get("model") if isinstance(raw, dict) and isinstance(raw.get("config"), dict) else None
    if isinstance(model, dict) and model.get("kind") in MODEL_KINDS:  # a run from before a field: what it ran with
        for key, value in MODEL_KINDS[model["kind"]].earlier_runs_had.items():
            model.setdefault(key, value)
    try:
        return RunInfo.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err, str(path))) from None


def read_run_report(run_dir: str | Path) -> dict[str, Any]:
    """What a finished run measured about itself (``report.json``), or {} where it wrote none."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: unreadable run report (not JSON); delete it and rerun `dehaze train ... --resume`") from None
    if not isinstance(report, dict):
        raise UserError(f"{path}: a run report must be a JSON object")
    return report


_RUN_START_FILES = (RUN_FILE, RUN_FILE + ".tmp", "log.csv", "tb")  # all a run has before its first checkpoint


def _never_saved(run_dir: Path) -> bool:
    """True if ``run_dir`` holds nothing but what a run writes before its first checkpoint."""
    return all(p.name in _RUN_START_FILES for p in run_dir.iterdir())


def check_run_dir(run_dir: str | Path, info: RunInfo, resume: bool) -> bool:
    """What :func:`prepare_run_dir` checks, writing nothing: a refused -o fails before any other work."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError(f"{run_dir}: is a dangling symbolic link; choose another -o")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is a file, not a run directory; choose another -o")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / RUN_FILE).is_file():
            raise UserError(f"{run_dir}: exists and is not a dehaze run directory; choose another -o")
        existing = read_run(run_dir)
        differs = existing.differences(info)
        if differs:
            if _never_saved(run_dir):  # a start that failed before its first checkpoint: nothing to lose
                return False
            if resume and all(k in EXTENDABLE for k in differs):
                reached = checkpoint_step(run_dir)
                if info.config.steps < reached:
                    raise UserError(f"{run_dir}: steps={info.config.steps} is below the step the run reached ({reached}); "
                                    f"give steps >= {reached} to extend it")
                return True
            what = "differs in " + ", ".join(differs[:6]) + (f" (+{len(differs) - 6} more)" if len(differs) > 6 else "")
            extend = " (only steps may change on --resume: a larger budget)" if resume else ""
            raise UserError(f"{run_dir}: holds a {existing.kind} run whose {what}{extend}; choose another -o")
        if not resume:
            raise UserError(f"{run_dir}: already holds this run; pass --resume to continue it or choose another -o")
        return (run_dir / CHECKPOINT_FILE).is_file()
    if resume:
        raise UserError(f"{run_dir}: nothing to resume (no run there); drop --resume to start one")
    from dehaze.store import refuse_inside_store

    refuse_inside_store(run_dir, "a run directory")
    return False


def extension(run_dir: str | Path, info: RunInfo) -> int | None:
    """The ``steps`` of the run in ``run_dir`` when ``info`` extends it (only the budget changed), else None."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    existing = read_run(run_dir)
    differs = existing.differences(info)
    return existing.config.steps if differs and all(k in EXTENDABLE for k in differs) else None


def prepare_run_dir(run_dir: str | Path, info: RunInfo, resume: bool) -> bool:
    """Create the run directory, or check that --resume continues the same run (an extended budget is
    recorded in run.json's history). Returns True if resuming."""
    run_dir = Path(run_dir)
    if check_run_dir(run_dir, info, resume):
        old_steps = extension(run_dir, info)
        if old_steps is not None:
            existing = read_run(run_dir)
            change = {"at_step": checkpoint_step(run_dir), "steps_from": old_steps, "steps_to": info.config.steps,
                      "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            extended = info.model_copy(update={"history": [*existing.history, change], "trained_with": existing.trained_with})
            atomic_write_text(run_dir / RUN_FILE, extended.model_dump_json(indent=2))
        return True
    if run_dir.exists() and any(run_dir.iterdir()):
        if read_run(run_dir).same_run(info):  # the same run, resumed before its first checkpoint: it starts
            atomic_write_text(run_dir / RUN_FILE, info.model_dump_json(indent=2))  # again, here
            return False
        for name in _RUN_START_FILES:  # another run's failed start: its description and logs go
            target = run_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot create the run directory ({exc.strerror}); choose another -o") from None
    atomic_write_text(run_dir / RUN_FILE, info.model_dump_json(indent=2))
    return False


def record_resume_environment(run_dir: str | Path, now: dict[str, Any], at_step: int) -> list[str]:
    """On a resume: the keys of ``now`` (dehaze.device.environment) that differ from where the run was last
    trained, recorded in run.json's history when there are any (empty: the same machine, or an older run)."""
    existing = read_run(run_dir)
    before = next((h["trained_with"] for h in reversed(existing.history) if "trained_with" in h), existing.trained_with)
    if before is None:
        return []
    differs = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if differs:
        change = {"at_step": at_step, "trained_with": now, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write_text(Path(run_dir) / RUN_FILE, existing.model_copy(update={"history": [*existing.history, change]}).model_dump_json(indent=2))
    return [f"{k} {before.get(k)} -> {now.get(k)}" for k in differs]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a reader sees the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically (a crash leaves the previous checkpoint intact)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": RUN_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it belongs to a ``kind`` run of this format."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {CHECKPOINT_FILE}; the run has not saved a checkpoint yet")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"{path}: not a loadable dehaze checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise UserError(f"{path}: checkpoint format {state.get('format') if isinstance(state, dict) else '?'} is not {RUN_FORMAT}; retrain with this dehaze")
    if state.get("kind") != kind:
        raise UserError(f"{path}: checkpoint of a {state.get('kind')!r} model, expected {kind!r}")
    return state


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RunInfo, torch.nn.Module]:
    """Rebuild a run's network from its resolved config and load its weights (EMA weights if kept)."""
    from dehaze.models import build_network

    info = read_run(run_dir)
    state = load_checkpoint(run_dir, info.kind, map_location=device)
    model = build_network(info.config.model)
    weights = state["model"]
    if "ema" in state:  # AveragedModel keeps "module."-prefixed copies of the weights
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(f"{run_dir}: checkpoint does not fit the {info.kind} model in run.json ({str(exc).splitlines()[0]})") from None
    return info, model.to(device).eval()


def checkpoint_step(run_dir: str | Path) -> int:
    """The optimiser step of a run's checkpoint (0 where it has none yet); a damaged one is a UserError."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a damaged file
        raise UserError(f"{path}: not a loadable checkpoint ({type(exc).__name__}); delete {run_dir} and rerun to "
                        "train it again") from None


def checkpoint_sha256(run: str | Path) -> str:
    """SHA-256 of a run's checkpoint (``run`` a run folder, or a checkpoint file itself): the identity a
    prediction records of the weights that made it."""
    path = Path(run) if Path(run).is_file() else Path(run) / CHECKPOINT_FILE
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
