"""Conditional flow matching in pixel space (HazeMatching's recipe), on the UNet of :mod:`dehaze.models.unet`.

Convention: flow time tau in [0, 1]; tau = 0 is Gaussian noise, tau = 1 the clean image. The straight
path (sigma = 0) is y_tau = (1 - tau) noise + tau y_0 with velocity dy/dtau = y_0 - noise, where
y_0 = x_0 / target_scale is the normalised clean image in units of its RMS (see
:class:`training.config.FlowModel`). Sampling integrates dy/dtau = v(y, tau | x_t, t) from noise at
tau = 0 to tau = 1 (:func:`integrate`, Euler or Heun) and returns x_0 = y_1 * target_scale.

Shapes: images (B, 1, H, W) float, normalised units; tau and t (B,) float. ``multiple``: H and W must be
multiples of it (the UNet's downsampling).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence, cast

import torch
from torch import nn

from dehaze.models.unet import UNet, fold_source_channel

Solver = Literal["euler", "heun"]
Velocity = Callable[[torch.Tensor, float], torch.Tensor]  # (y (B, ...), tau) -> dy/dtau (B, ...)


def tau_grid(n: int) -> torch.Tensor:
    """The training flow times k / n, k = 0 .. n - 1 (tau = 1, the clean end, is never a training input)."""
    return torch.arange(n, dtype=torch.float32) / n


def straight_path(noise: torch.Tensor, y0: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_tau, velocity target) of the straight path from ``noise`` (tau = 0) to ``y0`` (tau = 1); tau (B,)."""
    tb = tau.view(-1, *([1] * (y0.dim() - 1))).to(y0.dtype)
    return (1 - tb) * noise + tb * y0, y0 - noise


def integrate(velocity: Velocity, y: torch.Tensor, taus: Sequence[float], solver: Solver = "euler", *,
              last_step_euler: bool = False, callback: Callable[[float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate dy/dtau = velocity(y, tau) along the increasing ``taus`` from state ``y`` at taus[0].

    ``euler``: y += h v(y, tau). ``heun`` (2nd order, trapezoid): a predictor Euler step, then
    y += h (v(y, tau) + v(y_pred, tau + h)) / 2. ``last_step_euler``: the step that ends at tau = 1 is an
    Euler step (an x_0-parametrised velocity divides by 1 - tau: it cannot be evaluated at the clean end;
    EDM's sampler ends the same way). ``callback(tau, y)`` after every step. Returns the state at taus[-1].
    """
    for tau, nxt in zip(taus, taus[1:]):
        h = float(nxt) - float(tau)
        v = velocity(y, float(tau))
        pred = y + h * v
        if solver == "heun" and not (last_step_euler and float(nxt) >= 1.0):
            y = y + h * 0.5 * (v + velocity(pred, float(nxt)))
        else:
            y = pred
        if callback:
            callback(float(nxt), y)
    return y


def sample_taus(steps: int) -> list[float]:
    """[0, 1/steps, ..., 1]: ``steps`` uniform ODE steps from noise to the clean image."""
    return [i / steps for i in range(steps + 1)]


class FlowNet(nn.Module):
    """Velocity network v(y_tau, tau | x_t, t): a UNet with input channels [x_t, y_tau], conditioned on
    (t, t, tau) (the pixel restorer's (t, s) embedding layout with s = t, then tau: a pixel run's weights
    fit in, see :func:`warm_start_from_restorer`)."""

    def __init__(self, base_channels: int = 32, depth: int = 3, time_embed_dim: int = 64,
                 parametrisation: Literal["x0", "velocity"] = "x0", tau_grid: int = 20, target_scale: float = 1.0,
                 loss_weight_exponent: float = 0.0) -> None:
        super().__init__()
        self.unet = UNet(in_channels=2, out_channels=1, base_channels=base_channels, depth=depth,
                         time_embed_dim=time_embed_dim, residual=False, source_conditioned=True, extra_conditions=1)
        self.parametrisation, self.tau_grid, self.target_scale = parametrisation, tau_grid, float(target_scale)
        self.loss_weight_exponent = float(loss_weight_exponent)

    @property
    def multiple(self) -> int:
        return self.unet.multiple

    def clean_estimate(self, y: torch.Tensor, tau: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's estimate of y_0 (x0 parametrisation) or, for the velocity one, y + (1 - tau) v."""
        out = self.unet(torch.cat([x_t, y], dim=1), t, t, (tau,))
        if self.parametrisation == "x0":
            return out
        return y + (1 - tau.view(-1, 1, 1, 1)) * out

    def forward(self, y: torch.Tensor, tau: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dy/dtau at (y (B,1,H,W), tau (B,)) given the hazy input x_t (B,1,H,W) at ladder step t (B,)."""
        out = self.unet(torch.cat([x_t, y], dim=1), t, t, (tau,))
        if self.parametrisation == "velocity":
            return out
        # (1 - tau) >= 1 / tau_grid in training; samplers never evaluate at tau = 1 (last_step_euler)
        return (out - y) / (1 - tau.view(-1, 1, 1, 1)).clamp_min(1e-4)

    @property
    def needs_last_step_euler(self) -> bool:
        return self.parametrisation == "x0"


def flow_matching_loss(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       tau: torch.Tensor) -> torch.Tensor:
    """The flow-matching MSE (normalised units / target_scale), weighted per flow time.

    On the straight path the clean estimate's error is (1 - tau) times the velocity's, so the velocity MSE
    ||v_hat - (y_0 - noise)||^2 (HazeMatching's) is the clean estimate's squared error weighted by
    1 / (1 - tau)^2 (400x at tau = 0.95). The loss is that error weighted by 1 / (1 - tau)^(2q),
    q = ``loss_weight_exponent`` of the FlowNet: 1 the velocity MSE, 0 the clean estimate's own MSE; every q
    has the same minimiser, E[y_0 | y_tau, x_t], at each tau, and gives tau another share of the gradient.
    ``net`` may be DDP-wrapped; its module is a :class:`FlowNet`."""
    # DDP keeps the FlowNet as .module (nn.Module.__getattr__ is typed Tensor | Module, hence the cast)
    flow = cast(FlowNet, getattr(net, "module", net))
    y_tau, target = straight_path(noise, x0 / flow.target_scale, tau)
    err = net(y_tau, tau, x_t, t) - target
    if flow.loss_weight_exponent != 1.0:
        err = err * (1 - tau.view(-1, *([1] * (err.dim() - 1))).to(err.dtype)) ** (1.0 - flow.loss_weight_exponent)
    return err.square().mean()


def sample(net: FlowNet, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, steps: int, solver: Solver = "euler",
           callback: Callable[[float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """One posterior sample of x_0 (B, 1, H, W) per row of ``noise``: the ODE from noise (tau = 0) to
    tau = 1 in ``steps`` uniform steps; ``callback(tau, x0_state)`` gets the state in x_0 units."""
    b = x_t.shape[0]

    def velocity(y: torch.Tensor, tau: float) -> torch.Tensor:
        return net(y, torch.full((b,), tau, device=y.device, dtype=torch.float32), x_t, t)

    cb = (lambda tau, y: callback(tau, y * net.target_scale)) if callback else None
    y = integrate(velocity, noise.to(x_t.dtype), sample_taus(steps), solver, last_step_euler=net.needs_last_step_euler, callback=cb)
    return y * net.target_scale


@torch.no_grad()
def warm_start_from_restorer(flow: FlowNet, restorer: nn.Module) -> None:
    """Copy a trained non-residual pixel restorer into an x0-parametrised FlowNet so that it starts as
    y_0_hat = R(x_t, ...) / target_scale for any y_tau and tau.

    ``restorer``: a UNet of the same base_channels and depth, either time-conditioned (a pixel run,
    R(x_t, t, s), R(x_t, x_s, t, s) or R(x_t, t); time_embed_dim must match) or not (the one-shot UNet
    baseline, R(x_t)); a source-image restorer starts the flow as its one-shot R(x_t, x_t, t, t).
    Every weight of the same shape is copied; the stem's y_tau channel and the time MLP's columns the
    restorer lacks (s for a ladder-path run, tau) start at zero, so R reads the flow's conditions (t, t, tau)
    as (t, t) or t; a restorer without time conditioning leaves the flow's time MLP at its initialisation
    and its FiLM layers at zero (FiLM(0) is the identity: the blocks compute what the UNet's do, and the
    conditioning is learned from there); the head is divided by target_scale (a 1x1 convolution: exact)."""
    if flow.parametrisation != "x0":
        raise ValueError("a restorer can warm-start only the x0 parametrisation (model.parametrisation=x0)")
    if getattr(restorer, "residual", False):
        raise ValueError("the warm start needs a non-residual restorer (residual=false)")
    timed = getattr(restorer, "time_embed_dim", None) is not None
    src, dst = restorer.state_dict(), flow.unet.state_dict()
    if getattr(restorer, "source_image", False):  # its one-shot reads x_s twice: fold that channel into x_t's
        src = fold_source_channel(src)
    for name, value in dst.items():
        w = src.get(name)
        if w is None and not timed and (name.startswith("time_mlp.") or ".film." in name):
            if ".film." in name:
                value.zero_()
            continue  # the time MLP keeps its initialisation: zeroed, it would pass FiLM no gradient
        if w is None:
            raise ValueError(f"the restorer has no weight {name}: another architecture (base_channels, depth, time_embed_dim must match)")
        # stem (C, 2, 3, 3) <- (C, 1, 3, 3): channel 0 is x_t, channel 1 (y_tau) starts at 0;
        # time MLP (E, 3 D) <- (E, 2 D) or (E, D): the restorer's condition columns copied, the rest at 0
        widened = {"stem.weight": 1, "time_mlp.0.weight": 1}.get(name)
        part = value.narrow(widened, 0, w.shape[widened]) if widened is not None and w.dim() == value.dim() and w.shape[widened] <= value.shape[widened] else value
        if w.shape != part.shape:
            raise ValueError(f"the restorer's {name} is {tuple(w.shape)}, the flow model's {tuple(value.shape)}: "
                             "base_channels, depth and time_embed_dim must match")
        value.zero_()
        part.copy_(w)
    dst["head.weight"] /= flow.target_scale
    dst["head.bias"] /= flow.target_scale
    flow.unet.load_state_dict(dst)
