"""An open ladder store: :class:`LadderStore` (fields, arrays, the write protocols) and :class:`LadderArray`
(one array whose damaged chunks are named in one line); :func:`open_ladder` opens one for reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pydantic import ValidationError

from dehaze.config import format_validation_error
from dehaze.errors import UserError
from dehaze.store.chunks import ChunkMissing, DamagedStore, chunk_problem, missing_chunk_keys, open_checked_group
from dehaze.store.layout import ARRAY_LABELS, COMPRESSOR, FLOAT_EXTRAS, IMAGE_ARRAY, STEP_ARRAYS, chunk_shape, write_array
from dehaze.store.meta import FORMAT_VERSION, DatasetMeta, FieldMeta
from dehaze.store.ngff import ngff_multiscales, ngff_omero


def _open_root(path: Path, mode: str) -> zarr.Group:
    try:
        return open_checked_group(path, mode)
    except (ValueError, KeyError, TypeError) as exc:  # a missing or corrupt .zgroup
        raise UserError(f"{path}: not a readable Zarr group ({type(exc).__name__}: {str(exc)[:80]}); the store is damaged") from None


class LadderArray:
    """One array of a ladder store, read like a zarr array (``shape``, ``dtype``, ``chunks``, ``a[...]``)
    but a missing, truncated or undecodable chunk is a one-line UserError naming the store, field, array,
    step and chunk, never the fill value passed off as data."""

    def __init__(self, store: LadderStore, field: str, name: str, arr: zarr.Array) -> None:
        self._store, self.field, self.name, self.zarr = store, field, name, arr

    shape = property(lambda self: self.zarr.shape)
    dtype = property(lambda self: self.zarr.dtype)
    ndim = property(lambda self: self.zarr.ndim)
    chunks = property(lambda self: self.zarr.chunks)
    size = property(lambda self: self.zarr.size)

    def __len__(self) -> int:
        return len(self.zarr)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, selection: Any) -> np.ndarray:
        try:
            return self.zarr[selection]
        except ChunkMissing as exc:
            raise DamagedStore(self.describe_chunk(exc.key, exc.reason)) from None
        except (RuntimeError, ValueError, TypeError) as exc:
            bad = self._bad_chunk(selection)
            if bad is None:
                raise  # not the data: a bug, keep its traceback
            raise DamagedStore(self.describe_chunk(*bad)) from exc

    def require_chunks(self) -> None:
        """Refuse the array if any of its chunks has no file (one directory walk; chunks are not decoded)."""
        missing, n_missing, n_expected = missing_chunk_keys(self.zarr)
        if missing:
            more = f" ({n_missing} of {n_expected} chunks missing)" if n_missing > 1 else ""
            raise DamagedStore(self.describe_chunk(missing[0], "missing (deleted, or never written)" + more))

    def _bad_chunk(self, selection: Any) -> tuple[str, str] | None:
        from zarr.indexing import BasicIndexer

        try:
            indexer = BasicIndexer(selection, self.zarr)
        except Exception:  # noqa: BLE001 - not a basic selection: nothing to blame on the data
            return None
        for coords, _, _ in indexer:
            key = self.zarr._chunk_key(coords)
            problem = chunk_problem(self.zarr, key)
            if problem:
                return key, problem
        return None

    def chunk_location(self, key: str) -> str:
        """``FIELD, ARRAY, step T: chunk K`` for the store key of one chunk."""
        coords = key.rsplit("/", self.zarr.ndim)[-self.zarr.ndim:] if "/" in key else key.split(".")
        where = f"{self.field}, {ARRAY_LABELS.get(self.name, repr(self.name))} array '{self.name}'"
        if self.name in STEP_ARRAYS and coords and coords[0].isdigit():
            where += f", step {int(coords[0]) * self.zarr.chunks[0]}"
        return f"{where}: chunk {'/'.join(coords)}"

    def describe_chunk(self, key: str, reason: str) -> str:
        """``STORE: FIELD, ARRAY, step T: chunk K is REASON; ...`` (one line)."""
        return (f"{self._store.path}: {self.chunk_location(key)} is {reason}; the store is damaged "
                f"(`dehaze check {self._store.path}` lists every bad chunk; rerun the command that made it with --overwrite)")


class LadderStore:
    """An open ladder store. A command creates (or resumes) one through :func:`~dehaze.store.output.writing_output`
    (:func:`~dehaze.store.output.create_ladder` without a lock); :func:`open_ladder` opens one for reading."""

    def __init__(self, path: Path, root: zarr.Group, meta: DatasetMeta) -> None:
        self.path = path
        self.root = root
        self.meta = meta
        self._arrays: dict[tuple[str, str], LadderArray] = {}
        self._writing: dict[tuple[str, str], zarr.Array] = {}  # arrays opened by begin_field, for write_block

    # ---- reading -------------------------------------------------------------------------------
    @property
    def fields(self) -> list[str]:
        return list(self.meta.fields)

    @property
    def n_steps(self) -> int:
        return self.meta.n_steps

    def image(self, field: str) -> LadderArray:
        """The (h, [z,] y, x) camera-value array of one field (lazy, see :class:`LadderArray`); a field or
        array that is missing, or whose metadata, dtype or shape contradicts the store's, is a UserError."""
        return self._checked_array(field, IMAGE_ARRAY)

    def extra(self, field: str, name: str) -> LadderArray:
        """A per-field extra array (``noise_free``, ``truth``, ``shifts`` ...)."""
        group = self.group(field)
        if name not in group:
            raise UserError(f"{self.path}: field {field} has no {name!r} array (has: {', '.join(self.field_meta(field).extras) or 'none'})")
        return self._checked_array(field, name)

    def group(self, field: str) -> zarr.Group:
        try:
            group = self.root[field]
        except KeyError:
            raise UserError(f"{self.path}: {field} is listed in the metadata but missing; the store is damaged "
                            "(rerun the command that made it with --overwrite)") from None
        if not isinstance(group, zarr.Group):
            raise UserError(f"{self.path}: {field} is an array, not a field group; the store is damaged")
        return group

    def field_attrs(self, field: str) -> dict[str, Any]:
        group = self.group(field)
        try:
            attrs = group.attrs.asdict()
        except ValueError:
            raise UserError(f"{self.path}: {field}/.zattrs: unreadable metadata (not JSON); the store is damaged") from None
        if not isinstance(attrs, dict):
            raise UserError(f"{self.path}: {field}/.zattrs: metadata is a {type(attrs).__name__}, not a mapping; the store is damaged")
        return attrs

    def field_meta(self, field: str) -> FieldMeta:
        raw = self.field_attrs(field).get("dehaze", {})
        if not isinstance(raw, dict):
            raise UserError(f"{self.path}: {field}/.zattrs: 'dehaze' metadata is a {type(raw).__name__}, not a mapping; the store is damaged")
        try:
            return FieldMeta.model_validate(raw)
        except ValidationError as err:
            raise UserError(format_validation_error(err, f"{self.path}: {field} dehaze metadata")) from None

    def completed_fields(self) -> set[str]:
        """Fields marked complete; a field whose metadata is unreadable or malformed is a UserError."""
        return {name for name in self.meta.fields if name in self.root and self.field_meta(name).complete}

    def zarr_array(self, field: str, name: str) -> zarr.Array:
        """The raw zarr array (metadata checked, chunk reads not): for describing and checking a store."""
        group = self.group(field)
        try:
            arr = group[name]
        except KeyError:
            raise UserError(f"{self.path}: {field}: array {name!r} missing") from None
        except (ValueError, TypeError) as exc:
            raise UserError(f"{self.path}: {field}/{name}/.zarray: unreadable array metadata ({type(exc).__name__}: "
                            f"{str(exc)[:80]}); the store is damaged") from None
        if not isinstance(arr, zarr.Array):
            raise UserError(f"{self.path}: {field}/{name} is a group, not an array; the store is damaged")
        return arr

    def array_problem(self, field: str, name: str, arr: zarr.Array) -> str | None:
        """How ``arr`` (array ``name`` of ``field``) contradicts the store's metadata, or None."""
        m = self.meta
        where = f"{field}/{name}"
        n_axes = 1 + len(m.spatial_axes)
        if name == IMAGE_ARRAY:
            if arr.ndim != n_axes or arr.shape[0] != m.n_steps:
                return f"{where}: shape {arr.shape} does not match axes {m.axes} with {m.n_steps} steps"
            kinds = {"simulation": ("uint16",), "prediction": ("float32",)}.get(m.source)
            if kinds is not None and str(arr.dtype) not in kinds:
                return f"{where}: dtype {arr.dtype}, a {m.source} store's images are {kinds[0]}"
            if arr.dtype.kind not in "uif":
                return f"{where}: dtype {arr.dtype} is not a numeric camera value type"
            return None
        if name in FLOAT_EXTRAS and str(arr.dtype) != "float32":
            return f"{where}: dtype {arr.dtype}, expected float32"
        image_shape = tuple(self.zarr_array(field, IMAGE_ARRAY).shape)
        expected = {"noise_free": image_shape, "std": image_shape, "truth": image_shape[1:],
                    "trajectory": (m.n_steps, *image_shape[1:])}.get(name)
        if expected is not None and tuple(arr.shape) != expected:
            return f"{where}: shape {arr.shape}, expected {expected} (the field's image is {image_shape})"
        return None

    def _checked_array(self, field: str, name: str) -> LadderArray:
        key = (field, name)
        if key not in self._arrays:
            self.field_meta(field)  # a field whose metadata does not parse is damaged, whatever its pixels
            arr = self.zarr_array(field, name)
            problem = self.array_problem(field, name, arr)
            if problem:
                raise UserError(f"{self.path}: {problem}; the store is damaged")
            self._arrays[key] = LadderArray(self, field, name, arr)
        return self._arrays[key]

    # ---- writing -------------------------------------------------------------------------------
    def _forget(self, field: str) -> None:
        """Drop the checked arrays of a field about to be (re)written (their zarr metadata may change)."""
        self._arrays = {k: v for k, v in self._arrays.items() if k[0] != field}
        self._writing = {k: v for k, v in self._writing.items() if k[0] != field}

    def write_field(
        self,
        field: str,
        image: np.ndarray,
        extras: dict[str, np.ndarray] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Write one field: the (h, [z,] y, x) image, extras, then mark it complete (last)."""
        if field not in self.meta.fields:
            raise ValueError(f"{field} is not a field of this store")
        n_axes = 1 + len(self.meta.spatial_axes)
        if image.ndim != n_axes or image.shape[0] != self.meta.n_steps:
            raise ValueError(f"{field}: image shape {image.shape} does not match axes {self.meta.axes} with {self.meta.n_steps} steps")
        group = self.root.require_group(field)
        self._forget(field)
        group.attrs.put({"dehaze": FieldMeta(complete=False, info=info or {}).model_dump(mode="json")})
        write_array(group, IMAGE_ARRAY, image)
        for name, arr in (extras or {}).items():
            write_array(group, name, arr)
        self._mark_complete(field, list(extras or {}), info)

    def plan_field(self, field: str, info: dict[str, Any]) -> None:
        """Record a field's ``info`` before its pixels (it stays incomplete): what a resumed writer needs."""
        if field not in self.meta.fields:
            raise ValueError(f"{field} is not a field of this store")
        self.root.require_group(field).attrs.put({"dehaze": FieldMeta(complete=False, info=info).model_dump(mode="json")})

    # ---- incremental writing (the inference engine streams tile rows) -------------------------------
    def begin_field(self, field: str, arrays: dict[str, tuple[tuple[int, ...], str]]) -> zarr.Group:
        """Create (or reopen, when resuming) a field's arrays {name: (shape, dtype)}; ``"0"`` is the image.

        The field stays incomplete until :meth:`complete_field`; ``progress`` counts finished work units.
        """
        if field not in self.meta.fields:
            raise ValueError(f"{field} is not a field of this store")
        group = self.root.require_group(field)
        self._forget(field)
        fmeta = self.field_meta(field).model_dump()
        fresh = not all(name in group and group[name].shape == tuple(shape) for name, (shape, _) in arrays.items())
        if fresh:
            group.attrs.put({"dehaze": FieldMeta(complete=False, info={"progress": 0}).model_dump(mode="json")})
            for name, (shape, dtype) in arrays.items():
                group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunk_shape(shape), compressor=COMPRESSOR,
                                     overwrite=True, dimension_separator="/", fill_value=np.nan if np.dtype(dtype).kind == "f" else 0)
        elif fmeta.get("complete"):
            raise ValueError(f"{field} is already complete")
        self._writing.update({(field, name): group[name] for name in arrays})
        return group

    def write_block(self, field: str, name: str, where: tuple[Any, ...], values: np.ndarray) -> None:
        """Write ``values`` into the region ``where`` (ints and slices, one per axis) of the array ``name``
        of a field begun with :meth:`begin_field`: the engine writes one row of tiles at a time."""
        key = (field, name)
        if key not in self._writing:
            raise ValueError(f"{field}/{name}: not begun (call begin_field first)")
        self._writing[key][where] = values

    def field_progress(self, field: str) -> int:
        return int(self.field_meta(field).info.get("progress", 0)) if field in self.root else 0

    def set_field_progress(self, field: str, units_done: int) -> None:
        group = self.root[field]
        fmeta = self.field_meta(field)
        group.attrs.put({**dict(group.attrs), "dehaze": fmeta.model_copy(update={"info": {**fmeta.info, "progress": units_done}}).model_dump(mode="json")})

    def complete_field(self, field: str, extras: list[str], info: dict[str, Any] | None = None) -> None:
        """Mark a field written with :meth:`begin_field` complete (its NGFF metadata goes in last)."""
        self._mark_complete(field, extras, info)

    def _mark_complete(self, field: str, extras: list[str], info: dict[str, Any] | None) -> None:
        """The field's NGFF image metadata and ``complete: true``: written last, once its arrays are on disk."""
        self.root[field].attrs.put(
            {
                "multiscales": ngff_multiscales(field, self.meta.spatial_axes, self.meta.pixel_size_um),
                "dehaze": FieldMeta(complete=True, extras=sorted(extras), info=info or {}).model_dump(mode="json"),
            }
        )

    def finalize(self, **updates: Any) -> None:
        """Mark the store complete, recording final dataset-level values (e.g. ``step_stats``); with the
        statistics, each field also gets its NGFF ``omero`` rendering settings (before the store is marked
        complete: an interrupted finalize is done again by the rerun)."""
        missing = set(self.meta.fields) - self.completed_fields()
        if missing:
            raise RuntimeError(f"cannot finalize {self.path}: fields not written: {sorted(missing)}")
        self.meta = self.meta.model_copy(update={**updates, "status": "complete"})
        if self.meta.step_stats:
            for field in self.meta.fields:
                self.root[field].attrs["omero"] = ngff_omero(field, self.meta.step_stats)
        put_meta(self.root, self.meta)


def put_meta(root: zarr.Group, meta: DatasetMeta) -> None:
    """Write ``meta`` as the root's ``dehaze`` metadata."""
    # Re-validate the full model (model_copy does not) so a store never carries invalid metadata.
    checked = DatasetMeta.model_validate(meta.model_dump(mode="json"))
    root.attrs.put({"dehaze": checked.model_dump(mode="json")})


def looks_like_ladder(path: Path) -> bool:
    """Whether ``path`` holds root metadata with a ``dehaze`` key (a ladder store, complete or not)."""
    attrs = path / ".zattrs"
    if not attrs.is_file():
        return False
    try:
        data = json.loads(attrs.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "dehaze" in data


def open_ladder(path: str | Path, *, require_complete: bool = True) -> LadderStore:
    """Open a ladder store for reading; raises a one-line :class:`UserError` if it is not a valid one."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such store")
    attrs_file = path / ".zattrs"
    if attrs_file.is_file():
        try:
            attrs = json.loads(attrs_file.read_text())
        except (OSError, ValueError):
            raise UserError(f"{attrs_file}: unreadable store metadata (not JSON); the store is damaged") from None
    else:
        attrs = {}
    if not isinstance(attrs, dict) or "dehaze" not in attrs:
        raise UserError(f"{path}: not a dehaze ladder store (no 'dehaze' metadata in {attrs_file})")
    root = _open_root(path, "r+" if not require_complete else "r")
    try:
        meta = DatasetMeta.model_validate(attrs["dehaze"])
    except ValidationError as err:
        raise UserError(format_validation_error(err, f"{path}: dehaze metadata")) from None
    if meta.format_version > FORMAT_VERSION:
        raise UserError(f"{path}: store format {meta.format_version} is newer than this dehaze ({FORMAT_VERSION}); upgrade dehaze")
    store = LadderStore(path, root, meta)
    if require_complete and meta.status != "complete":
        done = len(store.completed_fields())
        raise UserError(
            f"{path}: store is incomplete ({done}/{len(meta.fields)} fields written); rerun the command that made it to finish it"
        )
    return store
