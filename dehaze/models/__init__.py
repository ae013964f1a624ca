"""Neural networks, built from their config (explicit registry: no dotted-string class lookup)."""

from __future__ import annotations

from torch import nn

from dehaze.models.hvae import HVAE
from dehaze.models.unet import UNet
from dehaze.models.latent import LatentCycleGAN, LatentNet
from dehaze.train_config import DegradationModel, HDNModel, HVAEModel, LatentModel, PixelModel, UNetModel


def build_model(cfg: UNetModel | PixelModel | HVAEModel | HDNModel | LatentModel | DegradationModel) -> nn.Module:
    """The network a model config describes, freshly initialised (seed the RNG before calling)."""
    if isinstance(cfg, UNetModel):
        return UNet(base_channels=cfg.base_channels, depth=cfg.depth, residual=cfg.residual)
    if isinstance(cfg, PixelModel):
        net = UNet(base_channels=cfg.base_channels, depth=cfg.depth, residual=cfg.residual, time_embed_dim=cfg.time_embed_dim,
                   source_conditioned=cfg.path == "straight")
        net.walk_weight, net.walk_delta = cfg.walk_weight, cfg.sample_delta  # read by the restorer's loss
        return net
    if isinstance(cfg, (HVAEModel, HDNModel)):  # one ladder VAE; HDN only differs in what it is trained on
        return HVAE(levels=cfg.levels, latent_channels=cfg.latent_channels, blocks_per_level=cfg.blocks_per_level,
                    filters=cfg.filters, dropout=cfg.dropout, free_bits=cfg.free_bits, beta=cfg.beta,
                    likelihood_logvar=cfg.likelihood_logvar)
    if isinstance(cfg, LatentModel):
        if cfg.level_channels is None:
            raise ValueError("latent model config is not resolved: level_channels comes from the HVAE run")
        return LatentNet(cfg.level_channels, cfg.width, time_embed_dim=cfg.time_embed_dim, level_weights=cfg.level_weights)
    if isinstance(cfg, DegradationModel):
        r = cfg.restorer
        if r is None or r.level_channels is None or r.n_steps is None:
            raise ValueError("degradation config is not resolved: its restorer comes from the latent run")
        return LatentCycleGAN(r.level_channels, r.n_steps - 1, build_model(r), width=cfg.width, shared=cfg.shared,
                              lambda_cyc=cfg.lambda_cyc, lambda_cos=cfg.lambda_cos, lambda_sup=cfg.lambda_sup,
                              lambda_gan=cfg.lambda_gan, pool_size=cfg.pool_size,
                              restorer_walk_weight=cfg.restorer_walk_weight)
    raise TypeError(f"no network for model config {type(cfg).__name__}")
