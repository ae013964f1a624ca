"""Ingest a microscope pinhole series into a ladder store: discover -> read, check, register -> write.

Stages (one field of T+1 steps, shapes (h, [z,] y, x)):

1. :func:`acquisition.discover.discover` reads metadata only: files, steps, fields, pinhole values (sorted,
   cleanest first), shapes and pixel sizes, all checked; then one plane of every file is decoded (also in a
   dry run: a file whose compression cannot be decoded fails there, not after the dry run said all was well).
2. Every field is read and checked (NaN/inf planes) and registered to its cleanest step
   (:mod:`acquisition.register`); only its shifts are kept, and its raw pixels while they fit in
   ``cache_mb`` (beyond that, stage 3 reads the field again): memory is that budget plus a few fields per
   thread, for any number of fields.
3. Only when every field has been read and checked is the store created, with each field's plan (sources,
   shifts, the crop common to all fields) in its metadata. Then each field is shifted, cropped, measured
   (brightness per step) and written with its shifts (extra ``shifts``, (h, 2) float32 px) and
   registration figures. The per-step statistics come from the arrays in memory.

Fields go side by side in threads (reading, FFTs, filters and compression release the GIL). An interrupted
ingestion (Ctrl-C) keeps the fields it finished: the same command resumes from the plans in the store. If
writing fails otherwise, a store this run created is removed (an existing one is never touched).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, TypeVar

import numpy as np

from acquisition.discover import Plan, Position, discover
from acquisition.intensity import bleaching, normalization, step_brightness
from acquisition.manifest import AcquisitionManifest
from acquisition.register import apply_shifts, register_steps, valid_box
from dehaze.errors import UserError
from dehaze.progress import progress_bar
from dehaze.store import (
    DatasetMeta,
    LadderStore,
    OutputPlan,
    field_name,
    finalize_with_step_stats,
    format_bytes,
    physical_memory_bytes,
    stats_samples,
    writing_output,
)

CACHE_MB = 2048  # raw pixels kept in memory between registration and writing (beyond: read again)

_In = TypeVar("_In")
_Out = TypeVar("_Out")


@dataclass
class IngestReport:
    """What an ingestion did: its plan, the state of the output store, the store and per-field residuals."""

    plan: Plan
    state: str  # "dry-run", "new", "replaced" (an --overwrite store), "resumed" (an interrupted one), "complete"
    store: LadderStore | None = None
    residual_px: list[float] = field(default_factory=list)  # per field
    warnings: list[str] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage (discover, register, write, statistics)


class _RawCache:
    """Raw field arrays read while registering, handed to the writer, up to a byte budget (thread-safe)."""

    def __init__(self, budget_mb: float) -> None:
        self._budget = budget_mb * 1e6
        self._used = 0
        self._arrays: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def offer(self, index: int, raw: np.ndarray) -> None:
        with self._lock:
            if self._used + raw.nbytes <= self._budget:
                self._arrays[index] = raw
                self._used += raw.nbytes

    def take(self, index: int) -> np.ndarray | None:
        with self._lock:
            raw = self._arrays.pop(index, None)
            self._used -= 0 if raw is None else raw.nbytes
            return raw


# typed Generator, not Iterator: contextlib.closing needs its close()
def in_threads(fn: Callable[[_In], _Out], items: Iterable[_In], n_items: int) -> Generator[_Out, None, None]:
    """``map(fn, items)`` over a few threads (see :func:`_workers`), results in order. On an error or
    Ctrl-C, fields not yet started are dropped (those running finish: no half-written field). Use it under
    ``contextlib.closing``, so that this happens before the caller cleans up, wherever the error arose."""
    pool = ThreadPoolExecutor(max_workers=_workers(n_items))
    try:
        yield from pool.map(fn, items)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _workers(n_fields: int) -> int:
    """Threads for per-field work: reading, FFTs, filters and compression release the GIL."""
    return max(1, min(n_fields, os.cpu_count() or 1))


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


def _register(pos: Position, image: np.ndarray, m: AcquisitionManifest, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The field's registration record (shifts, confidence, residual, valid box), None when disabled;
    an unregistrable step or a too small common area is a UserError."""
    cfg = m.registration
    ny, nx = image.shape[-2:]
    if not cfg.enabled:
        return None
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
    return {
        "reference_step": cfg.reference_step,
        "shifts_px": result.shifts.tolist(),  # full precision: a resumed run shifts the remaining fields alike
        "confidence_psr": [None if not np.isfinite(c) else round(float(c), 2) for c in result.confidence],
        "residual_px": round(result.residual_px, 4),
        "resample": cfg.resample,
        "valid_yx": list(box),
    }


def _field_plan(pos: Position, registration: dict[str, Any] | None, crop: tuple[int, int, int, int]) -> dict[str, Any]:
    """What the store records of a field before its pixels: sources, registration, the crop (y0, y1, x0, x1)."""
    plan: dict[str, Any] = {
        "position": pos.key,
        "sources": [st.label for st in pos.steps],
        "acquisition_order": [st.order for st in pos.steps],
        "crop_yx": list(crop),
    }
    if registration is not None:
        plan["registration"] = registration
    return plan


def _shift_and_crop(raw: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
    """A field's raw (h, [z,] y, x) values registered (as its plan says) and cropped to the common area."""
    reg = plan.get("registration")
    image = raw if reg is None else apply_shifts(raw, np.asarray(reg["shifts_px"]), reg["resample"])
    y0, y1, x0, x1 = plan["crop_yx"]
    return np.ascontiguousarray(image[..., y0:y1, x0:x1])


def _identity(m: AcquisitionManifest, plan: Plan) -> tuple[dict[str, Any], str]:
    """The manifest recorded in the store, and its hash (manifest + source files' absolute paths, sizes,
    mtimes: the same files however the command spells their paths). The record also holds, per step, what
    was read of it (``steps``: emission and excitation wavelength, NA, pinhole in µm and AU with the AU's
    source and the file's own AU), so that dyes taken for steps, or a recomputed AU, can be seen afterwards."""
    files = [{"name": str(p.resolve()), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in plan.files]
    record = {"acquisition": m.model_dump(mode="json"), "source": str(plan.source.resolve()), "files": files}
    sha = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return {**record, "steps": plan.step_optics}, sha


def probe_files(plan: Plan) -> None:
    """Decode one plane of every file the plan reads (each file once): an undecodable compression or a
    corrupt strip is a UserError now, before anything is written or said to be fine."""
    seen: set[Path] = set()
    for pos in plan.positions:
        for st in pos.steps:
            if st.series.path not in seen and st.series.probe is not None:
                seen.add(st.series.path)
                st.series.probe()


def _every_field_planned(store: LadderStore) -> bool:
    """An interrupted ingestion resumes only once every field's plan is in the store (else it is rebuilt)."""
    return all(f in store.root and "crop_yx" in store.field_meta(f).info for f in store.fields)


def ingest(
    source: str | Path,
    out: str | Path,
    manifest: AcquisitionManifest,
    *,
    dry_run: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    warn: Callable[[str], None] | None = None,
    cache_mb: float = CACHE_MB,
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
    probe_files(plan)
    lap("discover")
    for w in plan.warnings:
        _warn(w)
    if dry_run:
        return IngestReport(plan, "dry-run", warnings=warnings)
    refuse_fields_beyond_memory(plan)
    record, sha = _identity(manifest, plan)
    # one writer per store; decided before any pixel is read; a store this run made is removed if it fails
    with writing_output(out, _dataset_meta(plan, record, sha), overwrite=overwrite, resumable=_every_field_planned,
                        made_from="other files or another manifest", discard_on_error=True) as output:
        return _ingest_into(output, plan, manifest, show_progress, _warn, warnings, cache_mb, lap, stage_s)


def refuse_fields_beyond_memory(plan: Plan) -> None:
    """A field is read whole (every step) and registered into a copy of the same size: refuse, before any
    pixel is read, a field whose two copies would not fit in this machine's memory."""
    series = plan.positions[0].steps[0].series
    stack = plan.n_steps * math.prod(plan.spatial_shape) * series.dtype.itemsize
    ram = physical_memory_bytes()
    if ram and 2 * stack > ram:
        raise UserError(f"{plan.source}: one field is {plan.n_steps} steps of {' x '.join(map(str, plan.spatial_shape))} px "
                        f"({series.dtype}, from {series.label}): {format_bytes(2 * stack)} to read and register, more than "
                        f"this machine's {format_bytes(ram)} of memory; crop or bin the images, or ingest on a larger machine")


def _ingest_into(output: OutputPlan, plan: Plan, manifest: AcquisitionManifest, show_progress: bool,
                 _warn: Callable[[str], None], warnings: list[str], cache_mb: float, lap: Callable[[str], None],
                 stage_s: dict[str, float]) -> IngestReport:
    """Stages 2 and 3 of :func:`ingest` (under its output lock)."""
    if output.state == "complete":
        return IngestReport(plan, "complete", output.open(), warnings=warnings)
    names = [field_name(i) for i in range(len(plan.positions))]
    cache = _RawCache(cache_mb)
    if output.state == "resumed":  # interrupted: every field's plan is in the store
        store, state = output.open(), "resumed"
        plans = [store.field_meta(name).info for name in names]
    else:
        plans = _register_all(plan, manifest, cache, _warn, show_progress)
        lap("read and register")
        state = "replaced" if output.replaces else "new"
        store = output.open()
        for name, field_plan in zip(names, plans):  # what a resumed run needs, before any pixel
            store.plan_field(name, field_plan)

    # --- per field, side by side: shift, crop, measure, write (fields already written are read back) ---
    offset = manifest.offset_adu
    done = store.completed_fields()

    def write(i: int) -> tuple[tuple[list[float], list[float]], list[np.ndarray]]:
        if names[i] in done:
            info = store.field_meta(names[i]).info
            return (info["brightness_mean_adu"], info["brightness_p999_adu"]), stats_samples(store.image(names[i]), len(names))
        raw = cache.take(i)
        image = _shift_and_crop(_read_position(plan.positions[i], plan.spatial_axes) if raw is None else raw, plans[i])
        brightness = step_brightness(image, offset)
        reg = plans[i].get("registration")
        extras = {} if reg is None else {"shifts": np.asarray(reg["shifts_px"], dtype=np.float32)}
        info = {**plans[i], "brightness_mean_adu": brightness[0], "brightness_p999_adu": brightness[1]}
        store.write_field(names[i], image, extras, info)
        return brightness, stats_samples(image, len(names))

    if True:  # (sketch: the try/except went into writing_output)
        bar = progress_bar(total=len(names), initial=len(done), desc="writing", unit="field", disable=not show_progress)
        per_field, samples = [], []
        with contextlib.closing(in_threads(write, range(len(names)), len(names) - len(done))) as results:
            for name, (brightness, sample) in zip(names, results):
                per_field.append(brightness)
                samples.append(sample)
                bar.update(0 if name in done else 1)
        bar.close()
        lap("shift, crop, measure and write")
        # --- intensities over all fields: what loaders apply ---
        mean_b = [float(x) for x in np.mean([b for b, _ in per_field], axis=0)]
        mean_p = [float(x) for x in np.mean([p for _, p in per_field], axis=0)]
        pinhole = plan.pinhole_um if plan.pinhole_um is not None else plan.pinhole_au
        bleach = bleaching(mean_b, pinhole, [st.order for st in plan.positions[0].steps])  # type: ignore[arg-type]
        finalize_with_step_stats(store, samples, normalization=normalization(offset, mean_b, mean_p, bleach))
        lap("statistics")
    residuals = [p["registration"]["residual_px"] if "registration" in p else 0.0 for p in plans]
    return IngestReport(plan, state, store, residuals, warnings, stage_s)


def _register_all(plan: Plan, m: AcquisitionManifest, cache: _RawCache, warn: Callable[[str], None],
                  show_progress: bool) -> list[dict[str, Any]]:
    """Read, check and register every field (side by side); each field's plan (see :func:`_field_plan`),
    all cropped to the area common to every field. Warnings are reported in field order."""

    def read_and_register(i: int) -> tuple[dict[str, Any] | None, tuple[int, int], list[str]]:
        said: list[str] = []
        raw = _read_position(plan.positions[i], plan.spatial_axes)
        registration = _register(plan.positions[i], raw, m, said.append)
        cache.offer(i, raw)
        ny, nx = raw.shape[-2:]  # (h, [z,] y, x)
        return registration, (ny, nx), said

    registrations, boxes = [], []
    bar = progress_bar(total=len(plan.positions), desc="reading and registering", unit="field", disable=not show_progress)
    with contextlib.closing(in_threads(read_and_register, range(len(plan.positions)), len(plan.positions))) as results:
        for registration, (ny, nx), said in results:
            registrations.append(registration)
            boxes.append(tuple(registration["valid_yx"]) if registration else (0, ny, 0, nx))
            for msg in said:
                warn(msg)
            bar.update(1)
    bar.close()
    hy = min(b[1] - b[0] for b in boxes)
    hx = min(b[3] - b[2] for b in boxes)
    return [_field_plan(pos, reg, (b[0], b[0] + hy, b[2], b[2] + hx)) for pos, reg, b in zip(plan.positions, registrations, boxes)]


def _dataset_meta(plan: Plan, record: dict[str, Any], sha: str) -> DatasetMeta:
    """The store's dataset metadata, known before any pixel is read."""
    return DatasetMeta(
        source="acquisition",
        manifest=record,
        manifest_sha256=sha,
        n_steps=plan.n_steps,
        pinhole_au=plan.pinhole_au,
        pinhole_um=plan.pinhole_um,
        pinhole_units_source=plan.units_source,
        spatial_axes=plan.spatial_axes,
        pixel_size_um=plan.pixel_size_um,
        fields=[field_name(i) for i in range(len(plan.positions))],
    )
