"""Issue #14 items 6 and 5: no hang (tiles without an inner area, "billion laughs" YAML, absurd depth) and
no traceback for values that pass a type check but cannot work."""

from __future__ import annotations

import time

import pytest

from dehaze.config import read_yaml
from dehaze.errors import UserError
from tests.test_damaged_stores import one_line_error


# ---- 6. no hang ------------------------------------------------------------------------------------
def test_a_tile_whose_margins_leave_no_inner_area_is_refused(cli, good, run, tmp_path):
    t0 = time.time()
    one_line_error(cli("predict", run, "--input", good, "-o", tmp_path / "p.zarr", "--tile", "16", "--margin", "32", "-q"),
                   "--margin 32 with 16-px tiles", "no inner area")
    one_line_error(cli("predict", run, "--input", good, "-o", tmp_path / "p.zarr", "--margin", "128", "-q"), "256-px tiles")
    assert time.time() - t0 < 30 and not (tmp_path / "p.zarr").exists()
    # the default margin adapts to small tiles, an explicit one that leaves an inner area is taken as given
    assert cli("predict", run, "--input", good, "-o", tmp_path / "a.zarr", "--tile", "16", "-q").exit_code == 0
    assert cli("predict", run, "--input", good, "-o", tmp_path / "b.zarr", "--tile", "24", "--margin", "4", "-q").exit_code == 0


def _laughs(levels: int = 9) -> str:
    names = [chr(ord("a") + i) for i in range(levels + 1)]
    lines = [f"{names[0]}: &{names[0]} [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,named", [
    (_laughs(), "expands to more than"),
    ("a: &a [*a]\n", "refers to the value that contains it"),
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests too deeply"),
    ("a: " + "{b: " * 60 + "1" + "}" * 60 + "\n", "nests more than"),
])
def test_hostile_yaml_is_refused_quickly(cli, tmp_path, text, named):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    t0 = time.time()
    with pytest.raises(UserError, match=named):
        read_yaml(path)
    one_line_error(cli("simulate", path, "-o", tmp_path / "s.zarr", "-q"), named)
    one_line_error(cli("train", "unet", "--data", tmp_path / "none.zarr", "-o", tmp_path / "r", "--config", path), named)
    one_line_error(cli("study", path, "-o", tmp_path / "study"), named)
    assert time.time() - t0 < 20
    assert not any((tmp_path / n).exists() for n in ("s.zarr", "r", "study"))


def test_shared_yaml_anchors_still_load(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("a: &x {b: 1}\nc: *x\n")
    assert read_yaml(path) == {"a": {"b": 1}, "c": {"b": 1}}


# ---- 5. no traceback for values that type-check but cannot work --------------------------------------
TRAIN = ["--set", "steps=2", "--set", "batch_size=2", "--set", "patch_size=16", "--set", "device=cpu",
         "--set", "model.base_channels=4", "--set", "model.depth=2"]


@pytest.mark.parametrize("override,named", [
    ("optim.lr=inf", "optim.lr: inf is not a finite number"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.betas=[0.9, 1.5]", "optim.betas [0.9, 1.5]: each must be in [0, 1)"),
    ("optim.betas=[-0.1, 0.99]", "optim.betas"),
    (f"seed={2**70}", "does not fit in 64 bits"),
    ("patch_size=18", "patch_size=18 must be a multiple of 2**model.depth = 4"),
    # 4. sizes whose arrays would not fit in memory: refused before anything is allocated
    ("batch_size=1000000000", "batch_size=1000000000 with patch_size=16: a batch is at least 1.86 TiB"),
    ("model.base_channels=100000", "model: 6.03e+12 parameters, 87.7 TiB with their gradients and optimiser state"),
])
def test_untrainable_configs_are_refused_before_a_run_is_written(cli, good, tmp_path, override, named):
    one_line_error(cli("train", "unet", "--data", good, "-o", tmp_path / "r", "-q", *TRAIN, "--set", override), named)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override,named", [
    ("camera.peak_photons_per_s=.inf", "camera.peak_photons_per_s: inf is not a finite number"),
    ("optics.pixel_size_um=.inf", "optics.pixel_size_um: inf is not a finite number"),
    ("camera.exposure_ms=inf", "camera.exposure_ms: inf is not a finite number"),
    ("sample.density=1e300", "sample.density"),
    ("volume.field_shape_yx=[1000000, 1000000]", "more than the 1.07e+09 a field may simulate"),
    ("volume.nz=1000000", "GiB per float32 volume"),
])
def test_infinite_or_absurd_simulation_values_are_refused(cli, tiny_manifest_path, tmp_path, override, named):
    one_line_error(cli("simulate", tiny_manifest_path, "-o", tmp_path / "s.zarr", "-q", "--set", override), named)
    assert not (tmp_path / "s.zarr").exists()


def test_binary_yaml_is_one_line(cli, good, tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + bytes(range(256)))
    named = "binary.yaml: not a YAML text file"
    one_line_error(cli("simulate", path, "-o", tmp_path / "s.zarr", "-q"), named)
    one_line_error(cli("train", "unet", "--data", good, "-o", tmp_path / "r", "--config", path), named)
    one_line_error(cli("study", path, "-o", tmp_path / "study"), named)
    one_line_error(cli("ingest", tmp_path, "--manifest", path, "-o", tmp_path / "i.zarr"), named)


def test_a_single_image_at_an_absurd_step_is_refused(cli, good, run, tmp_path):
    import tifffile

    from dehaze.store import open_ladder

    tifffile.imwrite(tmp_path / "one.tif", open_ladder(good).image("field_000")[3])
    one_line_error(cli("predict", run, "--input", tmp_path / "one.tif", "-o", tmp_path / "o.zarr", "--step", "1000000", "-q"),
                   "--step 1000000", "give the step the image was taken at")
    assert not (tmp_path / "o.zarr").exists()


def test_predict_all_with_runs_that_restore_nothing_is_refused(cli, good, tmp_path):
    from training.config import TrainConfig
    from training.loop import train

    cfg = TrainConfig.model_validate({"model": {"kind": "hvae", "preset": "tiny"}, "steps": 1, "batch_size": 2,
                                      "patch_size": 16, "device": "cpu", "data": {"val_patches": 2}})
    train("hvae", [good], tmp_path / "hvae", cfg, show_progress=False)
    one_line_error(cli("predict", tmp_path / "hvae", "--input", good, "-o", tmp_path / "d", "--strategy", "all", "-q"),
                   "allow no strategy")
    assert not (tmp_path / "d").exists()


def test_study_rerun_with_a_truncated_checkpoint_is_one_line(cli, tmp_path):
    import yaml

    cfg = {"simulation": "default", "simulation_set": ["n_fields=2", "volume.field_shape_yx=[32, 32]", "volume.nz=6"],
           "trainers": {"unet": {"batch_size": 2, "patch_size": 16, "steps": 2, "data": {"val_patches": 2},
                                 "model": {"base_channels": 4, "depth": 2}}}, "predict": {"tile": 32}, "device": "cpu"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli("study", path, "-o", tmp_path / "out", "-q").exit_code == 0
    ckpt = tmp_path / "out" / "runs" / "unet" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    one_line_error(cli("study", path, "-o", tmp_path / "out", "-q"), "checkpoint.pt: not a loadable checkpoint")


# ---- 4. impossible sizes: OME-XML that lies about the pixel data, a field beyond memory ---------------------
@pytest.mark.parametrize("key,value,named", [
    ("SizeX", 64_000_000, "7.63 GiB per plane"),
    ("SizeY", 6_400_000, "781 MiB per plane"),
    ("SizeC", 400_000, "3.05 GiB in memory"),
    ("SizeT", 1_000_000, "30.5 GiB in memory"),
    ("SizeZ", 1_000_000, "30.5 GiB in memory"),
])
def test_ome_xml_sizes_that_lie_about_the_pixel_data_are_refused_before_reading(cli, tmp_path, key, value, named):
    """An OME-TIFF of 4 planes of 64 x 64 px whose XML (patched after writing) claims far more: tifffile would
    read other pages or allocate every claimed plane (and fill the missing ones with zeros)."""
    import numpy as np
    import tifffile
    from acq_data import PINHOLES_UM, hazy_steps, ome_xml, write_ome

    xml = ome_xml([{"pinhole": p} for p in PINHOLES_UM], (64, 64))
    src = write_ome(tmp_path / "lies.ome.tif", np.stack(hazy_steps()), xml)
    honest = {"SizeX": 64, "SizeY": 64, "SizeC": 4, "SizeT": 1, "SizeZ": 1}[key]
    tifffile.tiffcomment(src, xml.replace(f'{key}="{honest}"', f'{key}="{value}"').encode())
    t0 = time.time()
    result = cli("ingest", src, "-o", tmp_path / "l.zarr", "-q")
    errors = [line for line in result.stderr.splitlines() if line.startswith("dehaze: error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{key}={value}" in errors[0] and named in errors[0] and "lies.ome.tif" in errors[0], errors[0]
    assert time.time() - t0 < 20 and not (tmp_path / "l.zarr").exists()


def test_a_field_beyond_the_machines_memory_is_refused_before_reading(cli, tmp_path, monkeypatch):
    import tifffile
    from acq_data import PINHOLES_UM, hazy_steps

    from acquisition import ingest as ingest_mod

    for pinhole, image in zip(PINHOLES_UM, hazy_steps()):
        tifffile.imwrite(tmp_path / f"ph{pinhole:g}um.tif", image)
    monkeypatch.setattr(ingest_mod, "physical_memory_bytes", lambda: 48 * 2**10)  # a 48 KiB machine: 2 x 32 KiB do not fit
    read = []
    monkeypatch.setattr(ingest_mod, "_read_position", lambda *a: read.append(a))
    result = cli("ingest", tmp_path, "-o", tmp_path / "l.zarr", "-q", "--set", r"pinhole_pattern=ph([\d.]+)um",
                 "--set", "pixel_size_um=0.1", "--set", "um_per_au=80")
    one_line_error(result, "one field is 4 steps of 64 x 64 px (uint16", "64 KiB to read and register, more than this machine's 48 KiB")
    assert not read and not (tmp_path / "l.zarr").exists()


def test_posterior_samples_beyond_memory_are_refused_before_any_work(cli, good, tmp_path):
    from training.config import TrainConfig
    from training.loop import train

    cfg = TrainConfig.model_validate({"model": {"kind": "hdn", "preset": "tiny"}, "steps": 1, "batch_size": 2,
                                      "patch_size": 16, "device": "cpu", "data": {"val_patches": 2}})
    train("hdn", [good], tmp_path / "hdn", cfg, show_progress=False)
    one_line_error(cli("predict", tmp_path / "hdn", "--input", good, "-o", tmp_path / "p.zarr", "--samples", "1000000000", "-q"),
                   "--samples 1000000000 (one-shot-hdn)", "16 x 16 px tile", "954 GiB for the input alone")
    assert not (tmp_path / "p.zarr").exists()


def test_a_tiff_input_whose_metadata_claims_missing_planes_is_refused_before_allocation(cli, run, tmp_path):
    """predict --input an OME-TIFF of 4 planes whose XML claims SizeT=1000000: tifffile would allocate 30 GiB of zeros."""
    import numpy as np
    import tifffile
    from acq_data import PINHOLES_UM, hazy_steps, ome_xml, write_ome

    xml = ome_xml([{"pinhole": p} for p in PINHOLES_UM], (64, 64))
    src = write_ome(tmp_path / "lies.ome.tif", np.stack(hazy_steps()), xml)
    tifffile.tiffcomment(src, xml.replace('SizeT="1"', 'SizeT="1000000"').encode())
    result = cli("predict", run, "--input", src, "-o", tmp_path / "p.zarr", "-q")
    errors = [line for line in result.stderr.splitlines() if line.startswith("dehaze: error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "claims 4000000 planes" in errors[0] and "30.5 GiB" in errors[0], errors[0]
    assert not (tmp_path / "p.zarr").exists()
