"""``dehaze evaluate``: prediction stores against a tiny simulated ladder, report JSON/PNGs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dehaze.manifests import SimulationManifest
from dehaze.store import DatasetMeta, PredictionInfo, create_ladder, open_ladder, step_stats_from_samples
from simulation.ladder import simulate_ladder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def truth_store(tmp_path_factory) -> Path:
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("truth") / "tiny.zarr"
    simulate_ladder(SimulationManifest.model_validate(TINY), out, show_progress=False)
    return out


def make_prediction(path: Path, truth_path: Path, method: str, make_plane, *, input_sha256: str | None = None, strategy=None) -> Path:
    """A prediction store whose plane h = make_plane(x_0, step h input) for every field of the truth store."""
    truth = open_ladder(truth_path)
    m = truth.meta
    info = PredictionInfo(
        method=method,
        run_dirs=[],
        input_store=str(truth_path),
        input_sha256=input_sha256 or m.manifest_sha256,
        strategy=strategy or {},
    )
    meta = DatasetMeta(
        source="prediction",
        prediction=info,
        manifest={},
        manifest_sha256=f"pred-{method}",
        n_steps=m.n_steps,
        pinhole_au=m.pinhole_au,
        spatial_axes=m.spatial_axes,
        pixel_size_um=m.pixel_size_um,
        fields=m.fields,
    )
    store, _ = create_ladder(path, meta)
    for field in m.fields:
        ladder = truth.image(field)[...].astype(np.float32)
        planes = np.stack([make_plane(ladder[0], ladder[h]) for h in range(m.n_steps)]).astype(np.float32)
        store.write_field(field, planes)
    store.finalize(step_stats=step_stats_from_samples([np.zeros(4)] * m.n_steps))
    return path


@pytest.fixture(scope="module")
def predictions(truth_store, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pred")
    perfect = make_prediction(root / "perfect.zarr", truth_store, "perfect", lambda x0, xt: x0)
    blurred = make_prediction(root / "blurred.zarr", truth_store, "blurred", lambda x0, xt: gaussian_filter(x0, 1.5))
    return perfect, blurred


def test_evaluate_report_numbers_and_figures(cli, truth_store, predictions, tmp_path):
    perfect, blurred = predictions
    report = tmp_path / "report"
    result = cli("evaluate", perfect, blurred, "--truth", truth_store, "--report", report)
    assert result.exit_code == 0, result.output
    assert "hazy_input" in result.stdout and "blurred" in result.stdout and "t=3" in result.stdout
    data = json.loads((report / "metrics.json").read_text())
    assert data["steps"] == [1, 2, 3] and data["target"] == "camera" and len(data["fields"]) == 3
    assert "data range" in data["conventions"]["psnr"] and "least squares" in data["conventions"]["psnr_range_invariant"]
    methods = data["methods"]
    assert list(methods) == ["hazy_input", "perfect", "blurred"]
    for t in ("1", "2", "3"):
        exact = methods["perfect"]["steps"][t]["mean"]
        assert exact["ssim"] == pytest.approx(1.0) and exact["ms_ssim"] == pytest.approx(1.0)
        assert exact["psnr"] is None  # infinite: equal to x_0 exactly (null in strict JSON)
        assert exact["psnr_range_invariant"] > 100
        assert exact["frc_resolution_um"] == pytest.approx(2 * 0.05)  # Nyquist
        blur = methods["blurred"]["steps"][t]["mean"]
        assert 5 < blur["psnr"] < 60 and blur["ssim"] < 0.99 and blur["frc_resolution_um"] > 0.1
        assert set(methods["blurred"]["steps"][t]["per_field"]) == set(data["fields"])
    hazy = methods["hazy_input"]
    assert hazy["kind"] == "identity"
    assert hazy["steps"]["1"]["mean"]["psnr"] > hazy["steps"]["3"]["mean"]["psnr"]  # haze grows with the step
    for name in ("psnr_per_step.png", "montage.png"):
        assert (report / name).read_bytes()[:8] == PNG_MAGIC


def test_evaluate_noise_free_target_and_one_shot(truth_store, predictions, tmp_path):
    from dehaze.evaluate import evaluate

    _, blurred = predictions
    one_shot = make_prediction(tmp_path / "unet.zarr", truth_store, "unet", lambda x0, xt: x0 + 1.0)
    out = evaluate([blurred, one_shot], truth_store, tmp_path / "r", target="noise_free")
    assert out["methods"]["unet"]["one_shot"] and not out["methods"]["blurred"]["one_shot"]
    camera = evaluate([blurred], truth_store, tmp_path / "c")
    assert out["methods"]["blurred"]["steps"]["1"]["mean"]["psnr"] != camera["methods"]["blurred"]["steps"]["1"]["mean"]["psnr"]


def test_evaluate_refuses_mismatched_and_wrong_stores(cli, truth_store, predictions, tmp_path):
    other = make_prediction(tmp_path / "other.zarr", truth_store, "other", lambda x0, xt: x0, input_sha256="f" * 64)
    result = cli("evaluate", other, "--truth", truth_store, "--report", tmp_path / "r")
    assert result.exit_code == 2
    assert "other.zarr" in result.stderr and "not from" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    result = cli("evaluate", truth_store, "--truth", truth_store, "--report", tmp_path / "r")
    assert result.exit_code == 2 and "not a prediction store" in result.stderr

    result = cli("evaluate", predictions[0], "--truth", predictions[1], "--report", tmp_path / "r")
    assert result.exit_code == 2 and "is a prediction store" in result.stderr
    assert not (tmp_path / "r").exists()  # refused before writing anything


def test_evaluate_noise_free_target_needs_noise_free_images(cli, truth_store, tmp_path):
    # a truth store without the noise_free extra (like an acquisition): copy the camera images only
    src = open_ladder(truth_store)
    meta = src.meta.model_copy(update={"status": "incomplete", "step_stats": None, "source": "acquisition"})
    bare, _ = create_ladder(tmp_path / "bare.zarr", meta)
    for field in src.fields:
        bare.write_field(field, src.image(field)[...])
    bare.finalize(step_stats=src.meta.step_stats)
    pred = make_prediction(tmp_path / "p.zarr", tmp_path / "bare.zarr", "p", lambda x0, xt: x0)
    result = cli("evaluate", pred, "--truth", tmp_path / "bare.zarr", "--report", tmp_path / "r", "--target", "noise_free")
    assert result.exit_code == 2 and "no noise-free image" in result.stderr and "--target camera" in result.stderr
