"""What each trainer optimises: the sample kind it draws, its loss, and its x_0 estimate for validation.

Losses are small callables with one signature: ``loss(model, batch) -> scalar tensor``; ``estimate(model,
batch) -> x_0 estimate`` (B, 1, P, P) on a validation ``pair`` batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from training.data import SampleKind

Batch = dict[str, torch.Tensor]


def one_shot_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """||x_0 - UNet(x_t)||^2, every input step pooled (the CARE-like baseline)."""
    return F.mse_loss(model(batch["x"]), batch["y"])


def one_shot_estimate(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch["x"])


def restorer_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """||x_0 - R(x_t, t)||^2 for the time-conditioned restorer (t continuous on the InDI path)."""
    return F.mse_loss(model(batch["x"], batch["t"]), batch["y"])


def restorer_estimate(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch["x"], batch["t"])


@dataclass(frozen=True)
class Task:
    sample_kind: SampleKind
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    estimate: Callable[[nn.Module, Batch], torch.Tensor]


TASKS: dict[str, Task] = {
    "unet": Task("pair", one_shot_loss, one_shot_estimate),
    "pixel": Task("path", restorer_loss, restorer_estimate),
}
