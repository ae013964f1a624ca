"""Hierarchical (ladder) VAE: the HVAE of the latent-space pipeline and the supervised HDN baseline.

A ladder VAE (Sønderby et al. 2016) in the design of HDN (Prakash et al. 2022): a bottom-up path of gated
residual blocks computes deterministic features d_1 … d_n of the input; a top-down path walks from the
coarsest level to the finest and at each level draws a latent z_i, from the posterior
q(z_i | z_>i, x) while training/encoding or from the prior p(z_i | z_>i) when generating; the finest
top-down features are mapped to the mean of a Gaussian likelihood. One class serves both uses:

* **HVAE**: ``forward(x)`` reconstructs its input (likelihood on x);
* **supervised HDN**: ``forward(x_t, target=x_0)`` encodes the hazy x_t and puts the likelihood on the
  clean x_0; prediction is the MMSE (mean of the decoded means of K posterior samples) with a per-pixel
  standard deviation.

Shapes (n = ``levels``, C = ``latent_channels``, F = ``filters``): an image batch is (B, 1, H, W) with H
and W multiples of ``2**n`` (H ≠ W is fine). Every level downsamples 2× (the 5×5 stem keeps the full
resolution, the first level already halves it), so latent ``z_i`` (i = 1 … n; list index i-1) is
(B, C, H / 2**i, W / 2**i): z_1 finest, z_n coarsest. For the reference 64×64 patches and 6 levels the top
latent is 1×1.

Layout: bottom-up = 5×5 stem conv + 1 gated block at full resolution, then per level one downsampling
gated block and ``blocks_per_level`` gated blocks; top-down per level = prior (learned at the top, a 3×3
conv of the features from above elsewhere), posterior (3×3 conv of the bottom-up features at the top,
of their merge with the top-down features elsewhere), a 3×3 projection of z merged back into the
features, ``blocks_per_level`` gated blocks and one upsampling gated block; then 1 gated block and a 1×1
head at full resolution. The ``hdn-reference`` settings (6 × 32 latents, 5 blocks, 64 filters) give
7.50 M parameters (the reference model: 7.3 M).

Choices (documented here once):

* **Gated residual block**: ``x + a * sigmoid(g)`` with ``(a, g) = split(conv1x1(conv3x3(drop(act(
  conv3x3(act(x)))))))``, ELU activations, dropout between the two 3×3 convolutions. No normalisation
  layer (as in the UNet: tiled prediction must equal whole-image prediction, and an EMA copy would not
  track BatchNorm statistics); instead the value half of each gate starts small (×0.1), so each block
  starts close to the identity.
* **Learned top prior**: p(z_n) = N(mu, exp(logvar)) with one learned (mu, logvar) per latent channel,
  shared by all positions, so the model runs at any input size. It is *right* only near the training patch
  size, though: the deepest levels learn the borders of a 2x2 or 4x4 latent map. Prediction therefore tiles
  HDN inputs at that size (:func:`dehaze.predict.engine_tile`).
* **Bounded log-variances**: every latent log-variance (priors and posteriors) goes through the soft clamp
  ``LATENT_LOGVAR_BOUND * tanh(v / LATENT_LOGVAR_BOUND)``: the range is (-8, 8), i.e. a standard deviation
  in (0.018, 54.6); near 0 the map is the identity.
* **Analytic KL** between the diagonal Gaussians q and p at every level (the top level against the learned
  top prior), in float32 even under autocast.
* **Free bits** (HDN's variant): the KL of level i is summed over its channels and pixels *for each image*,
  then clamped below at ``free_bits`` nats, then averaged over the batch:
  ``kl_loss = sum_i mean_b max(KL_i[b], free_bits) / (H*W)``. Below the threshold a level gets no KL
  gradient, which keeps levels from collapsing early. The reported ``kl`` values are unclamped.
* **Likelihood**: Gaussian with one variance for the whole batch. By default (``likelihood_logvar=None``)
  the variance is set to its maximum-likelihood value, the batch MSE (detached), so it never lags behind
  as a slowly learned scalar would (the "calibrated decoder" of σ-VAE, Rybkin et al. 2021); the
  log-variance is clamped to ``LIKELIHOOD_LOGVAR_RANGE`` = [-12, 4] (normalised intensity units). A number
  fixes it instead.
* **Normalisation of the loss**: ``recon_nll`` is the Gaussian NLL in nats per pixel (mean over batch and
  pixels), the KL is divided by the number of pixels of one image, so
  ``loss = recon_nll + beta * kl_loss`` is per pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

LATENT_LOGVAR_BOUND = 8.0
LIKELIHOOD_LOGVAR_RANGE = (-12.0, 4.0)
_LOG_2PI = math.log(2 * math.pi)


# ---- the probability pieces (pure functions) -------------------------------------------------------
def soft_clamp(v: torch.Tensor, bound: float = LATENT_LOGVAR_BOUND) -> torch.Tensor:
    """Smoothly map ``v`` into (-bound, bound); the identity near 0."""
    return bound * torch.tanh(v / bound)


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """Elementwise KL( N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p) ) in nats (broadcasting)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)


def free_bits_kl(kl_per_image: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Batch mean of max(KL, free_bits) for one level's (B,) per-image KL (nats): HDN's free bits."""
    return kl_per_image.clamp_min(free_bits).mean() if free_bits > 0 else kl_per_image.mean()


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise -log N(x; mean, e^logvar) in nats."""
    return 0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 / logvar.exp())


# ---- building blocks -----------------------------------------------------------------------------
class GatedResBlock(nn.Module):
    """``skip(x) + a * sigmoid(g)``, (a, g) from act-conv3x3-act-dropout-conv3x3-conv1x1 (see the module doc).

    ``resample="down"``: the first conv has stride 2 and the skip is a 2×2 average pool (output H/2);
    ``resample="up"``: the input is first upsampled 2× (nearest), output 2H.
    """

    def __init__(self, channels: int, dropout: float = 0.0, resample: Literal["down", "up"] | None = None) -> None:
        super().__init__()
        self.resample = resample
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, stride=2 if resample == "down" else 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate = nn.Conv2d(channels, 2 * channels, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.no_grad():  # start near the identity: small value half of the gate
            self.gate.weight[:channels].mul_(0.1)
            assert self.gate.bias is not None  # Conv2d's default bias=True
            self.gate.bias[:channels].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(F.elu(x))
        h = self.conv2(self.drop(F.elu(h)))
        a, g = self.gate(h).chunk(2, dim=1)
        skip = F.avg_pool2d(x, 2) if self.resample == "down" else x
        return skip + a * torch.sigmoid(g)


class Merge(nn.Module):
    """Merge two feature maps of F channels: conv1x1 of their concatenation, then a gated residual block."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.mix = nn.Conv2d(2 * channels, channels, 1)
        self.block = GatedResBlock(channels, dropout)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.block(self.mix(torch.cat([a, b], dim=1)))


@dataclass
class LevelParams:
    """One level of a top-down pass: the latent used and its prior (and posterior, if x was seen)."""

    z: torch.Tensor
    prior: tuple[torch.Tensor, torch.Tensor]
    posterior: tuple[torch.Tensor, torch.Tensor] | None


class TopDownLevel(nn.Module):
    """Level i of the top-down path: prior and posterior of z_i, then ``blocks`` gated blocks and a 2× upsampling."""

    def __init__(self, filters: int, latent: int, blocks: int, dropout: float, top: bool) -> None:
        super().__init__()
        self.top = top
        if top:  # learned top prior: one (mu, logvar) per channel
            self.prior_params = nn.Parameter(torch.zeros(1, 2 * latent, 1, 1))
        else:
            self.prior_conv = nn.Conv2d(filters, 2 * latent, 3, padding=1)
            self.posterior_merge = Merge(filters, dropout)
            self.skip_merge = Merge(filters, dropout)
        self.posterior_conv = nn.Conv2d(filters, 2 * latent, 3, padding=1)
        self.z_proj = nn.Conv2d(latent, filters, 3, padding=1)
        self.blocks = nn.Sequential(*[GatedResBlock(filters, dropout) for _ in range(blocks)],
                                    GatedResBlock(filters, dropout, resample="up"))

    @staticmethod
    def _split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = params.float().chunk(2, dim=1)
        return mu, soft_clamp(logvar)

    def forward(self, h: torch.Tensor | None, d: torch.Tensor | None, z: torch.Tensor | None, *,
                spatial: tuple[int, int, int], use_mean: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, LevelParams]:
        """h: top-down features from above (None at the top); d: bottom-up features of x at this level (None:
        no x, generate from the prior); z: a given latent (None: draw one). ``spatial`` = (B, h_i, w_i).
        Returns the features for the next finer level (2× larger) and this level's parameters."""
        if self.top:
            b, hh, ww = spatial
            prior = self._split(self.prior_params.expand(b, -1, hh, ww))
        else:
            prior = self._split(self.prior_conv(h))
        posterior = None
        if d is not None:
            posterior = self._split(self.posterior_conv(d if self.top else self.posterior_merge(h, d)))
        if z is None:
            mu, logvar = posterior if posterior is not None else prior
            if use_mean:
                z = mu
            else:
                eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                z = mu + (0.5 * logvar).exp() * eps
        hz = self.z_proj(z.to(self.z_proj.weight.dtype))
        h = hz if self.top else self.skip_merge(h, hz)
        return self.blocks(h), LevelParams(z, prior, posterior)


@dataclass
class HVAEOutput:
    """What ``HVAE.forward`` returns. ``loss = recon_nll + beta * kl_loss`` (all per pixel, see the module doc)."""

    mean: torch.Tensor  # (B, 1, H, W) likelihood mean (the reconstruction / x_0 estimate of this sample)
    logvar: torch.Tensor  # () likelihood log-variance used (ML value of the batch, or the fixed one)
    recon_nll: torch.Tensor  # () Gaussian NLL, nats per pixel (mean over batch and pixels)
    kl: list[torch.Tensor]  # per level [z_1 … z_n]: (B,) KL in nats, summed over channels and pixels (no free bits)
    kl_loss: torch.Tensor  # () sum over levels of the free-bits KL, divided by H*W
    loss: torch.Tensor  # () recon_nll + beta * kl_loss
    nelbo: torch.Tensor  # () negative ELBO per pixel without free bits: recon_nll + sum(kl) / (H*W), batch mean
    latents: list[torch.Tensor]  # the z_i drawn from the posterior, (B, C, H/2^i, W/2^i)


class HVAE(nn.Module):
    """Ladder VAE (see the module docstring for the architecture, shapes and every modelling choice)."""

    def __init__(self, levels: int = 6, latent_channels: int = 32, blocks_per_level: int = 5, filters: int = 64,
                 dropout: float = 0.2, free_bits: float = 1.0, beta: float = 1.0,
                 likelihood_logvar: float | None = None, in_channels: int = 1) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError("levels must be >= 1")
        self.levels, self.latent_channels, self.free_bits, self.beta = levels, latent_channels, free_bits, beta
        self.likelihood_logvar = likelihood_logvar
        # bottom-up: full-resolution stem, then per level a 2x downsampling block and blocks_per_level blocks
        self.stem = nn.Sequential(nn.Conv2d(in_channels, filters, 5, padding=2), GatedResBlock(filters, dropout))
        self.bottom_up = nn.ModuleList(
            nn.Sequential(GatedResBlock(filters, dropout, resample="down"),
                          *[GatedResBlock(filters, dropout) for _ in range(blocks_per_level)])
            for _ in range(levels))
        # top-down: index i is level i+1 (z_{i+1}); runs from the top (index levels-1) down to index 0
        self.top_down = nn.ModuleList(TopDownLevel(filters, latent_channels, blocks_per_level, dropout, top=i == levels - 1)
                                      for i in range(levels))
        self.final = GatedResBlock(filters, dropout)
        self.head = nn.Conv2d(filters, in_channels, 1)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (2**levels)."""
        return 2**self.levels

    def latent_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """[(B, C, H/2, W/2), …, (B, C, H/2**n, W/2**n)]: the shapes of z_1 … z_n."""
        self._check_size(height, width)
        return [(batch, self.latent_channels, height >> i, width >> i) for i in range(1, self.levels + 1)]

    def _check_size(self, height: int, width: int) -> None:
        if height % self.multiple or width % self.multiple:
            raise ValueError(f"image size {height}x{width} is not a multiple of 2**levels = {self.multiple}")

    # ---- the two paths ----------------------------------------------------------------------------
    def _bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_size(*x.shape[-2:])
        h, features = self.stem(x), []
        for level in self.bottom_up:
            h = level(h)
            features.append(h)
        return features

    def _top_down(self, features: list[torch.Tensor] | None, latents: list[torch.Tensor] | None, *,
                  spatial: tuple[int, int, int], use_mean: bool = False,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[LevelParams]]:
        """Decode: features of x (posterior) or None (prior); given latents or None (drawn). Returns (mean, levels)."""
        h, params = None, []  # params from the top level down: reversed below, so that index i is z_{i+1}
        for i in reversed(range(self.levels)):
            d = features[i] if features is not None else None
            z = latents[i] if latents is not None else None
            h, level = self.top_down[i](h, d, z, spatial=spatial, use_mean=use_mean, generator=generator)
            params.append(level)
        params.reverse()
        return self.head(self.final(h)), params

    def _top_spatial(self, batch: int, height: int, width: int) -> tuple[int, int, int]:
        return batch, height >> self.levels, width >> self.levels

    # ---- public API -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> HVAEOutput:
        """One training pass: encode ``x`` (B, 1, H, W), draw z ~ q, score the likelihood of ``target``
        (default: ``x`` itself, the HVAE; x_0 for the supervised HDN) and the KL of every level."""
        target = x if target is None else target
        features = self._bottom_up(x)
        mean, params = self._top_down(features, None, spatial=self._top_spatial(x.shape[0], *x.shape[-2:]))
        mean32, target32 = mean.float(), target.float()
        if self.likelihood_logvar is None:
            logvar = ((target32 - mean32) ** 2).mean().detach().log().clamp(*LIKELIHOOD_LOGVAR_RANGE)
        else:
            logvar = torch.tensor(float(self.likelihood_logvar), device=x.device)
        recon_nll = gaussian_nll(target32, mean32, logvar).mean()
        kl = []
        for p in params:
            assert p.posterior is not None  # the features of x went in: every level has its posterior
            kl.append(gaussian_kl(*p.posterior, *p.prior).flatten(1).sum(1))
        n_pixels = target[0].numel()
        # levels >= 1 (__init__): a sum of Tensors, never sum()'s int 0
        kl_loss = cast(torch.Tensor, sum(free_bits_kl(k, self.free_bits) for k in kl) / n_pixels)
        nelbo = recon_nll + sum(k.mean() for k in kl) / n_pixels
        return HVAEOutput(mean=mean, logvar=logvar, recon_nll=recon_nll, kl=kl, kl_loss=kl_loss,
                          loss=recon_nll + self.beta * kl_loss, nelbo=nelbo, latents=[p.z for p in params])

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Latents [z_1, …, z_n] of ``x`` (B, 1, H, W); z_i is (B, C, H/2**i, W/2**i), float32.

        ``sample=False``: the posterior mean at every level, each level conditioned on the means above it
        (deterministic in eval mode). ``sample=True``: a posterior sample at every level.
        """
        features = self._bottom_up(x)
        _, params = self._top_down(features, None, spatial=self._top_spatial(x.shape[0], *x.shape[-2:]),
                                   use_mean=not sample, generator=generator)
        return [p.z for p in params]

    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """The likelihood mean (B, 1, H, W) of given latents [z_1, …, z_n] (shapes as from ``encode``): the
        top-down path uses the given z at every level and samples nothing."""
        if len(latents) != self.levels:
            raise ValueError(f"decode needs {self.levels} latents (z_1 … z_n), got {len(latents)}")
        b, _, ht, wt = latents[-1].shape
        mean, _ = self._top_down(None, latents, spatial=(b, ht, wt))
        return mean

    def sample_prior(self, n: int, shape: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images (n, 1, H, W) from the generative model: z ~ p(z), decoded to the likelihood mean."""
        self._check_size(*shape)
        mean, _ = self._top_down(None, None, spatial=self._top_spatial(n, *shape), generator=generator)
        return mean

    def sample_posterior(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``k`` posterior samples (k, B, 1, H, W): z ~ q(z | x), decoded to the likelihood mean. The
        bottom-up pass runs once and is shared by the k top-down passes."""
        features = self._bottom_up(x)
        spatial = self._top_spatial(x.shape[0], *x.shape[-2:])
        return torch.stack([self._top_down(features, None, spatial=spatial, generator=generator)[0] for _ in range(k)])

