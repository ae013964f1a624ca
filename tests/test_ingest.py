"""Ingestion of real layouts: OME-TIFF per channel / per file, ImageJ hyperstacks, plain TIFF folders, z-stacks, positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from acq_data import PINHOLES_UM, SHIFTS, hazy_steps, ome_xml, write_ome, write_ome_channels, write_ome_set, write_position_folder
from typer.testing import CliRunner

from acquisition.ingest import ingest
from acquisition.manifest import AcquisitionManifest
from dehaze.cli import app
from dehaze.store import check_ladder, open_ladder, stats_samples, step_stats_from_samples

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [*args, "-q"] if args[0] == "ingest" and "--dry-run" not in args else list(args))


def _assert_store(path: Path, n_steps: int = 4, n_fields: int = 1, shifts: np.ndarray = SHIFTS, tol: float = 0.35):
    assert check_ladder(path) == []
    store = open_ladder(path)
    assert store.meta.source == "acquisition" and store.meta.n_steps == n_steps and len(store.fields) == n_fields
    for f in store.fields:
        got = store.extra(f, "shifts")[...]
        assert np.sqrt(np.mean(np.sum((got - shifts[:n_steps]) ** 2, axis=1))) < tol
        info = store.field_meta(f).info
        assert len(info["registration"]["confidence_psr"]) == n_steps
    return store


@pytest.fixture(scope="module")
def steps() -> list[np.ndarray]:
    return hazy_steps()


def test_ome_one_file_channels_in_any_order(tmp_path, steps):
    src = write_ome_channels(tmp_path / "series.ome.tif", steps, PINHOLES_UM, order=[2, 0, 3, 1])
    out = tmp_path / "ladder.zarr"
    res = _cli("ingest", str(src), "-o", str(out))
    assert res.exit_code == 0, res.output
    store = _assert_store(out)
    assert store.meta.pinhole_um == PINHOLES_UM
    assert store.meta.pinhole_au == [None] * 4
    assert "OME" in store.meta.pinhole_units_source or "ome-tiff" in store.meta.pinhole_units_source
    assert store.meta.pixel_size_um == {"y": 0.1, "x": 0.1}
    # raw values kept: the cleanest step is the unshifted step 0, only cropped
    y0, y1, x0, x1 = store.field_meta("field_000").info["crop_yx"]
    assert np.array_equal(store.image("field_000")[0], steps[0][y0:y1, x0:x1])
    norm = store.meta.normalization
    assert norm["kind"] == "offset_percentile" and len(norm["brightness_mean_adu"]) == 4
    assert norm["brightness_mean_adu"][3] > norm["brightness_mean_adu"][0]  # brightness grows with the pinhole


def test_multi_file_ome_set_is_one_series(tmp_path, steps):
    # Bio-Formats / Micro-Manager: one file per channel, each with the whole OME-XML; tifffile reads the set
    # from any member, so the folder is one field of four steps, not four copies of it
    files = write_ome_set(tmp_path / "src", steps, PINHOLES_UM)
    res = _cli("ingest", str(tmp_path / "src"), "-o", str(tmp_path / "l.zarr"))
    assert res.exit_code == 0, res.output
    store = _assert_store(tmp_path / "l.zarr")
    assert store.meta.pinhole_um == PINHOLES_UM
    assert all(src.startswith(str(files[0])) for src in store.field_meta(store.fields[0]).info["sources"])


def test_ome_file_per_step_nm_unit_and_calibration(tmp_path, steps):
    folder = tmp_path / "series"
    folder.mkdir()
    for i, name in zip([3, 1, 0, 2], ["a", "b", "c", "d"]):  # names do not follow pinhole order
        write_ome(folder / f"{name}.ome.tif", steps[i][None], ome_xml([{"pinhole": PINHOLES_UM[i] * 1000, "unit": "nm"}], steps[i].shape))
    out = tmp_path / "ladder.zarr"
    res = _cli("ingest", str(folder), "-o", str(out), "--set", "magnification_at_pinhole=100")
    assert res.exit_code == 0, res.output
    store = _assert_store(out)
    assert store.meta.pinhole_um == pytest.approx(PINHOLES_UM)
    au_um = 100 * 1.22 * 0.525 / 1.4  # magnification x 1.22 lambda / NA (NA from the OME objective)
    assert store.meta.pinhole_au == pytest.approx([p / au_um for p in PINHOLES_UM])
    assert "calibration" in store.meta.pinhole_units_source
    assert [s.split("/")[-1] for s in store.field_meta("field_000").info["sources"]] == ["c.ome.tif", "b.ome.tif", "d.ome.tif", "a.ome.tif"]


def test_imagej_hyperstack_with_manifest_list(tmp_path, steps):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.stack(steps)[None], imagej=True, metadata={"axes": "ZCYX", "unit": "um"}, resolution=(10.0, 10.0))
    (tmp_path / "m.yaml").write_text("pinhole_au: [0.5, 1.0, 2.0, 4.0]\n")
    out = tmp_path / "ladder.zarr"
    res = _cli("ingest", str(src), "-o", str(out), "--manifest", str(tmp_path / "m.yaml"))
    assert res.exit_code == 0, res.output
    store = _assert_store(out)
    assert store.meta.pinhole_au == [0.5, 1.0, 2.0, 4.0] and store.meta.pinhole_um is None
    assert store.meta.pixel_size_um == pytest.approx({"y": 0.1, "x": 0.1})


def test_plain_tiff_folder_with_pattern_and_positions(tmp_path):
    folder = write_position_folder(tmp_path / "tiffs")
    m = AcquisitionManifest(pinhole_pattern=r"ph([\d.]+)um", position_pattern=r"pos(\d+)", pixel_size_um=0.08)
    out = tmp_path / "ladder.zarr"
    report = ingest(folder, out, m, show_progress=False)
    assert report.state == "new"
    store = open_ladder(out)
    assert store.meta.pinhole_um == PINHOLES_UM and len(store.fields) == 2
    assert [store.field_meta(f).info["position"] for f in store.fields] == ["0", "1"]
    assert store.meta.pixel_size_um == {"y": 0.08, "x": 0.08}
    shapes = {store.image(f).shape for f in store.fields}
    assert len(shapes) == 1  # one common crop for every field
    # the statistics taken from the arrays in memory are those of the store as written
    recomputed = step_stats_from_samples(
        [np.concatenate([stats_samples(store.image(f), 2)[t] for f in store.fields]) for t in range(4)]
    )
    assert store.meta.step_stats == recomputed
    # field order and brightness per field do not depend on which thread finished first
    b = [store.field_meta(f).info["brightness_mean_adu"] for f in store.fields]
    assert store.meta.normalization["brightness_mean_adu"] == pytest.approx(np.mean(b, axis=0).tolist())
    # rerunning the same ingestion is a no-op
    assert ingest(folder, out, m, show_progress=False).state == "complete"


def test_z_stacks_per_step(tmp_path):
    series = hazy_steps(z=3)
    xml_for = lambda i: ome_xml([{"pinhole": PINHOLES_UM[i]}], series[i].shape[-2:], size_z=3)  # noqa: E731
    for i in range(4):
        write_ome(tmp_path / f"step{i}.ome.tif", series[i], xml_for(i))
    out = tmp_path / "ladder.zarr"
    report = ingest(tmp_path, out, AcquisitionManifest(), show_progress=False)
    store = open_ladder(out)
    assert store.meta.spatial_axes == ["z", "y", "x"] and store.image("field_000").shape[:2] == (4, 3)
    assert store.meta.pixel_size_um["z"] == pytest.approx(0.3)
    assert report.residual_px[0] < 0.3


def test_steps_along_time(tmp_path, steps):
    src = tmp_path / "t.tif"
    tifffile.imwrite(src, np.stack(steps), imagej=True, metadata={"axes": "TYX"}, resolution=(10.0, 10.0))
    m = AcquisitionManifest(step_axis="time", pinhole_um=PINHOLES_UM, pixel_size_um=0.1)
    ingest(src, tmp_path / "l.zarr", m, show_progress=False)
    assert open_ladder(tmp_path / "l.zarr").meta.pinhole_um == PINHOLES_UM


def test_dry_run_writes_nothing(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM, order=[1, 0, 2, 3])
    out = tmp_path / "ladder.zarr"
    res = runner.invoke(app, ["ingest", str(src), "-o", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "4 steps" in res.output and "(64, 64)" in res.output and "x=0.1" in res.output
    assert "40" in res.output and "320" in res.output and "[C=1]" in res.output
    assert res.output.count("Airy units unknown") == 1  # a warning is said once (on stderr)
    assert not out.exists()


def test_schema_lists_acquisition():
    res = runner.invoke(app, ["schema", "acquisition"])
    assert res.exit_code == 0 and "pinhole_pattern" in json.loads(res.output)["properties"]


def test_example_manifest_is_valid(tmp_path):
    from acquisition.manifest import load_acquisition_manifest

    root = Path(__file__).resolve().parents[1]
    m = load_acquisition_manifest(root / "data_manifests" / "example-acquisition.yaml")
    assert m.pinhole_pattern is not None


def test_integer_resample_keeps_raw_values(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    ingest(src, tmp_path / "l.zarr", AcquisitionManifest.model_validate({"registration": {"resample": "integer"}}), show_progress=False)
    store = open_ladder(tmp_path / "l.zarr")
    img = store.image("field_000")[...]
    shifts = np.round(store.extra("field_000", "shifts")[...]).astype(int)
    y0, y1, x0, x1 = store.field_meta("field_000").info["crop_yx"]
    dy, dx = shifts[2]
    assert np.array_equal(img[2], steps[2][y0 - dy : y1 - dy, x0 - dx : x1 - dx])


def test_overwrite_needed_for_other_store(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    out = tmp_path / "l.zarr"
    assert _cli("ingest", str(src), "-o", str(out)).exit_code == 0
    res = _cli("ingest", str(src), "-o", str(out), "--set", "offset_adu=100")
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert _cli("ingest", str(src), "-o", str(out), "--set", "offset_adu=100", "--overwrite").exit_code == 0
    shutil.rmtree(out)
