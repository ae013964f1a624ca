"""Latent pipeline: the HVAE latent cache, the latent restorer R(z_t, t), the per-step CycleGAN degradation
(overfitting, checkpoints with the image pools, exact resume) and the latent trainers' errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dehaze.models import build_network
from dehaze.models.latent import LatentCycleGAN, LatentNet
from dehaze.runs import CHECKPOINT_FILE, load_checkpoint, load_model, read_run
from dehaze.store import LatentCache, open_latent_cache
from tests.conftest import simulate_tiny_ladder
from training import tasks as tasks_mod
from training.config import TrainConfig
from training.latent_tasks import weighted_latent_mse
from training.latents import ensure_latent_cache, file_sha256
from training.loop import train

MODELS = {
    "hvae": {"preset": "tiny"},
    "latent": {"width": 8, "time_embed_dim": 8},
    "degradation": {"width": 8, "pool_size": 3, "restorer_walk_weight": 0.0},  # R frozen: the round trip checks it is the latent run's
}


def tiny_cfg(kind: str, steps: int = 6, model: dict | None = None, **over) -> TrainConfig:
    raw = {"model": {"kind": kind, **MODELS.get(kind, {}), **(model or {})}, "steps": steps, "batch_size": 4, "patch_size": 16,
           "seed": 2, "device": "cpu", "optim": {"lr": 1e-2, "scheduler": "constant"},
           "log": {"log_every": 1, "val_every": 1000, "ckpt_every": 1000}, "data": {"val_patches": 4}}
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny ladder (4 fields of 32x32, 4 steps) and the chain hvae <- latent <- degradation trained on it."""
    root = tmp_path_factory.mktemp("latent")
    ladder = root / "ladder.zarr"
    simulate_tiny_ladder(ladder, 4, [32, 32])
    train("hvae", [ladder], root / "hvae", tiny_cfg("hvae", steps=8), show_progress=False)
    train("latent", [ladder], root / "latent", tiny_cfg("latent"), base_run=root / "hvae", show_progress=False)
    train("degradation", [ladder], root / "degradation", tiny_cfg("degradation"), base_run=root / "latent", show_progress=False)
    return {"root": root, "ladder": ladder, "hvae": root / "hvae", "latent": root / "latent", "degradation": root / "degradation"}


def logged_losses(run: Path, name: str = "loss") -> list[float]:
    rows = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]
    return [float(r[2]) for r in rows if r[1] == name]


def cache_of(hvae_run: Path) -> Path:
    (cache,) = list((hvae_run / "latents").glob("*.zarr"))
    return cache


def cached_latents(cache: Path, t: int) -> list[torch.Tensor]:
    """Step ``t`` of every field of a latent cache, whole images: one tensor (fields, C_i, H_i, W_i) per level."""
    c = open_latent_cache(cache)
    return [torch.from_numpy(np.stack([np.asarray(c.level(f, i)[t]) for f in c.meta.fields])) for i in range(c.n_levels)]


# ---- learning: R and G overfit a tiny set ------------------------------------------------------------
# The set: the 4 fields' whole 32x32 images (patch_size 32) at one input step, no validation split. Both
# networks start as the identity (residual nets with zero output convolutions), so "before" is the error
# of the identity map. Measured: R 0.264 -> 0.008 (30x), G 0.049 -> 0.002 (20x); asserted with slack.
def test_latent_restorer_overfits_a_tiny_set(runs, tmp_path):
    cfg = tiny_cfg("latent", steps=100, patch_size=32, model={"width": 16}, data={"val_fraction": 0.0, "input_steps": [3]},
                   optim={"scheduler": "cosine"}, log={"log_every": 10})
    train("latent", [runs["ladder"]], tmp_path / "r", cfg, base_run=runs["hvae"], show_progress=False)
    _, restorer = load_model(tmp_path / "r")
    cache = cache_of(runs["hvae"])
    z_t, z_0, t = cached_latents(cache, 3), cached_latents(cache, 0), torch.full((4,), 3.0)
    with torch.no_grad():
        before = float(weighted_latent_mse(z_t, z_0))
        after = float(weighted_latent_mse(restorer(z_t, t), z_0))
    assert after < before / 10, (before, after)
    losses = logged_losses(tmp_path / "r")  # the logged training loss (one batch each) falls too
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3]) / 3, losses


def test_degradation_generator_overfits_its_pairs(runs, tmp_path):
    cfg = tiny_cfg("degradation", steps=40, patch_size=32, model={"preset": "cyclegan", "lambda_sup": 30.0, "lambda_cyc": 1.0},
                   data={"val_fraction": 0.0, "input_steps": [3]}, optim={"betas": [0.5, 0.999]})
    train("degradation", [runs["ladder"]], tmp_path / "g", cfg, base_run=runs["latent"], show_progress=False)
    _, gan = load_model(tmp_path / "g")
    cache = cache_of(runs["hvae"])
    with torch.no_grad():
        x = gan.restorer(cached_latents(cache, 3), torch.full((4,), 3.0))  # X_3 = R(z_3, 3)
        y = cached_latents(cache, 2)  # Y_3 = z_2
        before = float(weighted_latent_mse(x, y))
        after = float(weighted_latent_mse(gan.G(x, 3), y))
        untouched = float(weighted_latent_mse(gan.G(x, 2), y))  # step 2's generator never trained: still the identity
    assert after < before / 5, (before, after)
    assert untouched == pytest.approx(before)


# ---- the latent cache ----------------------------------------------------------------------------------
def test_latent_cache_is_reused_and_invalidated_by_a_new_hvae_checkpoint(runs, tmp_path, monkeypatch):
    cache = cache_of(runs["hvae"])
    meta = open_latent_cache(cache).meta
    assert meta.status == "complete" and meta.hvae_checkpoint_sha256 == file_sha256(runs["hvae"] / CHECKPOINT_FILE)
    assert meta.fields == ["field_000", "field_001", "field_002", "field_003"] and meta.n_steps == 4
    level0 = open_latent_cache(cache).level("field_000", 0)
    assert level0.shape == (4, 4, 16, 16)  # (h, C, H/2, W/2) for the tiny preset (2 levels of 4 channels)

    # a copy of the HVAE run carries its cache along: reusable as long as the checkpoint is the same
    hvae = tmp_path / "hvae"
    shutil.copytree(runs["hvae"], hvae)
    copied = cache_of(hvae)
    real_write, writes = LatentCache.write_field, []

    def counting_write(self, field, levels):
        writes.append(field)
        return real_write(self, field, levels)

    monkeypatch.setattr(LatentCache, "write_field", counting_write)
    mtimes = {p: p.stat().st_mtime_ns for p in copied.rglob("*") if p.is_file()}
    train("latent", [runs["ladder"]], tmp_path / "again", tiny_cfg("latent", steps=1), base_run=hvae, show_progress=False)
    assert writes == [] and {p: p.stat().st_mtime_ns for p in copied.rglob("*") if p.is_file()} == mtimes

    # new HVAE weights (a perturbed checkpoint): the cache is stale and is encoded again
    state = torch.load(hvae / CHECKPOINT_FILE, weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point() and v.ndim == 4)
    state["model"][key] = state["model"][key] + 0.05
    torch.save(state, hvae / CHECKPOINT_FILE)
    old_z = np.asarray(open_latent_cache(copied).level("field_000", 0)[...])
    fresh = ensure_latent_cache(hvae, runs["ladder"], copied, show_progress=False)
    assert sorted(writes) == meta.fields
    assert fresh.meta.hvae_checkpoint_sha256 == file_sha256(hvae / CHECKPOINT_FILE) != meta.hvae_checkpoint_sha256
    reopened = open_latent_cache(copied)
    assert reopened.meta.status == "complete" and reopened.meta.hvae_checkpoint_sha256 == fresh.meta.hvae_checkpoint_sha256
    assert not np.array_equal(np.asarray(reopened.level("field_000", 0)[...]), old_z)
    writes.clear()
    ensure_latent_cache(hvae, runs["ladder"], copied, show_progress=False)  # and now it is current again
    assert writes == []


# ---- checkpoints and resume ------------------------------------------------------------------------------
def test_latent_and_degradation_checkpoints_round_trip(runs, tmp_path):
    z, t = cached_latents(cache_of(runs["hvae"]), 2), torch.full((4,), 2.0)
    info, restorer = load_model(runs["latent"])
    assert isinstance(restorer, LatentNet) and info.base_run == str(runs["hvae"].resolve())
    assert info.config.model.level_channels == [4, 4] and info.config.model.n_steps == 4
    dinfo, gan = load_model(runs["degradation"])
    assert isinstance(gan, LatentCycleGAN) and dinfo.base_run == str(runs["latent"].resolve())
    with torch.no_grad():
        r = restorer(z, t)
        assert not all(torch.equal(a, b) for a, b in zip(r, z))  # it learned something: not the identity
        # the degradation run's frozen restorer is exactly the latent run's
        assert all(torch.equal(a, b) for a, b in zip(gan.restorer(z, t), r))
        # a rebuilt model loaded from the raw checkpoint gives the same outputs as load_model
        fresh = build_network(info.config.model).eval()
        fresh.load_state_dict(load_checkpoint(runs["latent"], "latent")["model"])
        assert all(torch.equal(a, b) for a, b in zip(fresh(z, t), r))
        g = gan.G(r, 2)
        assert not all(torch.equal(a, b) for a, b in zip(g, r))
    # the image pools travel inside the state_dict (``_extra_state``) through a weights-only save/load
    assert "_extra_state" in load_checkpoint(runs["degradation"], "degradation")["model"]
    assert gan.pool_y.items and gan.pool_x.items
    assert all(len(v) <= 3 for v in gan.pool_y.items.values())
    torch.save(gan.state_dict(), tmp_path / "gan.pt")
    other = build_network(dinfo.config.model).eval()
    assert not other.pool_y.items
    other.load_state_dict(torch.load(tmp_path / "gan.pt", weights_only=True))
    assert pools(other) == pools(gan)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(other.G(r, 2), g))


def pools(gan: LatentCycleGAN) -> dict:
    """Pool contents as nested lists of numpy arrays (comparable with ==) via their tobytes."""
    return {name: {t: [[z.numpy().tobytes() for z in s] for s in v] for t, v in sorted(pool.items.items())}
            for name, pool in (("y", gan.pool_y), ("x", gan.pool_x))}


def test_ctrl_c_then_resume_of_a_degradation_run_equals_an_uninterrupted_run(runs, tmp_path, monkeypatch):
    cfg = tiny_cfg("degradation", steps=8, log={"ckpt_every": 4})
    train("degradation", [runs["ladder"]], tmp_path / "straight", cfg, base_run=runs["latent"], show_progress=False)

    real, calls = tasks_mod.TASKS["degradation"], {"n": 0}

    def interrupting_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real.loss(model, batch)

    monkeypatch.setitem(tasks_mod.TASKS, "degradation", dataclasses.replace(real, loss=interrupting_loss))
    with pytest.raises(KeyboardInterrupt):
        train("degradation", [runs["ladder"]], tmp_path / "resumed", cfg, base_run=runs["latent"], show_progress=False)
    assert load_checkpoint(tmp_path / "resumed", "degradation")["step"] == 5
    monkeypatch.setitem(tasks_mod.TASKS, "degradation", real)
    result = train("degradation", [runs["ladder"]], tmp_path / "resumed", cfg, resume=True, base_run=runs["latent"],
                   show_progress=False)
    assert result.resumed and result.step == 8
    a, b = (load_checkpoint(tmp_path / p, "degradation") for p in ("straight", "resumed"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        if k.endswith("_extra_state"):
            continue
        assert torch.equal(a["model"][k], b["model"][k]), k
    _, ga = load_model(tmp_path / "straight")
    _, gb = load_model(tmp_path / "resumed")
    assert pools(ga) == pools(gb) and ga.pool_y.items
    for name in ("generators", "discriminators"):
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


# ---- errors --------------------------------------------------------------------------------------------
def _one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, message


def test_latent_trainer_errors(cli, runs, tmp_path):
    ladder = runs["ladder"]
    train("unet", [ladder], tmp_path / "unet", TrainConfig.model_validate(
        {"model": {"kind": "unet", "base_channels": 4, "depth": 2}, "steps": 1, "batch_size": 2, "patch_size": 16,
         "device": "cpu", "data": {"val_patches": 2}}), show_progress=False)
    common = ["-q", "--set", "steps=1", "--set", "patch_size=16", "--set", "device=cpu", "--set", "model.width=8"]
    cases = [
        (["latent", "--data", ladder], ["--base"]),
        (["latent", "--data", ladder, "--base", tmp_path / "unet"], ["'unet'", "'hvae'"]),
        (["degradation", "--data", ladder, "--base", runs["hvae"]], ["'hvae'", "'latent'"]),
        (["latent", "--data", ladder, "--data", ladder, "--base", runs["hvae"]], ["one --data"]),
        (["degradation", "--data", ladder, "--base", tmp_path / "nothing"], ["not a dehaze run directory"]),
    ]
    for i, (args, words) in enumerate(cases):
        out = tmp_path / f"r{i}"
        result = cli("train", *args, "-o", out, *common)
        _one_line_error(result, *words)
        assert not out.exists()
    assert read_run(runs["hvae"]).kind == "hvae"


# ---- the degradation moves, and says how far -----------------------------------------------------------
def test_default_degradation_moves_away_from_the_identity_and_records_how_far(runs, tmp_path):
    """A few steps of the supervised preset move G(t) measurably towards z_{t-1}; the run records, per step,
    the fraction of the needed distance moved and the residual, on the fields it checked."""
    cfg = tiny_cfg("degradation", steps=12, patch_size=32, data={"val_fraction": 0.0})
    assert cfg.model.preset == "supervised" and cfg.model.shared and cfg.model.lambda_sup > cfg.model.lambda_gan
    train("degradation", [runs["ladder"]], tmp_path / "g", cfg, base_run=runs["latent"], show_progress=False)
    report = json.loads((tmp_path / "g" / "report.json").read_text())
    check = report["degradation_check"]
    assert report["fields_are"] == "training" and report["step"] == 12
    assert set(check["per_step"]) == {"1", "2", "3"}
    for t, v in check["per_step"].items():
        assert v["moved"] > 0.01, (t, v)  # the identity moves 0
        assert v["used_by_loops"] == (t != "1")
        if v["used_by_loops"]:  # G(1) would have to guess z_0's noise from R's estimate of it: no better than not moving
            assert v["residual"] < 1.0, (t, v)  # closer to z_{t-1} than not moving at all
    _, gan = load_model(tmp_path / "g")  # the check is the saved model's
    cache = cache_of(runs["hvae"])
    with torch.no_grad():
        z_hat = gan.restorer(cached_latents(cache, 3), torch.full((4,), 3.0))
        moved = sum(float(((a - b) ** 2).sum()) for a, b in zip(gan.G(z_hat, 3), z_hat))
        needed = sum(float(((a - b) ** 2).sum()) for a, b in zip(cached_latents(cache, 2), z_hat))
    assert moved / needed == pytest.approx(check["per_step"]["3"]["moved"], rel=1e-4)


def test_the_cyclegan_preset_is_the_seeds_recipe():
    cfg = tiny_cfg("degradation", model={"preset": "cyclegan"}).model
    assert (cfg.shared, cfg.lambda_sup, cfg.lambda_cyc, cfg.lambda_cos, cfg.lambda_gan) == (False, 0.0, 10.0, 1.0, 1.0)
    assert tiny_cfg("degradation", model={"preset": "cyclegan", "lambda_cyc": 2.0}).model.lambda_cyc == 2.0


def test_walk_fine_tuning_trains_the_restorer_only_when_asked(runs, tmp_path):
    base = load_model(runs["latent"])[1].state_dict()
    for weight, name in ((0.0, "frozen"), (1.0, "tuned")):
        cfg = tiny_cfg("degradation", steps=4, patch_size=32, model={"restorer_walk_weight": weight},
                       data={"val_fraction": 0.0})
        train("degradation", [runs["ladder"]], tmp_path / name, cfg, base_run=runs["latent"], show_progress=False)
        restorer = load_model(tmp_path / name)[1].restorer.state_dict()
        same = all(torch.equal(restorer[k], base[k]) for k in base)
        assert same == (weight == 0.0), name
    assert logged_losses(tmp_path / "tuned", "loss_restorer") and not logged_losses(tmp_path / "frozen", "loss_restorer")
