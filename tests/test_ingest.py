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
from dehaze.errors import UserError
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


def test_two_dye_files_read_the_chosen_channel_with_its_wavelength(tmp_path, steps):
    # one OME file per pinhole step, two dyes per file; channel: 1 picks the 610 nm dye, whose Airy unit is
    # the one to use, even when each dye has its own (AU-matched) pinhole size
    other = hazy_steps(seed=11)
    for i in [2, 0, 3, 1]:
        chans = [{"pinhole": PINHOLES_UM[i], "em": 525}, {"pinhole": round(PINHOLES_UM[i] * 610 / 525, 1), "em": 610}]
        write_ome(tmp_path / f"step{i}.ome.tif", np.stack([steps[i], other[i]]), ome_xml(chans, steps[i].shape))
    m = AcquisitionManifest(channel=1, magnification_at_pinhole=100)
    report = ingest(tmp_path, tmp_path / "l.zarr", m, show_progress=False)
    assert report.plan.em_wavelength_nm == 610
    pinholes_610 = [round(p * 610 / 525, 1) for p in PINHOLES_UM]
    assert report.store.meta.pinhole_au == pytest.approx([p / (100 * 1.22 * 0.610 / 1.4) for p in pinholes_610])
    raw0 = tifffile.imread(tmp_path / "step0.ome.tif")[1]
    y0, _, x0, _ = report.store.field_meta("field_000").info["crop_yx"]
    np.testing.assert_array_equal(report.store.image("field_000")[0], raw0[y0 : y0 + report.store.image("field_000").shape[1], x0 : x0 + report.store.image("field_000").shape[2]])
    # the manifest's wavelength wins over the file's, with a warning
    report = ingest(tmp_path, tmp_path / "l.zarr", m.model_copy(update={"em_wavelength_nm": 600.0}), dry_run=True)
    assert report.plan.em_wavelength_nm == 600 and any("em_wavelength_nm 600 replaces the file's 610" in w for w in report.warnings)


@pytest.mark.parametrize("kind", ["dpi", "imagej-pixel", "imagej-inch"])
def test_tiff_resolution_that_is_not_a_calibration(tmp_path, steps, kind):
    # print/screen resolutions and uncalibrated ImageJ files: the manifest's pixel size is used, with a
    # warning when the file said otherwise; without a manifest, an implausible size is a warning
    for i in range(4):
        path = tmp_path / f"ph{PINHOLES_UM[i]:g}um.tif"
        if kind == "dpi":
            tifffile.imwrite(path, steps[i], resolution=(300.0, 300.0), resolutionunit="INCH")
        else:
            tifffile.imwrite(path, steps[i], imagej=True, resolution=(72.0, 72.0), metadata={"unit": kind.split("-")[1]})
    m = AcquisitionManifest(pinhole_pattern=r"ph([\d.]+)um", pixel_size_um=0.1)
    report = ingest(tmp_path, tmp_path / "l.zarr", m, dry_run=True)
    assert report.plan.pixel_size_um == {"y": 0.1, "x": 0.1}
    assert any("manifest pixel_size_um 0.1 replaces" in w for w in report.warnings) == (kind != "imagej-pixel")
    if kind == "dpi":
        report = ingest(tmp_path, tmp_path / "l.zarr", m.model_copy(update={"pixel_size_um": None}), dry_run=True)
        assert report.plan.pixel_size_um["x"] == pytest.approx(25400 / 300)
        assert any("implausible for a microscope" in w for w in report.warnings)


def test_same_files_spelled_another_way_are_the_same_ingestion(tmp_path, steps, monkeypatch):
    write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    monkeypatch.chdir(tmp_path)
    assert ingest("s.ome.tif", "l.zarr", AcquisitionManifest(), show_progress=False).state == "new"
    assert ingest(tmp_path / "s.ome.tif", tmp_path / "l.zarr", AcquisitionManifest(), show_progress=False).state == "complete"


def test_two_dyes_at_every_pinhole_along_channels(tmp_path, steps):
    # one file, channels (GFP ph1, RFP ph1, GFP ph2, ...): channel_em_nm keeps one dye's channels as the steps
    other = hazy_steps(seed=11)
    chans = [{"pinhole": PINHOLES_UM[i], "em": em} for i in range(4) for em in (525, 610)]
    data = np.stack([img for i in range(4) for img in (steps[i], other[i])])
    write_ome(tmp_path / "s.ome.tif", data, ome_xml(chans, steps[0].shape))
    with pytest.raises(UserError, match="different dyes: emission 525, 610 nm.*channel_em_nm: 525"):
        ingest(tmp_path / "s.ome.tif", tmp_path / "l.zarr", AcquisitionManifest(), dry_run=True)
    report = ingest(tmp_path / "s.ome.tif", tmp_path / "l.zarr", AcquisitionManifest(channel_em_nm=610), show_progress=False)
    assert report.plan.em_wavelength_nm == 610 and report.store.meta.pinhole_um == PINHOLES_UM
    assert [s.rsplit("=", 1)[1] for s in report.store.field_meta("field_000").info["sources"]] == ["1]", "3]", "5]", "7]"]
    with pytest.raises(UserError, match=r"no channel with emission wavelength 488 nm.*\[525.0, 610.0\]"):
        ingest(tmp_path / "s.ome.tif", tmp_path / "l.zarr", AcquisitionManifest(channel_em_nm=488), dry_run=True)


def test_renamed_single_file_export_and_member_name_case(tmp_path, steps):
    # Bio-Formats names the file in every TiffData with the document's own UUID: a renamed export is still
    # one file, not a set with a missing member; set members are matched without regard to case
    xml = ome_xml([{"pinhole": p} for p in PINHOLES_UM], steps[0].shape)
    own = xml.split('UUID="', 1)[1].split('"', 1)[0]
    planes = "".join(f'<TiffData FirstC="{c}" IFD="{c}" PlaneCount="1"><UUID FileName="export.ome.tif">{own}</UUID></TiffData>' for c in range(4))
    write_ome(tmp_path / "renamed.ome.tif", np.stack(steps), xml.replace('<TiffData IFD="0" PlaneCount="4"/>', planes))
    report = ingest(tmp_path / "renamed.ome.tif", tmp_path / "l.zarr", AcquisitionManifest(), dry_run=True)
    assert report.plan.n_steps == 4 and len(report.plan.positions) == 1
    files = write_ome_set(tmp_path / "set", steps, PINHOLES_UM)
    files[2].rename(files[2].with_name(files[2].name.upper()))
    report = ingest(tmp_path / "set", tmp_path / "l2.zarr", AcquisitionManifest(), dry_run=True)
    assert report.plan.n_steps == 4 and len(report.plan.positions) == 1


def test_a_step_without_its_wavelength_takes_the_files_one(tmp_path, steps):
    for i in range(4):
        xml = ome_xml([{"pinhole": PINHOLES_UM[i], "em": 525 if i == 0 else ""}], steps[i].shape)
        write_ome(tmp_path / f"step{i}.ome.tif", steps[i][None], xml)
    report = ingest(tmp_path, tmp_path / "l.zarr", AcquisitionManifest(magnification_at_pinhole=100), dry_run=True)
    assert report.plan.pinhole_au == pytest.approx([p / (100 * 1.22 * 0.525 / 1.4) for p in PINHOLES_UM])
