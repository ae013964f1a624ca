"""The one place a device name becomes a torch device (training, prediction and the study)."""

from __future__ import annotations

import os
import platform

import torch

from dehaze.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str, *, option: str = "--device") -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu`` or ``cuda``; the CUDA device of this process's
    ``LOCAL_RANK`` under torchrun. ``option`` names the setting in the message of a refused name."""
    if name not in DEVICES:
        raise UserError(f"{option}={name}: choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option}=cuda but no CUDA device is available; use {option}=cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def environment(device: torch.device) -> dict[str, str | int]:
    """What decides the last digits of a training beyond its config, data and seed: torch's kernels sum in an
    order that depends on the thread count, the CPU and the torch build (the demo's HVAE, same seed and data:
    validation PSNR 27.95 dB trained with 1 torch thread, 27.24 dB with 2)."""
    env: dict[str, str | int] = {"torch": torch.__version__, "device": device.type, "torch_threads": torch.get_num_threads(),
                                 "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
