"""The ladder store contract: NGFF 0.4 layout readable by ome-zarr, metadata, info/check, failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from dehaze.errors import UserError
from dehaze.manifests import SimulationManifest
from dehaze.store import check_ladder, open_ladder, step_stats_from_samples
from simulation.ladder import simulate_ladder


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("store") / "tiny.zarr"
    simulate_ladder(SimulationManifest.model_validate(TINY), out, show_progress=False)
    return out


def test_ome_zarr_reader_sees_the_degradation_axis(tiny_store):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(tiny_store / "field_000")))())
    image = nodes[0]
    axes = image.metadata["axes"]
    assert [a["name"] for a in axes] == ["h", "y", "x"]
    assert [a["type"] for a in axes] == ["degradation", "space", "space"]
    assert image.data[0].shape == (4, 32, 40)
    scale = image.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == [1.0, 0.05, 0.05]


def test_root_metadata_and_nested_chunks(tiny_store):
    meta = json.loads((tiny_store / ".zattrs").read_text())["dehaze"]
    assert meta["source"] == "simulation" and meta["status"] == "complete"
    assert meta["n_steps"] == 4 and meta["pinhole_au"] == [0.5, 1.0, 2.0, None] and meta["widefield_steps"] == [3]
    assert meta["manifest"]["name"] == "tiny" and len(meta["manifest_sha256"]) == 64
    assert meta["fields"] == ["field_000", "field_001", "field_002"]
    assert len(meta["step_stats"]) == 4 and all(s["mean"] > 0 for s in meta["step_stats"])
    assert meta["pixel_size_um"] == {"y": 0.05, "x": 0.05}
    arr = zarr.open_array(str(tiny_store / "field_000" / "0"), mode="r")
    assert arr.dtype == np.uint16 and arr.chunks == (1, 32, 40)
    assert (tiny_store / "field_000" / "0" / "3" / "0" / "0").is_file()  # nested keys: h/y/x
    store = open_ladder(tiny_store)
    assert store.extra("field_000", "noise_free").shape == (4, 32, 40)
    assert store.extra("field_000", "truth").shape == (32, 40)
    with pytest.raises(UserError, match="no 'shifts' array"):
        store.extra("field_000", "shifts")


def test_info_and_check_commands(cli, tiny_store):
    result = cli("info", tiny_store)
    assert result.exit_code == 0
    assert "steps: 4" in result.stdout and "widefield" in result.stdout and "haze_index" in result.stdout
    result = cli("check", tiny_store)
    assert result.exit_code == 0 and "valid" in result.stdout
    assert check_ladder(tiny_store) == []


def test_3d_ladder_has_h_z_y_x_axes(tmp_path, tiny_manifest_dict):
    tiny_manifest_dict["volume"]["keep_planes"] = [3, 4]
    tiny_manifest_dict["n_fields"] = 1
    out = tmp_path / "3d.zarr"
    simulate_ladder(SimulationManifest.model_validate(tiny_manifest_dict), out, show_progress=False)
    store = open_ladder(out)
    assert store.meta.axes == ["h", "z", "y", "x"] and store.image("field_000").shape == (4, 2, 32, 40)
    assert store.image("field_000").chunks == (1, 1, 32, 40)
    assert store.extra("field_000", "truth").shape == (2, 32, 40)
    assert check_ladder(out) == []


def test_check_rejects_non_stores_and_broken_stores(cli, tmp_path, tiny_store):
    import shutil

    assert cli("check", tmp_path / "missing.zarr").exit_code == 2
    plain = tmp_path / "plain"
    plain.mkdir()
    result = cli("check", plain)
    assert result.exit_code == 2 and "not a dehaze ladder store" in result.stderr

    broken = tmp_path / "broken.zarr"
    shutil.copytree(tiny_store, broken)
    shutil.rmtree(broken / "field_001")
    result = cli("check", broken)
    assert result.exit_code == 2 and "field_001" in result.stderr

    renamed = tmp_path / "renamed.zarr"
    shutil.copytree(tiny_store, renamed)
    attrs = json.loads((renamed / "field_000" / ".zattrs").read_text())
    attrs["multiscales"][0]["axes"][0] = {"name": "t", "type": "time"}
    (renamed / "field_000" / ".zattrs").write_text(json.dumps(attrs))
    result = cli("check", renamed)
    assert result.exit_code == 2 and "degradation" in result.stderr

    badmeta = tmp_path / "badmeta.zarr"
    shutil.copytree(tiny_store, badmeta)
    root = json.loads((badmeta / ".zattrs").read_text())
    del root["dehaze"]["n_steps"]
    (badmeta / ".zattrs").write_text(json.dumps(root))
    result = cli("check", badmeta)
    assert result.exit_code == 2 and "n_steps" in result.stderr

    newer = tmp_path / "newer.zarr"
    shutil.copytree(tiny_store, newer)
    root = json.loads((newer / ".zattrs").read_text())
    root["dehaze"]["format_version"] = 99
    (newer / ".zattrs").write_text(json.dumps(root))
    result = cli("info", newer)
    assert result.exit_code == 2 and "upgrade dehaze" in result.stderr


def test_incomplete_store_is_reported_as_such(cli, tmp_path, tiny_store):
    import shutil

    partial = tmp_path / "partial.zarr"
    shutil.copytree(tiny_store, partial)
    root = json.loads((partial / ".zattrs").read_text())
    root["dehaze"]["status"] = "incomplete"
    (partial / ".zattrs").write_text(json.dumps(root))
    result = cli("check", partial)
    assert result.exit_code == 2 and "incomplete" in result.stderr and "rerun" in result.stderr
    with pytest.raises(UserError, match="incomplete"):
        open_ladder(partial)
    assert cli("info", partial).exit_code == 0  # info still describes an unfinished store


@pytest.mark.parametrize("dtype,low,high", [(np.uint16, 0, 65535), (np.int16, -30000, 30000), (np.int32, -20, 900),
                                             (np.uint8, 0, 255), (np.float32, 0, 1000)])
def test_step_stats_match_numpy(dtype, low, high):
    """Integer samples are summarised from a histogram, floats by a partial sort: both as numpy would, over
    the dtype's whole range (an int16 spanning more than 32767 must not wrap)."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.poisson(300, 100_000) % (high - low) + low, [low, high, high]]).astype(dtype)
    (s,) = step_stats_from_samples([values])
    v64 = values.astype(np.float64)
    assert (s.min, s.max) == (v64.min(), v64.max())
    assert s.mean == pytest.approx(v64.mean(), rel=1e-12) and s.std == pytest.approx(v64.std(), rel=1e-9)
    assert [s.p01, s.p999] == pytest.approx(np.percentile(v64, [0.1, 99.9]), rel=1e-12)


def test_step_stats_keep_wide_integers_exact():
    """Integers spanning too many values for a histogram are summarised in float64 (float32 would round)."""
    values = np.random.default_rng(4).integers(0, 2**31, 40_001).astype(np.uint32)
    (s,) = step_stats_from_samples([values])
    assert [s.p01, s.p999] == pytest.approx(np.percentile(values.astype(np.float64), [0.1, 99.9]), rel=1e-12)


def test_replace_stale_reopens_the_same_and_replaces_another(tmp_path):
    """A writer that owns its folder (the study): the same manifest's store is reopened, another's replaced;
    without the flag another's store is refused."""
    from dehaze.store import DatasetMeta, create_ladder

    def meta(sha):
        return DatasetMeta(source="simulation", manifest={}, manifest_sha256=sha, n_steps=2, pinhole_au=[1.0, 2.0],
                           spatial_axes=["y", "x"], pixel_size_um={"y": 0.1, "x": 0.1}, fields=["field_000"])

    path = tmp_path / "s.zarr"
    store, state = create_ladder(path, meta("a"))
    store.write_field("field_000", np.ones((2, 4, 4), np.uint16))
    store.finalize(step_stats=step_stats_from_samples([np.ones(4)] * 2))
    assert create_ladder(path, meta("a"), replace_stale=True)[1] == "complete"
    with pytest.raises(UserError, match="different manifest"):
        create_ladder(path, meta("b"))
    store, state = create_ladder(path, meta("b"), replace_stale=True)
    assert state == "new" and store.meta.manifest_sha256 == "b" and open_ladder(path, require_complete=False).completed_fields() == set()


def test_write_block_writes_a_region_of_a_begun_field_only(tmp_path):
    """The engine's writer: rows into arrays made by begin_field; an array not begun is a bug, said at once."""
    from dehaze.store import DatasetMeta, create_ladder

    meta = DatasetMeta(source="prediction", manifest={}, manifest_sha256="p", n_steps=2, pinhole_au=[1.0, 2.0],
                       spatial_axes=["y", "x"], pixel_size_um={"y": 0.1, "x": 0.1}, fields=["field_000"])
    store, _ = create_ladder(tmp_path / "p.zarr", meta)
    with pytest.raises(ValueError, match="not begun"):
        store.write_block("field_000", "0", (0, slice(0, 2), slice(0, 4)), np.ones((2, 4), np.float32))
    store.begin_field("field_000", {"0": ((2, 4, 4), "float32")})
    store.write_block("field_000", "0", (1, slice(0, 2), slice(0, 4)), np.full((2, 4), 3, np.float32))
    step = store.root["field_000"]["0"][1]  # (step 0 was never written: reading it is an error, not NaN)
    assert (step[:2] == 3).all() and np.isnan(step[2:]).all()


def test_info_prints_pinhole_values_with_their_decimals(tmp_path):
    """Issue #15 item 6: a 103.5 µm pinhole shows as 103.5, not 104."""
    from dehaze.store import DatasetMeta, create_ladder, describe_ladder

    meta = DatasetMeta(source="acquisition", manifest={}, manifest_sha256="a", n_steps=3, pinhole_au=[0.55, 1.125, None],
                       pinhole_um=[50.25, 103.5, 1234.5], spatial_axes=["y", "x"], pixel_size_um={"y": 0.1, "x": 0.1},
                       fields=["field_000"])
    store, _ = create_ladder(tmp_path / "a.zarr", meta)
    rows = [line.split() for line in describe_ladder(store).splitlines() if line.strip()[:1].isdigit()]
    assert [row[1:3] for row in rows] == [["0.55", "50.25"], ["1.125", "103.5"], ["-", "1234.5"]]
