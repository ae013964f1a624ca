"""Losses of the latent trainers: the latent restorer R(z_t, t) and the per-step CycleGAN degradation.

Latents are lists of per-level tensors (finest first). The CycleGAN of step t maps X_t = {z_hat_0|t =
R(z_t, t)} to Y_t = {z_{t-1}} with G(t) and back with F(t); discriminators D_X(t), D_Y(t) judge latents
level by level. Generator objective (DESIGN §6 reference settings: LSGAN, lambda_cyc 10, pool of 50):

    L_G = LSGAN(D_Y(G(x)), 1) + LSGAN(D_X(F(y)), 1)
          + lambda_cyc * (|F(G(x)) - x|_1 + |G(F(y)) - y|_1)
          + lambda_cos * ((1 - cos(G(x), y)) + (1 - cos(F(y), x)))      paired direction agreement
          + lambda_sup * (|G(x) - y|^2 + |F(y) - x|^2)                  optional: the pairs exist
    L_D = 1/2 [LSGAN(D(real), 1) + LSGAN(D(pool(fake)), 0)]  for D_Y and D_X
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dehaze.models.latent import LatentCycleGAN, Latents


def weighted_latent_mse(pred: Latents, target: Latents, weights: list[float] | None = None) -> torch.Tensor:
    """sum_i w_i * mean((pred_i - target_i)^2); equal weights by default."""
    weights = weights or [1.0] * len(pred)
    return sum(w * F.mse_loss(p, q) for w, p, q in zip(weights, pred, target))  # type: ignore[return-value]


def lsgan(scores: Latents, real: bool) -> torch.Tensor:
    """Least-squares GAN loss averaged over levels: mean (D - 1)^2 for real, mean D^2 for fake."""
    target = 1.0 if real else 0.0
    return sum(((s - target) ** 2).mean() for s in scores) / len(scores)  # type: ignore[return-value]


def l1(a: Latents, b: Latents) -> torch.Tensor:
    return sum(F.l1_loss(x, y) for x, y in zip(a, b)) / len(a)  # type: ignore[return-value]


def cosine_distance(a: Latents, b: Latents) -> torch.Tensor:
    """1 - cosine similarity of the whole latent (all levels flattened) per sample, batch mean."""
    flat_a = torch.cat([x.flatten(1) for x in a], dim=1)
    flat_b = torch.cat([x.flatten(1) for x in b], dim=1)
    return (1 - F.cosine_similarity(flat_a, flat_b, dim=1, eps=1e-8)).mean()


def cyclegan_losses(gan: LatentCycleGAN, batch: dict) -> dict[str, torch.Tensor]:
    """{"generators": L_G, "discriminators": L_D} for one batch of a single step t (see module doc)."""
    t = int(batch["t"][0])
    with torch.no_grad():
        x = gan.restorer(batch["z_t"], batch["t"])
    y = batch["z_prev"]
    fake_y, fake_x = gan.G(x, t), gan.F(y, t)
    gen = (lsgan(gan.D_Y(fake_y, t), True) + lsgan(gan.D_X(fake_x, t), True)
           + gan.lambda_cyc * (l1(gan.F(fake_y, t), x) + l1(gan.G(fake_x, t), y)))
    if gan.lambda_cos:
        gen = gen + gan.lambda_cos * (cosine_distance(fake_y, y) + cosine_distance(fake_x, x))
    if gan.lambda_sup:
        gen = gen + gan.lambda_sup * (weighted_latent_mse(fake_y, y) + weighted_latent_mse(fake_x, x))
    pooled_y, pooled_x = gan.pool_y.query(fake_y, t), gan.pool_x.query(fake_x, t)
    disc = 0.5 * (lsgan(gan.D_Y(y, t), True) + lsgan(gan.D_Y(pooled_y, t), False)
                  + lsgan(gan.D_X(x, t), True) + lsgan(gan.D_X(pooled_x, t), False))
    return {"generators": gen, "discriminators": disc}
