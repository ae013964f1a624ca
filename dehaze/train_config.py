"""Training configurations: one strict pydantic model per trainer, shared by the CLI, the trainers and
``predict`` (which rebuilds a model from the resolved config saved in its run directory).

Every config has the top-level ``steps``, ``batch_size``, ``patch_size``, ``seed`` and ``device``; the
``model`` section is a tagged union on ``kind`` (the trainer's name).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from dehaze.config import StrictModel


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
    residual: bool = Field(True, description="predict x + f(x): the network learns the haze to remove")


class PixelModel(StrictModel):
    """Time-conditioned pixel restorer R(x_t, t), InDI-style training on the ladder path x_0 -> x_T."""

    kind: Literal["pixel"] = "pixel"
    base_channels: int = Field(32, ge=4)
    depth: int = Field(3, ge=1, le=6)
    residual: bool = True
    time_embed_dim: int = Field(64, ge=8)
    path_noise_std: float = Field(0.01, ge=0, description="InDI's small noise on x_t, in normalised units")
    sample_delta: float = Field(1.0, gt=0, description="step size delta of x_{t-d} = (d/t) R(x_t,t) + (1-d/t) x_t")


ModelConfig = Annotated[Union[UNetModel, PixelModel], Field(discriminator="kind")]


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


TRAINER_KINDS = ("unet", "pixel")


def default_config(kind: str) -> dict:
    """The default config of a trainer, as a plain dict (overridden by --config and --set)."""
    return {"model": {"kind": kind}}
