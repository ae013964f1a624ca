"""Bad input: exit code 2, one line naming the file and the problem, and no store left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from acq_data import PINHOLES_UM, hazy_steps, ome_xml, write_ome, write_ome_channels, write_ome_set
from typer.testing import CliRunner

from dehaze.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def steps() -> list[np.ndarray]:
    return hazy_steps()


def _fails(tmp_path: Path, source: Path, *needles: str, extra: tuple[str, ...] = ()) -> str:
    out = tmp_path / "ladder.zarr"
    res = runner.invoke(app, ["ingest", str(source), "-o", str(out), "-q", *extra])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("dehaze: error:")]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def _folder(tmp_path: Path, steps, pinholes=PINHOLES_UM, unit=None, shapes=None, px=None) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for i, img in enumerate(steps):
        img = img if shapes is None else img[: shapes[i], : shapes[i]]
        xml = ome_xml([{"pinhole": pinholes[i], "unit": unit}], img.shape, pixel_um=(px[i] if px else 0.1))
        write_ome(folder / f"step{i}.ome.tif", img[None], xml)
    return folder


def test_truncated_file(tmp_path, steps):
    folder = _folder(tmp_path, steps)
    bad = folder / "step2.ome.tif"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 2000])
    _fails(tmp_path, folder, "step2.ome.tif", "truncated")


def test_multi_file_ome_set_member_missing_or_truncated(tmp_path, steps):
    # tifffile would fill a missing member with zeros (a log line only): refused by the member's name
    files = write_ome_set(tmp_path / "src", steps, PINHOLES_UM)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 2000])
    _fails(tmp_path, files[0], "series_C3.ome.tif", "truncated")
    files[3].unlink()
    _fails(tmp_path, files[0], "series_C3.ome.tif", "missing", "copy the whole set")


def test_corrupt_file(tmp_path, steps):
    folder = _folder(tmp_path, steps)
    (folder / "step1.ome.tif").write_bytes(b"II*\x00garbage" * 10)
    _fails(tmp_path, folder, "step1.ome.tif", "cannot read")


def test_steps_of_different_shapes(tmp_path, steps):
    folder = _folder(tmp_path, steps, shapes=[64, 64, 60, 64])
    _fails(tmp_path, folder, "step2.ome.tif", "shape (60, 60) differs")


def test_steps_of_different_pixel_sizes(tmp_path, steps):
    folder = _folder(tmp_path, steps, px=[0.1, 0.1, 0.1, 0.2])
    _fails(tmp_path, folder, "step3.ome.tif", "pixel size")


def test_missing_pinhole_value(tmp_path, steps):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(4):
        tifffile.imwrite(folder / f"s{i}.tif", steps[i])
    _fails(tmp_path, folder, "s0.tif", "no pinhole size", "manifest")


def test_missing_step_in_one_position(tmp_path, steps):
    folder = tmp_path / "src"
    folder.mkdir()
    for pos in range(2):
        for i in range(4 if pos == 0 else 3):
            tifffile.imwrite(folder / f"pos{pos}_ph{PINHOLES_UM[i]:g}.tif", steps[i])
    extra = ("--set", r"pinhole_pattern=ph([\d.]+)", "--set", r"position_pattern=pos(\d)", "--set", "pixel_size_um=0.1")
    _fails(tmp_path, folder, "field 1", "missing pinhole_um [320.0]", extra=extra)


def test_pattern_not_matching(tmp_path, steps):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"img{i}.tif", steps[i])
    _fails(tmp_path, folder, "img0.tif", "does not match pinhole_pattern", extra=("--set", r"pinhole_pattern=ph(\d+)"))


def test_manifest_list_of_wrong_length(tmp_path, steps):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, np.stack(steps)[None], imagej=True, metadata={"axes": "ZCYX"})
    _fails(tmp_path, src, "3 values", "stack.tif", "4 steps", extra=("--set", "pinhole_um=[1, 2, 3]"))


def test_duplicated_pinhole_value(tmp_path, steps):
    folder = _folder(tmp_path, steps, pinholes=[40.0, 80.0, 80.0, 320.0])
    _fails(tmp_path, folder, "step2.ome.tif", "duplicated pinhole value 80", "step1.ome.tif")


def test_unknown_unit(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM, unit="furlong")
    _fails(tmp_path, src, "s.ome.tif", "unknown length unit 'furlong'")


def test_nan_plane(tmp_path, steps):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(4):
        img = steps[i].astype(np.float32)
        if i == 1:
            img[10, 10] = np.nan
        tifffile.imwrite(folder / f"ph{PINHOLES_UM[i]:g}.tif", img)
    _fails(tmp_path, folder, "ph80.tif", "NaN", extra=("--set", r"pinhole_pattern=ph(\d+)", "--set", "pixel_size_um=0.1"))


def test_step_that_cannot_be_registered(tmp_path, steps):
    rng = np.random.default_rng(5)
    bad = list(steps)
    bad[3] = rng.poisson(300, size=steps[3].shape).astype(np.uint16)  # another "field": pure noise
    folder = _folder(tmp_path, bad)
    _fails(tmp_path, folder, "step3.ome.tif", "cannot be registered")


def test_bad_manifest_key(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    (tmp_path / "m.yaml").write_text("pinhole_sise_um: [1, 2]\n")
    _fails(tmp_path, src, "m.yaml", "pinhole_sise_um", "unknown key", extra=("--manifest", str(tmp_path / "m.yaml")))


def test_no_source(tmp_path):
    _fails(tmp_path, tmp_path / "nowhere", "nowhere", "no such file or folder")


def test_write_failure_removes_the_new_store(tmp_path, steps, monkeypatch):
    from acquisition import ingest as ingest_mod
    from acquisition.manifest import AcquisitionManifest

    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ingest_mod, "finalize_with_step_stats", boom)
    with pytest.raises(OSError):
        ingest_mod.ingest(src, tmp_path / "l.zarr", AcquisitionManifest(), show_progress=False)
    assert not (tmp_path / "l.zarr").exists()


def test_existing_non_store_is_never_touched(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    out = tmp_path / "ladder.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    res = runner.invoke(app, ["ingest", str(src), "-o", str(out), "-q"])
    assert res.exit_code == 2 and "not a dehaze ladder store" in res.output
    assert (out / "precious.txt").read_text() == "keep me"


def test_high_residual_is_a_warning(tmp_path, steps):
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    res = runner.invoke(app, ["ingest", str(src), "-o", str(tmp_path / "l.zarr"), "-q", "--set", "registration.warn_residual_px=0.0001"])
    assert res.exit_code == 0 and "warning" in res.output and "residual" in res.output


def test_steps_of_different_data_types(tmp_path, steps):
    folder = _folder(tmp_path, [s if i != 2 else (s // 16).astype(np.uint8) for i, s in enumerate(steps)])
    _fails(tmp_path, folder, "step2.ome.tif", "data type uint8", "same bit depth")


def test_manifest_list_for_steps_along_z_says_so(tmp_path, steps):
    tifffile.imwrite(tmp_path / "stack.tif", np.stack(steps), photometric="minisblack")
    (tmp_path / "m.yaml").write_text("pinhole_um: [40, 80, 160, 320]\npixel_size_um: 0.1\n")
    _fails(tmp_path, tmp_path / "stack.tif", "4 values", "set step_axis: z", extra=("--manifest", str(tmp_path / "m.yaml")))


def test_binary_only_ome_says_where_the_metadata_is(tmp_path, steps):
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:1">'
           '<BinaryOnly MetadataFile="series.companion.ome" UUID="urn:uuid:2"/></OME>')
    write_ome(tmp_path / "s_C0.ome.tif", steps[0][None], xml)
    _fails(tmp_path, tmp_path / "s_C0.ome.tif", "s_C0.ome.tif", "BinaryOnly", "series.companion.ome")


@pytest.mark.parametrize("registration", ["true", "false"])
def test_truncated_multi_channel_ome_tiff_is_refused_not_read_as_zeros(tmp_path, steps, registration):
    """Issue #14: a cut OME-TIFF whose later planes are gone was ingested (registration off) as a complete
    store whose steps 1-3 were zeros, or refused as 'cannot be registered' (registration on)."""
    src = write_ome_channels(tmp_path / "s.ome.tif", steps, PINHOLES_UM)
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * 0.4)])
    _fails(tmp_path, src, "s.ome.tif", "truncated or damaged", "3 of 4 image planes",
           extra=("--set", f"registration.enabled={registration}"))
