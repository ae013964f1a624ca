"""A CARE-like UNet, optionally conditioned on the degradation step t (sinusoidal embedding + FiLM).

Shapes: input (B, C_in, H, W) with H and W multiples of 2**depth; output (B, C_out, H, W); t is (B,) float
(a ladder step, possibly fractional); a source-conditioned UNet also takes s (B,), the step its input's
straight InDI path started from; ``extra_conditions`` adds further scalar conditions (the flow restorer's
flow time tau). One class serves the one-shot baseline (no t), the time-conditioned restorers and the
flow-matching velocity network, so there is no near-twin model file.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """(B,) -> (B, dim) transformer-style embedding of a (fractional) step."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None] * 100.0  # steps are O(1..10): spread them over the periods
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ConvBlock(nn.Module):
    """conv3x3 - SiLU - conv3x3 (- FiLM from the embedding) - SiLU, residual.

    No normalisation layer (CARE's default too): per-image statistics (GroupNorm, InstanceNorm) would make
    the output depend on the tile extent, and tiled prediction must equal whole-image prediction.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out) if emb_dim else None
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        h = self.conv2(h)
        if self.film is not None and emb is not None:
            scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return F.silu(h) + self.skip(x)


class UNet(nn.Module):
    """UNet with ``depth`` downsamplings, channels doubling per level from ``base_channels``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32, depth: int = 3,
                 time_embed_dim: int | None = None, residual: bool = True, source_conditioned: bool = False,
                 extra_conditions: int = 0, source_image: bool = False) -> None:
        super().__init__()
        self.depth, self.residual, self.time_embed_dim = depth, residual, time_embed_dim
        # A second condition, the source step s of a straight InDI path: the state x_t = x_0 + (t/s)(x_s - x_0)
        # at one t is a different image for every s, so the network must know both (DESIGN §6, InDI).
        self.source_conditioned = source_conditioned
        self.extra_conditions = extra_conditions
        # The source image x_s as one more input channel (after the in_channels of x): on a straight InDI path
        # x_t alone does not say which x_s it came from, and a walk that reads x_s at every step cannot lose
        # what the input holds (training.config.PixelModel.source_image)
        self.source_image = source_image
        if source_image and not source_conditioned:
            raise ValueError("a UNet that reads the source image needs source_conditioned=True (the source step s)")
        if (source_conditioned or extra_conditions) and not time_embed_dim:
            raise ValueError("a source-conditioned UNet (or one with extra conditions) needs time_embed_dim")
        emb = None
        if time_embed_dim:
            emb = 4 * time_embed_dim
            # the embeddings of every condition side by side: [t, (s), extra...]; a warm start from a network
            # with fewer conditions copies its columns and leaves the new ones at zero (see training.tasks)
            n_in = (1 + int(source_conditioned) + extra_conditions) * time_embed_dim
            self.time_mlp = nn.Sequential(nn.Linear(n_in, emb), nn.SiLU(), nn.Linear(emb, emb))
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = nn.Conv2d(in_channels + int(source_image), chans[0], 3, padding=1)
        self.down = nn.ModuleList(ConvBlock(chans[i], chans[i], emb) for i in range(depth))
        self.pool = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 2, stride=2) for i in range(depth))
        self.mid = ConvBlock(chans[depth], chans[depth], emb)
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth))
        self.up = nn.ModuleList(ConvBlock(2 * chans[i], chans[i], emb) for i in range(depth))
        self.head = head = nn.Conv2d(chans[0], out_channels, 1)
        nn.init.zeros_(head.weight)  # start as the identity (residual) or zero map
        if head.bias is not None:
            nn.init.zeros_(head.bias)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, s: torch.Tensor | None = None,
                extra: tuple[torch.Tensor, ...] = (), x_source: torch.Tensor | None = None) -> torch.Tensor:
        """Input x (B, C_in, H, W); t (B,) the step of x; s (B,) the source step of its path (source-conditioned only);
        ``extra``: ``extra_conditions`` further (B,) conditions; ``x_source`` (B, 1, H, W): the source image x_s
        of the path (``source_image`` only)."""
        if self.source_image:
            if x_source is None:
                raise ValueError("this UNet reads the source image too: pass x_source")
            x = torch.cat([x, x_source], dim=1)
        emb = None
        if self.time_embed_dim:
            if t is None:
                raise ValueError("this UNet is time-conditioned: pass t")
            feats = sinusoidal_embedding(t, self.time_embed_dim)
            if self.source_conditioned:
                if s is None:
                    raise ValueError("this UNet is conditioned on the source step too: pass s")
                feats = torch.cat([feats, sinusoidal_embedding(s, self.time_embed_dim)], dim=1)
            if len(extra) != self.extra_conditions:
                raise ValueError(f"this UNet takes {self.extra_conditions} extra condition(s), got {len(extra)}")
            if extra:
                feats = torch.cat([feats, *(sinusoidal_embedding(c, self.time_embed_dim) for c in extra)], dim=1)
            emb = self.time_mlp(feats)
        return self.body(x, emb)

    def body(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """The network given its conditioning embedding ``emb`` (B, E) (None: unconditioned): x (B, C_in, H, W)
        -> (B, C_out, H, W). The export wraps it with a constant embedding."""
        h = self.stem(x)
        skips = []
        for block, pool in zip(self.down, self.pool):
            h = block(h, emb)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, emb)
        for i in reversed(range(self.depth)):
            h = self.up[i](torch.cat([self.upsample[i](h), skips[i]], dim=1), emb)
        out = self.head(h)
        return x[:, : out.shape[1]] + out if self.residual else out


def fold_source_channel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of a ``source_image`` UNet as a UNet without that channel computes them where x_t = x_s
    (the one-shot state R(x_s, s, s)): the stem's last input channel summed into the one before (a convolution
    is linear, so this is exact there). ``state``: the network's state_dict; returns a new dict."""
    stem = state["stem.weight"]  # (C, C_in + 1, 3, 3)
    folded = stem[:, :-1].clone()
    folded[:, -1:] += stem[:, -1:]
    return {**state, "stem.weight": folded}
