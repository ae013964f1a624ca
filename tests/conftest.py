"""Shared fixtures: tiny manifests and a CLI runner. Every test makes its own small data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

# microsim writes PSF/truth caches under $HOME unless told not to; tests must leave no trace.
os.environ.setdefault("MICROSIM_CACHE", "0")
# Tiny test models gain nothing from intra-op threads, and OpenMP spin-waiting on a busy 2-core machine
# slows them down several-fold; subprocesses (CLI runs, torchrun) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY = {
    "name": "tiny",
    "volume": {"field_shape_yx": [32, 40], "nz": 8},
    "pinhole": {"steps_au": [0.5, 1.0, 2.0], "widefield_last": True},
    "n_fields": 3,
    "seed": 7,
}


def simulate_tiny_ladder(path: Path, n_fields: int, shape_yx: list[int], nz: int = 6) -> Path:
    """The TINY manifest (4 steps) with ``n_fields`` fields of ``shape_yx``, simulated to ``path``."""
    from dehaze.manifests import SimulationManifest
    from simulation.ladder import simulate_ladder

    m = SimulationManifest.model_validate({**TINY, "n_fields": n_fields, "volume": {"field_shape_yx": shape_yx, "nz": nz}})
    simulate_ladder(m, path, show_progress=False)
    return path


@pytest.fixture
def tiny_manifest_dict() -> dict:
    return yaml.safe_load(yaml.safe_dump(TINY))


@pytest.fixture
def tiny_manifest_path(tmp_path: Path, tiny_manifest_dict: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_manifest_dict))
    return path


@pytest.fixture
def cli():
    """Invoke the dehaze CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from dehaze.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


# ---- shared by the reliability tests (damaged stores, limits, output paths, concurrent writers) ---------
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A tiny simulated ladder (2 fields of 32x40, 4 steps, noise_free and truth extras), one per module."""
    return simulate_tiny_ladder(tmp_path_factory.mktemp("good") / "ladder.zarr", 2, [32, 40])


def train_tiny_run(kind: str, ladder: Path, out: Path) -> Path:
    """A 2-step ``kind`` run (unet or pixel, 4 base channels, depth 2) on ``ladder``, written to ``out``."""
    from training.config import TrainConfig
    from training.loop import train

    cfg = TrainConfig.model_validate({"model": {"kind": kind, "base_channels": 4, "depth": 2}, "steps": 2, "batch_size": 2,
                                      "patch_size": 16, "device": "cpu", "data": {"val_patches": 2}})
    train(kind, [ladder], out, cfg, show_progress=False)
    return out


@pytest.fixture(scope="module")
def run(good, tmp_path_factory) -> Path:
    """A 2-step unet run on ``good``."""
    return train_tiny_run("unet", good, tmp_path_factory.mktemp("run") / "unet")
