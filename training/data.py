"""Random patches streamed straight from ladder stores, for every trainer.

Item ``i`` of a dataset is drawn from ``numpy.random.default_rng([seed, i])``: which field, which step,
which plane, where, which flip/rotation. So a run is deterministic for a seed whatever the number of
DataLoader workers, and resuming at optimiser step k re-draws exactly the batches k, k+1, ...

Stores are opened lazily in each worker process (zarr handles are not shared across forks).

Sample kinds (tensors are (1, P, P) float32, normalised; ``t`` a float step):

* ``pair``:        {"x": x_t, "y": x_0, "t": t}        restorers, t drawn from the input steps
* ``path``:        InDI, plus a small Gaussian noise on x_t. ``path="straight"`` (the path the sampler
                   walks): {"x": x_t, "y": x_0, "t": t, "s": s, "x_s": x_s} with the source step s drawn
                   from the input steps, t ~ U(0, s] (t = s exactly with probability ``source_fraction``)
                   and x_t = x_0 + (t/s)(x_s - x_0), x_0 the target;
                   ``path="ladder"``: {"x": x_t, "y": x_0, "t": t}, t ~ U(0, T] and x_t interpolated
                   between the two neighbouring ladder steps
* ``single``:      {"x": x_t, "t": t}                  autoencoders, t drawn from all steps
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dehaze.errors import UserError
from dehaze.normalization import Normalization
from dehaze.store import LadderStore, open_ladder

SampleKind = Literal["pair", "path", "single"]


@dataclass(frozen=True)
class FieldRef:
    """A field of one of a dataset's stores."""

    store: int  # index into the dataset's store list
    field: str


def open_training_stores(paths: list[str | Path], min_steps: int = 2) -> list[LadderStore]:
    """Open and validate the stores a run trains on (complete, enough steps, the same axes)."""
    stores = [open_ladder(p) for p in paths]
    for s in stores:
        if s.n_steps < min_steps:
            raise UserError(f"{s.path}: has {s.n_steps} step(s); training needs at least {min_steps}")
        if s.meta.spatial_axes not in (["y", "x"], ["z", "y", "x"]):
            raise UserError(f"{s.path}: axes {s.meta.axes} are not h,y,x or h,z,y,x")
        if s.meta.source == "prediction":
            raise UserError(f"{s.path}: is a prediction store; train on a ladder store")
    if len({s.n_steps for s in stores}) > 1:
        raise UserError("--data stores have different numbers of steps: " + ", ".join(f"{s.path}: {s.n_steps}" for s in stores))
    return stores


def split_fields(stores: list[LadderStore], val_fraction: float, seed: int) -> tuple[list[FieldRef], list[FieldRef]]:
    """Split fields (not patches) into train and validation: no field contributes to both."""
    refs = [FieldRef(i, f) for i, s in enumerate(stores) for f in s.fields]
    order = np.random.default_rng([seed, 0xF1E1D]).permutation(len(refs))
    n_val = int(round(val_fraction * len(refs)))
    if val_fraction > 0 and len(refs) > 1:
        n_val = min(max(n_val, 1), len(refs) - 1)
    else:
        n_val = 0
    val = [refs[i] for i in sorted(order[:n_val])]
    train = [refs[i] for i in sorted(order[n_val:])]
    return train, val


class LadderPatches(Dataset):
    """Reproducible random patches (see the module docstring). ``length`` items; item i uses rng(seed, i)."""

    def __init__(self, store_paths: list[str], fields: list[FieldRef], kind: SampleKind, patch_size: int,
                 norm: Normalization, seed: int, length: int, input_steps: list[int] | None = None,
                 target: Literal["camera", "noise_free"] = "camera", augment: bool = True,
                 path_noise_std: float = 0.0, path: Literal["straight", "ladder"] = "ladder", in_memory: bool = False,
                 source_fraction: float = 0.0) -> None:
        if not fields:
            raise UserError("no fields to draw patches from (too few fields for the validation split?)")
        self.store_paths, self.fields, self.kind = list(store_paths), fields, kind
        self.patch, self.norm, self.seed, self.length = patch_size, norm, seed, length
        self.target, self.augment, self.path_noise_std, self.path = target, augment, path_noise_std, path
        self.in_memory, self.source_fraction = in_memory, source_fraction
        self._arrays: dict[tuple[int, str, str], object] | None = None
        self._pid: int | None = None
        first = self._store(0)
        self.n_steps = first.n_steps
        self.steps = input_steps if input_steps is not None else list(range(1, self.n_steps))
        lowest = 1 if kind == "path" else 0
        bad = [t for t in self.steps if not lowest <= t < self.n_steps]
        if bad or not self.steps:
            raise UserError(f"data.input_steps {self.steps}: each must be in {lowest}..{self.n_steps - 1}")
        for ref in fields:
            # a deleted chunk would read as zeros: refuse it now, before any training (one listing per array)
            self._checked(ref, "image").require_chunks()
            if target == "noise_free" and kind in ("pair", "path") and "noise_free" in self._store(ref.store).field_meta(ref.field).extras:
                self._checked(ref, "noise_free").require_chunks()
            shape = self._array(ref, "image").shape
            if min(shape[-2:]) < patch_size:
                raise UserError(f"{self.store_paths[ref.store]}: field {ref.field} is {shape[-2]}x{shape[-1]} px, smaller than patch_size={patch_size}")
            if target == "noise_free" and "noise_free" not in self._store(ref.store).field_meta(ref.field).extras:
                raise UserError(f"{self.store_paths[ref.store]}: field {ref.field} has no noise_free array; use data.target=camera")

    # ---- lazy, per-process store access --------------------------------------------------------
    def _store(self, i: int) -> LadderStore:
        return open_ladder(self.store_paths[i])

    def _checked(self, ref: FieldRef, name: str):  # noqa: ANN202 - the store's LadderArray
        store = self._store(ref.store)
        return store.image(ref.field) if name == "image" else store.extra(ref.field, name)

    def _array(self, ref: FieldRef, name: str):  # noqa: ANN202 - zarr or numpy array
        # Zarr handles are reopened in each worker process; in-memory arrays are inherited (fork) as they are.
        if self._arrays is None or (self._pid != os.getpid() and not self.in_memory):
            self._arrays, self._pid = {}, os.getpid()
        key = (ref.store, ref.field, name)
        if key not in self._arrays:
            store = self._store(ref.store)
            arr = store.image(ref.field) if name == "image" else store.extra(ref.field, name)
            self._arrays[key] = arr[...] if self.in_memory else arr
        return self._arrays[key]

    def __len__(self) -> int:
        return self.length

    # ---- one sample ----------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        extra: dict[str, float] = {}  # scalar conditions besides t
        ref = self.fields[rng.integers(len(self.fields))]
        image = self._array(ref, "image")
        lead: tuple[int, ...] = ()
        if image.ndim == 4:  # (h, z, y, x): one plane per sample
            lead = (int(rng.integers(image.shape[1])),)
        h, w = image.shape[-2:]
        y0, x0 = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
        win = (slice(y0, y0 + self.patch), slice(x0, x0 + self.patch))

        def read(step: int, name: str = "image") -> np.ndarray:
            return self.norm.apply(self._array(ref, name)[(step, *lead, *win)])

        def x0_target() -> np.ndarray:
            return read(0, "noise_free" if self.target == "noise_free" else "image")

        if self.kind == "pair":
            t = float(self.steps[rng.integers(len(self.steps))])
            sample = {"x": read(int(t)), "y": x0_target()}
        elif self.kind == "path" and self.path == "straight":
            s = int(self.steps[rng.integers(len(self.steps))])
            t = float(rng.uniform(0.0, s)) or float(s)  # (0, s]
            if self.source_fraction and rng.uniform() < self.source_fraction:
                t = float(s)  # the source state itself: where every walk starts and the one-shot reads
            x_0, x_s = x0_target(), read(s)
            x_t = x_0 + (t / s) * (x_s - x_0) + self.path_noise_std * rng.standard_normal(x_s.shape).astype(np.float32)
            sample = {"x": x_t.astype(np.float32), "y": x_0, "x_s": x_s}
            extra["s"] = float(s)
        elif self.kind == "path":
            t_max = max(self.steps)
            t = float(rng.uniform(0.0, t_max)) or t_max  # (0, T]
            lo, frac = int(np.floor(t)), t - np.floor(t)
            x_t = read(lo) if frac == 0 else (1 - frac) * read(lo) + frac * read(lo + 1)
            x_t = x_t + self.path_noise_std * rng.standard_normal(x_t.shape).astype(np.float32)
            sample = {"x": x_t.astype(np.float32), "y": x0_target()}
        elif self.kind == "single":
            t = float(rng.integers(self.n_steps))
            sample = {"x": read(int(t))}
        else:  # pragma: no cover - guarded by the Literal
            raise ValueError(self.kind)

        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            for key in sample:
                a = np.rot90(sample[key], k)
                sample[key] = a[:, ::-1] if flip else a
        out = {key: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None] for key, a in sample.items()}
        out["t"] = torch.tensor(t, dtype=torch.float32)
        out.update({key: torch.tensor(v, dtype=torch.float32) for key, v in extra.items()})
        return out


class StepSampler(Sampler[int]):
    """Item indices for optimiser steps ``start..steps-1``, sharded over DDP ranks.

    Step s on rank r uses items ``(s * world + r) * batch + j``: disjoint across ranks, and the same
    items on a resumed run as on an uninterrupted one.
    """

    def __init__(self, start_step: int, steps: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.steps, self.batch, self.rank, self.world = start_step, steps, batch_size, rank, world

    def __iter__(self):  # noqa: ANN204
        for s in range(self.start, self.steps):
            base = (s * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.batch
