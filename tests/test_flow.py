"""The conditional flow-matching restorer (issue #13): its loss, its ODE solvers, the warm start from a pixel
run, position-keyed noise, the std calibration, and train -> predict -> calibrate -> evaluate through the CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from dehaze.calibration import apply, calibrated, fit_factors, fit_scale_offset, reliability, reliability_of, step_fit
from dehaze.errors import UserError
from dehaze.models.flow import (
    FlowNet,
    flow_matching_loss,
    integrate,
    sample,
    sample_taus,
    straight_path,
    tau_grid,
    warm_start_from_restorer,
)
from dehaze.models.unet import UNet
from dehaze.noise import noise_key, position_noise
from dehaze.store import open_ladder

TINY_FLOW = ["--set", "model.base_channels=4", "--set", "model.depth=2", "--set", "model.time_embed_dim=8"]
TINY_TRAIN = ["--set", "steps=6", "--set", "batch_size=2", "--set", "patch_size=16", "--set", "device=cpu",
              "--set", "data.val_patches=2", "--set", "log.val_every=3", "-q"]


# ---- the loss and the solvers ------------------------------------------------------------------------------
class _KnownClean(nn.Module):
    """Stands in for the UNet inside a real FlowNet: outputs a fixed y_0 whatever its input, so the FlowNet's
    velocity is the straight path's exact field (y_0 - y_tau) / (1 - tau)."""

    def __init__(self, y0: torch.Tensor) -> None:
        super().__init__()
        self.y0, self.multiple = y0, 1

    def forward(self, x, t, s, extra):  # noqa: ANN001, ANN201
        return self.y0 + 0 * x[:, :1]


def test_the_loss_is_zero_for_the_exact_velocity_field():
    torch.manual_seed(0)
    x0, x_t, noise = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    tau = tau_grid(20)[torch.tensor([0, 5, 13, 19])]
    net = FlowNet(base_channels=4, depth=1, time_embed_dim=8, target_scale=0.5, loss_weight_exponent=1.0)  # the velocity MSE
    net.unet = _KnownClean(x0 / 0.5)
    t = torch.ones(4)
    assert flow_matching_loss(net, x_t, t, x0, noise, tau).item() < 1e-10
    # a field that is off by d everywhere costs d^2 (the MSE of the velocity, in units of target_scale)
    net.unet = _KnownClean(x0 / 0.5 + 0.1 * (1 - tau.view(-1, 1, 1, 1)))
    assert flow_matching_loss(net, x_t, t, x0, noise, tau).item() == pytest.approx(0.01, rel=1e-4)
    # weighted as the clean estimate's error (exponent 0): an estimate off by e costs e^2 at any tau, where
    # the velocity loss charges e^2 / (1 - tau)^2
    net.loss_weight_exponent = 0.0
    assert flow_matching_loss(net, x_t, t, x0, noise, tau).item() == pytest.approx(0.01 * (1 - tau).square().mean().item(), rel=1e-4)
    net.unet = _KnownClean(x0 / 0.5)
    assert flow_matching_loss(net, x_t, t, x0, noise, tau).item() < 1e-10
    # the path: noise at tau = 0, y_0 at tau = 1, velocity y_0 - noise
    y, v = straight_path(noise, x0, torch.tensor([0.0, 1.0, 0.5, 0.25]))
    torch.testing.assert_close(y[0], noise[0])
    torch.testing.assert_close(y[1], x0[1])
    torch.testing.assert_close(v, x0 - noise)
    np.testing.assert_allclose(tau_grid(20).numpy(), [k / 20 for k in range(20)], rtol=1e-6)


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 3, 19])
def test_a_walk_of_the_straight_field_lands_on_its_end_point(solver, steps):
    """v(y, tau) = (c - y) / (1 - tau), the field of the straight path to c: both solvers land on c exactly."""
    c, y = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.3, 0.7, -2.0])
    end = integrate(lambda z, tau: (c - z) / (1 - tau), y, sample_taus(steps), solver, last_step_euler=True)
    torch.testing.assert_close(end, c)


@pytest.mark.parametrize("steps", [2, 5, 20])
def test_euler_and_heun_on_linear_fields_give_their_analytic_end_points(steps):
    y0 = torch.tensor([1.0, -0.5])
    # v = a tau + b: the exact end point y0 + a/2 + b; Euler's left sums give y0 + b + a (N - 1) / (2N); Heun's
    # trapezoid is exact for a field linear in tau
    a, b = 3.0, -0.4
    taus = sample_taus(steps)
    torch.testing.assert_close(integrate(lambda z, tau: torch.full_like(z, a * tau + b), y0, taus, "heun"), y0 + a / 2 + b)
    torch.testing.assert_close(integrate(lambda z, tau: torch.full_like(z, a * tau + b), y0, taus, "euler"),
                               y0 + b + a * (steps - 1) / (2 * steps))
    # v = lam y: exact y0 e^lam; Euler y0 (1 + lam/N)^N, Heun y0 (1 + lam/N + lam^2 / 2N^2)^N; Heun is closer
    lam, h = 0.8, 1 / steps
    euler = integrate(lambda z, tau: lam * z, y0, taus, "euler")
    heun = integrate(lambda z, tau: lam * z, y0, taus, "heun")
    torch.testing.assert_close(euler, y0 * (1 + lam * h) ** steps)
    torch.testing.assert_close(heun, y0 * (1 + lam * h + (lam * h) ** 2 / 2) ** steps)
    exact = y0 * math.exp(lam)
    assert (heun - exact).abs().max() < (euler - exact).abs().max()


def test_a_warm_started_flow_net_starts_as_the_pixel_restorers_one_shot_estimate():
    torch.manual_seed(0)
    pixel = UNet(base_channels=4, depth=2, time_embed_dim=8, residual=False, source_conditioned=True)
    nn.init.normal_(pixel.head.weight, std=0.3)  # a trained-looking restorer: its output is not 0
    flow = FlowNet(base_channels=4, depth=2, time_embed_dim=8, target_scale=0.25)
    warm_start_from_restorer(flow, pixel)
    x_t, t = torch.rand(3, 1, 16, 16), torch.tensor([1.0, 2.0, 3.0])
    one_shot = pixel(x_t, t, t)
    with torch.no_grad():
        a = sample(flow, x_t, t, torch.randn(3, 1, 16, 16), steps=4)
        b = sample(flow, x_t, t, torch.randn(3, 1, 16, 16), steps=7, solver="heun")
    torch.testing.assert_close(a, one_shot, atol=1e-5, rtol=1e-4)  # any noise, any solver: the same estimate
    torch.testing.assert_close(b, one_shot, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="x0 parametrisation"):
        warm_start_from_restorer(FlowNet(base_channels=4, depth=2, time_embed_dim=8, parametrisation="velocity"), pixel)
    with pytest.raises(ValueError, match="base_channels"):
        warm_start_from_restorer(FlowNet(base_channels=8, depth=2, time_embed_dim=8), pixel)


def test_a_flow_net_warm_started_from_the_unet_baseline_starts_as_its_estimate():
    # the UNet has no time conditioning: the flow's FiLM layers start at zero (the identity), so it ignores
    # t, tau and the noise until it learns them
    torch.manual_seed(0)
    unet = UNet(base_channels=4, depth=2, residual=False)
    nn.init.normal_(unet.head.weight, std=0.3)
    flow = FlowNet(base_channels=4, depth=2, time_embed_dim=8, target_scale=0.5)
    warm_start_from_restorer(flow, unet)
    x_t, t = torch.rand(2, 1, 16, 16), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        got = sample(flow, x_t, t, torch.randn(2, 1, 16, 16), steps=5, solver="heun")
    torch.testing.assert_close(got, unet(x_t), atol=1e-5, rtol=1e-4)
    assert any(p.abs().sum() > 0 for n, p in flow.unet.named_parameters() if n.startswith("time_mlp."))  # can learn
    with pytest.raises(ValueError, match="non-residual"):
        warm_start_from_restorer(flow, UNet(base_channels=4, depth=2, residual=True))


def test_position_noise_depends_only_on_the_pixel():
    key = noise_key(0, 1, 2)
    whole = position_noise(key, 0, 0, 40, 48, 3)
    np.testing.assert_array_equal(position_noise(key, 8, 16, 20, 24, 3), whole[:, 8:28, 16:40])
    assert abs(whole.mean()) < 0.05 and abs(whole.std() - 1) < 0.05
    assert not np.allclose(whole[0], whole[1])  # samples differ
    assert not np.allclose(position_noise(noise_key(0, 1, 3), 0, 0, 40, 48, 3), whole)  # another key, other noise


# ---- calibration -------------------------------------------------------------------------------------------
def test_calibration_recovers_a_known_scale_and_offset():
    rng = np.random.default_rng(0)
    std = rng.uniform(0.5, 3.0, 400_000)
    error = rng.standard_normal(std.size) * (2.0 * std + 0.3)  # the true error is 2 std + 0.3
    before = reliability(std, error)
    scale, offset = fit_scale_offset(before)
    assert scale == pytest.approx(2.0, rel=0.03) and offset == pytest.approx(0.3, abs=0.06)
    after = reliability(apply(std, scale, offset), error)
    assert before.max_relative_gap() > 0.5 and after.max_relative_gap() < 0.05
    assert after.uce() < before.uce() / 10
    assert fit_scale_offset(reliability(std, 1.7 * std * rng.standard_normal(std.size)), offset=False)[0] == pytest.approx(1.7, rel=0.02)


def test_a_negative_offset_or_scale_is_not_fitted_so_a_calibrated_std_can_be_undone():
    """Errors of 2 std - 0.8: the unconstrained fit would give small spreads a negative std (floored at 0, not
    invertible); the fit keeps offset >= 0 and is then the fit through the origin."""
    rng = np.random.default_rng(1)
    std = rng.uniform(0.5, 3.0, 200_000)
    rel = reliability(std, rng.standard_normal(std.size) * (2.0 * std - 0.8))
    scale, offset = fit_scale_offset(rel)
    assert offset == 0.0 and scale == pytest.approx(fit_scale_offset(rel, offset=False)[0])
    assert np.all(apply(std, scale, offset) > 0)
    # an error that falls as the spread grows: no negative scale either (it would floor the large spreads at 0)
    rel = reliability(std, rng.standard_normal(std.size) * (4.0 - std))
    scale, offset = fit_scale_offset(rel)
    assert scale > 0 and offset == 0.0 and scale == pytest.approx(fit_scale_offset(rel, offset=False)[0])


def test_per_step_calibration_recovers_each_steps_scale_where_one_pooled_scale_cannot():
    """Two input steps whose spreads err by 0.7x and 2.5x (the CPU study's flow: 0.65 at step 1, 2.4-3.0 at x_T)
    over the same range of spreads: each step's own fit recovers its factor; one pooled fit cannot (pooled
    bins mix the two steps and look calibrated; each step alone is off by the ratio of its factor to the pooled)."""
    rng = np.random.default_rng(2)
    pairs = {}
    for t, factor in ((1, 0.7), (2, 2.5)):
        std = rng.uniform(0.5, 3.0, 200_000)
        pairs[t] = (std, factor * std * rng.standard_normal(std.size))
    cal = fit_factors(pairs)
    assert cal["per_step"]["1"]["scale"] == pytest.approx(0.7, rel=0.03) and cal["per_step"]["2"]["scale"] == pytest.approx(2.5, rel=0.03)
    assert all(reliability_of({t: p}, cal).max_relative_gap() < 0.05 for t, p in pairs.items())
    pooled = fit_factors(pairs, pooled=True)
    assert pooled["per_step"] == {} and reliability_of(pairs, pooled).max_relative_gap() < 0.05
    assert all(reliability_of({t: p}, pooled).max_relative_gap() > 0.2 for t, p in pairs.items())
    # a step the calibration was not fitted on (step 0, a step of another ladder) keeps its raw std, under a
    # pooled calibration too; no calibration leaves the std as it is
    assert cal["steps"] == [1, 2] and step_fit(cal, 2) == cal["per_step"]["2"] and step_fit(cal, 0) is None
    assert step_fit(pooled, 1) == {"scale": pooled["scale"], "offset": pooled["offset"]} and step_fit(pooled, 7) is None
    x = np.array([0.5, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(calibrated(cal, 0, x), x)
    np.testing.assert_array_equal(calibrated(pooled, 2, x), apply(x, pooled["scale"], pooled["offset"]))
    np.testing.assert_array_equal(calibrated(None, 1, x), x)


def test_a_step_whose_std_is_zero_is_left_out_of_the_fit():
    """A zero spread has no scale: fitting it would write std 0 for an error that is not (and a refit would
    divide by that scale); the step keeps its raw std and the others are fitted as before."""
    rng = np.random.default_rng(4)
    std = rng.uniform(0.5, 3.0, 100_000)
    pairs = {1: (np.zeros(std.size), 0.3 * rng.standard_normal(std.size)), 2: (std, 2.0 * std * rng.standard_normal(std.size))}
    for pooled in (False, True):
        cal = fit_factors(pairs, pooled=pooled)
        assert cal["steps"] == [2] and step_fit(cal, 1) is None and "1" not in cal["per_step"]
        assert step_fit(cal, 2)["scale"] == pytest.approx(2.0, rel=0.03)
    with pytest.raises(UserError, match="0 at every step"):
        fit_factors({1: pairs[1]})


def test_the_isotonic_map_follows_a_curved_reliability_that_no_scale_and_offset_fit():
    """The flow's shape within one step (CPU study): the error flat over most spreads, rising steeply in the top
    bins. A scale and offset miss bins at both ends; the monotone map through the bins fits every bin."""
    rng = np.random.default_rng(3)
    std = rng.uniform(0.05, 0.2, 400_000)
    true_error_std = 0.2 + 200 * np.maximum(std - 0.17, 0) ** 1.5  # flat 0.2, then rising steeply to 1.2
    pairs = {1: (std, true_error_std * rng.standard_normal(std.size))}
    linear, isotonic = fit_factors(pairs), fit_factors(pairs, method="isotonic")
    assert isotonic["map"] == "isotonic" and sorted(isotonic["per_step"]["1"]) == ["rmse", "std"]
    assert reliability_of(pairs, linear).max_relative_gap() > 0.15
    assert reliability_of(pairs, isotonic).max_relative_gap() < 0.10  # the goal; bins of a steep rise blur a little
    knots = isotonic["per_step"]["1"]
    assert np.all(np.diff(knots["std"]) > 0) and np.all(np.diff(knots["rmse"]) >= 0)  # monotone
    # below the first knot its value (never below the smallest error); above the last, in proportion to the
    # spread (a clamp would promise the largest spreads the top bin's RMSE)
    ends = calibrated(isotonic, 1, np.array([0.0, 10.0]))
    assert ends[0] == pytest.approx(knots["rmse"][0])
    assert ends[1] == pytest.approx(knots["rmse"][-1] / knots["std"][-1] * 10.0, rel=1e-5) and ends[1] > 10 * knots["rmse"][-1]


# ---- through the CLI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(good, tmp_path_factory):
    """A tiny pixel run, a flow run warm-started from it, and a velocity-parametrised flow run from scratch
    (its samples still follow their noise closely: what the tiling test needs), trained through the CLI."""
    from typer.testing import CliRunner

    from dehaze.cli import app

    root = tmp_path_factory.mktemp("flow")

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    assert cli("train", "pixel", "--data", good, "-o", root / "pixel", *TINY_FLOW, *TINY_TRAIN).exit_code == 0
    result = cli("train", "flow", "--data", good, "-o", root / "flow", "--base", root / "pixel", *TINY_FLOW, *TINY_TRAIN)
    assert result.exit_code == 0, result.stderr
    result = cli("train", "flow", "--data", good, "-o", root / "scratch", "--set", "model.parametrisation=velocity", *TINY_FLOW, *TINY_TRAIN)
    assert result.exit_code == 0, result.stderr
    return root


def test_train_flow_records_its_warm_start_and_resolved_scale(cli, good, runs, run, tmp_path):
    info = json.loads((runs / "flow" / "run.json").read_text())
    model = info["config"]["model"]
    assert model["warm_start"] == str((runs / "pixel").resolve()) and model["target_scale"] > 0
    assert info["config"]["optim"]["ema_decay"] == 0.995 and info["base_run"] is None  # predicts on its own
    rows = (runs / "flow" / "log.csv").read_text().splitlines()
    assert any(",val_psnr," in r for r in rows)
    # the one-shot UNet baseline (same base_channels and depth) is a base too
    result = cli("train", "flow", "--data", good, "-o", tmp_path / "from-unet", "--base", run, *TINY_FLOW, *TINY_TRAIN)
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "from-unet" / "run.json").read_text())["config"]["model"]["warm_start"] == str(run.resolve())
    # mistakes are one line: a base of the wrong kind, a base for a kind without one
    result = cli("train", "flow", "--data", good, "-o", tmp_path / "f", "--base", runs / "scratch", *TINY_FLOW, *TINY_TRAIN)
    assert result.exit_code == 2 and "is a 'flow' run; flow warm-starts from a 'pixel' or 'unet' run" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("train", "unet", "--data", good, "-o", tmp_path / "u", "--base", runs / "pixel", *TINY_TRAIN)
    assert result.exit_code == 2 and "builds on no other run" in result.stderr


def test_a_flow_run_from_before_the_loss_weighting_reads_as_the_velocity_loss_it_was_trained_with(runs, tmp_path):
    from dehaze.runs import read_run
    from training.config import FlowModel

    assert read_run(runs / "flow").config.model.loss_weight_exponent == FlowModel().loss_weight_exponent == 0.0
    old = tmp_path / "old"
    old.mkdir()
    info = json.loads((runs / "flow" / "run.json").read_text())
    del info["config"]["model"]["loss_weight_exponent"]  # written before the field existed
    (old / "run.json").write_text(json.dumps(info))
    assert read_run(old).config.model.loss_weight_exponent == 1.0  # so a study retrains it, a resume refuses


def test_flow_predict_tiled_equals_untiled_and_seeded_runs_repeat(cli, good, runs, tmp_path):
    common = [runs / "scratch", "--input", good, "--samples", "3", "--flow-steps", "3", "--flow-solver", "heun", "-q"]
    assert cli("predict", *common, "-o", tmp_path / "whole.zarr", "--tile", "256", "--write-samples").exit_code == 0
    assert cli("predict", *common, "-o", tmp_path / "tiled.zarr", "--tile", "16", "--margin", "4", "--batch-size", "4").exit_code == 0
    assert cli("predict", *common, "-o", tmp_path / "again.zarr", "--tile", "256").exit_code == 0
    assert cli("predict", *common, "-o", tmp_path / "seed1.zarr", "--seed", "1").exit_code == 0
    whole, tiled, again, seed1 = (open_ladder(tmp_path / f"{n}.zarr") for n in ("whole", "tiled", "again", "seed1"))
    assert whole.meta.prediction.strategy["flow_steps"] == 3 and whole.meta.prediction.strategy["samples"] == 3
    for f in whole.fields:
        scale = np.abs(whole.image(f)[...]).max()
        for name in ("0", "std"):
            a, b = whole.root[f][name][...], tiled.root[f][name][...]
            assert np.abs(a - b).max() <= 1e-4 * scale, name  # the noise is keyed by pixel, not by tile
            assert np.array_equal(a, again.root[f][name][...])
            assert not np.allclose(a, seed1.root[f][name][...])  # another seed, other samples
        samples = whole.root[f]["samples"][...]
        assert samples.shape == (whole.n_steps, 3, *whole.image(f).shape[1:])
        np.testing.assert_allclose(samples.mean(1), whole.image(f)[...], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(samples.std(1), whole.extra(f, "std")[...], rtol=1e-4, atol=1e-3)
        assert whole.extra(f, "std")[1:].mean() > 0.01 * scale  # the samples follow their noise: tiling would show


def _step_scales(stdout: str) -> dict[int, float]:
    return {int(t): float(v) for t, v in re.findall(r"step (\d+): scale ([0-9.e+-]+),", stdout)}


def test_calibrate_stores_the_factors_and_later_predictions_apply_them(cli, good, runs, tmp_path):
    try:
        _calibrate_then_predict(cli, good, runs, tmp_path)
    finally:
        (runs / "flow" / "calibration.json").unlink(missing_ok=True)  # the other tests predict uncalibrated


def _calibrate_then_predict(cli, good, runs, tmp_path):
    common = [runs / "flow", "--input", good, "--samples", "3", "--flow-steps", "3", "-q"]
    assert cli("predict", *common, "-o", tmp_path / "raw.zarr").exit_code == 0
    result = cli("calibrate", tmp_path / "raw.zarr", "--truth", good, "--figure", tmp_path / "rel.png")
    assert result.exit_code == 0, result.stderr
    assert "std calibration" in result.stdout and (tmp_path / "rel.png").read_bytes()[:4] == b"\x89PNG"
    cal = json.loads((runs / "flow" / "calibration.json").read_text())
    assert cal["after"]["uce"] <= cal["before"]["uce"]
    assert cal["fitted_at"] == {"samples": 3, "flow_steps": 3, "flow_solver": "euler"}
    raw = open_ladder(tmp_path / "raw.zarr")
    assert sorted(cal["per_step"]) == [str(t) for t in range(1, raw.n_steps)] == [str(t) for t in cal["steps"]]
    assert _step_scales(result.stdout) == pytest.approx({int(t): v["scale"] for t, v in cal["per_step"].items()}, rel=1e-3)
    assert cli("predict", *common, "-o", tmp_path / "cal.zarr").exit_code == 0
    assert cli("predict", *common, "-o", tmp_path / "off.zarr", "--no-calibrated-std").exit_code == 0
    calibrated_store, off = (open_ladder(tmp_path / f"{n}.zarr") for n in ("cal", "off"))
    assert calibrated_store.meta.prediction.strategy["std_calibration"]["per_step"] == cal["per_step"]
    f = raw.fields[0]
    written, raw_std = calibrated_store.extra(f, "std")[...], raw.extra(f, "std")[...]
    np.testing.assert_array_equal(written[0], raw_std[0])  # step 0 was not fitted: its raw std
    for t in range(1, raw.n_steps):  # each step its own factors
        fit = step_fit(cal, t)
        np.testing.assert_allclose(written[t], fit["scale"] * raw_std[t] + fit["offset"], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(off.extra(f, "std")[...], raw_std)
    # refitting on a calibrated prediction undoes its calibration first: the same factors (to the float32
    # rounding of the written std, which can move a near-tie across an equal-count bin edge of this tiny
    # field; a fit on the calibrated std itself would give scales near 1)
    result = cli("calibrate", tmp_path / "cal.zarr", "--truth", good, "--dry-run")
    assert result.exit_code == 0 and "nothing written (--dry-run)" in result.stdout, result.stderr
    assert not (tmp_path / "cal-reliability.png").exists()  # a dry run writes no default figure
    assert _step_scales(result.stdout) == pytest.approx({int(t): v["scale"] for t, v in cal["per_step"].items()}, rel=0.01)
    # a prediction at other sampler settings (here K = 2) writes its raw std, and says so
    result = cli("predict", runs / "flow", "--input", good, "--samples", "2", "--flow-steps", "3", "-q", "-o", tmp_path / "k2.zarr")
    assert result.exit_code == 0, result.stderr
    assert "std written uncalibrated" in result.stderr and "samples = 3" in result.stderr
    k2 = open_ladder(tmp_path / "k2.zarr").meta.prediction.strategy
    assert k2["std_calibration"] is None and "samples = 3" in k2["std_calibration_skipped"]
    # --pooled: HazeMatching's one scale and offset, for every fitted step
    result = cli("calibrate", tmp_path / "raw.zarr", "--truth", good, "--pooled")
    assert result.exit_code == 0, result.stderr
    pooled = json.loads((runs / "flow" / "calibration.json").read_text())
    assert pooled["per_step"] == {} and not _step_scales(result.stdout)
    assert cli("predict", *common, "-o", tmp_path / "pooled.zarr").exit_code == 0
    pooled_std = open_ladder(tmp_path / "pooled.zarr").extra(f, "std")[...]
    np.testing.assert_allclose(pooled_std[1:], pooled["scale"] * raw_std[1:] + pooled["offset"], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(pooled_std[0], raw_std[0])
    # --method isotonic: a monotone map per step, applied by later predictions; it cannot be undone, so a
    # prediction written with it is not refitted (a one-line error naming the way out)
    result = cli("calibrate", tmp_path / "raw.zarr", "--truth", good, "--method", "isotonic")
    assert result.exit_code == 0, result.stderr
    assert "isotonic map" in result.stdout
    iso = json.loads((runs / "flow" / "calibration.json").read_text())
    assert iso["map"] == "isotonic" and sorted(iso["per_step"]) == sorted(cal["per_step"])
    assert cli("predict", *common, "-o", tmp_path / "iso.zarr").exit_code == 0
    iso_std = open_ladder(tmp_path / "iso.zarr").extra(f, "std")[...]
    for t in range(1, raw.n_steps):
        knots = iso["per_step"][str(t)]
        inside = raw_std[t] <= knots["std"][-1]  # between the knots: interpolated (above: in proportion, tested above)
        np.testing.assert_allclose(iso_std[t][inside], np.interp(raw_std[t][inside], knots["std"], knots["rmse"]), rtol=1e-5, atol=1e-6)
    result = cli("calibrate", tmp_path / "iso.zarr", "--truth", good, "--dry-run")
    assert result.exit_code == 2 and "isotonic map, which cannot be undone" in result.stderr and "--no-calibrated-std" in result.stderr
    # damaged calibration files: a one-line error at predict time, not a traceback
    for damaged in ({**iso, "per_step": {"1": {"std": [2.0, 1.0], "rmse": [0.1, 0.2]}}},
                    {**cal, "scale": float("nan")}, {**cal, "per_step": {"1": {"scale": -1.0, "offset": 0.0}}},
                    {**cal, "map": "cubic"}):
        (runs / "flow" / "calibration.json").write_text(json.dumps(damaged))
        result = cli("predict", *common, "-o", tmp_path / "bad.zarr")
        assert result.exit_code == 2 and "unreadable calibration" in result.stderr, damaged
        assert not (tmp_path / "bad.zarr").exists()


def test_calibrate_refuses_what_it_cannot_fit_honestly(cli, good, runs, run, tmp_path):
    """One-line errors, exit 2, nothing written into the run: a truth that is not the prediction's input, a
    prediction of another method, a figure into a missing folder, a store that is no prediction."""
    assert cli("predict", runs / "flow", "--input", good, "--samples", "2", "--flow-steps", "2", "-q", "-o", tmp_path / "p.zarr").exit_code == 0
    assert cli("predict", run, "--input", good, "-q", "-o", tmp_path / "unet.zarr").exit_code == 0
    cases = [((tmp_path / "p.zarr", "--truth", tmp_path / "unet.zarr"), "is not the ladder"),
             ((tmp_path / "unet.zarr", "--truth", good), "calibration is fitted for and applied to flow predictions"),
             ((tmp_path / "p.zarr", "--truth", good, "--figure", tmp_path / "missing" / "rel.png"), "does not exist"),
             ((good, "--truth", good), "not a prediction store")]
    for args, message in cases:
        result = cli("calibrate", *args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (runs / "flow" / "calibration.json").exists()
    # a run trained again since its prediction: the fit would be stored with weights that did not make it
    import shutil

    shutil.copytree(runs / "flow", tmp_path / "flow-copy")
    assert cli("predict", tmp_path / "flow-copy", "--input", good, "--samples", "2", "--flow-steps", "2", "-q", "-o", tmp_path / "c.zarr").exit_code == 0
    with (tmp_path / "flow-copy" / "checkpoint.pt").open("ab") as f:
        f.write(b"\0")  # other weights, as far as the checkpoint's identity goes
    result = cli("calibrate", tmp_path / "c.zarr", "--truth", good)
    assert result.exit_code == 2 and "trained again since this prediction" in result.stderr
    assert not (tmp_path / "flow-copy" / "calibration.json").exists()
    assert cli("calibrate", tmp_path / "c.zarr", "--truth", good, "--dry-run").exit_code == 0  # stores nothing: allowed


# ---- the posterior criteria in evaluate ---------------------------------------------------------------------
def test_high_frequency_power_ratio_tells_a_blur_from_a_sample():
    from scipy.ndimage import gaussian_filter

    from dehaze.posterior import high_frequency_power_ratio

    rng = np.random.default_rng(0)
    clean = gaussian_filter(rng.standard_normal((64, 64)), 1.0)
    px = (0.1, 0.1)
    assert high_frequency_power_ratio(clean, clean, px) == pytest.approx(1.0)
    assert high_frequency_power_ratio(gaussian_filter(clean, 2.0), clean, px) < 0.1  # an MMSE-like blur
    assert high_frequency_power_ratio(clean + 0.1 * rng.standard_normal(clean.shape), clean, px) > 1


def test_evaluate_reports_the_posterior_criteria_of_a_sampling_method(cli, good, runs, run, tmp_path):
    common = ["--input", good, "-q"]
    assert cli("predict", runs / "flow", *common, "-o", tmp_path / "flow.zarr", "--samples", "2", "--flow-steps", "2", "--write-samples").exit_code == 0
    assert cli("predict", run, *common, "-o", tmp_path / "unet.zarr").exit_code == 0
    result = cli("evaluate", tmp_path / "flow.zarr", tmp_path / "unet.zarr", "--truth", good, "--report", tmp_path / "rep")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    post = report["methods"]["flow"]["posterior"]
    assert post["samples"] == 2 and post["samples_written"] and "posterior" not in report["methods"]["one-shot-unet"]
    for t, entry in post["per_step"].items():
        gap = report["methods"]["flow"]["steps"][t]["mean"]["psnr"] - report["methods"]["one-shot-unet"]["steps"][t]["mean"]["psnr"]
        assert entry["mean_minus_unet_psnr_db"] == pytest.approx(gap, abs=1e-6)
        assert all(entry["frc_um"][k] > 0 for k in ("mean", "sample", "unet"))
        assert all(entry["high_frequency_power_ratio"][k] >= 0 for k in ("mean", "sample", "unet"))
    assert post["calibration"]["uce"] >= 0 and len(post["calibration"]["rmv"]) == 20
    assert (tmp_path / "rep" / "posterior.png").read_bytes()[:4] == b"\x89PNG"


def test_a_resumed_flow_run_equals_an_uninterrupted_one(cli, good, runs, tmp_path):
    """The noise and tau come from torch's RNG, which the checkpoint keeps: 2 steps then --resume to 4 (without
    --base: the run's recorded warm start is kept) give the weights 4 steps in one go give."""
    import torch as _torch

    args = ["--data", good, *TINY_FLOW, "--set", "optim.scheduler=constant", "--set", "batch_size=2", "--set", "patch_size=16",
            "--set", "device=cpu", "--set", "data.val_patches=2", "--set", "log.ckpt_every=1", "-q"]
    assert cli("train", "flow", "-o", tmp_path / "once", "--base", runs / "pixel", *args, "--set", "steps=4").exit_code == 0
    assert cli("train", "flow", "-o", tmp_path / "twice", "--base", runs / "pixel", *args, "--set", "steps=2").exit_code == 0
    result = cli("train", "flow", "-o", tmp_path / "twice", "--resume", *args, "--set", "steps=4")
    assert result.exit_code == 0, result.stderr
    once, twice = (_torch.load(tmp_path / n / "checkpoint.pt", weights_only=False) for n in ("once", "twice"))
    assert once["step"] == twice["step"] == 4
    for name, value in once["model"].items():
        assert _torch.equal(value, twice["model"][name]), name
    for name, value in once["ema"].items():
        assert _torch.equal(value, twice["ema"][name]), name


def test_a_flow_net_warm_started_from_a_source_image_restorer_starts_as_its_one_shot():
    torch.manual_seed(0)
    pixel = UNet(base_channels=4, depth=2, time_embed_dim=8, residual=False, source_conditioned=True, source_image=True)
    nn.init.normal_(pixel.head.weight, std=0.3)
    flow = FlowNet(base_channels=4, depth=2, time_embed_dim=8, target_scale=0.5)
    warm_start_from_restorer(flow, pixel)
    x_t, t = torch.rand(2, 1, 16, 16), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        got = sample(flow, x_t, t, torch.randn(2, 1, 16, 16), steps=5)
        torch.testing.assert_close(got, pixel(x_t, t, t, x_source=x_t), atol=1e-5, rtol=1e-4)
