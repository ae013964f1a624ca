"""What a training config's types allow but training cannot take, refused in one line before any work
(``dehaze train`` and every trainer of a study)."""

from __future__ import annotations

from typing import Any

from dehaze.errors import UserError
from dehaze.store import format_bytes, physical_memory_bytes
from training.config import MODEL_KINDS, TrainConfig


def check_train_config(cfg: TrainConfig, source: str) -> None:
    """Refuse betas outside [0, 1), a seed torch cannot take, a batch or model beyond this machine's
    memory and a patch that the UNet's downsamplings do not divide; ``source`` names the config."""
    betas = cfg.optim.betas
    if not all(0.0 <= b < 1.0 for b in betas):
        raise UserError(f"{source}: optim.betas {list(betas)}: each must be in [0, 1)")
    if cfg.seed >= 2**64:
        raise UserError(f"{source}: seed {cfg.seed} does not fit in 64 bits (torch's seeds are below 2**64)")
    batch = 2 * cfg.batch_size * cfg.patch_size**2 * 4  # an input and a target patch each, float32: a lower bound
    ram = physical_memory_bytes()
    if ram and batch > ram:
        raise UserError(f"{source}: batch_size={cfg.batch_size} with patch_size={cfg.patch_size}: a batch is at least "
                        f"{format_bytes(batch)} (input and target patches, float32), more than this machine's "
                        f"{format_bytes(ram)} of memory; give a smaller batch_size or patch_size")
    params = parameter_count(cfg.model)
    if ram and params is not None and 16 * params > ram:
        raise UserError(f"{source}: model: {params:.3g} parameters, {format_bytes(16 * params)} with their gradients and "
                        f"optimiser state (float32), more than this machine's {format_bytes(ram)} of memory; give a smaller "
                        "model (width, channels, depth)")
    depth = getattr(cfg.model, "depth", None)  # the UNets: each level halves the patch
    if depth is not None and cfg.patch_size % 2**depth:
        raise UserError(f"{source}: patch_size={cfg.patch_size} must be a multiple of 2**model.depth = {2**depth}")


def parameter_count(model_cfg: Any) -> int | None:
    """Parameters of the network a model config builds, counted on torch's meta device (nothing is
    allocated); None for a model that needs its base run to be built, or cannot be built on meta."""
    import torch

    if MODEL_KINDS[model_cfg.kind].base is not None:
        return None
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in model_cfg.build().parameters())
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked when it is built
        return None
