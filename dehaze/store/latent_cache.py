"""Latent caches: HVAE encodings of a ladder store (kept apart so that training/ can own it later).

Layout::

    latents.zarr/
      .zattrs          {"dehaze_latents": LatentCacheMeta}
      field_000/level_0 (h, C_0, H_0, W_0) float32   finest level, one chunk per step
      field_000/level_1 ...                          coarser levels

The cache records the HVAE checkpoint (sha256 of its file) and the ladder it encodes: a cache made by
another checkpoint or from another ladder is stale and gets re-encoded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from pydantic import ValidationError

from dehaze.config import StrictModel
from dehaze.errors import UserError
from dehaze.store.chunks import open_checked_group
from dehaze.store.layout import COMPRESSOR
from dehaze.store.output import ensure_writable_parent

LATENT_FORMAT_VERSION = 1


class LatentCacheMeta(StrictModel):
    """A latent cache's metadata under its root's ``dehaze_latents`` key: what it encodes, with which HVAE."""

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
                                     compressor=COMPRESSOR, overwrite=True, dimension_separator="/")
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
    root = open_checked_group(path, "r+")
    return LatentCache(path, root, meta)


def create_latent_cache(path: str | Path, meta: LatentCacheMeta) -> LatentCache:
    """Start a new latent cache at ``path``, replacing a stale cache (never anything else)."""
    path = Path(path)
    if path.exists():
        if not (path / ".zattrs").is_file() or "dehaze_latents" not in (path / ".zattrs").read_text():
            raise UserError(f"{path}: exists and is not a dehaze latent cache; choose another path")
        shutil.rmtree(path)
    ensure_writable_parent(path)
    root = open_checked_group(path, "w")
    root.attrs.put({"dehaze_latents": meta.model_dump(mode="json")})
    return LatentCache(path, root, meta)
