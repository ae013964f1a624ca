"""What microscopes really write (issue #15), as tifffile-written and composed equivalents of the real files in
tests/test_realfiles.py: compressed TIFFs, Leica projects, dyes and transmitted light, truncated and odd files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from acq_data import PINHOLES_UM, hazy_steps, leica_detectors, ome_xml, write_lif, write_ome, write_ome_channels
from typer.testing import CliRunner

from acquisition.ingest import ingest
from acquisition.manifest import AcquisitionManifest
from acquisition.tiff import read_tiff_series
from dehaze.cli import app
from dehaze.errors import UserError
from dehaze.store import check_ladder

runner = CliRunner()
NO_REG = AcquisitionManifest(registration={"enabled": False})


@pytest.fixture(scope="module")
def steps() -> list[np.ndarray]:
    return hazy_steps()


def _fails(source: Path, out: Path, *needles: str, args: tuple[str, ...] = ()) -> str:
    """The CLI refuses in exactly one line (exit 2, no traceback, no tifffile log line), naming ``needles``."""
    res = runner.invoke(app, ["ingest", str(source), "-o", str(out), "-q", *args])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("dehaze: error:"), res.output
    for needle in needles:
        assert needle in res.output, res.output
    assert not out.exists()
    return res.output


# --- 1. compressed TIFFs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd", "jpegxr"])
def test_compressed_ome_tiff_reads_the_same_values(tmp_path, steps, compression):
    data = np.stack(steps)
    xml = ome_xml([{"pinhole": p} for p in PINHOLES_UM], data.shape[-2:])
    src = tmp_path / "s.ome.tif"
    kwargs = {"compressionargs": {"level": 1.0}} if compression == "jpegxr" else {}  # lossless JPEG-XR
    tifffile.imwrite(src, data, description=xml, metadata=None, photometric="minisblack", compression=compression, **kwargs)
    assert ingest(src, tmp_path / "l.zarr", NO_REG, dry_run=True).plan.n_steps == 4
    store = ingest(src, tmp_path / "l.zarr", NO_REG, show_progress=False).store
    np.testing.assert_array_equal(store.image("field_000")[...], data)


def _unknown_compression(path: Path, data: np.ndarray) -> Path:
    """A TIFF whose Compression tag names a scheme no decoder knows (uncompressed data under it)."""
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None, extratags=[])
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.tags["Compression"].offset
    raw[offset + 8 : offset + 10] = (60000).to_bytes(2, "little")  # the tag's value (SHORT, inline)
    path.write_bytes(bytes(raw))
    return path


def test_undecodable_file_fails_in_the_dry_run(tmp_path, steps):
    folder = tmp_path / "src"
    folder.mkdir()
    for i, img in enumerate(steps):
        tifffile.imwrite(folder / f"s{i}_ph{PINHOLES_UM[i]:g}um.tif", img)
    _unknown_compression(folder / "s2_ph160um.tif", steps[2])
    args = ("--dry-run", "--set", r"pinhole_pattern=ph(\d+)um", "--set", "pixel_size_um=0.1")
    _fails(folder, tmp_path / "l.zarr", "s2_ph160um.tif", "cannot decode", args=args)


def test_missing_decoder_says_what_to_install(tmp_path, steps, monkeypatch):
    # what a user without imagecodecs meets on an LZW file: one line with the package to install, in the dry run
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)

    def no_codec(self, *args, **kwargs):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_codec)
    _fails(src, tmp_path / "l.zarr", "s.ome.tif", "cannot decode", "pip install imagecodecs", args=("--dry-run",))


# --- 2. Leica projects -------------------------------------------------------------------------------------

LAS = {"NumericalAperture": "1.40", "Magnification": "63", "EmissionWavelengthForPinholeAiryCalculation": "580"}
GREEN = leica_detectors([(500.0, 540.0)], [488.0])  # emission 520 nm: AU at 580 nm is 580/520 = 1.115x too small


def _settings(au_580: float, um_per_au_580: float = 100.0) -> dict[str, str]:
    return {**LAS, "Pinhole": f"{au_580 * um_per_au_580 * 1e-6:.6e}", "PinholeAiry": f"{au_580:.6f}"}


def test_lif_project_images_are_the_steps_with_airy_units_at_the_channel_emission(tmp_path, steps):
    aus = [0.5, 1.0, 2.0, 4.0]
    order = [2, 0, 3, 1]
    src = write_lif(tmp_path / "p.lif", [(f"PH{k}", steps[i], _settings(aus[i]), None, GREEN) for k, i in enumerate(order)])
    res = runner.invoke(app, ["ingest", str(src), "-o", str(tmp_path / "l.zarr"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "images in p.lif" in res.output and "'PH0': x=64 y=64" in res.output and "0.5 AU" in res.output
    assert "recomputed at the step's emission 520 nm" in res.output
    report = ingest(src, tmp_path / "l.zarr", AcquisitionManifest(), show_progress=False)
    store = report.store
    assert store.meta.pinhole_au == pytest.approx([a * 580 / 520 for a in aus])
    steps_rec = store.meta.manifest["steps"]
    assert [s["pinhole_au_file"] for s in steps_rec] == pytest.approx(aus)
    assert all(s["em_wavelength_nm"] == 520 and s["ex_wavelength_nm"] == 488 and s["na"] == 1.4 for s in steps_rec)
    assert "580 nm" in steps_rec[0]["pinhole_au_source"] and "520 nm" in steps_rec[0]["pinhole_au_source"]
    # a manifest calibration wins over the vendor's AU; both are recorded
    report = ingest(src, tmp_path / "l2.zarr", AcquisitionManifest(um_per_au=50), dry_run=True)
    assert report.plan.pinhole_au == pytest.approx([a * 100 / 50 for a in aus])
    assert report.plan.step_optics[0]["pinhole_au_file"] == pytest.approx(0.5)
    assert "manifest calibration (um_per_au=50)" in report.plan.step_optics[0]["pinhole_au_source"]


def test_lif_image_chosen_by_name_or_index(tmp_path, steps):
    stack = np.stack(steps)  # one image whose steps lie along time, beside an overview and an XZ scan
    src = write_lif(tmp_path / "p.lif", [("overview", steps[0][:32, :32], _settings(1.0)), ("sweep", stack, _settings(1.0), (1, 2, 4)),
                                         ("side", steps[0], _settings(1.0), (1, 3))])
    m = {"step_axis": "time", "pinhole_um": PINHOLES_UM}
    for image in ("sweep", 1):
        report = ingest(src, tmp_path / f"l{image}.zarr", AcquisitionManifest(image=image, **m), show_progress=False)
        assert report.store.meta.pinhole_um == PINHOLES_UM and check_ladder(report.store.path) == []
    with pytest.raises(UserError, match=r"p.lif: no image 'swep' \(manifest image\); its images: 0 'overview', 1 'sweep', 2 'side'"):
        ingest(src, tmp_path / "x.zarr", AcquisitionManifest(image="swep", **m), dry_run=True)
    # the CLI's --set takes the same key
    res = runner.invoke(app, ["ingest", str(src), "-o", str(tmp_path / "c.zarr"), "--dry-run", "--set", "image=sweep",
                              "--set", "step_axis=time", "--set", f"pinhole_um={PINHOLES_UM}"])
    assert res.exit_code == 0 and "* " in res.output and "refused: an XZ scan" in res.output, res.output


@pytest.mark.parametrize("dims, needle", [((1, 3), "an XZ scan"), ((1, 2, 5), "a λ-scan"), ((1, 2, 9), "excitation bands")])
def test_lif_xz_and_lambda_scans_are_refused_in_one_line(tmp_path, steps, dims, needle):
    data = steps[0] if len(dims) == 2 else np.stack(steps)
    src = write_lif(tmp_path / "p.lif", [("odd", data, _settings(1.0), dims), ("flat", steps[1], _settings(2.0))])
    _fails(src, tmp_path / "l.zarr", "p.lif [odd]", needle, "image: NAME", "1 'flat': x-y")
    only = write_lif(tmp_path / "only.lif", [("odd", data, _settings(1.0), dims), ("odd2", data, _settings(2.0), dims)])
    _fails(only, tmp_path / "l.zarr", needle, "holds no x-y image")


def test_lif_two_dyes_in_one_image_are_not_steps(tmp_path, steps):
    two = leica_detectors([(500.0, 540.0), (600.0, 700.0)], [488.0, 561.0])
    src = write_lif(tmp_path / "p.lif", [("dyes", np.stack(steps[:2]), _settings(1.0), None, two)])
    _fails(src, tmp_path / "l.zarr", "different dyes: emission 520, 650 nm", "channel: N", "channel_em_nm: 520")


# --- 3. dyes are never steps by accident ---------------------------------------------------------------------

def _two_dye_file(path: Path, steps, third: dict | None = None) -> Path:
    # as the OME sample hcs.ome.xml (Olympus): CH1 523 nm / 103.5 µm, CH3 578 nm / 127.24 µm
    chans = [{"pinhole": 103.5, "em": 523, "name": "CH1"}, {"pinhole": 127.24, "em": 578, "name": "CH3"}] + ([third] if third else [])
    xml = ome_xml(chans, steps[0].shape)
    if third:
        xml = xml.replace(f'Name="{third["name"]}"', f'Name="{third["name"]}" IlluminationType="Transmitted" ContrastMethod="DIC"')
    return write_ome(path, np.stack(steps[: len(chans)]), xml)


def test_two_dyes_with_a_pinhole_each_are_refused_naming_the_wavelengths(tmp_path, steps):
    src = _two_dye_file(tmp_path / "hcs.ome.tif", steps)
    _fails(src, tmp_path / "l.zarr", "different dyes: emission 523, 578 nm", "channel: N", "channel_em_nm: 523", "step_axis: channel")
    # said explicitly, they are taken, with a warning, and every step's light is recorded
    report = ingest(src, tmp_path / "l.zarr", AcquisitionManifest(step_axis="channel", registration={"enabled": False}), show_progress=False)
    assert any("different dyes" in w and "step_axis is channel" in w for w in report.warnings)
    rec = report.store.meta.manifest["steps"]
    assert [s["em_wavelength_nm"] for s in rec] == [523, 578] and [s["pinhole_um"] for s in rec] == [103.5, 127.24]
    assert all(s["ex_wavelength_nm"] == 488 and s["na"] == 1.4 for s in rec)


def test_transmitted_light_channel_is_never_a_step(tmp_path, steps):
    src = _two_dye_file(tmp_path / "hcs.ome.tif", steps, third={"pinhole": 200, "em": 523, "name": "TD1"})
    _fails(src, tmp_path / "l.zarr", "transmitted light", "channel: N")


def test_files_of_different_dyes_are_not_steps(tmp_path, steps):
    for i, em in enumerate([525, 525, 610, 610]):
        write_ome(tmp_path / f"s{i}.ome.tif", steps[i][None], ome_xml([{"pinhole": PINHOLES_UM[i], "em": em}], steps[i].shape))
    _fails(tmp_path, tmp_path / "l.zarr", "different dyes: emission 525, 610 nm", "files: GLOB")
    report = ingest(tmp_path, tmp_path / "l.zarr", AcquisitionManifest(step_axis="file"), dry_run=True)
    assert report.plan.n_steps == 4 and any("step_axis is file" in w for w in report.warnings)


def test_one_dye_at_several_pinholes_records_its_light_per_step(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    report = ingest(src, tmp_path / "l.zarr", AcquisitionManifest(magnification_at_pinhole=100), show_progress=False)
    rec = report.store.meta.manifest["steps"]
    assert [s["pinhole_um"] for s in rec] == PINHOLES_UM and [s["em_wavelength_nm"] for s in rec] == [525] * 4
    assert [s["pinhole_au"] for s in rec] == pytest.approx(report.store.meta.pinhole_au)
    assert all("magnification_at_pinhole=100" in s["pinhole_au_source"] for s in rec)


# --- 5. truncated and odd files ----------------------------------------------------------------------------

def test_truncated_imagej_stack_is_refused_as_truncated(tmp_path, steps, caplog):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.stack(steps), imagej=True, resolution=(10, 10), metadata={"unit": "um", "axes": "ZYX"})
    src.write_bytes(src.read_bytes()[: 3 * steps[0].nbytes])  # as a copy cut short
    with caplog.at_level(logging.DEBUG):
        _fails(src, tmp_path / "l.zarr", "stack.tif", "truncated", "announces 4 images", "holds 1",
               args=("--set", "step_axis=z", "--set", f"pinhole_um={PINHOLES_UM}"))
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]  # tifffile's own lines kept out


def test_truncated_plain_multipage_tiff_is_refused_as_truncated(tmp_path, steps):
    src = tmp_path / "pages.tif"
    with tifffile.TiffWriter(src) as tw:
        for img in steps:
            tw.write(img, photometric="minisblack", contiguous=False)
    src.write_bytes(src.read_bytes()[: 2 * steps[0].nbytes + 1000])
    _fails(src, tmp_path / "l.zarr", "pages.tif", "truncated", args=("--set", f"pinhole_um={PINHOLES_UM}", "--set", "pixel_size_um=0.1"))


def test_multi_sample_16_bit_image_is_refused_without_calling_it_rgb(tmp_path, steps):
    src = tmp_path / "yxs.tif"
    tifffile.imwrite(src, np.stack(steps[:3], axis=-1), photometric="rgb")
    out = _fails(src, tmp_path / "l.zarr", "yxs.tif", "3 samples per pixel", "own grey plane", args=("--set", "pinhole_um=[1, 2]"))
    assert "RGB" not in out


def _ome_2008(channels: list[dict], shape: tuple[int, int]) -> str:
    """OME-XML of the 2008-09 schema: per-channel values on Image/LogicalChannel, LensNA a child element."""
    logical = "".join(f'<LogicalChannel ID="LogicalChannel:{c}" PinholeSize="{ch["pinhole"]}" EmWave="{ch["em"]}" ExWave="488">'
                      f'<ChannelComponent Index="{c}" Pixels="Pixels:0"/></LogicalChannel>' for c, ch in enumerate(channels))
    return ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2008-09">'
            '<Instrument ID="Instrument:0"><Objective ID="Objective:0"><LensNA>1.2</LensNA><NominalMagnification>60</NominalMagnification>'
            '</Objective></Instrument><Image ID="Image:0" Name="old"><InstrumentRef ID="Instrument:0"/>' + logical +
            f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" PixelType="uint16" SizeX="{shape[1]}" SizeY="{shape[0]}" SizeZ="1" '
            f'SizeC="{len(channels)}" SizeT="1" PhysicalSizeX="0.2" PhysicalSizeY="0.2" PhysicalSizeZ="0.0" BigEndian="false">'
            f'<TiffData FirstC="0" FirstT="0" FirstZ="0" IFD="0" NumPlanes="{len(channels)}"/></Pixels></Image></OME>')


def test_ome_2008_09_logical_channel_pinholes_are_read(tmp_path, steps):
    xml = _ome_2008([{"pinhole": p, "em": 520} for p in PINHOLES_UM], steps[0].shape)
    src = write_ome(tmp_path / "old.ome.tif", np.stack(steps), xml)
    (series,) = read_tiff_series(src)
    assert series.na == 1.2 and series.channel(2).pinhole == 160 and series.channel(2).em_wavelength_nm == 520
    assert "z" not in series.pixel_size_um and series.pixel_size_um["x"] == 0.2  # PhysicalSizeZ="0.0": not measured
    report = ingest(src, tmp_path / "l.zarr", AcquisitionManifest(magnification_at_pinhole=60), dry_run=True)
    assert report.plan.pinhole_um == PINHOLES_UM and report.plan.na == 1.2
    assert report.plan.pinhole_au == pytest.approx([p / (60 * 1.22 * 0.520 / 1.2) for p in PINHOLES_UM])


def test_store_rows_at_the_edges_are_the_source_rows_for_identical_steps(tmp_path, steps):
    # identical frames (the same file three times, as a user checking the tool would): shifts exactly 0,
    # no row or column lost, every value the source's
    for i, p in enumerate([30, 60, 120]):
        write_ome(tmp_path / f"s{i}.ome.tif", steps[1][None], ome_xml([{"pinhole": p}], steps[1].shape))
    store = ingest(tmp_path, tmp_path / "l.zarr", AcquisitionManifest(), show_progress=False).store
    assert np.abs(store.extra("field_000", "shifts")[...]).max() <= 1e-3
    np.testing.assert_array_equal(store.image("field_000")[...], np.stack([steps[1]] * 3))
