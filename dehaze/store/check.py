"""``dehaze check``: a store validated against the contract, metadata and (unless quick) every chunk."""

from __future__ import annotations

import itertools
from pathlib import Path

import zarr

from dehaze.errors import UserError
from dehaze.store.chunks import MAX_LISTED_CHUNKS, chunk_problem, missing_chunk_keys
from dehaze.store.ladder import LadderArray, LadderStore, open_ladder
from dehaze.store.layout import IMAGE_ARRAY
from dehaze.store.ngff import NGFF_VERSION


def _check_chunks(store: LadderStore, field: str, name: str, arr: zarr.Array) -> list[str]:
    """Every chunk of one array: missing, truncated, undecodable or wrongly shaped ones."""
    checked = LadderArray(store, field, name, arr)
    missing, n_missing, n_expected = missing_chunk_keys(arr)
    if n_expected > MAX_LISTED_CHUNKS and missing:
        return [f"{field}/{name}: shape {arr.shape} needs {n_expected} chunks, the store holds {n_expected - n_missing}; "
                "the array's metadata claims far more data than there is"]
    problems = [f"{checked.chunk_location(key)} is missing (deleted, or never written)" for key in missing]
    gone = set(missing)
    for coords in itertools.product(*(range(-(-n // c)) for n, c in zip(arr.shape, arr.chunks))):
        key = arr._chunk_key(coords)
        problem = None if key in gone else chunk_problem(arr, key)
        if problem:
            problems.append(f"{checked.chunk_location(key)} is {problem}")
    return problems


def check_ladder(path: str | Path, *, quick: bool = False) -> list[str]:
    """Validate a store against the contract; returns a list of problems (empty: valid).

    Metadata, array dtypes and shapes always; unless ``quick``, also every chunk of every array (read and
    decoded: missing, truncated, undecodable and wrongly shaped chunks).
    """
    try:
        store = open_ladder(path)
    except UserError as err:
        return [str(err)]
    meta, problems = store.meta, []
    if len(meta.pinhole_au) != meta.n_steps:
        problems.append(f"pinhole_au has {len(meta.pinhole_au)} values for {meta.n_steps} steps")
    if meta.pinhole_um is not None and len(meta.pinhole_um) != meta.n_steps:
        problems.append(f"pinhole_um has {len(meta.pinhole_um)} values for {meta.n_steps} steps")
    if meta.step_stats is None or len(meta.step_stats) != meta.n_steps:
        problems.append("step_stats missing or not one per step")
    for axis in meta.spatial_axes:
        if axis not in meta.pixel_size_um:
            problems.append(f"pixel_size_um has no value for axis {axis}")
    for field in meta.fields:
        try:
            problems += _check_field(store, field, quick)
        except UserError as err:
            problems.append(str(err).removeprefix(f"{store.path}: ").split("; the store is damaged")[0])
    return problems


def _check_field(store: LadderStore, field: str, quick: bool) -> list[str]:
    meta, problems = store.meta, []
    attrs = store.field_attrs(field)
    fmeta = store.field_meta(field)
    if not fmeta.complete:
        problems.append(f"{field}: not marked complete")
    ms = attrs.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict) or ms[0].get("version") != NGFF_VERSION:
        problems.append(f"{field}: no OME-NGFF {NGFF_VERSION} multiscales metadata")
    else:
        axes = ms[0].get("axes")
        axes = axes if isinstance(axes, list) and all(isinstance(a, dict) for a in axes) else []
        names = [a.get("name") for a in axes]
        if names != meta.axes or any("type" not in a for a in axes) or axes[0].get("type") != "degradation":
            problems.append(f"{field}: axes {names} do not match {meta.axes} with h typed 'degradation'")
    group = store.group(field)
    if IMAGE_ARRAY not in group:
        return [*problems, f"{field}: image array '{IMAGE_ARRAY}' missing"]
    names = [IMAGE_ARRAY]
    for extra in fmeta.extras:
        if extra not in group:
            problems.append(f"{field}: extra array {extra!r} listed but missing")
        else:
            names.append(extra)
    for name in names:
        arr = store.zarr_array(field, name)
        problem = store.array_problem(field, name, arr)
        if problem:
            problems.append(problem)
        elif not quick:
            problems += _check_chunks(store, field, name, arr)
    return problems
