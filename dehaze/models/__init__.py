"""Neural networks, built from their config (explicit registry: no dotted-string class lookup)."""

from __future__ import annotations

from torch import nn

from dehaze.models.unet import UNet
from dehaze.train_config import PixelModel, UNetModel


def build_model(cfg: UNetModel | PixelModel) -> nn.Module:
    """The network a model config describes, freshly initialised (seed the RNG before calling)."""
    if isinstance(cfg, UNetModel):
        return UNet(base_channels=cfg.base_channels, depth=cfg.depth, residual=cfg.residual)
    if isinstance(cfg, PixelModel):
        return UNet(base_channels=cfg.base_channels, depth=cfg.depth, residual=cfg.residual, time_embed_dim=cfg.time_embed_dim)
    raise TypeError(f"no network for model config {type(cfg).__name__}")
