"""Networks over the multi-resolution latents of the HVAE: z = [z_1 (finest), ..., z_n (coarsest)],
z_i of shape (B, C_i, H_i, W_i) with H_i >= H_{i+1}.

* :class:`LatentNet` maps latents to latents of the same shapes. A bottom-up pass (fine -> coarse) then a
  top-down pass (coarse -> fine) lets every level see every other, like a UNet whose skip connections
  are the latent levels themselves. Optionally time-conditioned (sinusoidal embedding + FiLM) and
  residual (z + f(z)). It is the latent restorer R(z_t, t) and each CycleGAN generator G(t), F(t).
* :class:`StepNets` holds one LatentNet per degradation step (the study's per-step CycleGAN), or one
  shared, t-conditioned net.
* :class:`LatentDiscriminator` scores latents level by level (LSGAN patch scores averaged over levels).
* :class:`LatentCycleGAN` holds the per-step generators G(t), F(t), discriminators D_Y(t), D_X(t), the
  frozen restorer that makes X_t = R(z_t, t), and the image pools; its losses are in
  :mod:`training.latent_tasks`. At inference ``degrade(z, t)`` = G(t)(z).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dehaze.models.unet import ConvBlock, sinusoidal_embedding

Latents = list[torch.Tensor]


class LatentNet(nn.Module):
    """Latents -> latents of the same shapes (see the module docstring)."""

    def __init__(self, channels: Sequence[int], width: int = 64, time_embed_dim: int | None = None,
                 residual: bool = True, level_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.channels, self.residual, self.time_embed_dim = list(channels), residual, time_embed_dim
        self.level_weights = list(level_weights) if level_weights else None  # used by the restorer's loss
        emb = None
        if time_embed_dim:
            emb = 4 * time_embed_dim
            self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inputs = nn.ModuleList(nn.Conv2d(c, width, 3, padding=1) for c in self.channels)
        self.up_blocks = nn.ModuleList(ConvBlock(width, width, emb) for _ in self.channels)  # bottom-up
        self.down_blocks = nn.ModuleList(ConvBlock(2 * width, width, emb) for _ in self.channels)  # top-down
        self.outputs = nn.ModuleList(nn.Conv2d(width, c, 3, padding=1) for c in self.channels)
        for conv in self.outputs:  # start as the identity (residual) or zero map
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, z: Latents, t: torch.Tensor | None = None) -> Latents:
        if len(z) != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} latent levels, got {len(z)}")
        emb = None
        if self.time_embed_dim:
            if t is None:
                raise ValueError("this latent net is time-conditioned: pass t")
            emb = self.time_mlp(sinusoidal_embedding(t, self.time_embed_dim))
        # bottom-up: each level adds the pooled features of the finer one
        ups, carry = [], None
        for i, zi in enumerate(z):
            h = self.inputs[i](zi)
            if carry is not None:
                h = h + F.adaptive_avg_pool2d(carry, h.shape[-2:])
            carry = self.up_blocks[i](h, emb)
            ups.append(carry)
        # top-down: each level fuses the upsampled features of the coarser one
        outs: Latents = [torch.empty(0)] * len(z)
        above = torch.zeros_like(ups[-1])
        for i in reversed(range(len(z))):
            if above.shape[-2:] != ups[i].shape[-2:]:
                above = F.interpolate(above, size=ups[i].shape[-2:], mode="bilinear", align_corners=False)
            above = self.down_blocks[i](torch.cat([ups[i], above], dim=1), emb)
            out = self.outputs[i](above)
            outs[i] = z[i] + out if self.residual else out
        return outs


class StepNets(nn.Module):
    """One LatentNet per step t = 1..T (``shared=False``), or one t-conditioned LatentNet for all."""

    def __init__(self, channels: Sequence[int], n_steps: int, width: int = 64, shared: bool = False,
                 time_embed_dim: int = 32) -> None:
        super().__init__()
        self.shared, self.n_steps = shared, n_steps
        if shared:
            self.net = LatentNet(channels, width, time_embed_dim=time_embed_dim)
        else:  # index 0 unused: step t uses nets[t]
            self.nets = nn.ModuleList(LatentNet(channels, width) for _ in range(n_steps + 1))

    def forward(self, z: Latents, t: int) -> Latents:
        """Apply the step-``t`` network to a batch whose samples all belong to step ``t``."""
        if not 1 <= t <= self.n_steps:
            raise ValueError(f"step {t} outside 1..{self.n_steps}")
        if self.shared:
            return self.net(z, torch.full((z[0].shape[0],), float(t), device=z[0].device))
        return self.nets[t](z)


class LatentDiscriminator(nn.Module):
    """Per-level convolutional critics; returns one LSGAN score map per level (B, 1, h_i, w_i)."""

    def __init__(self, channels: Sequence[int], width: int = 64) -> None:
        super().__init__()
        self.critics = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(width, 1, 3, padding=1),
            )
            for c in channels
        )

    def forward(self, z: Latents) -> Latents:
        return [critic(zi) for critic, zi in zip(self.critics, z)]


class StepDiscriminators(nn.Module):
    """One LatentDiscriminator per step (index 0 unused), or one shared by every step."""

    def __init__(self, channels: Sequence[int], n_steps: int, width: int = 64, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        count = 1 if shared else n_steps + 1
        self.discs = nn.ModuleList(LatentDiscriminator(channels, width) for _ in range(count))

    def forward(self, z: Latents, t: int) -> Latents:
        return self.discs[0 if self.shared else t](z)


class ImagePool:
    """The CycleGAN history buffer: with probability 1/2 the discriminator sees an older fake instead.

    One pool per step (per-step discriminators must not see other steps' fakes). Its content is part of
    the checkpoint, and it draws from torch's RNG, so a resumed run continues exactly.
    """

    def __init__(self, size: int = 50) -> None:
        self.size = size
        self.items: dict[int, list[Latents]] = {}

    def query(self, fakes: Latents, t: int) -> Latents:
        if self.size == 0:
            return fakes
        pool = self.items.setdefault(t, [])
        out: list[Latents] = []
        for b in range(fakes[0].shape[0]):
            sample = [f[b : b + 1].detach().clone() for f in fakes]
            if len(pool) < self.size:
                pool.append(sample)
                out.append(sample)
            elif torch.rand(()) < 0.5:
                j = int(torch.randint(len(pool), ()))
                out.append(pool[j])
                pool[j] = sample
            else:
                out.append(sample)
        return [torch.cat([o[i] for o in out]) for i in range(len(fakes))]

    def state_dict(self) -> dict:
        return {"size": self.size, "items": {str(t): [[z.cpu() for z in s] for s in v] for t, v in self.items.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.size = int(state["size"])
        self.items = {int(t): [list(s) for s in v] for t, v in state["items"].items()}


class LatentCycleGAN(nn.Module):
    """G(t): X_t -> Y_t, F(t): Y_t -> X_t, and their discriminators, for every step t = 1..T.

    ``restorer`` turns z_t into X_t = R(z_t, t); it is frozen unless ``restorer_walk_weight`` > 0, which
    fine-tunes it on the states the loop visits (see :mod:`training.latent_tasks`). Inference uses this
    restorer: it equals the base latent run's unless fine-tuned here.
    """

    def __init__(self, channels: list[int], n_steps: int, restorer: nn.Module, width: int = 64, shared: bool = False,
                 lambda_cyc: float = 10.0, lambda_cos: float = 1.0, lambda_sup: float = 0.0, lambda_gan: float = 1.0,
                 pool_size: int = 50, restorer_walk_weight: float = 0.0) -> None:
        super().__init__()
        self.G = StepNets(channels, n_steps, width, shared)
        self.F = StepNets(channels, n_steps, width, shared)
        self.D_Y = StepDiscriminators(channels, n_steps, width, shared)
        self.D_X = StepDiscriminators(channels, n_steps, width, shared)
        self.restorer_walk_weight = restorer_walk_weight
        self.restorer = restorer.requires_grad_(restorer_walk_weight > 0).eval()
        self.lambda_cyc, self.lambda_cos, self.lambda_sup, self.lambda_gan = lambda_cyc, lambda_cos, lambda_sup, lambda_gan
        self.pool_y, self.pool_x = ImagePool(pool_size), ImagePool(pool_size)

    def get_extra_state(self) -> dict:  # the pools travel with the state_dict: resume is exact
        return {"pool_y": self.pool_y.state_dict(), "pool_x": self.pool_x.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.pool_y.load_state_dict(state["pool_y"])
        self.pool_x.load_state_dict(state["pool_x"])

    def train(self, mode: bool = True) -> LatentCycleGAN:
        super().train(mode)
        self.restorer.eval()  # no dropout or batch statistics in a LatentNet: eval mode whether tuned or not
        return self

    def restorer_params(self) -> list[nn.Parameter]:
        """The restorer's parameters when this run fine-tunes it, else none."""
        return list(self.restorer.parameters()) if self.restorer_walk_weight > 0 else []

    def generator_params(self) -> list[nn.Parameter]:
        return [*self.G.parameters(), *self.F.parameters()]

    def discriminator_params(self) -> list[nn.Parameter]:
        return [*self.D_Y.parameters(), *self.D_X.parameters()]

    @torch.no_grad()
    def degrade(self, z0_hat: Latents, t: int) -> Latents:
        """D(t): the learned degradation z_{t-1} = G(t)(z_hat_0|t)."""
        return self.G(z0_hat, t)
