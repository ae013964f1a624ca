"""Ingestion of real files from public repositories (issue #15): one test per file in ../shared/realdata/
beside the checkout (see its README for sources and licences; the files are not part of the project).
Skipped with the reason where they are absent; tests/test_ingest_realworld.py holds tifffile-written
equivalents of every behaviour, so a fresh clone tests them too."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from acquisition.ingest import ingest
from acquisition.manifest import AcquisitionManifest, load_acquisition_manifest
from acquisition.tiff import read_tiff_series
from dehaze.cli import app
from dehaze.errors import UserError
from dehaze.store import check_ladder

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
EXAMPLE = Path(__file__).resolve().parents[1] / "data_manifests" / "example-acquisition.yaml"
runner = CliRunner()


def real(name: str) -> Path:
    path = REALDATA / name
    if not path.is_file():
        pytest.skip(f"real file {name} not found in {REALDATA} (public test files kept beside the checkout, not in it)")
    return path


def _refused(source: Path, out: Path, *needles: str, args: tuple[str, ...] = ()) -> str:
    res = runner.invoke(app, ["ingest", str(source), "-o", str(out), "-q", *args])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("dehaze: error:"), res.output
    for needle in needles:
        assert needle in res.output, res.output
    assert not out.exists()
    return res.output


def test_leica_xz_project(tmp_path):
    pytest.importorskip("readlif")
    from acquisition.lif import read_lif_series

    src = real("xz-example.lif")
    series = read_lif_series(src)
    assert [s.name for s in series] == ["xzt", "xzy", "xz"] and all("XZ scan" in s.refusal for s in series)
    ch = series[0].channels
    assert ch[0].pinhole == pytest.approx(82.795, rel=1e-4) and ch[0].pinhole_airy == pytest.approx(0.8048, rel=1e-3)
    assert ch[0].pinhole_airy_at_nm == 580 and series[0].na == 1.3
    assert ch[0].em_wavelength_nm == pytest.approx(517.04, abs=0.1) and ch[1].em_wavelength_nm == pytest.approx(659.18, abs=0.1)
    _refused(src, tmp_path / "l.zarr", "[xzt]: an XZ scan", "holds no x-y image")
    _refused(src, tmp_path / "l.zarr", "[xz]: an XZ scan", args=("--set", "image=xz"))


def test_leica_lambda_scans(tmp_path):
    pytest.importorskip("readlif")
    src = real("LeicaLASX_wavelength-sweep_example.lif")
    _refused(src, tmp_path / "l.zarr", "a λ-scan", "20 emission bands")
    _refused(src, tmp_path / "l.zarr", "15 excitation bands", args=("--set", "image=1"))


def test_bioformats_lzw_export_as_a_three_file_series_of_identical_frames(tmp_path):
    src = real("aics_s_1_t_1_c_1_z_1.ome.tiff")
    with tifffile.TiffFile(src) as tif:
        assert tif.pages.first.compression == 5  # LZW
        frame = tif.asarray()
    for i in range(3):
        shutil.copy(src, tmp_path / f"step{i}.ome.tiff")
    m = {"pinhole_um": [30, 60, 120], "files": "*.ome.tiff"}
    # a brightfield (transmitted light) image is not a pinhole step unless the manifest says so
    with pytest.raises(UserError, match="transmitted light"):
        ingest(tmp_path, tmp_path / "l.zarr", AcquisitionManifest(**m), dry_run=True)
    manifest = AcquisitionManifest(**m, step_axis="file")
    assert ingest(tmp_path, tmp_path / "l.zarr", manifest, dry_run=True).plan.n_steps == 3
    store = ingest(tmp_path, tmp_path / "l.zarr", manifest, show_progress=False).store
    assert check_ladder(store.path) == []
    assert np.abs(store.extra("field_000", "shifts")[...]).max() <= 1e-3  # identical frames: no shift
    np.testing.assert_array_equal(store.image("field_000")[...], np.stack([frame] * 3))  # row 0 too
    assert store.meta.pixel_size_um["x"] == pytest.approx(1.0833333) and store.meta.manifest["steps"][0]["transmitted_light"]


def test_neubias_calibrated_time_series(tmp_path):
    src = real("xyt_calibrated_16bit__golgi_bfa_sum_projection.tif")
    m = AcquisitionManifest(step_axis="time", pinhole_um=[float(k) for k in range(20, 50)], um_per_au=20,
                            registration={"warn_residual_px": 10.0})
    report = ingest(src, tmp_path / "l.zarr", m, show_progress=False)
    assert report.store.meta.n_steps == 30 and report.store.meta.pixel_size_um["x"] == pytest.approx(0.351435, rel=1e-5)
    assert report.store.meta.pinhole_au[:2] == pytest.approx([1.0, 1.05])


def test_neubias_spots_stack_with_the_example_manifest(tmp_path):
    src = real("xyz_16bit__spots.tif")
    for fov in (1, 2):
        for ph in (40, 80, 160):
            shutil.copy(src, tmp_path / f"fov{fov:02d}_ph{ph}um.tif")
    report = ingest(tmp_path, tmp_path / "l.zarr", load_acquisition_manifest(EXAMPLE), show_progress=False)
    assert len(report.plan.positions) == 2 and report.plan.n_steps == 3
    # the example's pixel_size_um wins over the file's calibration, as its comment says, with a warning
    assert report.store.meta.pixel_size_um["x"] == 0.05
    assert any("pixel_size_um 0.05 replaces the file's 0.0941" in w for w in report.warnings)
    # identical z-stacks: registered to exactly 0, and the edge rows are the source's
    stack = tifffile.imread(src)
    for name in report.store.fields:
        assert np.abs(report.store.extra(name, "shifts")[...]).max() <= 1e-3
        np.testing.assert_array_equal(report.store.image(name)[...], np.stack([stack] * 3))


def test_neubias_two_dyes_as_channels(tmp_path):
    src = real("xyc_16bit__nuclei_golgi.tif")
    # ImageJ keeps no wavelengths: the channels are only taken as steps when the manifest says so, and the
    # store then records that their light is unknown
    _refused(src, tmp_path / "l.zarr", "no pinhole size in the file")
    m = AcquisitionManifest(step_axis="channel", pinhole_um=[40, 80], registration={"enabled": False})
    report = ingest(src, tmp_path / "l.zarr", m, show_progress=False)
    assert [s["em_wavelength_nm"] for s in report.store.meta.manifest["steps"]] == [None, None]


def test_neubias_multi_sample_image(tmp_path):
    out = _refused(real("xyc_16bit__hela-cells.tif"), tmp_path / "l.zarr", "3 samples per pixel", args=("--set", "pinhole_um=[1, 2]"))
    assert "RGB" not in out


def _ome_tiff_from_sample(xml_path: Path, out: Path, pixels: np.ndarray, **replace: str) -> Path:
    """An OME-XML sample (its pixels as BinData) made an OME-TIFF: real pixels written by tifffile, the
    sample's XML with TiffData instead of BinData and sizes to match."""
    xml = xml_path.read_text()
    xml = re.sub(r"<BinData[^>]*?(/>|>.*?</BinData>)", f'<TiffData IFD="0" PlaneCount="{len(pixels)}"/>', xml, flags=re.S)
    xml = re.sub(r'SizeX="\d+"', f'SizeX="{pixels.shape[-1]}"', xml)
    xml = re.sub(r'SizeY="\d+"', f'SizeY="{pixels.shape[-2]}"', xml)
    for key, value in replace.items():
        xml = re.sub(rf'{key}="[^"]*"', f'{key}="{value}"', xml, count=1)
    tifffile.imwrite(out, pixels, description=xml.encode(), metadata=None, photometric="minisblack")  # UTF-8 (µm, Å)
    return out


def test_ome_sample_hcs_two_dyes_are_not_steps(tmp_path):
    pixels = tifffile.imread(real("xyc_16bit__nuclei_golgi.tif"))  # two real fluorescence planes
    src = _ome_tiff_from_sample(real("hcs.ome.xml"), tmp_path / "hcs.ome.tif", pixels, SizeC="2", SizeT="1")
    # SizeC=2: the two dyes (the sample's third channel, transmitted DIC, has no plane here)
    _refused(src, tmp_path / "l.zarr", "different dyes: emission 523, 578 nm", "channel: N", "channel_em_nm: 523")
    m = AcquisitionManifest(step_axis="channel", registration={"enabled": False})
    report = ingest(src, tmp_path / "l.zarr", m, show_progress=False)
    rec = report.store.meta.manifest["steps"]
    assert [(s["em_wavelength_nm"], s["ex_wavelength_nm"], s["pinhole_um"]) for s in rec] == [(523, 488, 103.5), (578, 561, 127.24)]
    assert any("different dyes" in w for w in report.warnings)


@pytest.mark.parametrize("sample", ["instrument-units-default.ome.xml", "instrument-units-alternate.ome.xml"])
def test_ome_sample_instrument_units_as_a_three_file_series(tmp_path, sample):
    frame = tifffile.imread(real("xyz_16bit__spots.tif"))[8]
    alternate = "alternate" in sample
    for i, um in enumerate([50, 100, 200]):
        pinhole = {"PinholeSize": f"{um / 1000 if alternate else um}"}
        _ome_tiff_from_sample(real(sample), tmp_path / f"s{i}.ome.tif", frame[None], **pinhole)
    report = ingest(tmp_path, tmp_path / "l.zarr", AcquisitionManifest(), dry_run=True)
    plan = report.plan
    assert plan.pinhole_um == pytest.approx([50, 100, 200]) and plan.na == 1.2
    assert plan.em_wavelength_nm == pytest.approx(488.6)
    assert "488.6 nm" in plan.describe() and "488.59999" not in plan.describe()
    assert plan.pixel_size_um["x"] == pytest.approx(1e4)  # 1 cm pixels either way: 10000 (µm by default) or 1.0 cm


def test_ome_2008_09_sample(tmp_path):
    src = real("2008-09_swatch-instrument.ome.tiff")
    (series,) = read_tiff_series(src)
    assert series.na == 1.2 and series.shape == (1, 1, 1, 4, 6) and series.channel(0).name == "LogicalChannel:0"
    # this sample's LogicalChannel has no PinholeSize: said so, with the manifest keys that give one
    _refused(src, tmp_path / "l.zarr", "no pinhole size in the file", "pinhole_um")


def test_truncated_imagej_stack(tmp_path):
    cut = tmp_path / "spots_cut.tif"
    cut.write_bytes(real("xyz_16bit__spots.tif").read_bytes()[:100_000])
    _refused(cut, tmp_path / "l.zarr", "truncated", "announces 17 images",
             args=("--set", "step_axis=z", "--set", "pinhole_um=[1, 2, 3]"))
