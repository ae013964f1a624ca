"""The pinhole-sweep simulator: physics sanity, determinism, resume, dask, offline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dehaze.manifests import SimulationManifest
from dehaze.store import field_name, open_ladder
from dehaze.strategies import STRATEGIES
from simulation import ladder as ladder_mod
from simulation.ladder import plan_ladder, simulate_field, simulate_ladder
from tests.conftest import TINY


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = open_ladder(path)
    out = {}
    for f in store.fields:
        out[f] = store.image(f)[...]
        out[f + "/noise_free"] = store.extra(f, "noise_free")[...]
        out[f + "/truth"] = store.extra(f, "truth")[...]
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_each_step_is_measurably_hazier_and_nothing_saturates():
    m = SimulationManifest.model_validate(
        {**TINY, "volume": {"field_shape_yx": [64, 64], "nz": 16}, "pinhole": {"steps_au": [0.5, 1, 2, 4, 8, 16], "widefield_last": True}}
    )
    result = simulate_field(plan_ladder(m), 0)
    haze = result.info["haze_index"]
    assert all(b > a for a, b in zip(haze, haze[1:])), haze
    assert all(b > 1.3 * a for a, b in zip(haze[:5], haze[1:5])), haze  # up to 8 AU: >= 30 % more per step
    # microsim's window (the field, 64 px = 7 AU) would clip 8 and 16 AU to the same disk: here they differ.
    naive_limit_au = 64 * m.optics.pixel_size_um / m.optics.airy_diameter_um
    assert 8 > naive_limit_au
    nf = result.noise_free.astype(np.float64) - m.camera.offset_adu
    rel = np.linalg.norm(nf[-2] - nf[-3]) / np.linalg.norm(nf[-3])
    assert rel > 0.02, rel


def test_haze_comes_from_out_of_focus_planes():
    """Fluorophores only far from the focal plane: confocal steps stay dark, widefield sees the haze."""
    m = SimulationManifest.model_validate({**TINY, "volume": {"field_shape_yx": [48, 48], "nz": 16}})
    plan = plan_ladder(m)
    truth = np.zeros((16, 48, 48), np.float32)
    truth[1, 10:38, 24] = 1.0  # a line 1.4 µm below focus
    optical = [plan.convolver.planes(plan.convolver.transform(truth), otf, [8])[0].sum() for otf in plan.otfs]
    assert all(b > a for a, b in zip(optical, optical[1:]))
    assert optical[-1] > 5 * optical[0]


def test_noise_is_independent_across_steps():
    m = SimulationManifest.model_validate({**TINY, "volume": {"field_shape_yx": [64, 64], "nz": 8}})
    r = simulate_field(plan_ladder(m), 0)
    residual = r.image.astype(np.float64) - r.noise_free
    for a in range(len(residual)):
        for b in range(a + 1, len(residual)):
            corr = np.corrcoef(residual[a].ravel(), residual[b].ravel())[0, 1]
            assert abs(corr) < 0.1, (a, b, corr)
    # The noise is real camera noise: its variance grows with the signal (shot noise) above read noise.
    assert residual.std() > 0.5


def test_same_seed_same_arrays_whatever_the_worker_count(tmp_path):
    m = SimulationManifest.model_validate(TINY)
    simulate_ladder(m, tmp_path / "w1.zarr", workers=1, show_progress=False)
    simulate_ladder(m, tmp_path / "w3.zarr", workers=3, show_progress=False)
    _assert_same(_arrays(tmp_path / "w1.zarr"), _arrays(tmp_path / "w3.zarr"))
    other = SimulationManifest.model_validate({**TINY, "seed": 8})
    simulate_ladder(other, tmp_path / "s8.zarr", show_progress=False)
    assert not np.array_equal(_arrays(tmp_path / "w1.zarr")["field_000"], _arrays(tmp_path / "s8.zarr")["field_000"])


def test_distributed_scheduler_gives_the_same_store(tmp_path):
    from distributed import LocalCluster

    m = SimulationManifest.model_validate({**TINY, "n_fields": 2})
    simulate_ladder(m, tmp_path / "local.zarr", show_progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        simulate_ladder(m, tmp_path / "dist.zarr", scheduler=cluster.scheduler_address, show_progress=False)
    _assert_same(_arrays(tmp_path / "local.zarr"), _arrays(tmp_path / "dist.zarr"))


def test_unreachable_scheduler_is_a_clear_error(cli, tmp_path, tiny_manifest_path, monkeypatch):
    monkeypatch.setattr(ladder_mod.connect_scheduler, "__defaults__", (1.0,))
    result = cli("simulate", tiny_manifest_path, "-o", tmp_path / "o.zarr", "--scheduler", "tcp://127.0.0.1:1", "-q")
    assert result.exit_code == 2 and "tcp://127.0.0.1:1" in result.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_truth_transformed_once_per_field_and_psfs_once_per_ladder(tmp_path, monkeypatch):
    calls = {"psfs": 0, "truth": 0}
    real_psfs, real_render = ladder_mod.ladder_psfs, ladder_mod.render_truth

    def count_psfs(*a, **k):
        calls["psfs"] += 1
        return real_psfs(*a, **k)

    def count_render(*a, **k):
        calls["truth"] += 1
        return real_render(*a, **k)

    monkeypatch.setattr(ladder_mod, "ladder_psfs", count_psfs)
    monkeypatch.setattr(ladder_mod, "render_truth", count_render)
    simulate_ladder(SimulationManifest.model_validate(TINY), tmp_path / "o.zarr", show_progress=False)
    assert calls == {"psfs": 1, "truth": TINY["n_fields"]}


def test_simulation_never_touches_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    simulate_ladder(SimulationManifest.model_validate(TINY), tmp_path / "o.zarr", show_progress=False)


def test_rerun_states_complete_different_manifest_and_overwrite(cli, tmp_path, tiny_manifest_path, tiny_manifest_dict):
    out = tmp_path / "o.zarr"
    assert cli("simulate", tiny_manifest_path, "-o", out, "-q").exit_code == 0
    before = _arrays(out)
    result = cli("simulate", tiny_manifest_path, "-o", out, "-q")
    assert result.exit_code == 0 and "already complete" in result.stdout
    result = cli("simulate", tiny_manifest_path, "-o", out, "-q", "--set", "seed=99")
    assert result.exit_code == 2 and "different manifest" in result.stderr and "--overwrite" in result.stderr
    _assert_same(before, _arrays(out))  # refused: untouched
    result = cli("simulate", tiny_manifest_path, "-o", out, "-q", "--set", "seed=99", "--overwrite")
    assert result.exit_code == 0
    assert open_ladder(out).meta.manifest["seed"] == 99


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_manifest_dict):
    manifest = {**tiny_manifest_dict, "n_fields": 12, "volume": {"field_shape_yx": [96, 96], "nz": 16}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    ref = tmp_path / "ref.zarr"
    simulate_ladder(SimulationManifest.model_validate(manifest), ref, show_progress=False)

    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "dehaze.cli", "simulate", str(path), "-o", str(out), "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [f for f in (out / field_name(i) / ".zattrs" for i in range(12)) if f.exists() and '"complete": true' in f.read_text()]
        if done:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = open_ladder(out, require_complete=False)
    written = store.completed_fields()
    assert store.meta.status == "incomplete" and 1 <= len(written) < 12, written

    from typer.testing import CliRunner

    from dehaze.cli import app

    result = CliRunner().invoke(app, ["simulate", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 0 and "resumed" in result.stdout
    assert f"the {12 - len(written)} missing fields" in result.stdout
    _assert_same(_arrays(ref), _arrays(out))


@pytest.mark.parametrize("jobs,test_fields", [(1, 0), (2, 1)])
def test_study_runs_the_whole_pipeline(cli, tmp_path, jobs, test_fields):
    """`dehaze study` (what `dehaze demo` runs with bigger settings): simulate, train all seven models (one
    at a time, or two side by side in worker processes, each after the run it builds on), predict with
    every strategy on the training ladder or on a held-out test ladder, evaluate; a rerun finds every
    stage done."""
    tiny = {"batch_size": 2, "patch_size": 16, "steps": 3, "data": {"val_patches": 2}}
    cfg = {
        "simulation": "default",
        "simulation_set": ["n_fields=2", "volume.field_shape_yx=[32, 32]", "volume.nz=6"],
        "trainers": {
            "unet": {**tiny, "model": {"base_channels": 4, "depth": 2}},
            "pixel": {**tiny, "model": {"base_channels": 4, "depth": 2}},
            "flow": {**tiny, "model": {"base_channels": 4, "depth": 2}},  # warm-started from the study's pixel run
            "hdn": {**tiny, "model": {"preset": "tiny"}},
            "hvae": {**tiny, "model": {"preset": "tiny"}},
            "latent": {**tiny, "model": {"width": 4, "time_embed_dim": 8}},
            "degradation": {**tiny, "model": {"width": 4, "pool_size": 2}},
        },
        "predict": {"samples": 2, "tile": 32}, "device": "cpu", "jobs": jobs, "test_fields": test_fields,
        # pinned torch threads, in this process (jobs 1) or in each worker (jobs 2); not a count the cores give here
        "threads_per_trainer": 2 if jobs == 1 else 3,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    result = cli("study", path, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.stderr
    assert torch.get_num_threads() == threads  # the study's own process goes back to its count
    for kind in cfg["trainers"]:
        trained_with = json.loads((tmp_path / "out" / "runs" / kind / "run.json").read_text())["trained_with"]
        assert trained_with["torch_threads"] == cfg["threads_per_trainer"], kind
    report = tmp_path / "out" / "report"
    assert "report:" in result.stdout and "latent-direct" in result.stdout
    for name in ("metrics.json", "psnr_per_step.png", "study_psnr.png", "montage.png", "uncertainty.png"):
        assert (report / name).stat().st_size > 1000, name
    assert (tmp_path / "out" / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one store per strategy the study's runs allow (every strategy but those of kinds it does not train)
    allowed = [n for n, spec in STRATEGIES.items() if set(spec.needs) <= set(cfg["trainers"])]
    assert sorted(p.stem for p in (tmp_path / "out" / "predictions").glob("*.zarr")) == sorted(allowed)
    for kind in cfg["trainers"]:
        assert (tmp_path / "out" / "runs" / kind / "checkpoint.pt").is_file(), kind
    assert json.loads((tmp_path / "out" / "runs" / "flow" / "run.json").read_text())["config"]["model"]["warm_start"] == str(
        (tmp_path / "out" / "runs" / "pixel").resolve())
    scored = json.loads((report / "metrics.json").read_text())["truth_store"]
    assert Path(scored).name == ("test.zarr" if test_fields else "ladder.zarr")
    if test_fields:  # held out: another seed, its own fields
        train, test = open_ladder(tmp_path / "out" / "ladder.zarr"), open_ladder(tmp_path / "out" / "test.zarr")
        assert len(test.fields) == 1 and test.meta.manifest["seed"] == train.meta.manifest["seed"] + 1000
    written = {p.name: p.stat().st_mtime_ns for p in report.iterdir()}
    again = cli("study", path, "-o", tmp_path / "out")
    assert again.exit_code == 0 and "already" not in again.stderr
    # every stage found done: the report too is kept (the same predictions), and its table printed again
    assert "the report is up to date" in again.stderr and "latent-direct" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in report.iterdir()} == written
    if jobs == 1:  # other prediction settings: the predictions are made again and scored, the training runs kept
        mtime = (tmp_path / "out" / "runs" / "unet" / "checkpoint.pt").stat().st_mtime_ns
        again = cli("study", path, "-o", tmp_path / "out", "-q", "--set", "predict.samples=3")
        assert again.exit_code == 0, again.stderr
        hdn = open_ladder(tmp_path / "out" / "predictions" / "one-shot-hdn.zarr")
        assert hdn.meta.prediction.strategy["samples"] == 3
        assert (tmp_path / "out" / "runs" / "unet" / "checkpoint.pt").stat().st_mtime_ns == mtime
        methods = json.loads((report / "metrics.json").read_text())["methods"]
        assert methods["one-shot-hdn"]["store_manifest_sha256"] == hdn.meta.manifest_sha256
        assert (report / "metrics.json").stat().st_mtime_ns > written["metrics.json"]


def test_study_config_errors(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainers: {gan: {}}\n")
    result = cli("study", path, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 2 and "trainers" in result.stderr and not (tmp_path / "out").exists()
    path.write_text("trainers: {unet: {stepz: 3}}\n")
    result = cli("study", path, "-o", tmp_path / "out2", "-q")
    assert result.exit_code == 2 and "stepz" in result.stderr and not (tmp_path / "out2").exists()
    path.write_text("trainers: {latent: {}}\n")
    result = cli("study", path, "-o", tmp_path / "out3", "-q")
    assert result.exit_code == 2 and "hvae" in result.stderr and not (tmp_path / "out3").exists()


def test_study_trainer_error_in_a_worker_process_is_one_line(cli, tmp_path):
    """A user mistake found only when a trainer starts (patch larger than the fields), with trainers side
    by side in worker processes: the worker's error comes back as the usual one line and exit code 2."""
    tiny = {"batch_size": 2, "steps": 2, "data": {"val_patches": 2}}
    cfg = {"simulation": "default", "simulation_set": ["n_fields=2", "volume.field_shape_yx=[32, 32]", "volume.nz=6"],
           "trainers": {"unet": {**tiny, "patch_size": 64, "model": {"base_channels": 4, "depth": 2}},
                        "pixel": {**tiny, "patch_size": 16, "model": {"base_channels": 4, "depth": 2}}},
           "jobs": 2, "device": "cpu"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = cli("study", path, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 2 and "patch" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
