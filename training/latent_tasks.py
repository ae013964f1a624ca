"""Losses of the latent trainers: the latent restorer R(z_t, t) and the latent degradation G(t), and the
check that G moves.

Latents are lists of per-level tensors (finest first). The degradation of step t maps X_t = {z_hat_0|t =
R(z_t, t)} to Y_t = {z_{t-1}} with G(t) and back with F(t); discriminators D_X(t), D_Y(t) judge latents
level by level. Generator objective, with |.|^2 summed over every level and the batch:

    L_G = lambda_gan * (LSGAN(D_Y(G(x)), 1) + LSGAN(D_X(F(y)), 1))
          + lambda_cyc * (|F(G(x)) - x|_1 + |G(F(y)) - y|_1)
          + lambda_cos * ((1 - cos(G(x), y)) + (1 - cos(F(y), x)))      paired direction agreement
          + lambda_sup * (|G(x) - y|^2 / |y - x|^2 + |F(y) - x|^2 / |x - y|^2)   the pairs exist
    L_D = 1/2 [LSGAN(D(real), 1) + LSGAN(D(pool(fake)), 0)]  for D_Y and D_X

The supervised term is relative, the squared distance G leaves over the distance it must move: 1 at the
identity whatever the latents' scale, 0 when G(x) = y. It is the ``residual`` of :func:`degradation_check`.
The ``supervised`` preset makes it dominant; the ``cyclegan`` preset (the seed's recipe, DESIGN §6: LSGAN,
lambda_cyc 10, pool of 50) leaves it out.

With ``restorer_walk_weight`` w > 0 the restorer is fine-tuned in the same run on the states the loop
visits (the poster's out-of-distribution challenge):

    L_R = |R(z_t, t) - z_0|^2 + w |R(G(t)(R(z_t, t)), t - 1) - z_0|^2      (the second term for t >= 2)

where the inner R and G(t) run without gradient: one step of the direct loop from the true z_t.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
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
    """Mean absolute difference averaged over levels."""
    return sum(F.l1_loss(x, y) for x, y in zip(a, b)) / len(a)  # type: ignore[return-value]


def cosine_distance(a: Latents, b: Latents) -> torch.Tensor:
    """1 - cosine similarity of the whole latent (all levels flattened) per sample, batch mean."""
    flat_a = torch.cat([x.flatten(1) for x in a], dim=1)
    flat_b = torch.cat([x.flatten(1) for x in b], dim=1)
    return (1 - F.cosine_similarity(flat_a, flat_b, dim=1, eps=1e-8)).mean()


def relative_sq_distance(pred: Latents, target: Latents, start: Latents) -> torch.Tensor:
    """Sum |pred - target|^2 / sum |target - start|^2 over every level and the batch (dimensionless)."""
    num = sum(((p - q) ** 2).sum() for p, q in zip(pred, target))
    den = sum(((q - a) ** 2).sum() for q, a in zip(target, start))
    return num / den.clamp_min(1e-12)  # type: ignore[union-attr]


def cyclegan_losses(gan: LatentCycleGAN, batch: dict) -> dict[str, torch.Tensor]:
    """{"generators": L_G, "discriminators": L_D[, "restorer": L_R]} for one batch of a single step t
    (see the module docstring)."""
    t = int(batch["t"][0])
    tuned = gan.restorer_walk_weight > 0
    with torch.no_grad():
        x = gan.restorer(batch["z_t"], batch["t"])
    y = batch["z_prev"]
    fake_y, fake_x = gan.G(x, t), gan.F(y, t)
    gen = gan.lambda_cyc * (l1(gan.F(fake_y, t), x) + l1(gan.G(fake_x, t), y))
    if gan.lambda_gan:
        gen = gen + gan.lambda_gan * (lsgan(gan.D_Y(fake_y, t), True) + lsgan(gan.D_X(fake_x, t), True))
    if gan.lambda_cos:
        gen = gen + gan.lambda_cos * (cosine_distance(fake_y, y) + cosine_distance(fake_x, x))
    if gan.lambda_sup:
        gen = gen + gan.lambda_sup * (relative_sq_distance(fake_y, y, x) + relative_sq_distance(fake_x, x, y))
    pooled_y, pooled_x = gan.pool_y.query(fake_y, t), gan.pool_x.query(fake_x, t)
    disc = 0.5 * (lsgan(gan.D_Y(y, t), True) + lsgan(gan.D_Y(pooled_y, t), False)
                  + lsgan(gan.D_X(x, t), True) + lsgan(gan.D_X(pooled_x, t), False))
    losses = {"generators": gen, "discriminators": disc}
    if tuned:
        weights = getattr(gan.restorer, "level_weights", None)
        restored = weighted_latent_mse(gan.restorer(batch["z_t"], batch["t"]), batch["z_0"], weights)
        if t >= 2:  # one step of the direct loop from the true z_t: the state R meets at step t - 1
            with torch.no_grad():
                state = gan.G(x, t)
            t_prev = torch.full_like(batch["t"], float(t - 1))
            restored = restored + gan.restorer_walk_weight * weighted_latent_mse(gan.restorer(state, t_prev), batch["z_0"], weights)
        losses["restorer"] = restored
    return losses


@torch.no_grad()
def degradation_check(gan: LatentCycleGAN, cache_path: str, fields: list[str], device: torch.device) -> dict[str, Any]:
    """How far G(t) moves z_hat = R(z_t, t) towards z_{t-1}, per step t, on whole cached fields.

    moved    = |G(z_hat) - z_hat|^2 / |z_{t-1} - z_hat|^2   (1: as far as needed; 0: the identity)
    residual = |G(z_hat) - z_{t-1}|^2 / |z_{t-1} - z_hat|^2  (0: exactly z_{t-1}; 1: no better than not moving)

    Sums over every latent level and field. G(1) maps to z_0, a step the loops never take (their last
    estimate is z_hat_0|1 itself), so it is reported but marked ``used_by_loops: false``.
    """
    from dehaze.store import open_latent_cache

    cache = open_latent_cache(cache_path)
    if cache is None:
        raise ValueError(f"{cache_path}: no latent cache")
    n_steps = cache.meta.n_steps
    sums = {t: [0.0, 0.0, 0.0] for t in range(1, n_steps)}
    for field in fields:
        levels = [torch.from_numpy(np.asarray(cache.level(field, i)[...], dtype=np.float32)).to(device)
                  for i in range(cache.n_levels)]  # each (h, C_i, H_i, W_i)
        for t in range(1, n_steps):
            z_t, z_prev = [lv[t : t + 1] for lv in levels], [lv[t - 1 : t] for lv in levels]
            z_hat = gan.restorer(z_t, torch.full((1,), float(t), device=device))
            moved = gan.G(z_hat, t)
            for k, (a, b) in enumerate(((moved, z_hat), (z_prev, z_hat), (moved, z_prev))):
                sums[t][k] += float(sum(((p - q) ** 2).sum() for p, q in zip(a, b)))
    per_step = {str(t): {"moved": m / max(n, 1e-30), "residual": r / max(n, 1e-30), "used_by_loops": t >= 2}
                for t, (m, n, r) in sums.items()}
    return {"per_step": per_step, "fields": list(fields),
            "definition": "moved = |G(z_hat) - z_hat|^2 / |z_prev - z_hat|^2, residual = |G(z_hat) - z_prev|^2 / "
                          "|z_prev - z_hat|^2, z_hat = R(z_t, t), sums over latent levels and fields",
            "max_residual_used_by_loops": max((v["residual"] for v in per_step.values() if v["used_by_loops"]), default=None)}
