"""Inference strategies: pure functions with one signature, ``strategy(bundle, x, schedule, *, callback)``.

``x`` is a batch of normalised hazy images (B, 1, H, W) seen at step ``schedule[0]``; ``schedule`` is the
decreasing list of steps the strategy walks through, ending at 0; ``callback(t, estimate)`` receives the
current estimate of x_0 (or of x_t) after each step. Each returns its final estimate of x_0. No hidden
state: the same inputs give the same output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

Callback = Callable[[float, torch.Tensor], None]


@dataclass
class ModelBundle:
    """The trained networks strategies may use; ``None`` where a run was not given."""

    unet: nn.Module | None = None
    pixel: nn.Module | None = None


class Strategy(Protocol):
    def __call__(self, bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, callback: Callback | None = None) -> torch.Tensor: ...


def _need(model: nn.Module | None, name: str) -> nn.Module:
    if model is None:
        raise ValueError(f"this strategy needs a trained {name} model")
    return model


def one_shot_unet(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, callback: Callback | None = None) -> torch.Tensor:
    """x_0 = UNet(x_t): the CARE-like baseline, whatever the step."""
    x0 = _need(bundle.unet, "unet")(x)
    if callback:
        callback(0.0, x0)
    return x0


def pixel_indi(bundle: ModelBundle, x: torch.Tensor, schedule: Sequence[float], *, callback: Callback | None = None) -> torch.Tensor:
    """InDI sampling in pixel space: x_{t-d} = (d/t) R(x_t, t) + (1 - d/t) x_t for t along ``schedule``.

    With a one-step schedule [t, 0] this is R(x_t, t): the one-shot estimate.
    """
    restorer = _need(bundle.pixel, "pixel")
    for t, t_next in zip(schedule, schedule[1:]):
        d = t - t_next
        r = restorer(x, torch.full((x.shape[0],), float(t), device=x.device))
        x = (d / t) * r + (1 - d / t) * x
        if callback:
            callback(float(t_next), x)
    return x


def indi_schedule(t_start: float, delta: float) -> list[float]:
    """[t_start, t_start - delta, ..., 0] (the last gap may be shorter); [0] if t_start is 0."""
    ts, t = [float(t_start)], float(t_start)
    while t > 1e-9:
        t = max(0.0, t - delta)
        ts.append(t)
    return ts


STRATEGIES: dict[str, Strategy] = {"one-shot-unet": one_shot_unet, "pixel-indi": pixel_indi}
