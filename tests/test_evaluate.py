"""``dehaze evaluate``: prediction stores against a tiny simulated ladder, report JSON/PNGs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dehaze.errors import UserError
from dehaze.manifests import SimulationManifest
from dehaze.metrics import ms_ssim, ssim
from dehaze.store import DatasetMeta, PredictionInfo, create_ladder, open_ladder, step_stats_from_samples
from simulation.ladder import simulate_ladder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def truth_store(tmp_path_factory) -> Path:
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("truth") / "tiny.zarr"
    simulate_ladder(SimulationManifest.model_validate(TINY), out, show_progress=False)
    return out


def make_prediction(path: Path, truth_path: Path, method: str, make_plane, *, input_sha256: str | None = None, strategy=None,
                    trajectory=None) -> Path:
    """A prediction store whose plane h = make_plane(x_0, step h input) for every field of the truth store;
    with ``trajectory(x_0, ladder)`` -> (T+1, y, x) also the engine's ``trajectory`` extra."""
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
        extras = {} if trajectory is None else {"trajectory": np.asarray(trajectory(ladder[0], ladder), dtype=np.float32)}
        store.write_field(field, planes, extras)
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
        assert exact["psnr_range_invariant"] is None or exact["psnr_range_invariant"] > 100  # inf, or rounding's > 100 dB
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


def _walk(x0: np.ndarray, ladder: np.ndarray, *, final=None, skip=()) -> np.ndarray:
    """An engine-like trajectory (T+1, y, x): at step s >= 1 the estimate x_0 blurred by 0.6 s px (better
    towards t = 1); at t = 0 ``final(plane 1)`` (default: plane 1 itself, as every iterative strategy
    reports it); NaN at the steps in ``skip`` (not visited)."""
    traj = np.stack([x0] + [gaussian_filter(x0, 0.6 * s) for s in range(1, len(ladder))])
    traj[0] = traj[1] if final is None else final(traj[1])
    for s in skip:
        traj[s] = np.nan
    return traj


def test_trajectory_has_one_point_per_estimate_and_drift_per_transition(truth_store, tmp_path):
    from dehaze.evaluate import evaluate, image_metrics

    ladder = make_prediction(tmp_path / "ladder.zarr", truth_store, "ladder-walk", lambda x0, xt: x0, trajectory=_walk)
    fine = make_prediction(tmp_path / "fine.zarr", truth_store, "fine-walk", lambda x0, xt: x0,
                           trajectory=lambda x0, ld: _walk(x0, ld, final=lambda p1: p1 + 3.0))  # a t = 0 estimate of its own
    sparse = make_prediction(tmp_path / "sparse.zarr", truth_store, "sparse-walk", lambda x0, xt: x0,
                             trajectory=lambda x0, ld: _walk(x0, ld, skip=(2,)))
    unet = make_prediction(tmp_path / "unet.zarr", truth_store, "unet", lambda x0, xt: gaussian_filter(x0, 1.0))
    out = evaluate([ladder, fine, sparse, unet], truth_store, tmp_path / "r")
    methods = out["methods"]

    walk = methods["ladder-walk"]["trajectory"]
    assert walk["steps"] == [3, 2, 1] and walk["from_trajectory"]  # T points: the repeated t = 0 is not one
    for metric in ("psnr", "psnr_range_invariant", "frc_resolution_um", "ssim", "ms_ssim"):
        assert len(walk[metric]) == 3
    assert walk["psnr"] == sorted(walk["psnr"])  # less blur along the walk
    assert walk["drift_db_per_step"] == pytest.approx((walk["psnr"][-1] - walk["psnr"][0]) / 2)  # T - 1 transitions
    ri = walk["psnr_range_invariant"]
    assert walk["drift_range_invariant_db_per_step"] == pytest.approx((ri[-1] - ri[0]) / 2)
    truth = open_ladder(truth_store)
    spacing = (0.05, 0.05)
    expected = np.mean([image_metrics(open_ladder(ladder).extra(f, "trajectory")[3], truth.image(f)[0].astype(float), spacing, 100.0)["psnr"]
                        for f in truth.fields])
    assert walk["psnr"][0] == pytest.approx(expected)

    kept = methods["fine-walk"]["trajectory"]
    assert kept["steps"] == [3, 2, 1, 0]  # a t = 0 plane that differs from t = 1 is a point of its own
    assert kept["drift_db_per_step"] == pytest.approx((kept["psnr"][-1] - kept["psnr"][0]) / 3)
    holes = methods["sparse-walk"]["trajectory"]
    assert holes["steps"] == [3, 1] and holes["drift_db_per_step"] == pytest.approx(holes["psnr"][1] - holes["psnr"][0])

    for key in ("hazy_input", "unet"):  # constant references over the steps of every walk
        ref = methods[key]["trajectory"]
        assert ref["steps"] == [3, 2, 1, 0] and not ref["from_trajectory"] and ref["drift_db_per_step"] == 0.0
        assert ref["drift_range_invariant_db_per_step"] == 0.0
        assert len(set(ref["psnr"])) == 1 and len(ref["frc_resolution_um"]) == 4
    assert methods["hazy_input"]["trajectory"]["psnr"][0] == pytest.approx(methods["hazy_input"]["steps"]["3"]["mean"]["psnr"])
    assert methods["unet"]["trajectory"]["psnr_range_invariant"][0] == pytest.approx(methods["unet"]["steps"]["3"]["mean"]["psnr_range_invariant"])
    assert "T - 1 transitions" in out["conventions"]["trajectory"]
    assert (tmp_path / "r" / "study_psnr.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert data["methods"]["ladder-walk"]["trajectory"]["steps"] == [3, 2, 1]


def test_ssim_is_computed_on_offset_subtracted_values(truth_store, predictions, tmp_path):
    from dehaze.evaluate import evaluate, image_metrics

    dim = make_prediction(tmp_path / "dim.zarr", truth_store, "dim", lambda x0, xt: 100.0 + 0.5 * (x0 - 100.0))
    out = evaluate([predictions[1], dim], truth_store, tmp_path / "r")
    assert out["ssim_offset"] == {"kind": "camera", "value": 100.0, "source": "simulation manifest camera.offset_adu"}
    truth, field = open_ladder(truth_store), open_ladder(truth_store).fields[0]
    x0 = truth.image(field)[0].astype(float)
    for key in ("blurred", "dim"):
        pred = open_ladder(out["methods"][key]["store"]).image(field)[2].astype(float)
        got = out["methods"][key]["steps"]["2"]["per_field"][field]
        assert got["ssim"] == pytest.approx(ssim(pred - 100.0, x0 - 100.0))
        assert got["ms_ssim"] == pytest.approx(ms_ssim(pred - 100.0, x0 - 100.0))
    # half the signal: the 100-ADU pedestal hid it from SSIM's luminance term
    pred = open_ladder(dim).image(field)[2].astype(float)
    assert out["methods"]["dim"]["steps"]["2"]["per_field"][field]["ssim"] < ssim(pred, x0) - 0.05

    # no recorded offset: each target plane's minimum, so a constant added to both images changes nothing
    rng = np.random.default_rng(0)
    target = 50.0 * gaussian_filter(rng.random((40, 48)), 1.0)
    estimate = 0.7 * target + rng.normal(0, 0.5, target.shape)
    base = image_metrics(estimate, target, (0.05, 0.05))
    lifted = image_metrics(estimate + 100.0, target + 100.0, (0.05, 0.05))
    assert lifted["ssim"] == pytest.approx(base["ssim"], abs=1e-9) and lifted["ms_ssim"] == pytest.approx(base["ms_ssim"], abs=1e-9)
    scrambled = image_metrics(rng.permutation(estimate.ravel()).reshape(target.shape) + 100.0, target + 100.0, (0.05, 0.05))
    assert scrambled["ssim"] < base["ssim"] - 0.3  # structure still counts


def test_nan_pixels_are_refused_by_store_field_and_step(cli, truth_store, tmp_path):
    from dehaze.evaluate import evaluate

    def holed(x0, xt):  # one missing pixel in every plane
        out = xt.copy()
        out[3, 4] = np.nan
        return out

    pred = make_prediction(tmp_path / "holed.zarr", truth_store, "holed", holed)
    result = cli("evaluate", pred, "--truth", truth_store, "--report", tmp_path / "r")
    assert result.exit_code == 2, result.output
    field = open_ladder(truth_store).fields[0]
    assert "holed.zarr" in result.stderr and field in result.stderr and "input step 1" in result.stderr
    assert "NaN" in result.stderr and "1 of" in result.stderr and not (tmp_path / "r" / "metrics.json").exists()

    def torn(x0, ladder):  # a visited step with missing pixels is not an unvisited step
        traj = _walk(x0, ladder)
        traj[2, :5] = np.nan
        return traj

    walk = make_prediction(tmp_path / "torn.zarr", truth_store, "torn", lambda x0, xt: x0, trajectory=torn)
    with pytest.raises(UserError, match=rf"torn\.zarr: {field}, trajectory step 2: .*NaN"):
        evaluate([walk], truth_store, tmp_path / "r2")
    assert not (tmp_path / "r2" / "metrics.json").exists()


def test_report_json_never_carries_a_nan():
    from dehaze.evaluate import _json_safe

    assert _json_safe({"a": [1.0, float("inf")]}) == {"a": [1.0, None]}  # null: infinite (conventions)
    with pytest.raises(ValueError, match=r"\['b'\]\[1\] is NaN"):
        _json_safe({"b": [0.0, float("nan")]})
