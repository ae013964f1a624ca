"""Random aligned crops of cached HVAE latents (see :mod:`training.latents`), reproducible per item.

A crop of ``patch_size`` image pixels becomes, at level i (downsampling factor f_i = H / H_i), a
(C_i, P/f_i, P/f_i) crop at the same place; crops start on the coarsest level's grid so every level is
cut at whole latent pixels. All items of one batch share the same step t (batch index = item // batch),
because the per-step CycleGAN networks process one step at a time.

Sample kinds (lists are per level, finest first):

* ``latent_pair``:        {"z_t": [...], "z_0": [...], "t"}       latent restorer R(z_t, t)
* ``latent_degradation``: {"z_t": [...], "z_prev": [...], "z_0": [...], "t"}    the degradation G(t): X_t from
                          R(z_t, t), Y_t = z_{t-1}; z_0 for the restorer's walk-state fine-tuning
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dehaze.errors import UserError
from dehaze.store import LatentCache, open_latent_cache

LatentKind = Literal["latent_pair", "latent_degradation"]


class LatentPatches(Dataset):
    """Random crops of cached HVAE latents, indexed by item like :class:`training.data.LadderPatches`."""

    def __init__(self, cache_path: str, fields: list[str], kind: LatentKind, patch_size: int, seed: int, length: int,
                 batch_size: int, input_steps: list[int] | None = None) -> None:
        cache = self._open(cache_path)
        if not fields:
            raise UserError("no fields to draw latent patches from (too few fields for the validation split?)")
        self.cache_path, self.fields, self.kind, self.patch = cache_path, fields, kind, patch_size
        self.seed, self.length, self.batch = seed, length, batch_size
        self.n_steps = cache.meta.n_steps
        self.steps = input_steps if input_steps is not None else list(range(1, self.n_steps))
        if not self.steps or any(not 1 <= t < self.n_steps for t in self.steps):
            raise UserError(f"data.input_steps {self.steps}: each must be in 1..{self.n_steps - 1}")
        h, w = cache.meta.image_shape_yx
        self.image_hw = (h, w)
        self.factors = [h // cache.level(fields[0], i).shape[-2] for i in range(cache.n_levels)]
        self.grid = max(self.factors)
        if patch_size % self.grid or patch_size > min(h, w):
            raise UserError(f"patch_size={patch_size} must be a multiple of {self.grid} (the coarsest latent cell) and at most {min(h, w)}")
        self._cache: LatentCache | None = None
        self._pid: int | None = None

    @staticmethod
    def _open(path: str) -> LatentCache:
        cache = open_latent_cache(path)
        if cache is None or cache.meta.status != "complete":
            raise UserError(f"{path}: no complete latent cache; it is built by the latent trainers from an HVAE run")
        return cache

    def __len__(self) -> int:
        return self.length

    def _levels(self, field: str, step: int, y0: int, x0: int) -> list[torch.Tensor]:
        if self._cache is None or self._pid != os.getpid():  # lazily, once per worker process
            self._cache, self._pid = self._open(self.cache_path), os.getpid()
        out = []
        for i, f in enumerate(self.factors):
            p = self.patch // f
            arr = self._cache.level(field, i)[step, :, y0 // f : y0 // f + p, x0 // f : x0 // f + p]
            out.append(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
        return out

    def __getitem__(self, index: int) -> dict:
        t = self.steps[np.random.default_rng([self.seed, 0xB47C, index // self.batch]).integers(len(self.steps))]
        rng = np.random.default_rng([self.seed, index])
        field = self.fields[rng.integers(len(self.fields))]
        h, w = self.image_hw
        y0 = self.grid * int(rng.integers((h - self.patch) // self.grid + 1))
        x0 = self.grid * int(rng.integers((w - self.patch) // self.grid + 1))
        item = {"z_t": self._levels(field, t, y0, x0), "z_0": self._levels(field, 0, y0, x0), "t": torch.tensor(float(t))}
        if self.kind == "latent_degradation":
            item["z_prev"] = item["z_0"] if t == 1 else self._levels(field, t - 1, y0, x0)
        return item
