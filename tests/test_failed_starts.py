"""Issue #14 item 7: a failed start leaves nothing that blocks the fix, a resumed run's logs do not repeat."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from dehaze.runs import CHECKPOINT_FILE, RUN_FILE, read_run
from tests.conftest import simulate_tiny_ladder
from tests.test_damaged_stores import one_line_error
from training import loop as loop_mod
from training import tasks as tasks_mod
from training.config import TrainConfig
from training.loop import train

ARGS = ["--set", "steps=2", "--set", "batch_size=2", "--set", "patch_size=16", "--set", "device=cpu",
        "--set", "model.base_channels=4", "--set", "model.depth=2", "--set", "data.val_patches=2"]


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    return simulate_tiny_ladder(tmp_path_factory.mktemp("ladder") / "ladder.zarr", 2, [32, 40])


def test_a_refused_start_writes_no_run_and_the_corrected_command_runs(cli, ladder, tmp_path):
    run = tmp_path / "run"
    one_line_error(cli("train", "unet", "--data", ladder, "-o", run, "-q", *ARGS, "--set", "data.input_steps=[99]"), "input_steps")
    assert not run.exists()
    one_line_error(cli("train", "unet", "--data", ladder, "-o", run, "-q", *ARGS, "--set", "patch_size=64"), "patch_size=64")
    assert not run.exists()
    result = cli("train", "unet", "--data", ladder, "-o", run, "-q", *ARGS)
    assert result.exit_code == 0, result.stderr
    assert (run / CHECKPOINT_FILE).is_file()


def test_a_crash_before_the_first_checkpoint_does_not_block_another_config(cli, ladder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = tasks_mod.TASKS["unet"]

    def crashing_loss(model, batch):
        raise RuntimeError("boom")

    monkeypatch.setitem(tasks_mod.TASKS, "unet", tasks_mod.Task(real.sample_kind, crashing_loss, real.estimate))
    with pytest.raises(RuntimeError, match="boom"):
        cli("train", "unet", "--data", ladder, "-o", run, "-q", *ARGS)
    assert (run / RUN_FILE).is_file() and not (run / CHECKPOINT_FILE).exists()
    monkeypatch.setitem(tasks_mod.TASKS, "unet", real)
    result = cli("train", "unet", "--data", ladder, "-o", run, "-q", *ARGS, "--set", "optim.lr=0.002")
    assert result.exit_code == 0, result.stderr
    assert read_run(run).config.optim.lr == 0.002
    # once a checkpoint holds work, another config is still refused
    one_line_error(cli("train", "unet", "--data", ladder, "-o", run, "-q", *ARGS, "--set", "optim.lr=0.003"), "differs in config.optim.lr")


def test_a_resumed_run_logs_each_step_once(ladder, tmp_path, monkeypatch):
    cfg = TrainConfig.model_validate({"model": {"kind": "unet", "base_channels": 4, "depth": 2}, "steps": 8, "batch_size": 2,
                                      "patch_size": 16, "device": "cpu", "data": {"val_patches": 2},
                                      "log": {"log_every": 1, "val_every": 2, "ckpt_every": 4}})
    real_save = loop_mod.save_checkpoint

    def save_until_step_4(run_dir, state):  # a run killed at step 8 whose last checkpoint was step 4
        if state["step"] <= 4:
            real_save(run_dir, state)

    monkeypatch.setattr(loop_mod, "save_checkpoint", save_until_step_4)
    run = tmp_path / "run"
    train("unet", [ladder], run, cfg, show_progress=False)
    monkeypatch.setattr(loop_mod, "save_checkpoint", real_save)
    result = train("unet", [ladder], run, cfg, resume=True, show_progress=False)
    assert result.resumed and result.step == 8
    with (run / "log.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "name", "value", "wall_s"]
    counts = Counter((int(r[0]), r[1]) for r in rows[1:])
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert {s for s, name in counts if name == "loss"} == set(range(1, 9))


def test_a_full_disk_is_one_line_and_the_same_command_resumes(cli, tiny_manifest_path, tmp_path, monkeypatch):
    import errno

    from dehaze import store as store_mod
    from dehaze.store import check_ladder

    real, calls = store_mod.LadderStore.write_field, {"n": 0}

    def fill_the_disk(self, field, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path / field / "0" / "0"))
        return real(self, field, *args, **kwargs)

    monkeypatch.setattr(store_mod.LadderStore, "write_field", fill_the_disk)
    out = tmp_path / "s.zarr"
    one_line_error(cli("simulate", tiny_manifest_path, "-o", out, "-q"), "No space left on device", "rerun the same command")
    monkeypatch.setattr(store_mod.LadderStore, "write_field", real)
    result = cli("simulate", tiny_manifest_path, "-o", out, "-q")
    assert result.exit_code == 0 and "resumed" in result.stdout
    assert check_ladder(out) == []


def test_a_read_only_run_folder_is_one_line(cli, ladder, tmp_path, monkeypatch):
    import errno

    from dehaze import runs as runs_mod

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(runs_mod, "atomic_write_text", read_only)
    one_line_error(cli("train", "unet", "--data", ladder, "-o", tmp_path / "r", "-q", *ARGS), "Read-only file system")
