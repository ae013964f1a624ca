"""The ladder store: the only code in dehaze that reads or writes haze-ladder stores.

Layout (Zarr v2, OME-NGFF 0.4, nested chunk keys)::

    ladder.zarr/
      .zattrs            {"dehaze": DatasetMeta}        dataset-level metadata (see DatasetMeta)
      field_000/         OME-NGFF 0.4 image, one level:
        .zattrs          {"multiscales": [...], "dehaze": FieldMeta}
        0                (h, y, x) or (h, z, y, x) uint16 camera values, chunks (1, [1,] 256, 256)
        noise_free       same shape, float32: expected camera value without noise   (simulation only)
        truth            (y, x) or (z, y, x) float32: fluorophore density             (simulation only)
      field_001/ ...

The axis ``h`` indexes the degradation step (0 cleanest ... T haziest); it is typed ``degradation``,
never ``time``, so NGFF readers do not mistake it for time.

Crash safety: the dataset metadata says ``status: incomplete`` until every field is written; a field's
own metadata gets ``complete: true`` only after all its arrays are on disk. An interrupted writer leaves a
store that :func:`check_ladder` reports as incomplete and that a rerun of the same job completes.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numcodecs
import numpy as np
import zarr
from pydantic import ValidationError

from dehaze import __version__
from dehaze.config import StrictModel, format_validation_error
from dehaze.errors import UserError

FORMAT_VERSION = 1
NGFF_VERSION = "0.4"
IMAGE_ARRAY = "0"
CHUNK_YX = 256
# lz4 with bit-shuffle: on noisy uint16 camera data (256^2 chunks, one thread) it compresses 1.85x against
# 1.98x for zstd level 1 (the previous choice), but encodes 2.3x and decodes 2.5x faster (645 and
# 900 MB/s): ingestion writes at that speed and training loaders read chunks over and over.
_COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)


class StepStats(StrictModel):
    """Intensity statistics of one step over all fields (camera values, ADU)."""

    mean: float
    std: float
    min: float
    max: float
    p01: float
    p999: float
    haze_index: float | None = None  # background / peak of the noise-free image (0 crisp ... 1 flat)


class PredictionInfo(StrictModel):
    """What made a prediction store: its image at step h is the estimate of x_0 from input step h."""

    method: str  # e.g. "unet", "pixel-indi", "hdn", "latent-direct"
    run_dirs: list[str]
    input_store: str
    input_sha256: str  # manifest identity of the input store (fields and steps line up with it)
    strategy: dict[str, Any] = {}


class DatasetMeta(StrictModel):
    """Dataset-level metadata under the root's ``dehaze`` key."""

    format_version: int = FORMAT_VERSION
    dehaze_version: str = __version__
    source: Literal["simulation", "acquisition", "prediction"]
    manifest: dict[str, Any]
    manifest_sha256: str
    status: Literal["incomplete", "complete"] = "incomplete"
    n_steps: int
    pinhole_au: list[float | None]  # None: unknown in AU, or the widefield step (see widefield_steps)
    pinhole_um: list[float] | None = None
    pinhole_units_source: str = ""  # where the AU/µm values came from (manifest, OME-XML, calibration...)
    widefield_steps: list[int] = []
    spatial_axes: list[str]  # ["y", "x"] or ["z", "y", "x"]
    pixel_size_um: dict[str, float]  # per spatial axis
    fields: list[str]
    step_stats: list[StepStats] | None = None
    normalization: dict[str, Any] | None = None  # what loaders should apply (recorded by the writer)
    prediction: PredictionInfo | None = None  # only for source == "prediction"
    photometry: dict[str, Any] | None = None  # simulation: PSF normalisation and brightness reference (None: older store)

    @property
    def axes(self) -> list[str]:
        return ["h", *self.spatial_axes]


class FieldMeta(StrictModel):
    """Per-field metadata under the image group's ``dehaze`` key."""

    complete: bool = False
    extras: list[str] = []
    info: dict[str, Any] = {}


def ngff_multiscales(name: str, spatial_axes: list[str], pixel_size_um: dict[str, float]) -> list[dict[str, Any]]:
    """OME-NGFF 0.4 ``multiscales`` for one single-level ladder image with a ``degradation`` axis h."""
    axes = [{"name": "h", "type": "degradation"}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in spatial_axes]
    scale = [1.0] + [float(pixel_size_um[a]) for a in spatial_axes]
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": axes,
            "datasets": [{"path": IMAGE_ARRAY, "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]


def field_name(index: int) -> str:
    return f"field_{index:03d}"


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One step (and one plane) per chunk, ~256x256 pixels: best for random patch reads (DESIGN §3)."""
    lead = (1,) * (len(shape) - 2)
    return (*lead, min(CHUNK_YX, shape[-2]), min(CHUNK_YX, shape[-1]))


_FLOAT_EXTRAS = ("noise_free", "truth", "std", "trajectory")
_STEP_ARRAYS = (IMAGE_ARRAY, "noise_free", "std", "trajectory")  # arrays whose first axis is the step h
_ARRAY_LABELS = {IMAGE_ARRAY: "image", "noise_free": "noise-free image", "truth": "truth", "std": "std",
                 "trajectory": "trajectory"}


class DamagedStore(UserError):
    """A store's data cannot be read as its metadata says (a missing or corrupt chunk).

    Raised in a DataLoader worker, torch re-raises it in the main process as ``DamagedStore(traceback
    text)``: the message is cut back to the original one line."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1]
        super().__init__(message)


class ChunkMissing(DamagedStore):
    """A chunk read found no data (zarr would silently return the fill value). :class:`LadderArray` says
    which field, array and step; read straight from a zarr array (a latent cache) it names the store and
    chunk key. Not a KeyError on purpose: zarr takes a KeyError for "not written yet, use the fill value"."""

    def __init__(self, key: str, reason: str | None = None, store_path: str = "") -> None:
        if reason is None:  # re-raised from a DataLoader worker with the whole message: see DamagedStore
            super().__init__(key)
            self.key, self.reason = "", ""
            return
        super().__init__(f"{store_path}: chunk {key} is {reason}; the store is damaged")
        self.key, self.reason = key, reason


class _CheckedDirectoryStore(zarr.DirectoryStore):
    """The directory store every ladder store is read through: a chunk read that finds no file is an
    error, not zeros. Costs nothing: zarr's default ``getitems`` tests each file's existence too."""

    def getitems(self, keys: Any, *, contexts: Any) -> dict[str, Any]:
        out = {}
        for key in keys:
            try:
                out[key] = self[key]
            except KeyError:
                raise ChunkMissing(key, "missing (deleted, or never written)", self.path) from None
            except OSError as exc:
                raise ChunkMissing(key, f"unreadable ({exc.strerror or type(exc).__name__})", self.path) from None
        return out


def _open_root(path: Path, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(_CheckedDirectoryStore(str(path), dimension_separator="/"), mode=mode)
    except (ValueError, KeyError, TypeError) as exc:  # a missing or corrupt .zgroup
        raise UserError(f"{path}: not a readable Zarr group ({type(exc).__name__}: {str(exc)[:80]}); the store is damaged") from None


def chunk_problem(arr: zarr.Array, key: str) -> str | None:
    """Why the chunk ``key`` (a store key of ``arr``) cannot be read, or None if it decodes to the chunk shape."""
    try:
        data = arr.chunk_store[key]
    except KeyError:
        return "missing (deleted, or never written)"
    except OSError as exc:
        return f"unreadable ({exc.strerror or type(exc).__name__})"
    comp = arr.compressor
    if comp is not None and comp.codec_id == "blosc" and len(data) >= 16:
        cbytes = int.from_bytes(bytes(data[12:16]), "little")
        if cbytes != len(data):
            return f"truncated ({len(data)} of {cbytes} bytes)"
    try:
        arr._decode_chunk(data)  # zarr 2.18 (pinned): decompress, view as dtype, reshape to the chunk shape
    except ValueError as exc:
        return f"wrongly shaped or undecodable ({str(exc)[:60]})"
    except Exception as exc:  # noqa: BLE001 - codecs raise RuntimeError, TypeError, ... for corrupt bytes
        return f"undecodable ({type(exc).__name__}: {str(exc)[:60]})"
    return None


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
        where = f"{self.field}, {_ARRAY_LABELS.get(self.name, repr(self.name))} array '{self.name}'"
        if self.name in _STEP_ARRAYS and coords and coords[0].isdigit():
            where += f", step {int(coords[0]) * self.zarr.chunks[0]}"
        return f"{where}: chunk {'/'.join(coords)}"

    def describe_chunk(self, key: str, reason: str) -> str:
        """``STORE: FIELD, ARRAY, step T: chunk K is REASON; ...`` (one line)."""
        return (f"{self._store.path}: {self.chunk_location(key)} is {reason}; the store is damaged "
                f"(`dehaze check {self._store.path}` lists every bad chunk; rerun the command that made it with --overwrite)")


class LadderStore:
    """An open ladder store. Create with :func:`create_ladder`, open with :func:`open_ladder`."""

    def __init__(self, path: Path, root: zarr.Group, meta: DatasetMeta) -> None:
        self.path = path
        self.root = root
        self.meta = meta
        self._arrays: dict[tuple[str, str], LadderArray] = {}

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
        group = self._group(field)
        if name not in group:
            raise UserError(f"{self.path}: field {field} has no {name!r} array (has: {', '.join(self.field_meta(field).extras) or 'none'})")
        return self._checked_array(field, name)

    def _group(self, field: str) -> zarr.Group:
        try:
            group = self.root[field]
        except KeyError:
            raise UserError(f"{self.path}: {field} is listed in the metadata but missing; the store is damaged "
                            "(rerun the command that made it with --overwrite)") from None
        if not isinstance(group, zarr.Group):
            raise UserError(f"{self.path}: {field} is an array, not a field group; the store is damaged")
        return group

    def _field_attrs(self, field: str) -> dict[str, Any]:
        group = self._group(field)
        try:
            attrs = group.attrs.asdict()
        except ValueError:
            raise UserError(f"{self.path}: {field}/.zattrs: unreadable metadata (not JSON); the store is damaged") from None
        if not isinstance(attrs, dict):
            raise UserError(f"{self.path}: {field}/.zattrs: metadata is a {type(attrs).__name__}, not a mapping; the store is damaged")
        return attrs

    def field_meta(self, field: str) -> FieldMeta:
        raw = self._field_attrs(field).get("dehaze", {})
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
        group = self._group(field)
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
        if name in _FLOAT_EXTRAS and str(arr.dtype) != "float32":
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
        _write_array(group, IMAGE_ARRAY, image)
        for name, arr in (extras or {}).items():
            _write_array(group, name, arr)
        group.attrs.put(
            {
                "multiscales": ngff_multiscales(field, self.meta.spatial_axes, self.meta.pixel_size_um),
                "dehaze": FieldMeta(complete=True, extras=sorted(extras or {}), info=info or {}).model_dump(mode="json"),
            }
        )

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
                group.create_dataset(name, shape=shape, dtype=dtype, chunks=_chunks(shape), compressor=_COMPRESSOR,
                                     overwrite=True, dimension_separator="/", fill_value=np.nan if np.dtype(dtype).kind == "f" else 0)
        elif fmeta.get("complete"):
            raise ValueError(f"{field} is already complete")
        return group

    def field_progress(self, field: str) -> int:
        return int(self.field_meta(field).info.get("progress", 0)) if field in self.root else 0

    def set_field_progress(self, field: str, units_done: int) -> None:
        group = self.root[field]
        fmeta = self.field_meta(field)
        group.attrs.put({**dict(group.attrs), "dehaze": fmeta.model_copy(update={"info": {**fmeta.info, "progress": units_done}}).model_dump(mode="json")})

    def complete_field(self, field: str, extras: list[str], info: dict[str, Any] | None = None) -> None:
        """Mark a field written with :meth:`begin_field` complete (its NGFF metadata goes in last)."""
        self.root[field].attrs.put(
            {
                "multiscales": ngff_multiscales(field, self.meta.spatial_axes, self.meta.pixel_size_um),
                "dehaze": FieldMeta(complete=True, extras=sorted(extras), info=info or {}).model_dump(mode="json"),
            }
        )

    def finalize(self, **updates: Any) -> None:
        """Mark the store complete, recording final dataset-level values (e.g. ``step_stats``)."""
        missing = set(self.meta.fields) - self.completed_fields()
        if missing:
            raise RuntimeError(f"cannot finalize {self.path}: fields not written: {sorted(missing)}")
        self.meta = self.meta.model_copy(update={**updates, "status": "complete"})
        _put_meta(self.root, self.meta)


def _write_array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    arr = group.create_dataset(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=_chunks(data.shape),
        compressor=_COMPRESSOR,
        overwrite=True,
        dimension_separator="/",
        fill_value=0,
    )
    arr[...] = data


def _put_meta(root: zarr.Group, meta: DatasetMeta) -> None:
    # Re-validate the full model (model_copy does not) so a store never carries invalid metadata.
    checked = DatasetMeta.model_validate(meta.model_dump(mode="json"))
    root.attrs.put({"dehaze": checked.model_dump(mode="json")})


def _looks_like_ladder(path: Path) -> bool:
    attrs = path / ".zattrs"
    if not attrs.is_file():
        return False
    try:
        data = json.loads(attrs.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "dehaze" in data


def ensure_writable_parent(path: Path) -> None:
    """Fail early, before any work, if ``path`` cannot be created (no half-written output)."""
    parent = path.resolve().parent
    if not parent.exists():
        raise UserError(f"{path}: parent folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise UserError(f"{path}: {parent} is not a folder")
    probe = parent / f".dehaze-write-probe-{path.name}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise UserError(f"{path}: cannot write in {parent} ({exc.strerror}); choose another output path") from None


def _is_zarr_node(path: Path) -> bool:
    return any((path / name).is_file() for name in (".zattrs", ".zgroup", ".zarray"))


def make_output_folder(path: str | Path, what: str, fix: str) -> Path:
    """Create the folder ``path`` for several outputs (a study, a report), or refuse it in one line: an
    existing file, a folder inside or being a Zarr store, or one that cannot be made. ``fix`` ends each message."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is a file; {what} is a folder: {fix}")
    refuse_inside_store(path, what, itself=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create {what} ({exc.strerror}); {fix}") from None
    return path


def refuse_inside_store(path: str | Path, what: str, *, itself: bool = False) -> None:
    """Refuse an output ``path`` inside a Zarr store (it would nest a foreign tree in it), or, with
    ``itself``, that is one (a folder of outputs: its files would go into the store)."""
    path = Path(path)
    for candidate in (path.absolute(), path.resolve()):
        for parent in ([candidate] if itself else []) + list(candidate.parents):
            if parent.is_dir() and _is_zarr_node(parent):
                where = "is" if parent == candidate else "is inside"
                raise UserError(f"{path}: {where} the Zarr store {parent}; choose {what} outside any store")


def physical_memory_bytes() -> int | None:
    """This machine's memory (None where the system does not say): what sizes are checked against."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    return next(f"{n / 2**e:.3g} {unit}" for e, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "bytes")) if n >= 2**e or e == 0)


LOCK_SUFFIX = ".dehaze-lock"


def lock_file(path: str | Path) -> Path:
    """The lock file of the output ``path``: beside it (a store may be replaced or not exist yet)."""
    path = Path(path).absolute()
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def output_lock(path: str | Path, what: str = "-o") -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` while a command writes it; a second writer of the
    same path is refused in one line, naming the holder's pid.

    The lock is an ``flock`` on a file beside the output, which the kernel releases when the holder's
    process ends however it ends (a ``kill -9`` leaves no stale lock). The file is removed on release; a
    waiter that locked a removed file tries again on the new one. Where no lock file can be made (a
    missing or read-only parent folder, a path inside a store) the command runs unlocked: it writes
    nothing there either, and its own checks say why in one line.
    """
    lock = lock_file(path)
    parent = lock.parent
    if not parent.is_dir() or _is_zarr_node(parent) or any(_is_zarr_node(p) for p in parent.parents):
        yield
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{path}: is being written by another dehaze process (pid {holder}); wait for it to finish "
                            f"or choose another {what}") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this file as we opened it: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def check_output_store(path: Path, source: str, *, replacing: bool, keep: Sequence[str | Path] = ()) -> None:
    """Refuse, before anything is written, an output store path that would destroy or corrupt what the
    user has: a symbolic link to be replaced (or dangling), a path inside a store, one of the ``keep``
    paths (the command's inputs) or a folder around one; with ``replacing``, also an existing store of
    another kind or holding files that are not part of it."""
    if path.is_symlink():
        if not path.exists():
            raise UserError(f"{path}: is a dangling symbolic link; choose another output path")
        if replacing:
            raise UserError(f"{path}: is a symbolic link (to {path.resolve()}); dehaze replaces only a real store folder, "
                            "never what a link points to: give the real path")
    refuse_inside_store(path, "an output path")
    here = path.resolve()
    for other in keep:
        other = Path(other).resolve()
        if other == here:
            raise UserError(f"{path}: is the input store; choose another output path (nothing was written)")
        if other.is_relative_to(here):
            raise UserError(f"{path}: contains the input store {other}; choose another output path (nothing was written)")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is a file, not a ladder store; choose another output path")


def create_ladder(path: str | Path, meta: DatasetMeta, *, overwrite: bool = False,
                  replace_stale: bool = False, keep: Sequence[str | Path] = ()) -> tuple[LadderStore, str]:
    """Create a store, or reopen an interrupted one made from the same manifest.

    Returns ``(store, state)`` with state ``"new"``, ``"resumed"`` or ``"complete"``. An existing store
    from another manifest is refused unless ``overwrite`` (which also rebuilds one of the same manifest) or
    ``replace_stale`` (for a writer that owns the folder, e.g. a study: a store of the same manifest is
    reopened, one of another is replaced). A path that is not a ladder store is never deleted (nothing the
    user had is lost); neither is a store of another kind (``meta.source``), one holding other files, a
    store reached through a symbolic link, or one of the ``keep`` paths (the command's inputs); and no
    store is made inside another (see :func:`check_output_store`).
    """
    path = Path(path)
    check_output_store(path, meta.source, replacing=False, keep=keep)
    if path.exists():
        if not _looks_like_ladder(path):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            else:
                raise UserError(f"{path}: exists and is not a dehaze ladder store; choose another output path")
        else:
            existing = open_ladder(path, require_complete=False)
            same = existing.meta.manifest_sha256 == meta.manifest_sha256
            if existing.meta.source != meta.source:
                raise UserError(f"{path}: holds a {existing.meta.source} store; this command writes {meta.source} stores "
                                "and never replaces another kind: choose another output path")
            if same and not overwrite:
                state = "complete" if existing.meta.status == "complete" else "resumed"
                return existing, state
            if not (overwrite or replace_stale):
                raise UserError(
                    f"{path}: holds a store made from a different manifest; pass --overwrite to replace it or choose another output path"
                )
            check_output_store(path, meta.source, replacing=True, keep=keep)
            refuse_foreign_files(existing)
            shutil.rmtree(path)
    ensure_writable_parent(path)
    root = zarr.open_group(_CheckedDirectoryStore(str(path), dimension_separator="/"), mode="w")
    _put_meta(root, meta)
    return LadderStore(path, root, meta), "new"


def refuse_foreign_files(store: LadderStore) -> None:
    """Refuse to replace a store holding anything a dehaze store does not (the user's files)."""
    fields = set(store.meta.fields)
    foreign = sorted(p.name for p in store.path.iterdir()
                     if not (p.name in (".zattrs", ".zgroup") or (p.name in fields and p.is_dir() and not p.is_symlink())))
    if foreign:
        raise UserError(f"{store.path}: holds files that are not part of the store ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); move them out first: --overwrite replaces only what dehaze wrote")


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


MAX_LISTED_CHUNKS = 1_000_000  # check enumerates the expected chunk keys of arrays up to this many chunks


def existing_chunk_keys(arr: zarr.Array) -> set[str]:
    """The store keys of every chunk file of ``arr`` on disk (one directory walk)."""
    root = Path(arr.store.path) / arr.path
    prefix = f"{arr.path}/" if arr.path else ""
    keys = set()
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        for name in files:
            if not name.startswith("."):
                keys.add(f"{prefix}{name}" if rel == "." else f"{prefix}{rel.replace(os.sep, '/')}/{name}")
    return keys


def missing_chunk_keys(arr: zarr.Array) -> tuple[list[str], int, int]:
    """(store keys of chunks of ``arr`` that have no file, how many have none, how many its shape needs);
    one directory walk. Of an array claiming more than MAX_LISTED_CHUNKS chunks, only the first missing
    key is listed (the count is exact)."""
    on_disk = existing_chunk_keys(arr)
    grid = [-(-n // c) for n, c in zip(arr.shape, arr.chunks)]
    n_expected = int(np.prod(grid, dtype=object))
    keys = (arr._chunk_key(coords) for coords in itertools.product(*(range(g) for g in grid)))
    if n_expected > MAX_LISTED_CHUNKS:
        prefix_depth = arr.path.count("/") + 1 if arr.path else 0
        first = next((k for k in itertools.islice(keys, len(on_disk) + 1) if k not in on_disk), None)
        present = sum(1 for k in on_disk if k.count("/") == prefix_depth + arr.ndim - 1)
        return ([first] if first else []), n_expected - present, n_expected
    missing = [k for k in keys if k not in on_disk]
    return missing, len(missing), n_expected


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
    attrs = store._field_attrs(field)
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
    group = store._group(field)
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


def describe_ladder(store: LadderStore) -> str:
    """A readable multi-line summary for ``dehaze info``."""
    m = store.meta
    lines = [
        f"{store.path}  ({m.source}, format {m.format_version}, {m.status})",
        f"  fields: {len(m.fields)}   steps: {m.n_steps}   axes: {' '.join(m.axes)}",
    ]
    if m.fields and m.fields[0] in store.root and IMAGE_ARRAY in store._group(m.fields[0]):
        img = store.zarr_array(m.fields[0], IMAGE_ARRAY)
        lines.append(f"  image shape per field: {img.shape} {img.dtype}, chunks {img.chunks}")
    px = ", ".join(f"{a}={v:g}" for a, v in m.pixel_size_um.items())
    lines.append(f"  pixel size (µm): {px}")
    if m.pinhole_units_source:
        lines.append(f"  pinhole values from: {m.pinhole_units_source}")
    header = "  step  pinhole_au  pinhole_um      mean       std     p99.9  haze_index"
    lines.append(header)
    for t in range(m.n_steps):
        au = m.pinhole_au[t]
        au_s = "widefield" if t in m.widefield_steps else ("-" if au is None else f"{au:g}")
        um_s = "-" if not m.pinhole_um else f"{m.pinhole_um[t]:.3g}"
        s = m.step_stats[t] if m.step_stats else None
        stats = f"{s.mean:9.1f} {s.std:9.1f} {s.p999:9.1f} {('-' if s.haze_index is None else f'{s.haze_index:.3f}'):>11}" if s else "        (not yet computed)"
        lines.append(f"  {t:>4}  {au_s:>10}  {um_s:>10} {stats}")
    return "\n".join(lines)


_PERCENTILES = (0.001, 0.999)  # the p01 and p999 of StepStats (and of summarize), as fractions
_HISTOGRAM_MAX_BINS = 1 << 20  # integer samples spanning fewer values are summarised from their histogram


def summarize(values: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(mean, std, min, max, p01, p999) of a 1-D sample; percentiles interpolated linearly, as np.percentile.

    Integer camera values (the usual case) go through one bincount: exact, and ~10x quicker than a partial
    sort of a million values. Others: float64 accumulators for the moments and one partial sort.
    """
    lo_v, hi_v = values.min(), values.max()
    pos = np.array(_PERCENTILES) * (len(values) - 1)
    lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
    if values.dtype.kind in "ui" and int(hi_v) - int(lo_v) < _HISTOGRAM_MAX_BINS:
        # offsets from the minimum: in the native type for unsigned values (never negative), in int64 for
        # signed ones (int16 spanning more than 32767 would wrap)
        offsets = values - lo_v if values.dtype.kind == "u" else values.astype(np.int64) - int(lo_v)
        counts = np.bincount(offsets.astype(np.intp, copy=False))
        levels = np.arange(len(counts), dtype=np.float64) + float(lo_v)
        mean = float(counts @ levels) / len(values)
        std = float(np.sqrt(counts @ (levels - mean) ** 2 / len(values)))
        # the k-th smallest value (0-based) is the first level whose cumulative count exceeds k
        order_stat = lambda k: levels[np.searchsorted(np.cumsum(counts), k, side="right")]  # noqa: E731
        at_lo, at_hi = order_stat(lo), order_stat(hi)
    else:
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        # float32 is exact for float32 and 16-bit camera values; wider ones keep float64
        work = values.astype(np.float64 if values.dtype.itemsize > 4 or values.dtype.kind in "iu" else np.float32)
        work.partition(sorted({*lo, *hi}))
        at_lo, at_hi = work[lo].astype(np.float64), work[hi].astype(np.float64)
    p01, p999 = at_lo + (pos - lo) * (at_hi - at_lo)
    return mean, std, float(lo_v), float(hi_v), float(p01), float(p999)


def step_stats_from_samples(samples_per_step: list[np.ndarray], haze: list[float | None] | None = None) -> list[StepStats]:
    """Aggregate statistics per step from (possibly subsampled) camera values of all fields."""
    out = []
    for t, values in enumerate(samples_per_step):
        mean, std, vmin, vmax, p01, p999 = summarize(np.asarray(values).ravel())  # native dtype: no float64 copy
        out.append(StepStats(mean=mean, std=std, min=vmin, max=vmax, p01=p01, p999=p999, haze_index=None if haze is None else haze[t]))
    return out


STATS_PIXELS_PER_STEP = 2_000_000  # subsample cap when computing dataset statistics


def stats_samples(image: Any, n_fields: int) -> list[np.ndarray]:
    """Per-step strided subsample of one field's (h, [z,] y, x) camera values (numpy or zarr array), at most
    ``STATS_PIXELS_PER_STEP // n_fields`` values per step: the field's share of the dataset statistics."""
    per_field_px = max(1, STATS_PIXELS_PER_STEP // n_fields)
    stride = max(1, int(np.sqrt(np.prod(image.shape[1:]) / per_field_px)))
    return [np.asarray(image[t])[..., ::stride, ::stride].ravel() for t in range(image.shape[0])]


def finalize_with_step_stats(store: LadderStore, samples: list[list[np.ndarray]] | None = None, **updates: Any) -> None:
    """Compute per-step statistics from the written fields (subsampled) and mark the store complete.

    ``samples``: per field, :func:`stats_samples` of the image just written, when the writer still holds it
    (saves reading the store back; same values). A field's ``info["haze_index"]`` (one value per step,
    simulation only) is averaged into the stats; stores without it get ``haze_index: None``. ``updates`` are
    further dataset-level values to record.
    """
    fields = store.fields
    if samples is None:
        samples = [stats_samples(store.image(f), len(fields)) for f in fields]
    haze = np.zeros(store.n_steps)
    has_haze = True
    for f in fields:
        values = store.field_meta(f).info.get("haze_index")
        if values is None:
            has_haze = False
        else:
            haze += np.asarray(values, dtype=np.float64)
    per_step = [np.concatenate([field_samples[t] for field_samples in samples]) for t in range(store.n_steps)]
    stats = step_stats_from_samples(per_step, list(haze / len(fields)) if has_haze else None)
    store.finalize(step_stats=stats, **updates)


# ---- latent caches: HVAE encodings of a ladder store ----------------------------------------------
#
#   latents.zarr/
#     .zattrs          {"dehaze_latents": LatentCacheMeta}
#     field_000/level_0 (h, C_0, H_0, W_0) float32   finest level, one chunk per step
#     field_000/level_1 ...                          coarser levels
#
# The cache records the HVAE checkpoint (sha256 of its file) and the ladder it encodes: a cache made by
# another checkpoint or from another ladder is stale and gets re-encoded.

LATENT_FORMAT_VERSION = 1


class LatentCacheMeta(StrictModel):
    format_version: int = LATENT_FORMAT_VERSION
    hvae_run: str
    hvae_checkpoint_sha256: str
    source_store: str
    source_sha256: str
    n_steps: int
    level_channels: list[int]
    fields: list[str]
    image_shape_yx: list[int]  # the (padded) image size the latents encode
    status: Literal["incomplete", "complete"] = "incomplete"

    def same_source(self, other: LatentCacheMeta) -> bool:
        keys = {"hvae_checkpoint_sha256", "source_sha256", "n_steps", "fields"}
        return self.model_dump(include=keys) == other.model_dump(include=keys)


class LatentCache:
    """An open latent cache (see above). ``level(field, i)`` is the (h, C_i, H_i, W_i) array of level i."""

    def __init__(self, path: Path, root: zarr.Group, meta: LatentCacheMeta) -> None:
        self.path, self.root, self.meta = path, root, meta

    def level(self, field: str, i: int) -> zarr.Array:
        return self.root[field][f"level_{i}"]

    @property
    def n_levels(self) -> int:
        return len(self.meta.level_channels)

    def completed_fields(self) -> set[str]:
        return {f for f in self.meta.fields if f in self.root and dict(self.root[f].attrs).get("complete")}

    def write_field(self, field: str, levels: list[np.ndarray]) -> None:
        group = self.root.require_group(field)
        group.attrs.put({"complete": False})
        for i, arr in enumerate(levels):
            z = group.create_dataset(f"level_{i}", shape=arr.shape, dtype=np.float32, chunks=(1, *arr.shape[1:]),
                                     compressor=_COMPRESSOR, overwrite=True, dimension_separator="/")
            z[...] = arr.astype(np.float32)
        group.attrs.put({"complete": True})

    def finalize(self) -> None:
        missing = set(self.meta.fields) - self.completed_fields()
        if missing:
            raise RuntimeError(f"cannot finalize {self.path}: fields not encoded: {sorted(missing)}")
        self.meta = self.meta.model_copy(update={"status": "complete"})
        self.root.attrs.put({"dehaze_latents": self.meta.model_dump(mode="json")})


def open_latent_cache(path: str | Path) -> LatentCache | None:
    """The latent cache at ``path``, or None if there is none (or it is unreadable: it will be rebuilt)."""
    path = Path(path)
    attrs = path / ".zattrs"
    if not attrs.is_file():
        return None
    try:
        meta = LatentCacheMeta.model_validate(json.loads(attrs.read_text())["dehaze_latents"])
    except (OSError, ValueError, KeyError, ValidationError):
        return None
    root = zarr.open_group(_CheckedDirectoryStore(str(path), dimension_separator="/"), mode="r+")
    return LatentCache(path, root, meta)


def create_latent_cache(path: str | Path, meta: LatentCacheMeta) -> LatentCache:
    """Start a new latent cache at ``path``, replacing a stale cache (never anything else)."""
    path = Path(path)
    if path.exists():
        if not (path / ".zattrs").is_file() or "dehaze_latents" not in (path / ".zattrs").read_text():
            raise UserError(f"{path}: exists and is not a dehaze latent cache; choose another path")
        shutil.rmtree(path)
    ensure_writable_parent(path)
    root = zarr.open_group(_CheckedDirectoryStore(str(path), dimension_separator="/"), mode="w")
    root.attrs.put({"dehaze_latents": meta.model_dump(mode="json")})
    return LatentCache(path, root, meta)
