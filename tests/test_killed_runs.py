"""Issue #14 item 8: ``kill -9`` in the middle of ingest, predict and study, then the same command: the
result is identical to an uninterrupted run (simulate and train: tests/test_simulation.py and
tests/test_training.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
import torch
import yaml
from acq_data import PINHOLES_UM, hazy_steps

from dehaze.runs import CHECKPOINT_FILE
from dehaze.store import field_name, open_ladder
from tests.conftest import simulate_tiny_ladder, train_tiny_run

CLI = [sys.executable, "-m", "dehaze.cli"]


def _killed_when(cmd: list[str], ready: Callable[[], bool], timeout: float = 180) -> None:
    """Run ``cmd`` and SIGKILL it as soon as ``ready()`` holds (polled every few ms)."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the command ended before it was killed; give it more work"


def _complete_fields(store: Path, n: int) -> int:
    done = 0
    for i in range(n):
        attrs = store / field_name(i) / ".zattrs"
        try:
            done += '"complete": true' in attrs.read_text()
        except OSError:
            pass
    return done


def _same_stores(a: Path, b: Path, arrays: tuple[str, ...]) -> None:
    ref, other = open_ladder(a), open_ladder(b)
    assert ref.fields == other.fields and ref.meta.step_stats == other.meta.step_stats
    for f in ref.fields:
        assert ref.field_meta(f).info == other.field_meta(f).info, f
        for name in arrays:
            assert np.array_equal(ref.root[f][name][...], other.root[f][name][...], equal_nan=True), (f, name)


# ---- ingest ---------------------------------------------------------------------------------------------
N_POSITIONS = 10
INGEST = ["--set", r"pinhole_pattern=ph([\d.]+)um", "--set", r"position_pattern=pos(\d+)", "--set", "pixel_size_um=0.08",
          "--set", "um_per_au=80", "--cache-mb", "0", "-q"]


def test_killed_ingest_resumes_to_the_same_store(tmp_path):
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for pos in range(N_POSITIONS):  # tifffile-written plain TIFFs, one per field and pinhole
        for t, image in enumerate(hazy_steps(shape=128, seed=3 * pos)):
            tifffile.imwrite(folder / f"pos{pos}_ph{PINHOLES_UM[t]:g}um.tif", image)
    ref, out = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    subprocess.run([*CLI, "ingest", folder, "-o", ref, *INGEST], check=True, capture_output=True)
    # killed while writing: after the store with every field's plan exists and a field is written
    _killed_when([*CLI, "ingest", folder, "-o", out, *INGEST], lambda: _complete_fields(out, N_POSITIONS) >= 1)
    partial = open_ladder(out, require_complete=False)
    assert partial.meta.status == "incomplete" and 1 <= len(partial.completed_fields()) < N_POSITIONS
    done = subprocess.run([*CLI, "ingest", folder, "-o", out, *INGEST], capture_output=True, text=True)
    assert done.returncode == 0 and "resumed" in done.stdout, done.stderr
    _same_stores(ref, out, ("0", "shifts"))
    assert open_ladder(out).meta.normalization == open_ladder(ref).meta.normalization


# ---- predict --------------------------------------------------------------------------------------------
N_FIELDS = 8


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    return simulate_tiny_ladder(tmp_path_factory.mktemp("ladder") / "ladder.zarr", N_FIELDS, [64, 64])


@pytest.fixture(scope="module")
def run(ladder, tmp_path_factory) -> Path:
    return train_tiny_run("pixel", ladder, tmp_path_factory.mktemp("run") / "pixel")


def test_killed_predict_resumes_to_the_same_result(ladder, run, tmp_path):
    """A walk (pixel-indi: an estimate per step, a trajectory) in 16-px tiles, killed with SIGKILL once a
    field is written (the next may be half done); the same command finishes it identical to a straight run."""
    args = ["predict", run, "--input", ladder, "--tile", "16", "--margin", "4", "--device", "cpu", "-q"]
    ref, out = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    subprocess.run([*CLI, *args, "-o", ref], check=True, capture_output=True)
    _killed_when([*CLI, *args, "-o", out], lambda: _complete_fields(out, N_FIELDS) >= 1)
    partial = open_ladder(out, require_complete=False)
    assert partial.meta.status == "incomplete" and 1 <= len(partial.completed_fields()) < N_FIELDS
    done = subprocess.run([*CLI, *args, "-o", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _same_stores(ref, out, ("0", "trajectory"))


# ---- study ----------------------------------------------------------------------------------------------
STUDY = {"simulation": "default", "simulation_set": ["n_fields=2", "volume.field_shape_yx=[32, 32]", "volume.nz=6"],
         "trainers": {"unet": {"batch_size": 2, "patch_size": 16, "steps": 60, "data": {"val_patches": 2},
                               "log": {"ckpt_every": 10, "val_every": 10}, "model": {"base_channels": 4, "depth": 2}}},
         "predict": {"tile": 32}, "device": "cpu"}


def _step(run: Path) -> int:
    try:
        return int(torch.load(run / CHECKPOINT_FILE, weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not written yet, or being written
        return 0


def test_killed_study_resumes_to_the_same_result(tmp_path):
    """Killed in the middle of training (after a checkpoint, before the last step): the same command trains
    on from that checkpoint, predicts and evaluates; weights, predictions and scores equal a straight run's."""
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([*CLI, "study", config, "-o", ref, "-q"], check=True, capture_output=True)
    _killed_when([*CLI, "study", config, "-o", out, "-q"], lambda: 0 < _step(out / "runs" / "unet") < 60)
    assert 0 < _step(out / "runs" / "unet") < 60 and not (out / "predictions").exists()
    done = subprocess.run([*CLI, "study", config, "-o", out, "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = torch.load(ref / "runs" / "unet" / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(out / "runs" / "unet" / CHECKPOINT_FILE, weights_only=True)
    assert a["step"] == b["step"] == 60
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    _same_stores(ref / "ladder.zarr", out / "ladder.zarr", ("0",))
    for store in sorted((ref / "predictions").glob("*.zarr")):
        _same_stores(store, out / "predictions" / store.name, ("0",))
    scores = [json.loads((d / "report" / "metrics.json").read_text().replace(str(d), "STUDY"))["methods"] for d in (ref, out)]
    for methods in scores:  # a prediction store's manifest names its runs' folders: an identity, not a score
        for entry in methods.values():
            entry.pop("store_manifest_sha256", None)
    assert scores[0] == scores[1]  # the same scores (paths aside: each study names its own stores)
