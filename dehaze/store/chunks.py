"""Chunks that are not there or do not decode: found, named, and never passed off as the fill value."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dehaze.errors import UserError

MAX_LISTED_CHUNKS = 1_000_000  # check enumerates the expected chunk keys of arrays up to this many chunks


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


class CheckedDirectoryStore(zarr.DirectoryStore):
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


def open_checked_group(path: Path, mode: str) -> zarr.Group:
    """The root group of the store at ``path`` (nested chunk keys), read through :class:`CheckedDirectoryStore`."""
    return zarr.open_group(CheckedDirectoryStore(str(path), dimension_separator="/"), mode=mode)


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


def existing_chunk_keys(arr: zarr.Array) -> set[str]:
    """The store keys of every chunk file of ``arr`` on disk (one directory walk)."""
    root = Path(arr.store.path) / arr.path
    prefix = f"{arr.path}/" if arr.path else ""
    keys = set()
    for folder, _dirs, files in os.walk(root):
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
