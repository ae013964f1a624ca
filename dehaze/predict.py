"""``dehaze predict``: apply a trained run to every step of a ladder store (or a TIFF) -> prediction store.

Plane h of a prediction is the estimate of x_0 made from input step h. Whole images are processed in
overlapping tiles with inner crops (:mod:`dehaze.tiling`); fields already written are skipped on a rerun,
so an interrupted prediction resumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dehaze.errors import UserError
from dehaze.progress import progress_bar
from dehaze.runs import RunInfo, load_model
from dehaze.store import DatasetMeta, LadderStore, PredictionInfo, create_ladder, finalize_with_step_stats, open_ladder
from dehaze.strategies import STRATEGIES, ModelBundle, indi_schedule
from dehaze.tiling import predict_tiled

DEFAULT_STRATEGY = {"unet": "one-shot-unet", "pixel": "pixel-indi"}


@dataclass
class InputLadder:
    """What predict reads: fields of (h, [z,] y, x) arrays, from a ladder store or a TIFF."""

    path: Path
    sha256: str
    fields: list[str]
    n_steps: int
    spatial_axes: list[str]
    pixel_size_um: dict[str, float]
    pinhole_au: list[float | None]
    arrays: dict[str, Any]


def open_input(path: str | Path, step: int | None = None) -> InputLadder:
    """A ladder store, or a TIFF: (h, y, x) planes are steps 0..h-1; a single (y, x) image is step ``step``."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            data = tifffile.imread(path)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for a bad file
            raise UserError(f"{path}: not a readable TIFF ({exc})") from None
        data = np.asarray(data)
        if data.ndim == 2:
            if step is None:
                raise UserError(f"{path}: a single image needs --step T (which degradation step it was taken at)")
            stack = np.zeros((step + 1, *data.shape), dtype=data.dtype)
            stack[step] = data
            data = stack
        if data.ndim != 3:
            raise UserError(f"{path}: expected a (y, x) image or a (step, y, x) stack, got shape {data.shape}")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return InputLadder(path, sha, ["field_000"], data.shape[0], ["y", "x"], {"y": 1.0, "x": 1.0},
                           [None] * data.shape[0], {"field_000": data})
    store = open_ladder(path)
    if store.meta.source == "prediction":
        raise UserError(f"{path}: is a prediction store; predict from a ladder store")
    m = store.meta
    return InputLadder(path, m.manifest_sha256, store.fields, m.n_steps, m.spatial_axes, m.pixel_size_um,
                       m.pinhole_au, {f: store.image(f) for f in store.fields})


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu")
    return torch.device("cuda" if name in ("cuda", "auto") and torch.cuda.is_available() else "cpu")


def predict(run_dirs: list[str | Path], input_path: str | Path, output: str | Path, *, strategy: str | None = None,
            device: str = "auto", step: int | None = None, tile: int = 256, margin: int = 32, batch_size: int = 8,
            overwrite: bool = False, show_progress: bool = True) -> LadderStore:
    """Predict x_0 from every step of every field of ``input_path`` with the run(s) -> prediction store."""
    dev = pick_device(device)
    if len(run_dirs) != 1:
        raise UserError(f"predict takes one run directory for now, got {len(run_dirs)}")
    info, model = load_model(run_dirs[0], dev)
    name = strategy or DEFAULT_STRATEGY[info.kind]
    if name not in STRATEGIES:
        raise UserError(f"--strategy {name}: unknown; choose one of {', '.join(STRATEGIES)}")
    bundle = ModelBundle(**{info.kind: model})
    src = open_input(input_path, step)
    norm = info.normalization
    delta = getattr(info.config.model, "sample_delta", 1.0)
    strategy_info = {"name": name, "one_shot": name.startswith("one-shot"), "sample_delta": delta, "tile": tile, "margin": margin}
    identity = {"runs": [str(Path(r).resolve()) for r in run_dirs], "input": src.sha256, "strategy": strategy_info}
    meta = DatasetMeta(
        source="prediction", manifest=identity,
        manifest_sha256=hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        n_steps=src.n_steps, pinhole_au=src.pinhole_au, spatial_axes=src.spatial_axes, pixel_size_um=src.pixel_size_um,
        fields=src.fields, prediction=PredictionInfo(method=info.kind if name != "pixel-indi" else "pixel-indi",
                                                     run_dirs=identity["runs"], input_store=str(src.path),
                                                     input_sha256=src.sha256, strategy=strategy_info),
    )
    out, state = create_ladder(output, meta, overwrite=overwrite)
    if state == "complete":
        return out
    fn = STRATEGIES[name]
    multiple = getattr(model, "multiple", 1)
    todo = [f for f in src.fields if f not in out.completed_fields()]
    bar = progress_bar(total=len(todo) * src.n_steps, desc=f"predict {name}", unit="image", disable=not show_progress)
    for field in todo:
        data = src.arrays[field]
        pred = np.zeros(data.shape, dtype=np.float32)
        for h in range(src.n_steps):
            schedule = indi_schedule(h, delta)
            for lead in np.ndindex(*data.shape[1:-2]):  # z planes of a 3-D ladder
                image = norm.apply(np.asarray(data[(h, *lead)]))
                est = predict_tiled(lambda x: fn(bundle, x, schedule), image, tile=tile, margin=margin,
                                    batch_size=batch_size, multiple=multiple, device=dev)
                pred[(h, *lead)] = norm.invert(est)
            bar.update(1)
        out.write_field(field, pred, info={"strategy": name})
    bar.close()
    finalize_with_step_stats(out)
    return out


def run_summary(info: RunInfo) -> str:
    return f"{info.kind} run ({info.config.steps} steps, patch {info.config.patch_size})"
