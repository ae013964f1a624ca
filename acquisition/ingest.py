"""Ingest a microscope pinhole series into a ladder store: discover -> read and check -> register -> write.

Stages (one field of T+1 steps, shapes (h, [z,] y, x)):

1. :func:`acquisition.discover.discover` reads metadata only: files, steps, fields, pinhole values (sorted,
   cleanest first), shapes and pixel sizes, all checked.
2. Every field is read and checked (NaN/inf planes), registered to its cleanest step
   (:mod:`acquisition.register`) and shifted; fields side by side in threads.
3. Only when everything has been read and checked is the store created; fields are cropped to one common
   valid area, their brightness per step measured, and written (side by side) with their shifts (extra
   ``shifts``, (h, 2) float32 px) and registration figures (field info). The per-step statistics come from
   the arrays in memory. If writing fails, a store this run created is removed (an existing one is never
   touched).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from acquisition.discover import Plan, Position, discover
from acquisition.intensity import bleaching, normalization, step_brightness
from acquisition.manifest import AcquisitionManifest
from acquisition.register import RegistrationResult, apply_shifts, register_steps, valid_box
from dehaze.errors import UserError
from dehaze.progress import progress_bar
from dehaze.store import DatasetMeta, LadderStore, create_ladder, ensure_writable_parent, field_name, finalize_with_step_stats, open_ladder, stats_samples


@dataclass
class FieldData:
    position: Position
    image: np.ndarray  # (h, [z,] y, x) registered, raw dtype, not yet cropped
    registration: RegistrationResult | None
    box: tuple[int, int, int, int]  # valid y0, y1, x0, x1


@dataclass
class IngestReport:
    plan: Plan
    state: str  # "dry-run", "new", "replaced" (an interrupted or --overwrite store), "complete" (nothing to do)
    store: LadderStore | None = None
    residual_px: list[float] = field(default_factory=list)  # per field
    warnings: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage (discover, register, write, statistics)


def _read_position(pos: Position, spatial_axes: list[str]) -> np.ndarray:
    """(h, [z,] y, x) array of one field, steps in ladder order; NaN/inf planes are refused."""
    cache: dict[tuple[str, int], np.ndarray] = {}
    planes = []
    for st in pos.steps:
        key = (str(st.series.path), st.series.index)
        if key not in cache:
            cache[key] = st.series.read()
        data = cache[key]  # (T, C, Z, Y, X)
        t = st.index if st.axis == "T" else 0
        sel = data[t, st.channel]
        sel = sel[st.index] if st.axis == "Z" else sel
        if len(spatial_axes) == 2 and sel.ndim == 3:
            sel = sel[0]
        if np.issubdtype(sel.dtype, np.floating) and not np.all(np.isfinite(sel)):
            raise UserError(f"{st.label}: contains NaN or infinite values; drop or repair that plane")
        planes.append(sel)
    return np.stack(planes)


def _register(pos: Position, image: np.ndarray, m: AcquisitionManifest, warn: Callable[[str], None]) -> FieldData:
    cfg = m.registration
    ny, nx = image.shape[-2:]
    if not cfg.enabled:
        return FieldData(pos, image, None, (0, ny, 0, nx))
    result = register_steps(image, cfg)
    for t, c in enumerate(result.confidence):
        if c < cfg.min_confidence:
            best = max((mt.confidence for (i, j), mt in result.matches.items() if t in (i, j)), default=0.0)
            raise UserError(
                f"{pos.steps[t].label}: cannot be registered to step {cfg.reference_step} "
                f"(best match confidence {best:.1f} < min_confidence {cfg.min_confidence:g}); check that it shows the same field of view"
            )
    if result.residual_px > cfg.warn_residual_px:
        warn(f"field {pos.key or '(single)'}: registration residual {result.residual_px:.2f} px RMS is above {cfg.warn_residual_px:g} px (usable, but check the alignment)")
    box = valid_box(result.shifts, (ny, nx))
    if box[1] - box[0] < 16 or box[3] - box[2] < 16:
        raise UserError(f"{pos.steps[0].label}: steps drift by up to {np.abs(result.shifts).max():.0f} px: the common area is under 16 px; check the series")
    return FieldData(pos, apply_shifts(image, result.shifts, cfg.resample), result, box)


def _field_record(f: FieldData, crop: tuple[int, int, int, int], brightness: tuple[list[float], list[float]],
                  m: AcquisitionManifest) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A written field's extras (``shifts``, (h, 2) float32 px) and info (sources, crop, brightness, registration)."""
    info: dict[str, Any] = {
        "position": f.position.key,
        "sources": [st.label for st in f.position.steps],
        "acquisition_order": [st.order for st in f.position.steps],
        "crop_yx": list(crop),
        "brightness_mean_adu": brightness[0],
        "brightness_p999_adu": brightness[1],
    }
    reg = f.registration
    if reg is None:
        return {}, info
    info["registration"] = {
        "reference_step": m.registration.reference_step,
        "shifts_px": reg.shifts.round(4).tolist(),
        "confidence_psr": [None if not np.isfinite(c) else round(float(c), 2) for c in reg.confidence],
        "residual_px": round(reg.residual_px, 4),
        "resample": m.registration.resample,
    }
    return {"shifts": reg.shifts.astype(np.float32)}, info


def _workers(n_fields: int) -> int:
    """Threads for per-field work: reading, FFTs, filters and compression release the GIL."""
    return max(1, min(n_fields, os.cpu_count() or 1))


def _identity(m: AcquisitionManifest, plan: Plan) -> tuple[dict[str, Any], str]:
    """The manifest recorded in the store, and its hash (manifest + source files' names, sizes, mtimes)."""
    files = [{"name": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in plan.files]
    record = {"acquisition": m.model_dump(mode="json"), "source": str(plan.source), "files": files}
    return record, hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _check_output(out: Path, sha: str, overwrite: bool) -> LadderStore | None:
    """Before any pixel is read: the finished store of this very ingestion (or None); refuse to clobber others."""
    if not out.exists():
        ensure_writable_parent(out)
        return None
    if not (out / ".zattrs").is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise UserError(f"{out}: exists and is not a dehaze ladder store; choose another output path")
    existing = open_ladder(out, require_complete=False)
    if existing.meta.manifest_sha256 == sha:
        return existing if existing.meta.status == "complete" and not overwrite else None
    if not overwrite:
        raise UserError(f"{out}: holds a store made from other files or another manifest; pass --overwrite to replace it or choose another output path")
    return None


def ingest(
    source: str | Path,
    out: str | Path,
    manifest: AcquisitionManifest,
    *,
    dry_run: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> IngestReport:
    """Ingest the pinhole series at ``source`` into the ladder store ``out`` (see the module docstring)."""
    out = Path(out)
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn is not None:
            warn(msg)

    clock = time.perf_counter()
    stage_s: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stage_s[stage] = round(now - clock, 4)
        clock = now

    plan = discover(source, manifest)
    lap("discover")
    for w in plan.warnings:
        _warn(w)
    if dry_run:
        return IngestReport(plan, "dry-run", warnings=warnings)
    record, sha = _identity(manifest, plan)
    done = _check_output(out, sha, overwrite)
    if done is not None:
        return IngestReport(plan, "complete", done, warnings=warnings)

    # --- read, check and register everything before creating the store ---
    # Fields side by side (threads, see _workers); warnings kept per field and
    # reported in field order, so the output does not depend on which thread finished first.
    def read_and_register(pos: Position) -> tuple[FieldData, list[str]]:
        said: list[str] = []
        return _register(pos, _read_position(pos, plan.spatial_axes), manifest, said.append), said

    fields: list[FieldData] = []
    bar = progress_bar(total=len(plan.positions), desc="reading and registering", unit="field", disable=not show_progress)
    with ThreadPoolExecutor(max_workers=_workers(len(plan.positions))) as pool:
        for registered, said in pool.map(read_and_register, plan.positions):
            fields.append(registered)
            for msg in said:
                _warn(msg)
            bar.update(1)
    bar.close()
    lap("read and register")
    hy = min(f.box[1] - f.box[0] for f in fields)
    hx = min(f.box[3] - f.box[2] for f in fields)
    crops = [(f.box[0], f.box[0] + hy, f.box[2], f.box[2] + hx) for f in fields]

    # --- the store (created only now: everything has been read and checked) ---
    pinhole = plan.pinhole_um if plan.pinhole_um is not None else plan.pinhole_au
    meta = DatasetMeta(
        source="acquisition",
        manifest=record,
        manifest_sha256=sha,
        n_steps=plan.n_steps,
        pinhole_au=plan.pinhole_au,
        pinhole_um=plan.pinhole_um,
        pinhole_units_source=plan.units_source,
        spatial_axes=plan.spatial_axes,
        pixel_size_um=plan.pixel_size_um,
        fields=[field_name(i) for i in range(len(fields))],
    )
    # overwrite=True is safe here: _check_output refused other stores unless --overwrite was given, and an
    # interrupted store of this same ingestion is simply rebuilt (ingestion is quick; no partial resume).
    replaced = out.exists() and any(out.iterdir())
    store, _ = create_ladder(out, meta, overwrite=True)

    # --- per field, side by side: crop to the common area, brightness, statistics sample, write ---
    offset = manifest.offset_adu

    def crop_measure_write(i: int) -> tuple[tuple[list[float], list[float]], list[np.ndarray]]:
        f, (y0, y1, x0, x1) = fields[i], crops[i]
        image = np.ascontiguousarray(f.image[..., y0:y1, x0:x1])
        brightness = step_brightness(image, offset)
        store.write_field(field_name(i), image, *_field_record(f, crops[i], brightness, manifest))
        return brightness, stats_samples(image, len(fields))

    try:
        bar = progress_bar(total=len(fields), desc="writing", unit="field", disable=not show_progress)
        per_field, samples = [], []
        with ThreadPoolExecutor(max_workers=_workers(len(fields))) as pool:
            for brightness, sample in pool.map(crop_measure_write, range(len(fields))):
                per_field.append(brightness)
                samples.append(sample)
                bar.update(1)
        bar.close()
        lap("crop, measure and write")
        # --- intensities over all fields: what loaders apply ---
        mean_b = [float(x) for x in np.mean([b for b, _ in per_field], axis=0)]
        mean_p = [float(x) for x in np.mean([p for _, p in per_field], axis=0)]
        bleach = bleaching(mean_b, pinhole, [st.order for st in plan.positions[0].steps])  # type: ignore[arg-type]
        finalize_with_step_stats(store, samples, normalization=normalization(offset, mean_b, mean_p, bleach))
        lap("statistics")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    residuals = [f.registration.residual_px if f.registration else 0.0 for f in fields]
    return IngestReport(plan, "replaced" if replaced else "new", store, residuals, warnings, stage_s)
