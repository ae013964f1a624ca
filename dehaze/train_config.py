"""Training configurations: one strict pydantic model per trainer, shared by the CLI, the trainers and
``predict`` (which rebuilds a model from the resolved config saved in its run directory).

Every config has the top-level ``steps``, ``batch_size``, ``patch_size``, ``seed`` and ``device``; the
``model`` section is a tagged union on ``kind`` (the trainer's name).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from dehaze.config import StrictModel, merge_sections


class DataConfig(StrictModel):
    """Which patches the loaders draw and how."""

    val_fraction: float = Field(0.25, ge=0, lt=1, description="fraction of fields held out (split by field: no leakage)")
    target: Literal["camera", "noise_free"] = Field("camera", description="x_0: the step-0 camera image, or its noise-free version (simulation)")
    input_steps: list[int] | None = Field(None, description="steps used as inputs (default: 1..T)")
    augment: bool = Field(True, description="random flips and 90° rotations")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    val_patches: int = Field(32, ge=1, description="fixed validation patches (same every evaluation)")


class OptimConfig(StrictModel):
    name: Literal["adam", "adamw", "adamax"] = "adam"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["constant", "cosine", "plateau"] = "cosine"
    plateau_patience: int = Field(10, ge=1, description="validations without improvement before halving (plateau)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW/Adamax betas")
    clip_grad_norm: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="exponential moving average of weights (None: off)")


class LogConfig(StrictModel):
    log_every: int = Field(10, ge=1)
    val_every: int = Field(100, ge=1)
    ckpt_every: int = Field(100, ge=1)
    max_bad_steps: int = Field(20, ge=1, description="consecutive non-finite losses before giving up")


class UNetModel(StrictModel):
    """CARE-like UNet; with ``time_embed_dim`` it is time-conditioned (sinusoidal embedding, FiLM)."""

    kind: Literal["unet"] = "unet"
    base_channels: int = Field(32, ge=4)
    depth: int = Field(3, ge=1, le=6, description="number of 2x downsamplings")
    # Why not residual by default: with the photon budget of a real pinhole series the hazy steps are 10-100x
    # brighter than x_0 (README, Simulation physics), so x + f(x) starts far from the answer. Measured on the
    # CPU study (800 steps): validation PSNR 18.0 dB residual, 25.7 dB not; from x_T 20.2 -> 42.3 dB.
    residual: bool = Field(False, description="predict x + f(x) (the network learns the haze to remove) instead of x_0 itself")


class PixelModel(StrictModel):
    """Time-conditioned pixel restorer (InDI) R(x_t, t, s) -> x_0.

    ``path="straight"`` (default): the path the sampler walks. For a source step s (an input step of the
    ladder) and t in (0, s], x_t = x_0 + (t/s)(x_s - x_0); the network is conditioned on t and s. The
    sampler's update x_{t-d} = (d/t) R(x_t, t, s) + (1 - d/t) x_t stays on that path when R = x_0, so one
    step of size s is the one-shot estimate R(x_s, s, s) and smaller steps refine it.
    ``path="ladder"``: the earlier recipe, x_t interpolated between the two neighbouring ladder steps and
    conditioned on t alone; its sampler leaves the training path, and smaller steps drift more.
    """

    kind: Literal["pixel"] = "pixel"
    base_channels: int = Field(32, ge=4)
    depth: int = Field(3, ge=1, le=6)
    residual: bool = Field(False, description="predict x_t + f(x_t) instead of x_0 (see UNetModel.residual)")
    time_embed_dim: int = Field(64, ge=8)
    path: Literal["straight", "ladder"] = Field("straight", description="training path: straight InDI path from x_s (conditioned on t and s), or between neighbouring ladder steps (t only)")
    path_noise_std: float = Field(0.01, ge=0, description="InDI's small noise on x_t, in normalised units")
    sample_delta: float = Field(1.0, gt=0, description="step size delta of x_{t-d} = (d/t) R(x_t,t,s) + (1-d/t) x_t")
    # On by default: measured on the CPU study ladder (800 steps, delta 0.25), it adds 0.5-2.6 dB to both the
    # walk and the one-shot estimate (from x_T: walk 37.5 -> 38.8 dB, one-shot 39.5 -> 40.8 dB), for about
    # twice the time per step.
    walk_weight: float = Field(1.0, ge=0, description="weight of a second loss on the state one sampler step of "
                               "sample_delta from x_s reaches (R trained on the states its walk visits; straight path only)")

    @model_validator(mode="after")
    def _walk_needs_the_straight_path(self) -> PixelModel:
        if self.walk_weight and self.path != "straight":
            raise ValueError("walk_weight needs path=straight (the walk's states lie on that path); set walk_weight: 0")
        return self


# ---- ladder VAEs (dehaze.models.hvae): HVAE and supervised HDN ---------------------------------------
def fill_from_preset(data: Any, presets: dict[str, dict[str, Any]], default: str, fields: tuple[str, ...]) -> Any:
    """Raw model settings with every ``fields`` key left out (or null) taken from the named preset. An
    unknown preset is left for the field validation to report."""
    if isinstance(data, dict):
        preset = presets.get(data.get("preset", default))
        if preset is not None:
            data = {**data, **{k: preset[k] for k in fields if data.get(k) is None}}
    return data


HVAEPreset = Literal["hdn-reference", "small", "tiny"]
HVAE_PRESETS: dict[str, dict[str, float | int]] = {
    # Prakash et al. 2022's configuration (the reference model has about 7.3 M parameters; ours 7.5 M);
    # the default, because a smaller model silently loses dB.
    "hdn-reference": {"levels": 6, "latent_channels": 32, "blocks_per_level": 5, "filters": 64, "dropout": 0.2, "free_bits": 1.0},
    "small": {"levels": 4, "latent_channels": 16, "blocks_per_level": 2, "filters": 32, "dropout": 0.1, "free_bits": 1.0},  # CPU
    "tiny": {"levels": 2, "latent_channels": 4, "blocks_per_level": 1, "filters": 8, "dropout": 0.0, "free_bits": 1.0},  # tests
}
_LADDER_FIELDS = ("levels", "latent_channels", "blocks_per_level", "filters", "dropout", "free_bits")


class _LadderVAEModel(StrictModel):
    """Ladder VAE settings: ``preset`` fills every architecture field left out (or null); the resolved
    config (as saved in run.json) lists them all, so a run never depends on the preset table."""

    preset: HVAEPreset = Field("hdn-reference", description="hdn-reference (Prakash et al. 2022, ~7.5 M parameters), small (CPU), tiny (tests)")
    levels: int | None = Field(None, ge=2, le=6, description="latent levels; each halves the resolution (z_i is H/2^i)")
    latent_channels: int | None = Field(None, ge=1, description="channels of every z_i")
    blocks_per_level: int | None = Field(None, ge=1, description="gated residual blocks per level and path (plus one down- or upsampling block)")
    filters: int | None = Field(None, ge=4, description="feature channels")
    dropout: float | None = Field(None, ge=0, lt=1)
    free_bits: float | None = Field(None, ge=0, description="nats per level and image below which KL is not penalised")
    beta: float = Field(1.0, ge=0, description="loss = recon_nll + beta * KL (per pixel)")
    likelihood_logvar: float | None = Field(None, ge=-12, le=4, description="fixed Gaussian log-variance (normalised units); null: the batch's ML value")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        return fill_from_preset(data, HVAE_PRESETS, "hdn-reference", _LADDER_FIELDS)


class HVAEModel(_LadderVAEModel):
    """HVAE of the latent-space pipeline: reconstructs every ladder step x_t from itself."""

    kind: Literal["hvae"] = "hvae"


class HDNModel(_LadderVAEModel):
    """Supervised HDN baseline: encodes x_t, likelihood on x_0; predicts the MMSE of posterior samples."""

    kind: Literal["hdn"] = "hdn"
    mmse_samples: int = Field(16, ge=1, description="posterior samples for the MMSE and std of `dehaze predict` (--samples overrides)")


# ---- latent-space models (dehaze.models.latent), built on a trained HVAE run (--base) -------------------
class LatentModel(StrictModel):
    """Latent restorer R(z_t, t): loss sum_i w_i ||z_0,i - R(z_t, t)_i||^2 over the HVAE's levels."""

    kind: Literal["latent"] = "latent"
    width: int = Field(64, ge=4, description="feature channels at every level")
    time_embed_dim: int = Field(64, ge=8)
    level_weights: list[float] | None = Field(None, description="w_i per level, finest first (default: all 1)")
    # Filled in from the HVAE run when training starts (the resolved config records them):
    level_channels: list[int] | None = Field(None, description="latent channels per level (from the HVAE)")
    n_steps: int | None = Field(None, ge=2, description="ladder steps T+1 (from the data)")


DegradationPreset = Literal["supervised", "cyclegan"]
DEGRADATION_PRESETS: dict[str, dict[str, float | bool]] = {
    # The default, chosen by measurement (README, benchmarks/results/study_cpu.json): one shared t-conditioned
    # G trained mostly on the pairs. The seed's per-step CycleGAN starts at the identity, where the cycle loss
    # is 0 and the cosine term ~1, and each per-step net sees ~steps/T batches: it stayed within 0.2-7 % of
    # where it started (science review), so the loop drifted with a degradation that did not move.
    "supervised": {"shared": True, "lambda_sup": 10.0, "lambda_cyc": 1.0, "lambda_cos": 0.0, "lambda_gan": 0.1},
    # The study's recipe (DESIGN §6 reference GAN settings): per-step CycleGAN, cycle x10, cosine term.
    "cyclegan": {"shared": False, "lambda_sup": 0.0, "lambda_cyc": 10.0, "lambda_cos": 1.0, "lambda_gan": 1.0},
}
_DEGRADATION_FIELDS = ("shared", "lambda_sup", "lambda_cyc", "lambda_cos", "lambda_gan")


class DegradationModel(StrictModel):
    """The latent degradation D(t) = G(t): X_t={z_hat_0|t} -> Y_t={z_{t-1}}, F(t) back, discriminators on
    latents (see :mod:`training.latent_tasks` for the objective). ``preset`` fills every loss/sharing
    field left out (or null); the resolved config lists them all."""

    kind: Literal["degradation"] = "degradation"
    preset: DegradationPreset = Field("supervised", description="supervised (default: shared t-conditioned G, dominant "
                                      "supervised term) or cyclegan (the seed's per-step CycleGAN, for comparison)")
    width: int = Field(64, ge=4)
    shared: bool | None = Field(None, description="one t-conditioned network for every step instead of one per step")
    lambda_cyc: float | None = Field(None, ge=0, description="cycle weight (reference 10; 1-2 if it collapses)")
    lambda_cos: float | None = Field(None, ge=0, description="cosine-direction term weight")
    lambda_sup: float | None = Field(None, ge=0, description="supervised pair term weight: |G(x) - y|^2 / |y - x|^2 "
                                     "(the squared distance G leaves, relative to the distance it must move)")
    lambda_gan: float | None = Field(None, ge=0, description="weight of the adversarial (LSGAN) generator terms")
    pool_size: int = Field(50, ge=0, description="image pool of past fakes shown to the discriminators")
    # Off by default, measured both ways: on the CPU study (ablation degradation:walk-finetuned-R of
    # study_cpu.json, 800 steps) the direct loop gains 0.3-3.0 dB from every input step; on the demo (300
    # steps) it loses (latent-direct from step 1 24.8 vs 29.4 dB, latent-cold from x_T 6.4 vs 24.9 dB).
    restorer_walk_weight: float = Field(0.0, ge=0, description="fine-tune the latent restorer R in this run on the "
                                        "states its loop visits: loss |R(z_t,t) - z_0|^2 + w |R(G(R(z_t,t),t), t-1) - z_0|^2 "
                                        "(0: R stays the base run's, frozen)")
    restorer_lr: float = Field(1e-4, gt=0, description="learning rate of that fine-tuning (Adam)")
    # Filled in from the latent run when training starts:
    restorer: LatentModel | None = Field(None, description="the latent restorer's resolved config")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        return fill_from_preset(data, DEGRADATION_PRESETS, "supervised", _DEGRADATION_FIELDS)


ModelConfig = Annotated[Union[UNetModel, PixelModel, HVAEModel, HDNModel, LatentModel, DegradationModel], Field(discriminator="kind")]


class TrainConfig(StrictModel):
    """A training run. ``model.kind`` names the trainer."""

    model: ModelConfig
    steps: int = Field(2000, ge=1, description="optimiser steps")
    batch_size: int = Field(16, ge=1)
    patch_size: int = Field(64, ge=16, description="square patch side in pixels (multiple of 2**depth)")
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _patch_fits_the_ladder_vae(self) -> TrainConfig:
        levels = getattr(self.model, "levels", None)
        if isinstance(self.model, _LadderVAEModel) and self.patch_size % 2**levels:
            raise ValueError(f"patch_size={self.patch_size} must be a multiple of 2**model.levels = {2**levels}")
        return self


TRAINER_KINDS = ("unet", "pixel", "hvae", "hdn", "latent", "degradation")
LATENT_KINDS = ("latent", "degradation")  # trainers that build on a base run (--base)

# HDN's reference optimisation (Prakash et al. 2022): Adamax 3e-4, halved on plateaus, 64x64 patches.
_LADDER_VAE_DEFAULTS = {"patch_size": 64, "optim": {"name": "adamax", "lr": 3e-4, "scheduler": "plateau"}}


def default_config(kind: str) -> dict:
    """The default config of a trainer, as a plain dict (overridden by --config and --set; see
    :func:`train_config_dict`)."""
    if kind in ("hvae", "hdn"):
        return {"model": {"kind": kind}, **json.loads(json.dumps(_LADDER_VAE_DEFAULTS))}
    if kind == "degradation":  # the reference GAN optimiser: Adam 2e-4, beta1 0.5
        return {"model": {"kind": kind}, "optim": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999], "scheduler": "constant"}}
    return {"model": {"kind": kind}}


def train_config_dict(kind: str, *partials: dict[str, Any]) -> dict[str, Any]:
    """The trainer's defaults with each partial config merged on, section by section
    (:func:`dehaze.config.merge_sections`): what ``train --config``, ``study`` and ``demo`` validate."""
    raw = default_config(kind)
    for part in partials:
        raw = merge_sections(raw, part)
    return raw
