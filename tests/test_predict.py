"""dehaze predict: tiled equals untiled, resumes after an interruption, TIFF inputs, strategies' limits."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from dehaze import engine as engine_mod
from dehaze.runs import load_model
from dehaze.store import open_ladder
from dehaze.strategies import ModelBundle, indi_schedule, pixel_indi
from tests.conftest import simulate_tiny_ladder
from training.config import TrainConfig
from training.loop import train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    ladder = root / "ladder.zarr"
    simulate_tiny_ladder(ladder, 2, [72, 88])
    runs = {}
    for kind in ("unet", "pixel"):
        cfg = TrainConfig.model_validate({"model": {"kind": kind, "base_channels": 4, "depth": 2}, "steps": 15, "batch_size": 2,
                                          "patch_size": 32, "device": "cpu", "optim": {"lr": 1e-2}, "data": {"val_patches": 2}})
        train(kind, [ladder], root / kind, cfg, show_progress=False)
        runs[kind] = root / kind
    return root, ladder, runs


def _pred(path):
    store = open_ladder(path)
    return {f: store.image(f)[...] for f in store.fields}


@pytest.mark.parametrize("kind", ["unet", "pixel"])
def test_tiled_equals_untiled(cli, setup, tmp_path, kind):
    _, ladder, runs = setup
    assert cli("predict", runs[kind], "--input", ladder, "-o", tmp_path / "whole.zarr", "--tile", "256", "-q").exit_code == 0
    # 24 px of context: the pixel walk from step 3 calls its network 3 times, each reading the input x_s too
    result = cli("predict", runs[kind], "--input", ladder, "-o", tmp_path / "tiled.zarr", "--tile", "64", "--margin", "24",
                 "--batch-size", "3", "-q")
    assert result.exit_code == 0, result.stderr
    whole, tiled = _pred(tmp_path / "whole.zarr"), _pred(tmp_path / "tiled.zarr")
    for f in whole:
        assert whole[f].shape == (4, 72, 88) and whole[f].dtype == np.float32
        scale = np.abs(whole[f]).max()
        assert np.abs(whole[f] - tiled[f]).max() <= 1e-4 * scale
        assert not np.allclose(whole[f], open_ladder(ladder).image(f)[...])  # the model did something
    meta = open_ladder(tmp_path / "tiled.zarr").meta
    assert meta.source == "prediction" and meta.prediction.input_sha256 == open_ladder(ladder).meta.manifest_sha256
    assert meta.prediction.strategy["one_shot"] is (kind == "unet")


def test_interrupted_predict_resumes_to_the_same_result(cli, setup, tmp_path, monkeypatch):
    _, ladder, runs = setup
    assert cli("predict", runs["unet"], "--input", ladder, "-o", tmp_path / "ref.zarr", "-q").exit_code == 0
    real, calls = engine_mod.run_tiles, {"n": 0}

    def interrupt_in_second_field(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # one tile row per step, 4 steps per field: the 6th row is field_001, step 1
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "run_tiles", interrupt_in_second_field)
    result = cli("predict", runs["unet"], "--input", ladder, "-o", tmp_path / "p.zarr", "-q")
    assert result.exit_code == 130 and "rerun" in result.stderr
    partial = open_ladder(tmp_path / "p.zarr", require_complete=False)
    assert partial.meta.status == "incomplete" and partial.completed_fields() == {"field_000"}
    assert partial.field_progress("field_001") == 1  # resumes at the next tile row, not the field's start
    monkeypatch.setattr(engine_mod, "run_tiles", real)
    assert cli("predict", runs["unet"], "--input", ladder, "-o", tmp_path / "p.zarr", "-q").exit_code == 0
    ref, resumed = _pred(tmp_path / "ref.zarr"), _pred(tmp_path / "p.zarr")
    assert all(np.array_equal(ref[f], resumed[f]) for f in ref)


def test_tiff_inputs(cli, setup, tmp_path):
    _, ladder, runs = setup
    stack = open_ladder(ladder).image("field_000")[...]
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    result = cli("predict", runs["unet"], "--input", tmp_path / "stack.tif", "-o", tmp_path / "s.zarr", "-q")
    assert result.exit_code == 0, result.stderr
    assert open_ladder(tmp_path / "s.zarr").image("field_000").shape == stack.shape
    tifffile.imwrite(tmp_path / "one.tif", stack[3])
    result = cli("predict", runs["pixel"], "--input", tmp_path / "one.tif", "-o", tmp_path / "o.zarr", "-q")
    assert result.exit_code == 2 and "--step" in result.stderr and not (tmp_path / "o.zarr").exists()
    result = cli("predict", runs["pixel"], "--input", tmp_path / "one.tif", "-o", tmp_path / "o.zarr", "--step", "3", "-q")
    assert result.exit_code == 0, result.stderr
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    result = cli("predict", runs["unet"], "--input", tmp_path / "bad.tif", "-o", tmp_path / "b.zarr", "-q")
    assert result.exit_code == 2 and "bad.tif" in result.stderr and not (tmp_path / "b.zarr").exists()


def test_predict_bad_input(cli, setup, tmp_path):
    root, ladder, runs = setup
    cases = [
        ([runs["unet"], "--input", ladder, "--strategy", "nonsense"], "nonsense"),
        ([tmp_path / "norun", "--input", ladder], "not a dehaze run directory"),
        ([runs["unet"], "--input", tmp_path / "missing.zarr"], "missing.zarr"),
        ([runs["unet"], "--input", ladder, "--device", "tpu"], "device: Input should be"),
        ([runs["unet"], "--input", ladder, "--precision", "fp8"], "precision: Input should be"),
    ]
    if not torch.cuda.is_available():
        cases.append(([runs["unet"], "--input", ladder, "--device", "cuda"], "CUDA"))
    for args, named in cases:
        result = cli("predict", *args, "-o", tmp_path / "p.zarr", "-q")
        assert result.exit_code == 2 and named in result.stderr, (args, result.stderr)
        assert not (tmp_path / "p.zarr").exists()
    assert cli("predict", runs["unet"], "--input", ladder, "-o", tmp_path / "p1.zarr", "-q").exit_code == 0
    result = cli("predict", runs["unet"], "--input", tmp_path / "p1.zarr", "-o", tmp_path / "p2.zarr", "-q")
    assert result.exit_code == 2 and "prediction store" in result.stderr


def test_pixel_strategy_limits(setup):
    _, _, runs = setup
    _, model = load_model(runs["pixel"])
    x = torch.rand(2, 1, 32, 32)
    bundle = ModelBundle(pixel=model)
    with torch.no_grad():
        one_step = pixel_indi(bundle, x, [3.0, 0.0])
        assert torch.allclose(one_step, model(x, torch.full((2,), 3.0), torch.full((2,), 3.0), x_source=x))  # one-step schedule = one-shot R(x_s, s, s)
        seen = []
        pixel_indi(bundle, x, indi_schedule(3, 1.0), callback=lambda t, est: seen.append(t))
    assert seen == [3.0, 2.0, 1.0, 0.0]  # the x_0 estimate R(x_t, t) at each step, then the final one
    assert indi_schedule(2, 0.75) == [2.0, 1.25, 0.5, 0.0] and indi_schedule(0, 1.0) == [0.0]
