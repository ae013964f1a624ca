"""Latents as data: encode a ladder once with a trained HVAE and cache the per-level latents.

``ensure_latent_cache`` reuses a cache made by the same HVAE checkpoint from the same ladder (finishing an
interrupted one) and re-encodes a stale one. Deterministic encodings: posterior means at every level.
Images are normalised with the HVAE run's normalisation and reflect-padded to the network's multiple.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dehaze.errors import UserError
from dehaze.progress import progress_bar
from dehaze.runs import CHECKPOINT_FILE, load_model, read_run
from dehaze.store import LatentCache, LatentCacheMeta, create_latent_cache, open_ladder, open_latent_cache


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad a (..., H, W) array at the bottom/right to multiples of ``multiple``."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(image, pad, mode="reflect" if min(h, w) > max(ph, pw) else "edge")


@torch.no_grad()
def encode_images(hvae: Any, images: np.ndarray, device: torch.device, batch_size: int = 4) -> list[np.ndarray]:
    """(N, H, W) normalised images -> per-level posterior means [(N, C_i, H_i, W_i), ...] (finest first);
    ``hvae``: a :class:`dehaze.models.hvae.HVAE`."""
    levels: list[list[np.ndarray]] = []
    for b in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[b : b + batch_size], dtype=np.float32))[:, None].to(device)
        z = hvae.encode(x, sample=False)
        if not levels:
            levels = [[] for _ in z]
        for i, zi in enumerate(z):
            levels[i].append(zi.float().cpu().numpy())
    return [np.concatenate(parts) for parts in levels]


def ensure_latent_cache(hvae_run: str | Path, ladder_path: str | Path, cache_path: str | Path,
                        device: str | torch.device = "cpu", show_progress: bool = True) -> LatentCache:
    """Encode ``ladder_path`` with the HVAE of ``hvae_run`` into ``cache_path`` (or reuse a valid cache)."""
    info = read_run(hvae_run)
    if info.kind != "hvae":
        raise UserError(f"{hvae_run}: is a {info.kind!r} run; latent trainers build on an 'hvae' run")
    ladder = open_ladder(ladder_path)
    if len(ladder.meta.spatial_axes) != 2:
        raise UserError(f"{ladder_path}: latent models take 2-D ladders (axes h,y,x), not {ladder.meta.axes}")
    sha = file_sha256(Path(hvae_run) / CHECKPOINT_FILE) if (Path(hvae_run) / CHECKPOINT_FILE).is_file() else ""
    _, hvae = load_model(hvae_run, device)
    multiple = int(getattr(hvae, "multiple", 1))
    shape = pad_to_multiple(np.zeros(ladder.image(ladder.fields[0]).shape[-2:]), multiple).shape
    probe = encode_images(hvae, np.zeros((1, *shape), np.float32), torch.device(device))
    wanted = LatentCacheMeta(hvae_run=str(Path(hvae_run).resolve()), hvae_checkpoint_sha256=sha,
                             source_store=str(Path(ladder_path).resolve()), source_sha256=ladder.meta.manifest_sha256,
                             n_steps=ladder.n_steps, level_channels=[int(p.shape[1]) for p in probe],
                             fields=ladder.fields, image_shape_yx=list(shape))
    cache = open_latent_cache(cache_path)
    if cache is None or not cache.meta.same_source(wanted):
        cache = create_latent_cache(cache_path, wanted)  # stale or missing: (re-)encode
    elif cache.meta.status == "complete":
        return cache
    todo = [f for f in ladder.fields if f not in cache.completed_fields()]
    bar = progress_bar(total=len(todo), desc="encoding latents", unit="field", disable=not show_progress)
    for field in todo:
        images = pad_to_multiple(info.normalization.apply(ladder.image(field)[...]), multiple)  # (h, H, W)
        cache.write_field(field, encode_images(hvae, images, torch.device(device)))
        bar.update(1)
    bar.close()
    cache.finalize()
    return cache
