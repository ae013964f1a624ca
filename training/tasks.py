"""What each trainer optimises: the sample kind it draws, its loss, and its x_0 estimate for validation.

Losses are small callables with one signature: ``loss(model, batch) -> scalar tensor``; ``estimate(model,
batch) -> x_0 estimate`` (B, 1, P, P) on a validation ``pair`` batch, scored against ``batch[val_target]``
(x_0 for restorers; x_t itself for the HVAE, whose estimate is a reconstruction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, cast

import torch
from torch import nn
from torch.nn import functional as F

from training.config import TRAINER_KINDS
from training.data import SampleKind
from training.latent_data import LatentKind
from training.latent_tasks import cyclegan_losses, degradation_check, weighted_latent_mse

if TYPE_CHECKING:
    from dehaze.models.flow import FlowNet
    from dehaze.models.hvae import HVAE
    from dehaze.models.latent import LatentCycleGAN, LatentNet

Batch = dict[str, torch.Tensor]
# a latent kind's batch: "z_t", "z_0", "z_prev" are lists of per-level latents, "t" a tensor
LatentBatch = dict[str, Any]


# A Task's callables take any nn.Module; the loop hands each kind the network its config builds
# (training.config.ModelKind.build), the loss perhaps DDP-wrapped (the network is then its .module). These
# name that network's class for the type checker, which cannot follow the kind (nn.Module.__getattr__ is
# typed Tensor | Module). The latent kinds never run DDP-wrapped (their GAN steps refuse several processes).
def _flow_net(model: nn.Module) -> FlowNet:
    return cast("FlowNet", getattr(model, "module", model))


def _ladder_vae(model: nn.Module) -> HVAE:
    return cast("HVAE", model)


def _latent_net(model: nn.Module) -> LatentNet:
    return cast("LatentNet", getattr(model, "module", model))


def _cycle_gan(model: nn.Module) -> LatentCycleGAN:
    return cast("LatentCycleGAN", model)


def one_shot_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """||x_0 - UNet(x_t)||^2, every input step pooled (the CARE-like baseline)."""
    return F.mse_loss(model(batch["x"]), batch["y"])


def one_shot_estimate(model: nn.Module, batch: Batch) -> torch.Tensor:
    """UNet(x_t): the baseline's estimate of x_0."""
    return model(batch["x"])


def restorer_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """||x_0 - R(x_t, t, s)||^2 for the InDI restorer (t continuous on the path from source step s; see
    :class:`training.config.PixelModel`), plus, with ``walk_weight`` w > 0, w ||x_0 - R(x_w, t_w, s)||^2
    on the state x_w = (d/s) R(x_s, s, s) + (1 - d/s) x_s that one sampler step of d = s - t_w reaches
    from x_s with the current network (no gradient through that step): R learns the states its own walk
    visits, not only the ideal path. ``walk_span`` "one-step": d = ``walk_delta`` (the walk's first state);
    "uniform": t_w ~ U(0, s) per sample (torch's RNG, so seeded and resumed runs repeat)."""
    net = getattr(model, "module", model)
    if not getattr(net, "source_conditioned", False):  # the ladder-path recipe: t alone
        return F.mse_loss(model(batch["x"], batch["t"]), batch["y"])
    reads_source = bool(getattr(net, "source_image", False))

    def source(x_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x_source": x_s} if reads_source else {}

    loss = F.mse_loss(model(batch["x"], batch["t"], batch["s"], **source(batch["x_s"])), batch["y"])
    weight, delta = float(getattr(net, "walk_weight", 0.0)), float(getattr(net, "walk_delta", 1.0))
    s = batch["s"]
    if getattr(net, "walk_span", "one-step") == "uniform":
        t_walk = s * torch.rand(s.shape, device=s.device).clamp_min(1e-3)
    else:
        t_walk = s - delta
    keep = t_walk > 0  # a step that reaches 0 ends the walk: nothing further to learn there
    if weight and bool(keep.any()):
        x_s, s_k, t_k = batch["x_s"][keep], s[keep], t_walk[keep]
        with torch.no_grad():
            frac = ((s_k - t_k) / s_k)[:, None, None, None]
            x_walk = frac * model(x_s, s_k, s_k, **source(x_s)) + (1 - frac) * x_s
        loss = loss + weight * F.mse_loss(model(x_walk, t_k, s_k, **source(x_s)), batch["y"][keep])
    return loss


def restorer_estimate(model: nn.Module, batch: Batch) -> torch.Tensor:
    """R(x_t, t[, s = t]): on a validation pair x_t is a ladder step, the start of its own straight path."""
    net = getattr(model, "module", model)
    if getattr(net, "source_image", False):
        return model(batch["x"], batch["t"], batch["t"], x_source=batch["x"])
    if getattr(net, "source_conditioned", False):
        return model(batch["x"], batch["t"], batch["t"])
    return model(batch["x"], batch["t"])


# ---- conditional flow matching (dehaze.models.flow) ---------------------------------------------------
def flow_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """||v(y_tau, tau | x_t, t) - (y_0 - noise)||^2 on the straight path from Gaussian noise (tau = 0) to
    y_0 = x_0 / target_scale (tau = 1), tau drawn from the model's grid {0, 1/n, ..., (n-1)/n}; noise and
    tau come from torch's RNG, which checkpoints keep (a resumed run draws what an uninterrupted one does)."""
    from dehaze.models.flow import flow_matching_loss, tau_grid

    y = batch["y"]
    grid = tau_grid(_flow_net(model).tau_grid)
    tau = grid[torch.randint(len(grid), (y.shape[0],))].to(y.device)
    return flow_matching_loss(model, batch["x"], batch["t"], y, torch.randn_like(y), tau)


FLOW_VAL_SEED = 0  # validation noise: the same every evaluation, and torch's training RNG stream left alone


def flow_estimate(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The network's x_0 estimate from pure noise (tau = 0): its one-shot MMSE, the mean its samples should match."""
    x = batch["x"]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(FLOW_VAL_SEED)).to(x.device)
    tau = torch.zeros(x.shape[0], device=x.device)
    flow = _flow_net(model)
    return flow.clean_estimate(noise, tau, x, batch["t"]) * flow.target_scale


def flow_from_base(model: nn.Module, base: nn.Module) -> None:
    """--base PIXEL_RUN or UNET_RUN: the flow network starts as that restorer's one-shot estimate (see
    warm_start_from_restorer)."""
    from dehaze.models.flow import warm_start_from_restorer

    warm_start_from_restorer(_flow_net(model), base)


# ---- ladder VAEs (dehaze.models.hvae) ----------------------------------------------------------------
HDN_VAL_SAMPLES = 4  # posterior samples of the validation MMSE (prediction uses model.mmse_samples)


def hvae_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Per-pixel Gaussian NLL of x_t given z ~ q(z | x_t), plus beta * free-bits KL: reconstruct every step."""
    return model(batch["x"]).loss


def hvae_estimate(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The deterministic reconstruction decode(encode(x_t)) (posterior means), scored against x_t itself."""
    vae = _ladder_vae(model)
    return vae.decode(vae.encode(batch["x"]))


def hdn_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Supervised HDN: per-pixel Gaussian NLL of x_0 given z ~ q(z | x_t), plus beta * free-bits KL."""
    return model(batch["x"], target=batch["y"]).loss


def hdn_estimate(model: nn.Module, batch: Batch) -> torch.Tensor:
    """MMSE estimate of x_0: mean of a few decoded posterior samples."""
    from dehaze.strategies import hdn_posterior

    return hdn_posterior(_ladder_vae(model), batch["x"], HDN_VAL_SAMPLES)[0]


# ---- latent models (dehaze.models.latent): batches hold lists of per-level latents ----------------------
def latent_loss(model: nn.Module, batch: LatentBatch) -> torch.Tensor:
    """sum_i w_i ||z_0,i - R(z_t, t)_i||^2 (weights from the model config, default 1)."""
    return weighted_latent_mse(model(batch["z_t"], batch["t"]), batch["z_0"], _latent_net(model).level_weights)


def latent_estimate(model: nn.Module, batch: LatentBatch) -> list[torch.Tensor]:
    """R(z_t, t): the latent restorer's estimate of z_0, level by level."""
    return model(batch["z_t"], batch["t"])


def degradation_loss(model: nn.Module, batch: LatentBatch) -> dict[str, torch.Tensor]:
    """The degradation's losses, one per optimiser (see :func:`training.latent_tasks.cyclegan_losses`)."""
    return cyclegan_losses(_cycle_gan(model), batch)


def degradation_estimate(model: nn.Module, batch: LatentBatch) -> list[torch.Tensor]:
    """G(t)(R(z_t, t)): the learned degradation's guess of z_{t-1}."""
    t = int(batch["t"][0])
    gan = _cycle_gan(model)
    return gan.G(gan.restorer(batch["z_t"], batch["t"]), t)


def degradation_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Optimisers stepped in this order each batch: generators, discriminators, and the restorer when the
    run fine-tunes it on its loop's states (``restorer_walk_weight`` > 0; learning rate ``restorer_lr``)."""
    gan = _cycle_gan(model)
    groups = {"generators": gan.generator_params(), "discriminators": gan.discriminator_params()}
    if gan.restorer_params():
        groups["restorer"] = gan.restorer_params()
    return groups


def degradation_from_base(model: nn.Module, base: nn.Module) -> None:
    """The degradation run starts from the base latent run's restorer weights (frozen unless fine-tuned)."""
    _cycle_gan(model).restorer.load_state_dict(base.state_dict())


def degradation_report(model: nn.Module, cache_path: str, fields: list[str], device: torch.device) -> dict:
    """The run's record of how far G moves (see :func:`training.latent_tasks.degradation_check`)."""
    return {"degradation_check": degradation_check(_cycle_gan(model), cache_path, fields, device)}


@dataclass(frozen=True)
class Task:
    """What one trainer kind optimises (the kind itself, its network and base run are declared by its
    model config, :class:`training.config.ModelKind`)."""

    sample_kind: SampleKind | LatentKind
    loss: Callable[[nn.Module, Batch], torch.Tensor | dict[str, torch.Tensor]]  # dict: one loss per optimiser
    estimate: Callable[[nn.Module, Batch], torch.Tensor | list[torch.Tensor]]
    val_target: str = "y"  # the key of a validation batch the estimate is scored against
    param_groups: Callable[[nn.Module], dict[str, list[nn.Parameter]]] | None = None  # default: one optimiser
    # (new model, the base run's trained model) -> None: weights a new run takes from its base (--base; for a
    # kind whose base is optional, training.config.ModelKind.base_optional, only when one is given)
    init_from_base: Callable[[nn.Module, nn.Module], None] | None = None
    # (model, latent cache, held-out fields, device) -> what the finished run records in report.json
    final_report: Callable[[nn.Module, str, list[str], torch.device], dict] | None = None

    @property
    def latent(self) -> bool:
        return self.sample_kind.startswith("latent")


TASKS: dict[str, Task] = {
    "unet": Task("pair", one_shot_loss, one_shot_estimate),
    "pixel": Task("path", restorer_loss, restorer_estimate),
    "flow": Task("pair", flow_loss, flow_estimate, init_from_base=flow_from_base),
    "hvae": Task("single", hvae_loss, hvae_estimate, val_target="x"),
    "hdn": Task("pair", hdn_loss, hdn_estimate),
    "latent": Task("latent_pair", latent_loss, latent_estimate, val_target="z_0"),
    "degradation": Task("latent_degradation", degradation_loss, degradation_estimate, val_target="z_prev",
                        param_groups=degradation_groups, init_from_base=degradation_from_base,
                        final_report=degradation_report),
}
if set(TASKS) != set(TRAINER_KINDS):  # a kind declared without its objective (or the reverse): fail at import
    raise ImportError(f"training.tasks: kinds without a task or tasks without a kind: {sorted(set(TASKS) ^ set(TRAINER_KINDS))}")
