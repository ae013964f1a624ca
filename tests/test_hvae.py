"""Ladder VAE (HVAE / supervised HDN): shapes, determinism, KL and free bits, reference size, training,
checkpoints, HDN prediction with its per-pixel std."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dehaze.models import build_network
from dehaze.models.hvae import HVAE, free_bits_kl, gaussian_kl, soft_clamp
from dehaze.runs import CHECKPOINT_FILE, RUN_FILE, load_model
from dehaze.store import open_ladder
from dehaze.strategies import ModelBundle, hdn_posterior, one_shot_hdn
from tests.conftest import simulate_tiny_ladder
from training.config import HDNModel, HVAEModel, TrainConfig, default_config
from training.loop import train

TINY_NET = {"latent_channels": 3, "blocks_per_level": 1, "filters": 8}


def tiny_cfg(kind: str, **over) -> TrainConfig:
    raw = {"model": {"kind": kind, "preset": "tiny"}, "steps": 4, "batch_size": 4, "patch_size": 16, "seed": 1,
           "device": "cpu", "optim": {"name": "adamax", "lr": 1e-2, "scheduler": "constant"},
           "log": {"log_every": 2, "val_every": 100, "ckpt_every": 100}, "data": {"val_patches": 4}}
    raw.update(over)
    return TrainConfig.model_validate(raw)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hvae") / "ladder.zarr"
    simulate_tiny_ladder(out, 3, [32, 40])
    return out


# ---- the model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 3, 4, 5, 6])
def test_latent_shapes_and_deterministic_decode(levels):
    torch.manual_seed(0)
    model = HVAE(levels=levels, dropout=0.2, **TINY_NET).eval()
    x = torch.randn(2, 1, 64, 128)  # non-square, a multiple of 2**6
    zs = model.encode(x)
    assert [tuple(z.shape) for z in zs] == [(2, 3, 64 >> i, 128 >> i) for i in range(1, levels + 1)]
    assert [tuple(z.shape) for z in zs] == model.latent_shapes(2, 64, 128) and model.multiple == 2**levels
    y = model.decode(zs)
    assert y.shape == x.shape
    assert torch.equal(y, model.decode(model.encode(x)))  # posterior means at every level: no randomness
    assert not torch.equal(model.encode(x, sample=True)[0], zs[0])
    assert model.sample_prior(3, (64, 64)).shape == (3, 1, 64, 64)
    assert model.sample_posterior(x, 4).shape == (4, 2, 1, 64, 128)


def test_sizes_that_do_not_fit_the_levels_are_refused():
    model = HVAE(levels=3, **TINY_NET)
    with pytest.raises(ValueError, match="multiple of 2\\*\\*levels = 8"):
        model.encode(torch.zeros(1, 1, 16, 20))
    with pytest.raises(ValueError, match="3 latents"):
        model.decode([torch.zeros(1, 3, 8, 8)])
    with pytest.raises(ValueError, match="patch_size=48"):
        TrainConfig.model_validate({"model": {"kind": "hdn"}, "patch_size": 48})


def test_kl_free_bits_and_bounds_by_hand():
    t = torch.tensor
    # KL(N(1, 0.5^2) || N(0, 1)) = ln 2 + (0.25 + 1)/2 - 1/2 ; KL(N(0, 2^2) || N(2, 1)) = -ln 2 + (4 + 4)/2 - 1/2
    assert float(gaussian_kl(t(1.0), t(math.log(0.25)), t(0.0), t(0.0))) == pytest.approx(math.log(2) + 0.125, abs=1e-6)
    assert float(gaussian_kl(t(0.0), t(math.log(4.0)), t(2.0), t(0.0))) == pytest.approx(3.5 - math.log(2), abs=1e-6)
    assert float(gaussian_kl(t(0.3), t(-1.0), t(0.3), t(-1.0))) == 0.0
    # free bits: each image's KL of a level is clamped below at free_bits, then averaged over the batch
    kl = t([0.2, 3.0], requires_grad=True)
    fb = free_bits_kl(kl, 1.0)
    assert float(fb.detach()) == pytest.approx(2.0)
    fb.backward()
    assert kl.grad.tolist() == [0.0, 0.5]  # below the threshold: no KL gradient
    assert float(free_bits_kl(t([0.2, 3.0]), 0.0)) == pytest.approx(1.6)
    # log-variances are soft-clamped into (-8, 8), the identity near 0
    v = soft_clamp(t([0.0, 0.1, 100.0, -100.0]))
    assert float(v[0]) == 0.0 and float(v[1]) == pytest.approx(0.1, rel=1e-3) and float(v.abs().max()) <= 8.0


def test_loss_pieces_add_up():
    torch.manual_seed(1)
    model = HVAE(levels=3, free_bits=2.0, beta=0.5, **TINY_NET)
    x, y = torch.rand(3, 1, 16, 24), torch.rand(3, 1, 16, 24)
    out = model(x, target=y)
    assert len(out.kl) == 3 and all(k.shape == (3,) and bool((k >= 0).all()) for k in out.kl)
    kl_loss = sum(k.clamp_min(2.0).mean() for k in out.kl) / (16 * 24)
    assert out.kl_loss.item() == pytest.approx(kl_loss.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((out.recon_nll + 0.5 * out.kl_loss).item(), rel=1e-6)
    mse = ((out.mean - y) ** 2).mean().item()  # likelihood variance = the batch MSE (its ML value)
    assert out.logvar.item() == pytest.approx(math.log(mse), rel=1e-5)
    assert out.recon_nll.item() == pytest.approx(0.5 * (math.log(2 * math.pi) + math.log(mse) + 1), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_reference_preset_size():
    model = build_network(HDNModel())
    n = sum(p.numel() for p in model.parameters())
    print(f"hdn-reference: {n:,} parameters (reference model: 7.3 M)")
    assert abs(n - 7.3e6) / 7.3e6 < 0.05
    cfg = HVAEModel()
    assert (cfg.levels, cfg.latent_channels, cfg.blocks_per_level, cfg.filters, cfg.dropout, cfg.free_bits) == (6, 32, 5, 64, 0.2, 1.0)
    assert HVAEModel(preset="small", levels=3).levels == 3  # explicit fields win over the preset
    assert default_config("hdn")["optim"] == {"name": "adamax", "lr": 3e-4, "scheduler": "plateau"}
    assert default_config("unet") == {"model": {"kind": "unet"}}


# ---- training ------------------------------------------------------------------------------------
def _losses(run: Path) -> list[float]:
    rows = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]
    return [float(r[2]) for r in rows if r[1] == "loss"]


def test_tiny_hvae_lowers_its_loss(ladder, tmp_path):
    cfg = tiny_cfg("hvae", steps=40, log={"log_every": 2, "val_every": 40, "ckpt_every": 40})
    result = train("hvae", [ladder], tmp_path / "run", cfg, show_progress=False)
    assert result.step == 40 and result.val_psnr is not None and math.isfinite(result.val_psnr)
    losses = _losses(tmp_path / "run")
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3


def test_checkpoint_round_trip(ladder, tmp_path):
    run = tmp_path / "run"
    train("hdn", [ladder], run, tiny_cfg("hdn", steps=2), show_progress=False)
    saved = json.loads((run / RUN_FILE).read_text())["config"]["model"]
    assert saved["levels"] == 2 and saved["filters"] == 8  # the resolved architecture, not just the preset
    info, model = load_model(run)
    rebuilt = build_network(info.config.model).eval()
    rebuilt.load_state_dict(torch.load(run / CHECKPOINT_FILE, weights_only=True)["model"])
    x = torch.rand(2, 1, 16, 24)
    assert torch.equal(model.decode(model.encode(x)), rebuilt.decode(rebuilt.encode(x)))
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    mmse, std, samples = hdn_posterior(model, x, 3, generator=gen())
    assert samples.shape == (3, 2, 1, 16, 24) and torch.allclose(mmse, samples.mean(0))
    torch.manual_seed(5)
    draw = one_shot_hdn(ModelBundle(hdn=model), x, [1.0, 0.0])  # one posterior draw (the engine makes K)
    torch.manual_seed(5)
    assert torch.equal(draw, model.sample_posterior(x, 1)[0])
    _, again = load_model(run)
    assert torch.equal(again.sample_posterior(x, 3, generator=gen()), samples)


# ---- CLI: train and predict ----------------------------------------------------------------------
def _train_cli(cli, kind, ladder, out, *extra):
    return cli("train", kind, "--data", ladder, "-o", out, "-q", "--set", "model.preset=tiny", "--set", "steps=3",
               "--set", "batch_size=2", "--set", "patch_size=16", "--set", "device=cpu", "--set", "data.val_patches=2", *extra)


def test_hdn_train_and_predict_with_std(cli, ladder, tmp_path):
    run = tmp_path / "hdn"
    result = _train_cli(cli, "hdn", ladder, run)
    assert result.exit_code == 0, result.stderr
    cfg = json.loads((run / RUN_FILE).read_text())["config"]
    assert cfg["optim"]["name"] == "adamax" and cfg["optim"]["scheduler"] == "plateau" and cfg["optim"]["lr"] == 3e-4
    out = tmp_path / "p.zarr"
    result = cli("predict", run, "--input", ladder, "-o", out, "--samples", "4", "--tile", "16", "--margin", "4", "-q")
    assert result.exit_code == 0, result.stderr
    store, src = open_ladder(out), open_ladder(ladder)
    assert store.meta.prediction.strategy["one_shot"] is True and store.meta.prediction.strategy["samples"] == 4
    for field in store.fields:
        image, std = store.image(field)[...], store.extra(field, "std")[...]
        assert image.shape == std.shape == src.image(field).shape == (4, 32, 40)
        assert std.dtype == np.float32 and image.dtype == np.float32
        assert float(std.min()) >= 0 and float(std.max()) > 0 and np.isfinite(image).all()
    # --samples belongs to HDN runs
    assert _train_cli(cli, "unet", ladder, tmp_path / "unet", "--set", "model.base_channels=4").exit_code == 2  # preset: not a unet key
    unet = tmp_path / "unet2"
    assert cli("train", "unet", "--data", ladder, "-o", unet, "-q", "--set", "steps=1", "--set", "batch_size=2", "--set", "patch_size=16",
               "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2").exit_code == 0
    result = cli("predict", unet, "--input", ladder, "-o", tmp_path / "u.zarr", "--samples", "4", "-q")
    assert result.exit_code == 2 and "--samples" in result.stderr


def test_hvae_trains_from_the_cli_and_bad_keys_exit_2(cli, ladder, tmp_path):
    result = _train_cli(cli, "hvae", ladder, tmp_path / "hvae")
    assert result.exit_code == 0 and "hvae trained to step 3" in result.stdout
    result = cli("predict", tmp_path / "hvae", "--input", ladder, "-o", tmp_path / "p.zarr", "-q")
    assert result.exit_code == 2 and "does not restore" in result.stderr
    result = cli("predict", tmp_path / "hvae", "--input", ladder, "-o", tmp_path / "p.zarr", "--strategy", "one-shot-hdn", "-q")
    assert result.exit_code == 2 and "needs a trained hdn run" in result.stderr
    result = _train_cli(cli, "hdn", ladder, tmp_path / "bad", "--set", "model.levelz=3")
    assert result.exit_code == 2 and "levelz" in result.stderr
    result = _train_cli(cli, "hdn", ladder, tmp_path / "bad", "--set", "model.levels=5")  # 16 px patches: at most 4 levels
    assert result.exit_code == 2 and "patch_size=16" in result.stderr
    assert not (tmp_path / "bad").exists()


def test_hdn_tiles_at_its_patch_size_unless_told(cli, ladder, tmp_path):
    """One-shot HDN runs on tiles of its training patch size by default (16 px here); --tile overrides."""
    run = tmp_path / "hdn"
    assert _train_cli(cli, "hdn", ladder, run).exit_code == 0
    for extra, tile in (((), 16), (("--tile", "32"), 32)):
        out = tmp_path / f"p{tile}.zarr"
        result = cli("predict", run, "--input", ladder, "-o", out, "--samples", "2", "-q", *extra)
        assert result.exit_code == 0, result.stderr
        assert open_ladder(out).meta.prediction.strategy["tile"] == tile
