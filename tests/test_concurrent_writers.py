"""Issue #14 item 9: two runs at once on one output. The second is refused in one line while the first
holds the output; a holder killed with SIGKILL leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from acq_data import write_position_folder

from dehaze.store import check_ladder, lock_file, open_ladder
from tests.conftest import simulate_tiny_ladder
from tests.test_damaged_stores import one_line_error

INGEST_SET = ["--set", r"pinhole_pattern=ph([\d.]+)um", "--set", r"position_pattern=pos(\d+)", "--set", "pixel_size_um=0.08", "--set", "um_per_au=80"]
# holds the output lock of argv[1] the way a writing command does, until killed
HOLD = ("import sys, time\nfrom dehaze.store import output_lock\nwith output_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    time.sleep(300)\n")
STUDY = {"simulation": "default", "simulation_set": ["n_fields=2", "volume.field_shape_yx=[32, 32]", "volume.nz=6"],
         "trainers": {"unet": {"batch_size": 2, "patch_size": 16, "steps": 2, "data": {"val_patches": 2},
                               "model": {"base_channels": 4, "depth": 2}}}, "predict": {"tile": 32}, "device": "cpu"}


def _hold(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_a_second_writer_is_refused_while_the_first_holds_the_output_and_a_killed_holder_blocks_nothing(
        cli, good, run, tiny_manifest_path, tmp_path):
    tiffs = write_position_folder(tmp_path / "tiffs", n_positions=1)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    outs = {"simulate": tmp_path / "s.zarr", "predict": tmp_path / "p.zarr", "ingest": tmp_path / "i.zarr",
            "study": tmp_path / "study"}
    commands = {
        "simulate": ["simulate", tiny_manifest_path, "-o", outs["simulate"], "-q"],
        "predict": ["predict", run, "--input", good, "-o", outs["predict"], "--tile", "16", "-q"],
        "ingest": ["ingest", tiffs, "-o", outs["ingest"], "-q", *INGEST_SET],
        "study": ["study", study, "-o", outs["study"], "-q"],
    }
    holders = {name: _hold(out) for name, out in outs.items()}
    try:
        for name, args in commands.items():
            one_line_error(cli(*args), f"{outs[name]}: is being written by another dehaze process (pid {holders[name].pid})",
                           "choose another -o")
            assert not outs[name].exists(), name  # the refused run wrote nothing
    finally:
        for proc in holders.values():
            _kill(proc)
    for name, args in commands.items():  # the kernel released the killed holders' locks: nothing is stale
        result = cli(*args)
        assert result.exit_code == 0, (name, result.stderr)
        assert check_ladder(outs[name] if name != "study" else outs[name] / "ladder.zarr") == [], name
        assert not lock_file(outs[name]).exists(), name  # released and removed at the end of the run


def test_two_simulates_at_once_one_refused_the_other_valid(tmp_path, tiny_manifest_dict, cli):
    manifest = {**tiny_manifest_dict, "n_fields": 12, "volume": {"field_shape_yx": [96, 96], "nz": 16}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "dehaze.cli", "simulate", str(path), "-o", str(out), "--workers", "1", "-q"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (out / ".zattrs").exists():  # the store exists only under the lock
        time.sleep(0.01)
    assert first.poll() is None, "the first simulate finished before the second started; make it bigger"
    one_line_error(cli("simulate", path, "-o", out, "-q"), f"(pid {first.pid})")
    code = first.wait(timeout=300)
    err = first.stderr.read() if first.stderr else ""
    if first.stderr:
        first.stderr.close()
    assert code == 0, err
    assert check_ladder(out) == [] and open_ladder(out).meta.status == "complete"


def test_two_predicts_at_once_one_refused_the_other_valid(tmp_path, cli):
    from training.config import TrainConfig
    from training.loop import train

    ladder = simulate_tiny_ladder(tmp_path / "ladder.zarr", 6, [64, 64])
    cfg = TrainConfig.model_validate({"model": {"kind": "pixel", "base_channels": 4, "depth": 2}, "steps": 1, "batch_size": 2,
                                      "patch_size": 16, "device": "cpu", "data": {"val_patches": 2}})
    train("pixel", [ladder], tmp_path / "pixel", cfg, show_progress=False)
    out = tmp_path / "p.zarr"
    args = ["predict", str(tmp_path / "pixel"), "--input", str(ladder), "-o", str(out), "--tile", "16", "--margin", "4",
            "--device", "cpu", "-q"]
    first = subprocess.Popen([sys.executable, "-m", "dehaze.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / ".zattrs").exists():  # the store exists only under the lock
        time.sleep(0.005)
    assert first.poll() is None, "the first predict finished before the second started; make it bigger"
    one_line_error(cli(*args), f"{out}: is being written by another dehaze process (pid {first.pid})")
    code = first.wait(timeout=300)
    err = first.stderr.read() if first.stderr else ""
    if first.stderr:
        first.stderr.close()
    assert code == 0, err
    assert check_ladder(out) == [] and open_ladder(out).meta.status == "complete"
