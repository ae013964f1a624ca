"""Training configurations: one strict pydantic model per trainer, shared by the CLI, the trainers and
``predict`` (which rebuilds a model from the resolved config saved in its run directory).

Every config has the top-level ``steps``, ``batch_size``, ``patch_size``, ``seed`` and ``device``; the
``model`` section is a tagged union on ``kind`` (the trainer's name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import Field, model_validator

from dehaze.config import StrictModel, merge_sections

if TYPE_CHECKING:
    from torch import nn


class DataConfig(StrictModel):
    """Which patches the loaders draw and how."""

    val_fraction: float = Field(0.25, ge=0, lt=1, description="fraction of fields held out (split by field: no leakage)")
    target: Literal["camera", "noise_free"] = Field("camera", description="x_0: the step-0 camera image, or its noise-free version (simulation)")
    input_steps: list[int] | None = Field(None, description="steps used as inputs (default: 1..T)")
    augment: bool = Field(True, description="random flips and 90° rotations")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    val_patches: int = Field(32, ge=1, description="fixed validation patches (same every evaluation)")


class OptimConfig(StrictModel):
    """Optimiser, learning-rate schedule, gradient clipping and EMA of a run."""

    name: Literal["adam", "adamw", "adamax"] = "adam"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["constant", "cosine", "plateau"] = "cosine"
    plateau_patience: int = Field(10, ge=1, description="validations without improvement before halving (plateau)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW/Adamax betas")
    clip_grad_norm: float | None = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="exponential moving average of weights (None: off)")


class LogConfig(StrictModel):
    """How often a run logs, validates and checkpoints (in optimiser steps)."""

    log_every: int = Field(10, ge=1)
    val_every: int = Field(100, ge=1)
    ckpt_every: int = Field(100, ge=1)
    max_bad_steps: int = Field(20, ge=1, description="consecutive non-finite losses before giving up")


class ModelKind(StrictModel):
    """Base of every model config: the one place a trainer kind is declared.

    A subclass has a ``kind`` Literal field (its name in ``dehaze train KIND``, the study's ``trainers`` and
    run.json) and declares, as class attributes, what every list of kinds is derived from (see
    :data:`MODEL_KINDS`): ``summary`` (one line of CLI help), ``base`` (the kind of run it builds on,
    ``--base``; None for none), ``train_defaults`` (its default training config besides ``model``, merged
    under --config and --set) and ``default_strategy`` (what ``dehaze predict`` runs for a run of this
    kind; None: it does not restore images on its own). :meth:`build` makes its network. Its training
    objective is a :class:`training.tasks.Task` of the same name.
    """

    summary: ClassVar[str] = ""
    base: ClassVar[str | None] = None
    # True: ``--base`` is optional, a warm start (the base run's weights are copied in by the task's
    # ``init_from_base``; the run is complete without it and predicts on its own); False: the kind cannot
    # train without its base run (the latent kinds)
    base_optional: ClassVar[bool] = False
    # other kinds an optional base may also be (a warm start from a run of any of them); ``base`` is the one
    # the study uses
    also_warm_from: ClassVar[tuple[str, ...]] = ()
    train_defaults: ClassVar[dict[str, Any]] = {}
    default_strategy: ClassVar[str | None] = None
    # model fields added after runs were written, with the value those runs were trained with where it is not
    # the field's default (dehaze.runs.read_run fills them in where a run.json lacks the key)
    earlier_runs_had: ClassVar[dict[str, Any]] = {}

    @classmethod
    def base_kinds(cls) -> tuple[str, ...]:
        """Every kind ``--base`` may name: ``base``, then ``also_warm_from`` (empty: it builds on no run)."""
        return (cls.base, *cls.also_warm_from) if cls.base else ()

    @classmethod
    def kind_name(cls) -> str:
        return cls.model_fields["kind"].default

    def build(self) -> nn.Module:
        """The network this config describes, freshly initialised (seed the RNG before calling)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to build its network")

    def resolve_from_base(self, base_model: ModelKind, latents: Any) -> ModelKind:
        """The config with the fields its base run decides filled in (``base_model``: the base run's
        resolved model config; ``latents``: the :class:`LatentCacheMeta` of the data's latent cache)."""
        return self

    def resolve_from_data(self, stores: list[Any], norm: Any) -> ModelKind:
        """The config with the fields the training data decide filled in (``stores``: the opened ladder
        stores; ``norm``: the run's :class:`dehaze.normalization.Normalization`); non-latent kinds only."""
        return self


class UNetModel(ModelKind):
    """CARE-like UNet; with ``time_embed_dim`` it is time-conditioned (sinusoidal embedding, FiLM)."""

    summary: ClassVar[str] = "one-shot UNet baseline, CARE-like"
    default_strategy: ClassVar[str | None] = "one-shot-unet"
    kind: Literal["unet"] = "unet"
    base_channels: int = Field(32, ge=4)
    depth: int = Field(3, ge=1, le=6, description="number of 2x downsamplings")
    # Why not residual by default: with the photon budget of a real pinhole series the hazy steps are 10-100x
    # brighter than x_0 (README, Simulation physics), so x + f(x) starts far from the answer. Measured on the
    # CPU study (800 steps): validation PSNR 18.0 dB residual, 25.7 dB not; from x_T 20.2 -> 42.3 dB.
    residual: bool = Field(False, description="predict x + f(x) (the network learns the haze to remove) instead of x_0 itself")

    def build(self) -> nn.Module:
        from dehaze.models.unet import UNet

        return UNet(base_channels=self.base_channels, depth=self.depth, residual=self.residual)


class PixelModel(ModelKind):
    """Time-conditioned pixel restorer (InDI) R(x_t, t, s) -> x_0.

    ``path="straight"`` (default): the path the sampler walks. For a source step s (an input step of the
    ladder) and t in (0, s], x_t = x_0 + (t/s)(x_s - x_0); the network is conditioned on t and s. The
    sampler's update x_{t-d} = (d/t) R(x_t, t, s) + (1 - d/t) x_t stays on that path when R = x_0, so one
    step of size s is the one-shot estimate R(x_s, s, s) and smaller steps refine it.
    ``source_image`` (default): the network reads x_s beside x_t, R(x_t, x_s, t, s); the walk hands it the
    input at every step.
    ``path="ladder"``: the earlier recipe, x_t interpolated between the two neighbouring ladder steps and
    conditioned on t alone; its sampler leaves the training path, and smaller steps drift more.
    """

    summary: ClassVar[str] = "time-conditioned pixel restorer, InDI"
    default_strategy: ClassVar[str | None] = "pixel-indi"
    earlier_runs_had: ClassVar[dict[str, Any]] = {"source_image": False}  # R(x_t, t, s), x_t alone
    kind: Literal["pixel"] = "pixel"
    base_channels: int = Field(32, ge=4)
    depth: int = Field(3, ge=1, le=6)
    residual: bool = Field(False, description="predict x_t + f(x_t) instead of x_0 (see UNetModel.residual)")
    time_embed_dim: int = Field(64, ge=8)
    path: Literal["straight", "ladder"] = Field("straight", description="training path: straight InDI path from x_s (conditioned on t and s), or between neighbouring ladder steps (t only)")
    # 0 by default: in normalised units (the 99.9th percentile of the hazy steps) the photon budget's x_0 has a
    # std of ~0.005, so the earlier 0.01 buried the nearly clean states late in a walk under white noise twice
    # the signal; measured on the CPU study ladder (ablation pixel:path-noise-0.01; README, "The restorers").
    path_noise_std: float = Field(0.0, ge=0, description="InDI's small Gaussian noise on x_t, in normalised units")
    # The sampler's first call, and the whole one-shot estimate, read R at t = s exactly: under t ~ U(0, s]
    # that state has measure zero, while the UNet baseline trains on nothing else. Measured with and without
    # on the CPU study (ablation pixel:no-source-point; README, "The restorers"), and above it
    # (benchmarks/pixel_recipe.py): 0.5 and 1.0 keep or raise the one-shot from x_T (42.6 and 42.8 dB against 42.6)
    # but put the walk below its one-shot at more source steps (worst -0.27, -0.49 dB against -0.17).
    source_fraction: float = Field(0.25, ge=0, le=1, description="fraction of straight-path samples at t = s "
                                   "exactly (x_t = x_s; straight path only): the state every walk starts from and the one-shot estimate reads")
    sample_delta: float = Field(1.0, gt=0, description="step size delta of x_{t-d} = (d/t) R(x_t,t,s) + (1-d/t) x_t")
    # On by default: measured on the CPU study ladder (800 steps, delta 0.25), it adds 0.5-2.6 dB to both the
    # walk and the one-shot estimate (from x_T: walk 37.5 -> 38.8 dB, one-shot 39.5 -> 40.8 dB), for about
    # twice the time per step.
    walk_weight: float = Field(1.0, ge=0, description="weight of a second loss on a state the sampler's walk from x_s "
                               "reaches (R trained on the states its walk visits; straight path only; see walk_span)")
    # uniform by default, measured against one-step on the CPU study ladder (800 steps, delta 0.25, 2 held-out
    # fields, noise-free x_0): the walk gains at every source step 1..7 (+0.3, +0.1, +0.3, +0.3, +1.7, +1.1,
    # +0.5 dB) and the one-shot on average (+0.2 dB; -0.7 ... +1.4); the walk still ends 0.4-1.9 dB below
    # the one-shot (one-step: 0.5-2.4 dB).
    walk_span: Literal["one-step", "uniform"] = Field("uniform", description="the walk-loss state: one-step, where one "
                                                      "sampler step of sample_delta from x_s lands; uniform, where a single "
                                                      "jump from x_s to t ~ U(0, s) lands, x0_hat + (t/s)(x_s - x0_hat) with "
                                                      "x0_hat = R(x_s, s, s) (the late, nearly clean states of a walk too)")

    # On by default: measured on the CPU study ladder (800 steps, delta 0.25, 2 held-out fields; ablation
    # pixel:no-source-image): from x_T the walk 42.9 against 40.0 dB and the one-shot 42.6 against 41.7, and
    # the walk within -0.17 ... +0.42 dB of its one-shot at every source step (without: -1.7 ... +0.0). On
    # the straight path x_t alone does not say how far the walk's own estimate is from x_s; with x_s beside
    # it, no step of the walk can lose what the input holds.
    source_image: bool = Field(True, description="the network also reads the source image x_s (a second input channel): "
                               "R(x_t, x_s, t, s); every step of a walk then sees what the input holds (straight path only)")

    @model_validator(mode="after")
    def _walk_and_source_need_the_straight_path(self) -> PixelModel:
        if self.walk_weight and self.path != "straight":
            raise ValueError("walk_weight needs path=straight (the walk's states lie on that path); set walk_weight: 0")
        if self.source_image and self.path != "straight":
            raise ValueError("source_image needs path=straight (the source image of a ladder-path state is not defined); set source_image: false")
        return self

    def build(self) -> nn.Module:
        from dehaze.models.unet import UNet

        net = UNet(base_channels=self.base_channels, depth=self.depth, residual=self.residual,
                   time_embed_dim=self.time_embed_dim, source_conditioned=self.path == "straight", source_image=self.source_image)
        # read by the restorer's loss (training.tasks.restorer_loss); plain attributes the UNet does not declare,
        # set by name because a Module's __setattr__ is typed for tensors and submodules only
        for name, value in {"walk_weight": self.walk_weight, "walk_delta": self.sample_delta, "walk_span": self.walk_span}.items():
            setattr(net, name, value)
        return net


class FlowModel(ModelKind):
    """Conditional flow-matching restorer (HazeMatching's recipe; :mod:`dehaze.models.flow`).

    Path convention: flow time tau in [0, 1], tau = 0 Gaussian noise, tau = 1 the clean image:
    y_tau = (1 - tau) noise + tau y_0, velocity target y_0 - noise, tau drawn from a 20-point grid; the loss
    is the clean estimate's MSE by default (``loss_weight_exponent`` 0; 1 is HazeMatching's velocity MSE).
    y_0 = x_0 / target_scale: the clean image in units of its own RMS (resolved from the data), because with
    the photon budget x_0 is 10-100x dimmer than the hazy steps the normalisation is set by, and against
    unit-variance noise it would only appear in the very last ODE step. The network sees the hazy input x_t
    (concatenated as a second channel) and is conditioned on the ladder step t and on tau.
    ``parametrisation="x0"`` (default): the UNet predicts y_0 and v = (y_0_hat - y_tau) / (1 - tau); warm
    started from a pixel or UNet run (``--base``) it starts as that restorer's one-shot estimate for every noise.
    ``"velocity"``: the UNet's output is v itself (HazeMatching's), which a pixel restorer cannot seed.
    """

    summary: ClassVar[str] = "conditional flow-matching restorer, posterior samples"
    base: ClassVar[str | None] = "pixel"
    base_optional: ClassVar[bool] = True
    also_warm_from: ClassVar[tuple[str, ...]] = ("unet",)
    earlier_runs_had: ClassVar[dict[str, Any]] = {"loss_weight_exponent": 1.0}  # the velocity MSE
    default_strategy: ClassVar[str | None] = "flow"
    # EMA as HazeMatching keeps; 0.999 averages over ~1000 steps, longer than a CPU run. lr 3e-4 for the warm
    # start (--base) with the clean-estimate loss: measured on the CPU study, 800 steps, against 1e-4 and 1e-3
    # (K = 4 mean from x_T +1.6, +1.1, -0.2 dB against the UNet; benchmarks/flow_finetune.py). With the
    # velocity MSE every rate above 1e-4 tore the network away from its MMSE start (-0.9 at 1e-4, -5.0 at
    # 3e-4, -6.7 at 1e-3). From scratch a higher rate trains faster: --set optim.lr=1e-3.
    train_defaults: ClassVar[dict[str, Any]] = {"optim": {"ema_decay": 0.995, "lr": 3e-4}}
    kind: Literal["flow"] = "flow"
    base_channels: int = Field(32, ge=4)
    depth: int = Field(3, ge=1, le=6)
    time_embed_dim: int = Field(64, ge=8)
    parametrisation: Literal["x0", "velocity"] = Field("x0", description="what the UNet outputs: the clean image "
                                                       "(v = (x0_hat - y_tau) / (1 - tau); a pixel run can warm-start it) or the velocity")
    tau_grid: int = Field(20, ge=2, description="training flow times tau = k / tau_grid, k = 0 .. tau_grid - 1")
    # 0 by default: measured on the CPU study (warm start, lr 1e-4, 800 steps, K = 16; README, "The flow
    # restorer") against 1 and 0.5: the K-sample mean minus the UNet +1.1 ... +10.3 dB from every input step
    # (velocity MSE: -0.8 ... +7.9), one sample's FRC finer than the UNet's at every step and its power above
    # half Nyquist 0.95-1.35x the clean image's (velocity: 1.75-5.9x); the price is a raw spread 4-11x below
    # the error (velocity 0.65-3.0x; the per-step calibration fits it) and a worse held-out calibration
    # (worst bin 34 % isotonic, 65 % linear; velocity 29 %, 50 %). The velocity MSE's 1/(1-tau)^2 (400x at
    # tau = 0.95) pulls the network away from the MMSE estimate it starts as; the clean estimate's MSE keeps
    # and improves it.
    loss_weight_exponent: float = Field(0.0, ge=0, le=1, description="q: the clean estimate's squared error weighted "
                                        "by 1/(1-tau)^(2q); 1 is the velocity MSE (HazeMatching's), 0 the clean estimate's MSE")
    mmse_samples: int = Field(16, ge=1, description="posterior samples K for the mean and std of `dehaze predict` (--samples overrides)")
    # Filled in when training starts (the resolved config records them):
    target_scale: float | None = Field(None, gt=0, description="RMS of the normalised x_0 (from the data's step-0 statistics)")
    warm_start: str | None = Field(None, description="the pixel run whose weights the run started from (--base)")

    def resolve_from_data(self, stores: list[Any], norm: Any) -> ModelKind:
        if self.target_scale is not None:
            return self
        stats = [s.meta.step_stats[0] for s in stores if s.meta.step_stats]
        rms = max((((st.mean - norm.offset) ** 2 + st.std**2) ** 0.5) / norm.scale for st in stats) if stats else 1.0
        return self.model_copy(update={"target_scale": float(rms if rms > 0 else 1.0)})

    def build(self) -> nn.Module:
        from dehaze.models.flow import FlowNet

        return FlowNet(base_channels=self.base_channels, depth=self.depth, time_embed_dim=self.time_embed_dim,
                       parametrisation=self.parametrisation, tau_grid=self.tau_grid, target_scale=self.target_scale or 1.0,
                       loss_weight_exponent=self.loss_weight_exponent)


# ---- ladder VAEs (dehaze.models.hvae): HVAE and supervised HDN ---------------------------------------
def fill_from_preset(data: Any, presets: dict[str, dict[str, Any]], default: str, fields: tuple[str, ...]) -> Any:
    """Raw model settings with every ``fields`` key left out (or null) taken from the named preset. An
    unknown preset is left for the field validation to report."""
    if isinstance(data, dict):
        preset = presets.get(data.get("preset", default))
        if preset is not None:
            data = {**data, **{k: preset[k] for k in fields if data.get(k) is None}}
    return data


_T = TypeVar("_T")


def _preset_filled(value: _T | None) -> _T:
    # A preset field of a validated config: the "before" validator fills every one left out or null from the
    # preset, and an unknown preset fails validation, so None only comes from a config built around them.
    assert value is not None, "preset field not filled: build the model config through validation"
    return value


HVAEPreset = Literal["hdn-reference", "small", "tiny"]
HVAE_PRESETS: dict[str, dict[str, float | int]] = {
    # Prakash et al. 2022's configuration (the reference model has about 7.3 M parameters; ours 7.5 M);
    # the default, because a smaller model silently loses dB.
    "hdn-reference": {"levels": 6, "latent_channels": 32, "blocks_per_level": 5, "filters": 64, "dropout": 0.2, "free_bits": 1.0},
    "small": {"levels": 4, "latent_channels": 16, "blocks_per_level": 2, "filters": 32, "dropout": 0.1, "free_bits": 1.0},  # CPU
    "tiny": {"levels": 2, "latent_channels": 4, "blocks_per_level": 1, "filters": 8, "dropout": 0.0, "free_bits": 1.0},  # tests
}
_LADDER_FIELDS = ("levels", "latent_channels", "blocks_per_level", "filters", "dropout", "free_bits")


# HDN's reference optimisation (Prakash et al. 2022): Adamax 3e-4, halved on plateaus, 64x64 patches.
_LADDER_VAE_DEFAULTS: dict[str, Any] = {"patch_size": 64, "optim": {"name": "adamax", "lr": 3e-4, "scheduler": "plateau"}}


class _LadderVAEModel(ModelKind):
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

    train_defaults: ClassVar[dict[str, Any]] = _LADDER_VAE_DEFAULTS

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        return fill_from_preset(data, HVAE_PRESETS, "hdn-reference", _LADDER_FIELDS)

    def build(self) -> nn.Module:  # one ladder VAE; HDN only differs in what it is trained on
        from dehaze.models.hvae import HVAE

        return HVAE(levels=_preset_filled(self.levels), latent_channels=_preset_filled(self.latent_channels),
                    blocks_per_level=_preset_filled(self.blocks_per_level), filters=_preset_filled(self.filters),
                    dropout=_preset_filled(self.dropout), free_bits=_preset_filled(self.free_bits), beta=self.beta,
                    likelihood_logvar=self.likelihood_logvar)


class HVAEModel(_LadderVAEModel):
    """HVAE of the latent-space pipeline: reconstructs every ladder step x_t from itself."""

    summary: ClassVar[str] = "ladder VAE of every step, the latent pipeline's encoder"
    kind: Literal["hvae"] = "hvae"


class HDNModel(_LadderVAEModel):
    """Supervised HDN baseline: encodes x_t, likelihood on x_0; predicts the MMSE of posterior samples."""

    summary: ClassVar[str] = "supervised HDN baseline, posterior samples"
    default_strategy: ClassVar[str | None] = "one-shot-hdn"
    kind: Literal["hdn"] = "hdn"
    mmse_samples: int = Field(16, ge=1, description="posterior samples for the MMSE and std of `dehaze predict` (--samples overrides)")


# ---- latent-space models (dehaze.models.latent), built on a trained HVAE run (--base) -------------------
class LatentModel(ModelKind):
    """Latent restorer R(z_t, t): loss sum_i w_i ||z_0,i - R(z_t, t)_i||^2 over the HVAE's levels."""

    summary: ClassVar[str] = "latent restorer R(z_t, t)"
    base: ClassVar[str | None] = "hvae"
    kind: Literal["latent"] = "latent"
    width: int = Field(64, ge=4, description="feature channels at every level")
    time_embed_dim: int = Field(64, ge=8)
    level_weights: list[float] | None = Field(None, description="w_i per level, finest first (default: all 1)")
    # Filled in from the HVAE run when training starts (the resolved config records them):
    level_channels: list[int] | None = Field(None, description="latent channels per level (from the HVAE)")
    n_steps: int | None = Field(None, ge=2, description="ladder steps T+1 (from the data)")

    def resolve_from_base(self, base_model: ModelKind, latents: Any) -> ModelKind:
        return self.model_copy(update={"level_channels": latents.level_channels, "n_steps": latents.n_steps})

    def build(self) -> nn.Module:
        from dehaze.models.latent import LatentNet

        if self.level_channels is None:
            raise ValueError("latent model config is not resolved: level_channels comes from the HVAE run")
        return LatentNet(self.level_channels, self.width, time_embed_dim=self.time_embed_dim, level_weights=self.level_weights)


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


class DegradationModel(ModelKind):
    """The latent degradation D(t) = G(t): X_t={z_hat_0|t} -> Y_t={z_{t-1}}, F(t) back, discriminators on
    latents (see :mod:`training.latent_tasks` for the objective). ``preset`` fills every loss/sharing
    field left out (or null); the resolved config lists them all."""

    summary: ClassVar[str] = "latent degradation G(t) for the iterative latent loops"
    base: ClassVar[str | None] = "latent"
    # the reference GAN optimiser: Adam 2e-4, beta1 0.5
    train_defaults: ClassVar[dict[str, Any]] = {"optim": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999], "scheduler": "constant"}}
    default_strategy: ClassVar[str | None] = "latent-direct"
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

    def resolve_from_base(self, base_model: ModelKind, latents: Any) -> ModelKind:
        return self.model_copy(update={"restorer": base_model})  # the restorer is the base latent run's

    def build(self) -> nn.Module:
        from dehaze.models.latent import LatentCycleGAN

        r = self.restorer
        if r is None or r.level_channels is None or r.n_steps is None:
            raise ValueError("degradation config is not resolved: its restorer comes from the latent run")
        return LatentCycleGAN(r.level_channels, r.n_steps - 1, r.build(), width=self.width, shared=_preset_filled(self.shared),
                              lambda_cyc=_preset_filled(self.lambda_cyc), lambda_cos=_preset_filled(self.lambda_cos),
                              lambda_sup=_preset_filled(self.lambda_sup), lambda_gan=_preset_filled(self.lambda_gan),
                              pool_size=self.pool_size,
                              restorer_walk_weight=self.restorer_walk_weight)


# ---- the kinds: every list of trainers (CLI, training order, study, predict, the model bundle) comes from here
MODEL_CONFIGS: tuple[type[ModelKind], ...] = (UNetModel, PixelModel, FlowModel, HDNModel, HVAEModel, LatentModel, DegradationModel)
MODEL_KINDS: dict[str, type[ModelKind]] = {cls.kind_name(): cls for cls in MODEL_CONFIGS}
TRAINER_KINDS: tuple[str, ...] = tuple(MODEL_KINDS)
if TYPE_CHECKING:
    TrainerKind = str
else:  # built from the registry: the Literal of every kind (pydantic validates the study's trainers keys with it)
    TrainerKind = Literal[TRAINER_KINDS]


def training_order(kinds: Any = TRAINER_KINDS) -> list[str]:
    """``kinds`` in declaration order, each after the run it builds on (a base outside ``kinds`` is ignored)."""
    chosen, order = set(kinds), []

    def visit(kind: str) -> None:
        base = MODEL_KINDS[kind].base
        if base is not None and base in chosen and base not in order:
            visit(base)
        if kind not in order:
            order.append(kind)

    for kind in TRAINER_KINDS:
        if kind in chosen:
            visit(kind)
    return order


def kinds_help() -> str:
    """``kind (summary)`` for every trainer, with its --base: the CLI's help for ``dehaze train KIND``."""
    def base(c: type[ModelKind]) -> str:
        if not c.base:
            return ""
        runs = " or ".join(f"{k.upper()}_RUN" for k in c.base_kinds())
        return f" (optional --base {runs}: warm start)" if c.base_optional else f" (--base {runs})"

    return "; ".join(f"{k}: {c.summary}{base(c)}" for k, c in MODEL_KINDS.items())


if TYPE_CHECKING:  # a type checker sees the base class (narrow with isinstance); pydantic, the tagged union
    ModelConfig = ModelKind
else:
    ModelConfig = Annotated[Union[MODEL_CONFIGS], Field(discriminator="kind")]


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
        if isinstance(self.model, _LadderVAEModel):
            levels = _preset_filled(self.model.levels)
            if self.patch_size % 2**levels:
                raise ValueError(f"patch_size={self.patch_size} must be a multiple of 2**model.levels = {2**levels}")
        return self


def default_config(kind: str) -> dict:
    """The default config of a trainer, as a plain dict (overridden by --config and --set; see
    :func:`train_config_dict`): its declared ``train_defaults`` (a deep copy) and its kind."""
    return {"model": {"kind": kind}, **json.loads(json.dumps(MODEL_KINDS[kind].train_defaults))}


def train_config_dict(kind: str, *partials: dict[str, Any]) -> dict[str, Any]:
    """The trainer's defaults with each partial config merged on, section by section
    (:func:`dehaze.config.merge_sections`): what ``train --config``, ``study`` and ``demo`` validate."""
    raw = default_config(kind)
    for part in partials:
        raw = merge_sections(raw, part)
    return raw


def load_train_config(kind: str, config: Path | None, overrides: list[str]) -> tuple[TrainConfig, str]:
    """``dehaze train KIND [--config FILE] [--set k=v ...]``: the kind's defaults, the file merged on and
    the overrides applied, validated; with the source the messages name. One-line UserErrors for an
    unknown kind or a file of another kind."""
    from dehaze.config import build_model, read_yaml
    from dehaze.errors import UserError

    if kind not in MODEL_KINDS:
        raise UserError(f"unknown trainer {kind!r}; choose one of: {', '.join(TRAINER_KINDS)}")
    raw, source = train_config_dict(kind), f"{kind} config"
    if config is not None:
        file_cfg = read_yaml(config)
        model = file_cfg.get("model")
        file_kind = model.get("kind", kind) if isinstance(model, dict) else kind
        if file_kind != kind:
            raise UserError(f"{config}: model.kind is {file_kind!r} but the trainer is {kind!r}")
        raw, source = train_config_dict(kind, file_cfg), str(config)
    cfg = build_model(TrainConfig, raw, overrides, source)
    # kind_name(): a type checker sees the base ModelKind, whose subclasses each fix ``kind`` to its default
    if cfg.model.kind_name() != kind:
        raise UserError(f"model.kind={cfg.model.kind_name()!r} does not match the trainer {kind!r}")
    return cfg, source
