"""dehaze export: BioImage Model Zoo packages of unet and pixel runs, checked by bioimageio.core's own model test
with the network switched off; the torchscript weights compute what dehaze's network computes; dehaze predict
takes a package as a run; every refusal is one line, exit code 2, nothing written."""

from __future__ import annotations

import io
import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dehaze.export import export_run, load_package
from dehaze.runs import RunInfo, load_model
from dehaze.store import open_ladder
from dehaze.strategies import ModelBundle, pixel_indi
from training.config import TrainConfig
from training.loop import train

pytest.importorskip("bioimageio.core")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the format's torchscript weights


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No network for the module: every connection attempt fails (and is recorded), bioimageio's cache is a
    temporary folder."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test (dehaze export must work offline)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path_factory.mktemp("bioimageio-cache")))
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield attempts


@pytest.fixture(scope="module")
def pixel_run(good, tmp_path_factory) -> Path:
    """A 3-step pixel (InDI, straight path) run on ``good``."""
    cfg = TrainConfig.model_validate({"model": {"kind": "pixel", "base_channels": 4, "depth": 2, "time_embed_dim": 8},
                                      "steps": 3, "batch_size": 2, "patch_size": 16, "device": "cpu",
                                      "optim": {"lr": 1e-2}, "data": {"val_patches": 2}})
    out = tmp_path_factory.mktemp("pixel") / "pixel"
    train("pixel", [good], out, cfg, show_progress=False)
    return out


@pytest.fixture(scope="module")
def unet_zip(run, offline, tmp_path_factory):
    out = tmp_path_factory.mktemp("unet-export") / "unet.zip"
    return export_run(run, out)


@pytest.fixture(scope="module")
def pixel_zip(pixel_run, offline, tmp_path_factory):
    out = tmp_path_factory.mktemp("pixel-export") / "pixel.zip"
    return export_run(pixel_run, out, step=2)


def _rdf(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def _npy(path: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(path) as zf:
        return np.load(io.BytesIO(zf.read(name)))


@pytest.mark.parametrize("which", ["unet_zip", "pixel_zip"])
def test_bioimageio_core_model_test_passes_offline(which, request, offline):
    result = request.getfixturevalue(which)
    summary = result.test_summary
    assert result.test_status == "passed" == summary.status, summary.details
    checks = {d.name: d.status for d in summary.details}
    for fmt in ("pytorch_state_dict", "torchscript"):  # each weights format reproduced the test output
        assert checks[f"Reproduce test outputs from test inputs ({fmt})"] == "passed"
        assert any(n.startswith(f"Run {fmt} inference") for n in checks)  # and ran at other sizes and batch sizes
    assert offline == []  # nothing tried to reach the network
    rdf = _rdf(result.path)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    with zipfile.ZipFile(result.path) as zf:
        names = set(zf.namelist())
    assert {"cover.png", "README.md", "run.json", "dehaze_unet.py", "test_input.npy", "test_output.npy"} <= names


def test_the_package_carries_normalisation_config_and_provenance(unet_zip, run):
    rdf, info = _rdf(unet_zip.path), RunInfo.model_validate_json((run / "run.json").read_text())
    norm = info.normalization
    pre, post = rdf["inputs"][0]["preprocessing"], rdf["outputs"][0]["postprocessing"]
    assert {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": norm.offset, "std": norm.scale}} in pre
    assert post[0] == {"id": "scale_linear", "kwargs": {"gain": norm.scale, "offset": norm.offset}}
    assert {p["id"] for p in pre + post} == {"ensure_dtype", "fixed_zero_mean_unit_variance", "scale_linear"}
    assert RunInfo.model_validate(rdf["config"]["dehaze"]["run"]) == info
    with zipfile.ZipFile(unet_zip.path) as zf:
        readme = zf.read("README.md").decode()
    ref = info.data[0]
    assert ref.path in readme and ref.manifest_sha256 in readme and ref.manifest_sha256 in rdf["description"]
    assert "base_channels: 4" in readme and "## Validation" in readme and "ODE walk" in readme
    assert unet_zip.step == 3  # the default: the ladder's haziest step


def test_torchscript_computes_what_the_network_computes(unet_zip, pixel_zip, run, pixel_run, good):
    """At the test size, at another size and batch size: the traced module is dehaze's network."""
    x = _npy(unet_zip.path, "test_input.npy")
    other = np.stack([open_ladder(good).image(f)[3, 4:28, 0:40] for f in open_ladder(good).fields])[:, None].astype(np.float32)
    for result, run_dir in ((unet_zip, run), (pixel_zip, pixel_run)):
        info, net = load_model(run_dir)
        with zipfile.ZipFile(result.path) as zf:
            traced = torch.jit.load(io.BytesIO(zf.read("weights.torchscript.pt")))
        for image in (x, other):
            xn = torch.from_numpy(info.normalization.apply(image))
            with torch.no_grad():
                if info.kind == "unet":
                    mine = net(xn)
                else:  # R(x_s, s, s) at the exported step s = 2
                    mine = pixel_indi(ModelBundle(pixel=net), xn, [2.0, 0.0])
                np.testing.assert_allclose(traced(xn).numpy(), mine.numpy(), rtol=1e-5, atol=1e-6)
        # no device fixed at tracing (a constant CPU tensor would break the module on a GPU)
        assert not any("torch.device(" in mod.code for mod in traced.modules() if hasattr(mod, "code"))
        expected = _npy(result.path, "test_output.npy")
        assert not np.allclose(expected, x)  # the network did something to the test image
    assert _rdf(pixel_zip.path)["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["t"] == 2.0


def _prediction(path: Path) -> dict[str, np.ndarray]:
    store = open_ladder(path)
    return {f: store.image(f)[...] for f in store.fields}


@pytest.mark.parametrize("kind", ["unet", "pixel"])
def test_predict_from_the_package_equals_predict_from_the_run(kind, cli, good, run, pixel_run, unet_zip, pixel_zip, tmp_path):
    run_dir, package = (run, unet_zip.path) if kind == "unet" else (pixel_run, pixel_zip.path)
    for source, out in ((run_dir, "run.zarr"), (package, "zip.zarr")):
        result = cli("predict", source, "--input", good, "-o", tmp_path / out, "-q")
        assert result.exit_code == 0, result.stderr
    from_run, from_zip = _prediction(tmp_path / "run.zarr"), _prediction(tmp_path / "zip.zarr")
    assert from_run.keys() == from_zip.keys()
    for f in from_run:
        np.testing.assert_array_equal(from_zip[f], from_run[f])
    info, _ = load_package(package)
    assert info == load_model(run_dir)[0]


def _run_of_kind(tmp_path: Path, run: Path, model: dict) -> Path:
    """A run directory holding only a run.json of another kind (export refuses it before anything else)."""
    info = json.loads((run / "run.json").read_text())
    info["kind"] = model["kind"]
    info["config"] = TrainConfig.model_validate({"model": model, "patch_size": 16}).model_dump(mode="json")
    (tmp_path / model["kind"]).mkdir()
    (tmp_path / model["kind"] / "run.json").write_text(json.dumps(info))
    return tmp_path / model["kind"]


def _refused(result, *words: str) -> None:
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dehaze: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_refusals_are_one_line_and_write_nothing(cli, run, pixel_run, good, tmp_path):
    for model in ({"kind": "hdn", "preset": "tiny"}, {"kind": "flow"}):
        other = _run_of_kind(tmp_path, run, model)
        _refused(cli("export", other, "-o", tmp_path / "h.zip"), f"{model['kind']!r} run cannot be exported", "unet", "pixel")
    _refused(cli("export", tmp_path / "no-run", "-o", tmp_path / "n.zip"), "not a dehaze run directory")
    (tmp_path / "taken.zip").write_text("mine")
    _refused(cli("export", run, "-o", tmp_path / "taken.zip"), "exists")
    assert (tmp_path / "taken.zip").read_text() == "mine"
    _refused(cli("export", run, "-o", good / "inside.zip"), "inside the Zarr store")
    _refused(cli("export", run, "-o", tmp_path / "model.tar"), ".zip")
    _refused(cli("export", run, "-o", tmp_path / "no-folder" / "m.zip"), "does not exist")
    _refused(cli("export", pixel_run, "-o", tmp_path / "p.zip", "--step", "9"), "--step 9", "1, 2, 3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow", "hdn", "taken.zip"]
    assert not (good / "inside.zip").exists()


def test_a_failed_export_leaves_nothing(run, tmp_path, monkeypatch, offline):
    import dehaze.export as export_mod

    class Failed:
        status, details = "failed", []

    monkeypatch.setattr(export_mod, "run_bioimageio_test", lambda path: Failed())
    with pytest.raises(RuntimeError, match="bioimageio.core's test failed"):
        export_run(run, tmp_path / "m.zip")
    assert list(tmp_path.iterdir()) == []  # neither the package nor its partial file


def test_predict_refuses_packages_it_cannot_use(cli, good, unet_zip, tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("rdf.yaml", yaml.safe_dump({"type": "model", "format_version": "0.5.12", "name": "someone else's"}))
    _refused(cli("predict", foreign, "--input", good, "-o", tmp_path / "p.zarr"), "dehaze did not export", "dehaze export")
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(unet_zip.path) as src, zipfile.ZipFile(damaged, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:-8] + b"xxxxxxxx" if name == "weights.pt" else data)
    _refused(cli("predict", damaged, "--input", good, "-o", tmp_path / "p.zarr"), "sha256")
    assert not (tmp_path / "p.zarr").exists()


def test_a_source_image_pixel_run_exports_its_one_shot_estimate(good, offline, tmp_path):
    """R(x_t, x_s, t, s) exported at x_t = x_s: one input image, fed to both channels."""
    cfg = TrainConfig.model_validate({"model": {"kind": "pixel", "base_channels": 4, "depth": 2, "time_embed_dim": 8,
                                                "source_image": True},
                                      "steps": 2, "batch_size": 2, "patch_size": 16, "device": "cpu",
                                      "optim": {"lr": 1e-2}, "data": {"val_patches": 2}})
    train("pixel", [good], tmp_path / "pixel", cfg, show_progress=False)
    result = export_run(tmp_path / "pixel", tmp_path / "p.zip", step=3)
    assert result.test_status in (None, "passed")
    info, net = load_model(tmp_path / "pixel")
    x = _npy(result.path, "test_input.npy")
    with zipfile.ZipFile(result.path) as zf:
        traced = torch.jit.load(io.BytesIO(zf.read("weights.torchscript.pt")))
    xn = torch.from_numpy(info.normalization.apply(x))
    with torch.no_grad():
        np.testing.assert_allclose(traced(xn).numpy(), pixel_indi(ModelBundle(pixel=net), xn, [3.0, 0.0]).numpy(),
                                   rtol=1e-5, atol=1e-6)
