"""Training from stores: streaming data, the loop (determinism, exact resume, DDP), trainers, bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dehaze.manifests import SimulationManifest
from dehaze.normalization import Normalization
from dehaze.runs import CHECKPOINT_FILE, RUN_FILE, load_checkpoint
from dehaze.store import open_ladder
from simulation.ladder import simulate_ladder
from tests.conftest import TINY, simulate_tiny_ladder
from training import tasks as tasks_mod
from training.config import TrainConfig
from training.data import LadderPatches, StepSampler, split_fields
from training.loop import train

SMALL_MODEL = {"base_channels": 4, "depth": 2}


def tiny_cfg(kind: str = "unet", **over) -> TrainConfig:
    raw = {"model": {"kind": kind, **SMALL_MODEL}, "steps": 8, "batch_size": 2, "patch_size": 16, "seed": 3,
           "device": "cpu", "log": {"log_every": 2, "val_every": 4, "ckpt_every": 4}, "data": {"val_patches": 4}}
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "ladder.zarr"
    simulate_tiny_ladder(out, 4, [32, 32])
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- data ----------------------------------------------------------------------------------------
def test_split_is_by_field_and_reproducible(ladder):
    store = open_ladder(ladder)
    train_f, val_f = split_fields([store], 0.25, seed=1)
    assert len(val_f) == 1 and len(train_f) == 3
    assert not {r.field for r in train_f} & {r.field for r in val_f}
    assert split_fields([store], 0.25, seed=1) == (train_f, val_f)


def test_patches_are_reproducible_normalised_and_aligned(ladder):
    store = open_ladder(ladder)
    norm = Normalization.from_stores([store])
    train_f, _ = split_fields([store], 0.25, seed=1)
    make = lambda kind, **k: LadderPatches([str(ladder)], train_f, kind, 16, norm, seed=5, length=20, **k)  # noqa: E731
    a, b = make("pair"), make("pair")
    for i in range(5):
        sa, sb = a[i], b[i]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert sa["x"].shape == (1, 16, 16) and 1 <= sa["t"] <= 3
    # x_t and x_0 come from the same place: unaugmented pairs correlate strongly with the truth layout.
    plain = make("pair", augment=False)[0]
    assert np.corrcoef(plain["x"].ravel(), plain["y"].ravel())[0, 1] > 0.3
    assert 0 < norm.scale and -0.2 < float(plain["y"].min()) and float(plain["y"].max()) < 1.5
    path = make("path", path_noise_std=0.0)
    ts = [float(path[i]["t"]) for i in range(20)]
    assert any(t != int(t) for t in ts) and all(0 < t <= 3 for t in ts)
    assert set(make("single")[0]) == {"x", "t"}


def test_same_batches_whatever_the_number_of_workers(ladder):
    store = open_ladder(ladder)
    norm = Normalization.from_stores([store])
    fields, _ = split_fields([store], 0.25, seed=1)
    ds = LadderPatches([str(ladder)], fields, "pair", 16, norm, seed=2, length=12)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=3, sampler=StepSampler(0, 4, 3), num_workers=workers, generator=torch.Generator())
        batches[workers] = [b["x"] for b in loader]
    assert all(torch.equal(x, y) for x, y in zip(batches[0], batches[2]))


def test_step_sampler_shards_ranks_and_resumes():
    full = list(StepSampler(0, 4, 2))
    assert full == list(range(8))
    assert list(StepSampler(2, 4, 2)) == full[4:]
    r0, r1 = list(StepSampler(0, 2, 2, rank=0, world=2)), list(StepSampler(0, 2, 2, rank=1, world=2))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(8))


# ---- the loop ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["unet", "pixel"])
def test_training_learns_and_writes_a_complete_run(ladder, tmp_path, kind):
    cfg = tiny_cfg(kind, steps=40, optim={"lr": 3e-3}, log={"val_every": 40, "ckpt_every": 20, "log_every": 5})
    result = train(kind, [ladder], tmp_path / "run", cfg, show_progress=False)
    assert result.step == 40 and result.val_psnr is not None
    run = tmp_path / "run"
    info = json.loads((run / RUN_FILE).read_text())
    assert info["kind"] == kind and info["config"]["steps"] == 40 and info["normalization"]["scale"] > 0
    log = (run / "log.csv").read_text().splitlines()
    losses = [float(line.split(",")[2]) for line in log[1:] if line.split(",")[1] == "loss"]
    assert losses[-1] < losses[0]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(run, kind)
    assert state["step"] == 40 and "main" in state["optimizers"] and "rng_cpu" in state


def test_seeded_runs_are_identical_and_workers_do_not_matter(ladder, tmp_path):
    train("unet", [ladder], tmp_path / "a", tiny_cfg(), show_progress=False)
    train("unet", [ladder], tmp_path / "b", tiny_cfg(), show_progress=False)
    train("unet", [ladder], tmp_path / "c", tiny_cfg(data={"num_workers": 2}), show_progress=False)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "c"))


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(ladder, tmp_path, monkeypatch):
    cfg = tiny_cfg("pixel", optim={"ema_decay": 0.9, "scheduler": "cosine"})
    train("pixel", [ladder], tmp_path / "straight", cfg, show_progress=False)

    real = tasks_mod.TASKS["pixel"]
    calls = {"n": 0}

    def interrupting_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real.loss(model, batch)

    monkeypatch.setitem(tasks_mod.TASKS, "pixel", tasks_mod.Task(real.sample_kind, interrupting_loss, real.estimate))
    with pytest.raises(KeyboardInterrupt):
        train("pixel", [ladder], tmp_path / "resumed", cfg, show_progress=False)
    assert load_checkpoint(tmp_path / "resumed", "pixel")["step"] == 5
    monkeypatch.setitem(tasks_mod.TASKS, "pixel", real)
    result = train("pixel", [ladder], tmp_path / "resumed", cfg, resume=True, show_progress=False)
    assert result.resumed and result.step == 8
    a, b = (torch.load(p / CHECKPOINT_FILE, weights_only=True) for p in (tmp_path / "straight", tmp_path / "resumed"))
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["ema"], b["ema"])
    assert a["optimizers"]["main"]["state"][0]["step"] == b["optimizers"]["main"]["state"][0]["step"]


def test_killed_training_resumes_from_the_last_checkpoint(ladder, tmp_path):
    """SIGKILL between checkpoints: --resume restarts from the last checkpoint and ends identical."""
    cfg_args = ["--set", "steps=8", "--set", "batch_size=2", "--set", "patch_size=16", "--set", "seed=3",
                "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2",
                "--set", "log.ckpt_every=4", "--set", "log.val_every=4", "--set", "data.val_patches=4"]
    base = [sys.executable, "-m", "dehaze.cli", "train", "unet", "--data", str(ladder), "-q", *cfg_args]
    subprocess.run([*base, "-o", str(tmp_path / "straight")], check=True, capture_output=True)
    # Stop after the step-4 checkpoint: run only 4 steps' worth by killing once the checkpoint appears.
    run = tmp_path / "killed"
    proc = subprocess.Popen([*base, "-o", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 120
    while time.time() < deadline and not (run / CHECKPOINT_FILE).exists():
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    step = torch.load(run / CHECKPOINT_FILE, weights_only=True)["step"]
    assert step in (4, 8)
    done = subprocess.run([*base, "-o", str(run), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_weights(weights(tmp_path / "straight"), weights(run))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_two_gloo_processes(ladder, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "dehaze.cli", "train", "unet", "--data", str(ladder),
           "-o", str(tmp_path / "ddp"), "-q", "--set", "steps=4", "--set", "batch_size=2", "--set", "patch_size=16",
           "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2", "--set", "data.val_patches=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    state = load_checkpoint(tmp_path / "ddp", "unet")
    assert state["step"] == 4
    assert "trained to step 4" in done.stdout


# ---- bad input -----------------------------------------------------------------------------------
def _train_cli(cli, ladder, out, *extra):
    return cli("train", "unet", "--data", ladder, "-o", out, "-q", "--set", "steps=2", "--set", "batch_size=2",
               "--set", "patch_size=16", "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2", *extra)


def test_unknown_config_key_and_kind_mismatch(cli, ladder, tmp_path):
    result = _train_cli(cli, ladder, tmp_path / "r", "--set", "optim.learning_rate=1")
    assert result.exit_code == 2 and "optim.learning_rate" in result.stderr
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {kind: pixel}\nsteps: 3\n")
    result = cli("train", "unet", "--data", ladder, "-o", tmp_path / "r", "--config", cfg)
    assert result.exit_code == 2 and "pixel" in result.stderr
    assert cli("train", "gan", "--data", ladder, "-o", tmp_path / "r").exit_code == 2
    assert not (tmp_path / "r").exists()


def test_store_with_too_few_steps_or_wrong_axes(cli, ladder, tmp_path):
    one = tmp_path / "one.zarr"
    simulate_ladder(SimulationManifest.model_validate({**TINY, "n_fields": 1, "pinhole": {"steps_au": [1.0], "widefield_last": False}}),
                    one, show_progress=False)
    result = _train_cli(cli, one, tmp_path / "r1")
    assert result.exit_code == 2 and "at least 2" in result.stderr
    wrong = tmp_path / "wrong.zarr"
    shutil.copytree(ladder, wrong)
    attrs = json.loads((wrong / ".zattrs").read_text())
    attrs["dehaze"]["spatial_axes"] = ["c", "y", "x"]
    (wrong / ".zattrs").write_text(json.dumps(attrs))
    result = _train_cli(cli, wrong, tmp_path / "r2")
    assert result.exit_code == 2 and "axes" in result.stderr
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    assert _train_cli(cli, plain, tmp_path / "r3").exit_code == 2
    result = _train_cli(cli, ladder, tmp_path / "r4", "--set", "patch_size=64")
    assert result.exit_code == 2 and "patch_size=64" in result.stderr
    for r in ("r1", "r2", "r3"):
        assert not (tmp_path / r).exists()


def test_run_directory_conflicts(cli, ladder, tmp_path):
    run = tmp_path / "run"
    assert _train_cli(cli, ladder, run).exit_code == 0
    result = _train_cli(cli, ladder, run)
    assert result.exit_code == 2 and "--resume" in result.stderr
    result = _train_cli(cli, ladder, run, "--set", "seed=9", "--resume")
    assert result.exit_code == 2 and "differs in config.seed" in result.stderr and "only steps may change" in result.stderr
    result = _train_cli(cli, ladder, tmp_path / "fresh", "--resume")
    assert result.exit_code == 2 and "nothing to resume" in result.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = _train_cli(cli, ladder, foreign)
    assert result.exit_code == 2 and (foreign / "notes.txt").read_text() == "mine"
    assert _train_cli(cli, ladder, run, "--resume").exit_code == 0  # already finished: resumes to the end


def test_checkpoint_of_another_model_or_version(cli, ladder, tmp_path):
    run = tmp_path / "run"
    assert _train_cli(cli, ladder, run).exit_code == 0
    state = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    torch.save({**state, "kind": "pixel"}, run / CHECKPOINT_FILE)
    result = _train_cli(cli, ladder, run, "--resume")
    assert result.exit_code == 2 and "'pixel' model" in result.stderr
    result = cli("predict", run, "--input", ladder, "-o", tmp_path / "p.zarr", "-q")
    assert result.exit_code == 2 and "'pixel' model" in result.stderr
    torch.save({**state, "format": 99}, run / CHECKPOINT_FILE)
    result = cli("predict", run, "--input", ladder, "-o", tmp_path / "p.zarr", "-q")
    assert result.exit_code == 2 and "format 99" in result.stderr
    (run / CHECKPOINT_FILE).write_bytes(b"garbage")
    assert cli("predict", run, "--input", ladder, "-o", tmp_path / "p.zarr", "-q").exit_code == 2
    info = json.loads((run / RUN_FILE).read_text())
    (run / RUN_FILE).write_text(json.dumps({**info, "format": 7}))
    result = cli("predict", run, "--input", ladder, "-o", tmp_path / "p.zarr", "-q")
    assert result.exit_code == 2 and "newer" in result.stderr
    assert not (tmp_path / "p.zarr").exists()


def test_cuda_requested_without_cuda(cli, ladder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _train_cli(cli, ladder, tmp_path / "r", "--set", "device=cuda")
    assert result.exit_code == 2 and "CUDA" in result.stderr


def test_resume_with_a_larger_budget_extends_the_run(cli, ladder, tmp_path):
    """--resume --set steps=N continues the run: the cosine schedule is recomputed from the step reached
    (its learning rate there is the closed form of the new budget), the change is in run.json's history;
    a budget below the step reached, or any other change, is refused in one line."""
    import math

    import torch

    from dehaze.runs import read_run

    run = tmp_path / "run"
    assert _train_cli(cli, ladder, run).exit_code == 0
    result = _train_cli(cli, ladder, run, "--set", "steps=5", "--resume")
    assert result.exit_code == 0, result.stderr
    assert "trained to step 5" in result.stdout
    info = read_run(run)
    assert info.config.steps == 5
    assert [(h["at_step"], h["steps_from"], h["steps_to"]) for h in info.history] == [(2, 2, 5)]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    lr0, lr = 3e-4, state["optimizers"]["main"]["param_groups"][0]["lr"]
    assert state["step"] == 5 and math.isclose(lr, lr0 * 0.01 + lr0 * 0.99 * (1 + math.cos(math.pi * 5 / 5)) / 2, rel_tol=1e-6)
    result = _train_cli(cli, ladder, run, "--set", "steps=3", "--resume")
    assert result.exit_code == 2 and "below the step the run reached (5)" in result.stderr
    result = _train_cli(cli, ladder, run, "--set", "steps=8", "--set", "batch_size=3", "--resume")
    assert result.exit_code == 2 and "differs in config.batch_size" in result.stderr
    assert read_run(run).config.steps == 5  # nothing changed by a refused extension


def test_a_run_records_where_it_was_trained_and_a_resume_elsewhere_says_so(cli, ladder, tmp_path):
    """run.json records torch, device, torch threads and CPU (they decide the last digits); a resume with
    another thread count continues, records the change in the history and says it will not repeat an
    uninterrupted run exactly; a resume on the same setup records nothing."""
    import torch

    from dehaze.runs import read_run

    run, threads = tmp_path / "run", torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _train_cli(cli, ladder, run).exit_code == 0
        first = read_run(run).trained_with
        assert first is not None and first["torch_threads"] == 1 and first["device"] == "cpu" and first["torch"] == torch.__version__
        result = _train_cli(cli, ladder, run, "--set", "steps=3", "--resume")  # same setup: no note
        assert result.exit_code == 0 and "another setup" not in result.stderr, result.stderr
        torch.set_num_threads(2)
        result = _train_cli(cli, ladder, run, "--set", "steps=4", "--resume")
        assert result.exit_code == 0 and "resumed on another setup (torch_threads 1 -> 2)" in result.stderr, result.stderr
        info = read_run(run)
        assert info.trained_with == first  # where it started
        moved = [h for h in info.history if "trained_with" in h]
        assert [(h["at_step"], h["trained_with"]["torch_threads"]) for h in moved] == [(3, 2)]
        assert [h["steps_to"] for h in info.history if "steps_to" in h] == [3, 4]
    finally:
        torch.set_num_threads(threads)
