"""What every benchmark records about the machine it ran on (one place for it).

Imported by the scripts next to it (``python benchmarks/<script>.py`` puts this folder on ``sys.path``).
Heavy packages are imported only if already loaded or installed, so a numpy-only benchmark stays light.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("numpy", "scipy", "torch", "zarr", "numcodecs", "tifffile", "microsim", "dask")


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    try:
        return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), None)
    except OSError:
        return None


def load1() -> float:
    """1-minute load average (NaN where the OS has none): how shared the machine was while timing."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def sync(device: Any) -> None:
    """Wait for the GPU's queued work before reading a clock (a no-op on CPU)."""
    if device.type == "cuda":
        sys.modules["torch"].cuda.synchronize(device)


def machine_info(**extra: Any) -> dict[str, Any]:
    """Host, OS, CPU, package versions, torch threads and GPU (when torch is loaded), 1-min load, UTC date."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        **{name: version(name) for name in PACKAGES},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(load1(), 2)
    info["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {**info, **extra}


def write_result(path: Path, record: dict[str, Any]) -> Path:
    """Write a benchmark's record as indented JSON (folders made as needed) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
