"""Issue #14: damaged stores are never read as data. A missing, truncated or undecodable chunk, corrupt or
contradictory metadata: `check` finds it, and train, predict, evaluate and info refuse it in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from dehaze.errors import UserError
from dehaze.store import DamagedStore, check_ladder, open_ladder
from tests.test_evaluate import make_prediction


def damaged(good: Path, tmp_path: Path, name: str = "bad.zarr") -> Path:
    out = tmp_path / name
    shutil.copytree(good, out)
    return out


def truncate(chunk: Path) -> None:
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])


def one_line_error(result, *named: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in named:
        assert text in result.stderr, (text, result.stderr)


# ---- 1. no silent wrong data ------------------------------------------------------------------------
def test_reading_a_missing_or_corrupt_chunk_names_store_field_step_and_chunk(good, tmp_path):
    bad = damaged(good, tmp_path)
    os.remove(bad / "field_001" / "0" / "2" / "0" / "0")
    truncate(bad / "field_000" / "noise_free" / "1" / "0" / "0")
    garbage = bad / "field_000" / "truth" / "0" / "0"
    garbage.write_bytes(np.random.default_rng(0).bytes(len(garbage.read_bytes())))
    store = open_ladder(bad)
    with pytest.raises(UserError, match=r"bad.zarr: field_001, image array '0', step 2: chunk 2/0/0 is missing"):
        store.image("field_001")[...]
    with pytest.raises(UserError, match=r"field_000, noise-free image array 'noise_free', step 1: chunk 1/0/0 is truncated"):
        store.extra("field_000", "noise_free")[1]
    with pytest.raises(UserError, match=r"field_000, truth array 'truth': chunk 0/0 is (truncated|undecodable|wrongly)"):
        np.asarray(store.extra("field_000", "truth"))
    assert store.image("field_001")[1].shape == (32, 40)  # the other steps still read
    with pytest.raises(UserError, match="step 2: chunk 2/0/0 is missing"):
        store.image("field_001").require_chunks()


def test_check_reads_every_chunk_and_quick_checks_metadata_only(cli, good, tmp_path):
    bad = damaged(good, tmp_path)
    os.remove(bad / "field_001" / "0" / "2" / "0" / "0")
    truncate(bad / "field_000" / "noise_free" / "1" / "0" / "0")
    problems = check_ladder(bad)
    assert any("field_001, image array '0', step 2: chunk 2/0/0 is missing" in p for p in problems), problems
    assert any("field_000, noise-free image array 'noise_free', step 1: chunk 1/0/0 is truncated" in p for p in problems), problems
    one_line_error(cli("check", bad), "chunk 2/0/0 is missing", "chunk 1/0/0 is truncated")
    assert cli("check", bad, "--quick").exit_code == 0
    assert cli("check", good).exit_code == 0


def test_check_reports_wrong_dtypes_and_shapes(cli, good, tmp_path):
    floats = damaged(good, tmp_path, "floats.zarr")  # a float array where the camera's uint16 is expected
    img = open_ladder(good).image("field_000")[...]
    group = zarr.open_group(str(floats / "field_000"), mode="r+")
    group.create_dataset("0", data=img.astype(np.float32), chunks=(1, 32, 40), overwrite=True, dimension_separator="/")
    for args in (("check", floats), ("check", floats, "--quick")):
        one_line_error(cli(*args), "field_000/0: dtype float32", "uint16")

    huge = damaged(good, tmp_path, "huge.zarr")  # .zarray claims a shape far larger than its chunks
    meta = json.loads((huge / "field_001" / "0" / ".zarray").read_text())
    meta["shape"] = [4, 100_000, 100_000]
    (huge / "field_001" / "0" / ".zarray").write_text(json.dumps(meta))
    one_line_error(cli("check", huge), "field_001/0", "claims far more data")

    steps = damaged(good, tmp_path, "steps.zarr")  # a truth array of another shape than its image
    meta = json.loads((steps / "field_000" / "truth" / ".zarray").read_text())
    meta["shape"] = [16, 40]
    (steps / "field_000" / "truth" / ".zarray").write_text(json.dumps(meta))
    one_line_error(cli("check", steps, "--quick"), "field_000/truth: shape (16, 40), expected (32, 40)")


def test_train_refuses_a_deleted_chunk_before_writing_a_run(cli, good, tmp_path):
    bad = damaged(good, tmp_path)
    os.remove(bad / "field_000" / "0" / "0" / "0" / "0")
    result = cli("train", "unet", "--data", bad, "-o", tmp_path / "r", "-q", "--set", "steps=2", "--set", "patch_size=16",
                 "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2")
    one_line_error(result, "bad.zarr: field_000, image array '0', step 0: chunk 0/0/0 is missing")
    assert not (tmp_path / "r").exists()


def test_train_with_workers_reports_a_truncated_chunk_in_one_line(cli, good, tmp_path):
    bad = damaged(good, tmp_path)
    for step in range(4):
        truncate(bad / "field_000" / "0" / str(step) / "0" / "0")
        truncate(bad / "field_001" / "0" / str(step) / "0" / "0")
    result = cli("train", "unet", "--data", bad, "-o", tmp_path / "r", "-q", "--set", "steps=2", "--set", "patch_size=16",
                 "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2",
                 "--set", "data.num_workers=1", "--set", "data.val_fraction=0")
    one_line_error(result, "bad.zarr: field_00", "is truncated")


def test_damaged_store_error_from_a_dataloader_worker_is_cut_back_to_its_line():
    wrapped = ("Caught DamagedStore in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\ndehaze.store.DamagedStore: /a.zarr: field_000: chunk 0/0/0 is missing')
    assert str(DamagedStore(wrapped)) == "/a.zarr: field_000: chunk 0/0/0 is missing"


def test_predict_refuses_a_deleted_input_chunk_before_writing(cli, good, run, tmp_path):
    bad = damaged(good, tmp_path)
    os.remove(bad / "field_001" / "0" / "3" / "0" / "0")
    result = cli("predict", run, "--input", bad, "-o", tmp_path / "p.zarr", "-q")
    one_line_error(result, "field_001, image array '0', step 3: chunk 3/0/0 is missing")
    assert not (tmp_path / "p.zarr").exists()


def test_evaluate_refuses_missing_chunks_in_truth_or_prediction(cli, good, tmp_path):
    pred = make_prediction(tmp_path / "pred.zarr", good, "blur", lambda x0, xt: xt)
    bad_pred = damaged(pred, tmp_path, "bad_pred.zarr")
    os.remove(bad_pred / "field_000" / "0" / "2" / "0" / "0")
    result = cli("evaluate", bad_pred, "--truth", good, "--report", tmp_path / "rep1")
    one_line_error(result, "bad_pred.zarr: field_000, image array '0', step 2: chunk 2/0/0 is missing")
    bad_truth = damaged(good, tmp_path, "bad_truth.zarr")
    os.remove(bad_truth / "field_001" / "0" / "1" / "0" / "0")
    result = cli("evaluate", pred, "--truth", bad_truth, "--report", tmp_path / "rep2")
    one_line_error(result, "bad_truth.zarr: field_001, image array '0', step 1: chunk 1/0/0 is missing")
    assert not (tmp_path / "rep1" / "metrics.json").exists() and not (tmp_path / "rep2" / "metrics.json").exists()
    assert cli("evaluate", pred, "--truth", good, "--report", tmp_path / "rep3").exit_code == 0


# ---- 2. corrupt metadata is one line -----------------------------------------------------------------
def _corrupt(kind: str, store: Path) -> str:
    """Damage ``store`` one way; returns text the error must name."""
    if kind == "root_zattrs":
        (store / ".zattrs").write_text('{"dehaze": {"format_version": 1,')
        return ".zattrs: unreadable store metadata"
    if kind == "field_zattrs":
        (store / "field_001" / ".zattrs").write_text("{not json")
        return "field_001/.zattrs: unreadable metadata"
    if kind == "zarray":
        (store / "field_000" / "0" / ".zarray").write_text('{"shape": [4, 32')
        return "field_000/0/.zarray: unreadable array metadata"
    if kind == "field_meta_string":
        attrs = json.loads((store / "field_001" / ".zattrs").read_text())
        attrs["dehaze"] = "complete"
        (store / "field_001" / ".zattrs").write_text(json.dumps(attrs))
        return "field_001/.zattrs: 'dehaze' metadata is a str, not a mapping"
    if kind == "field_missing":
        shutil.rmtree(store / "field_001")
        return "field_001 is listed in the metadata but missing"
    if kind == "wrong_dtype":
        meta = json.loads((store / "field_000" / "0" / ".zarray").read_text())
        meta["dtype"] = "<f4"
        (store / "field_000" / "0" / ".zarray").write_text(json.dumps(meta))
        return "field_000/0: dtype float32"
    if kind == "wrong_steps":
        meta = json.loads((store / "field_000" / "0" / ".zarray").read_text())
        meta["shape"][0] = 3
        (store / "field_000" / "0" / ".zarray").write_text(json.dumps(meta))
        return "field_000/0: shape (3, 32, 40) does not match axes"
    raise ValueError(kind)


CORRUPTIONS = ["root_zattrs", "field_zattrs", "zarray", "field_meta_string", "field_missing", "wrong_dtype", "wrong_steps"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_metadata_is_one_line_for_every_command(cli, good, run, tmp_path, kind):
    bad = damaged(good, tmp_path)
    named = _corrupt(kind, bad)
    one_line_error(cli("check", bad), named)
    one_line_error(cli("check", bad, "--quick"), named)
    if kind in ("root_zattrs",):
        one_line_error(cli("info", bad), named)
    else:
        assert cli("info", bad).exit_code in (0, 2)  # info describes what it can; it never crashes
    one_line_error(cli("train", "unet", "--data", bad, "-o", tmp_path / "r", "-q", "--set", "steps=2", "--set", "patch_size=16",
                       "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2"), named)
    assert not (tmp_path / "r").exists()
    one_line_error(cli("predict", run, "--input", bad, "-o", tmp_path / "p.zarr", "-q"), named)
    assert not (tmp_path / "p.zarr").exists()
    pred = make_prediction(tmp_path / "pred.zarr", good, "copy", lambda x0, xt: xt)
    one_line_error(cli("evaluate", pred, "--truth", bad, "--report", tmp_path / "rep"), named)
    if kind != "wrong_dtype":  # a prediction's images are float32, what <f4 says
        bad_pred = damaged(pred, tmp_path, "bad_pred.zarr")
        _corrupt(kind, bad_pred)
        one_line_error(cli("evaluate", bad_pred, "--truth", good, "--report", tmp_path / "rep"), named)
    assert not (tmp_path / "rep" / "metrics.json").exists()


@pytest.mark.parametrize("kind", ["field_meta_string", "field_zattrs"])
def test_resumed_simulate_refuses_corrupt_field_metadata(cli, tiny_manifest_path, tmp_path, kind):
    out = tmp_path / "sim.zarr"
    assert cli("simulate", tiny_manifest_path, "-o", out, "-q").exit_code == 0
    root = json.loads((out / ".zattrs").read_text())
    root["dehaze"]["status"] = "incomplete"  # an interrupted run, resumed by the same command
    (out / ".zattrs").write_text(json.dumps(root))
    named = _corrupt(kind, out)
    one_line_error(cli("simulate", tiny_manifest_path, "-o", out, "-q"), named)
    assert cli("simulate", tiny_manifest_path, "-o", out, "-q", "--overwrite").exit_code == 0  # the fix the message names
    assert check_ladder(out) == []


def test_unreadable_run_description_is_one_line(cli, good, run, tmp_path):
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "run.json").write_text('{"format": 1, "kind": ')
    one_line_error(cli("predict", broken, "--input", good, "-o", tmp_path / "p.zarr", "-q"), "run.json: unreadable run description")
    (broken / "run.json").write_text('{"format": 1, "kind": "unet", "config": "big"}')
    one_line_error(cli("predict", broken, "--input", good, "-o", tmp_path / "p.zarr", "-q"), "run.json")


def test_a_latent_cache_with_a_deleted_chunk_is_an_error_not_zeros(tmp_path):
    from dehaze.store import LatentCacheMeta, create_latent_cache, open_latent_cache

    meta = LatentCacheMeta(hvae_run="r", hvae_checkpoint_sha256="c", source_store="s", source_sha256="s", n_steps=2,
                           level_channels=[2], fields=["field_000"], image_shape_yx=[8, 8])
    cache = create_latent_cache(tmp_path / "latents.zarr", meta)
    cache.write_field("field_000", [np.ones((2, 2, 8, 8), np.float32)])
    cache.finalize()
    os.remove(tmp_path / "latents.zarr" / "field_000" / "level_0" / "1" / "0" / "0" / "0")
    level = open_latent_cache(tmp_path / "latents.zarr").level("field_000", 0)
    assert level[0].sum() == 2 * 8 * 8
    with pytest.raises(UserError, match=r"latents.zarr: chunk field_000/level_0/1/0/0/0 is missing"):
        level[1]


def test_missing_chunk_keys_of_root_and_nested_arrays(tmp_path, monkeypatch):
    from dehaze.store import chunks as store_mod  # where MAX_LISTED_CHUNKS is read

    root = zarr.open_array(zarr.DirectoryStore(str(tmp_path / "a.zarr"), dimension_separator="/"), mode="w",
                           shape=(3, 64, 64), chunks=(1, 32, 32), dtype="u2", dimension_separator="/")
    root[...] = 1
    group = zarr.open_group(zarr.DirectoryStore(str(tmp_path / "g.zarr"), dimension_separator="/"), mode="w")
    nested = group.create_dataset("f/0", shape=(3, 64, 64), chunks=(1, 32, 32), dtype="u2", dimension_separator="/")
    nested[...] = 1
    os.remove(tmp_path / "a.zarr" / "2" / "1" / "0")
    os.remove(tmp_path / "g.zarr" / "f" / "0" / "0" / "0" / "1")
    assert store_mod.missing_chunk_keys(root) == (["2/1/0"], 1, 12)
    assert store_mod.missing_chunk_keys(nested) == (["f/0/0/0/1"], 1, 12)
    monkeypatch.setattr(store_mod, "MAX_LISTED_CHUNKS", 5)  # the path of huge claimed shapes: first key, exact count
    assert store_mod.missing_chunk_keys(root) == (["2/1/0"], 1, 12)
    assert store_mod.missing_chunk_keys(nested) == (["f/0/0/0/1"], 1, 12)
