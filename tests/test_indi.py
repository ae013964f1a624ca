"""The consistent InDI: the pixel restorer trains on the straight path its sampler walks,
x_t = x_0 + (t/s)(x_s - x_0) with the source step s as a second condition."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dehaze.models import build_network
from dehaze.normalization import Normalization
from dehaze.store import open_ladder
from dehaze.strategies import ModelBundle, StrategyParams, indi_schedule, pixel_indi, pixel_indi_early
from tests.conftest import simulate_tiny_ladder
from training.config import PixelModel
from training.data import LadderPatches, split_fields
from training.tasks import restorer_loss


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    return simulate_tiny_ladder(tmp_path_factory.mktemp("indi") / "l.zarr", 2, [32, 32])


def test_straight_path_samples_lie_on_the_line_from_x_s_to_x_0(ladder):
    store = open_ladder(ladder)
    train, _ = split_fields([store], 0.0, 0)
    ds = LadderPatches([str(ladder)], train, "path", patch_size=16, norm=Normalization.from_stores([store]), seed=3,
                       length=20, augment=True, path="straight", target="noise_free")
    sources = set()
    for i in range(len(ds)):
        item = ds[i]
        s, t = float(item["s"]), float(item["t"])
        sources.add(s)
        assert s in (1.0, 2.0, 3.0) and 0 < t <= s
        expected = item["y"] + (t / s) * (item["x_s"] - item["y"])
        assert torch.allclose(item["x"], expected, atol=1e-5)  # path_noise_std defaults to 0 here
    assert len(sources) > 1


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_source_fraction_puts_that_share_of_samples_on_the_source_state(ladder, fraction):
    """t = s exactly (x_t = x_s, the state every walk starts from) for about ``fraction`` of the samples."""
    store = open_ladder(ladder)
    train, _ = split_fields([store], 0.0, 0)
    ds = LadderPatches([str(ladder)], train, "path", patch_size=16, norm=Normalization.from_stores([store]), seed=3,
                       length=40, augment=False, path="straight", source_fraction=fraction)
    at_source = [float(ds[i]["t"]) == float(ds[i]["s"]) for i in range(len(ds))]
    for i in range(len(ds)):
        if at_source[i]:
            assert torch.allclose(ds[i]["x"], ds[i]["x_s"], atol=1e-6)
    assert sum(at_source) == {0.0: 0, 1.0: 40}.get(fraction, sum(at_source))
    if fraction == 0.5:
        assert 8 <= sum(at_source) <= 32


class ExactRestorer(nn.Module):
    """R(x_t, t, s) = x_0 for a known x_0: the ideal restorer of the straight path."""

    source_conditioned = True

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, s):  # noqa: ANN001, ANN201
        return self.x0.expand_as(x)


def test_exact_restorer_walk_stays_on_the_straight_path_for_any_delta():
    g = torch.Generator().manual_seed(0)
    x0, xs = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    bundle = ModelBundle(pixel=ExactRestorer(x0))
    s = 3.0
    for delta in (1.0, 0.25, 0.7):
        seen = {}
        out = pixel_indi(bundle, xs, indi_schedule(s, delta), callback=lambda t, e, seen=seen: seen.setdefault(t, e))
        assert torch.allclose(out, x0, atol=1e-6)


def test_one_step_of_size_s_is_the_one_shot_estimate():
    torch.manual_seed(0)
    net = build_network(PixelModel(base_channels=4, depth=1, time_embed_dim=8)).eval()
    with torch.no_grad():
        nn.init.normal_(net.head.weight, std=0.1)  # not the identity: the comparison must mean something
        x = torch.rand(2, 1, 16, 16)
        one_shot = net(x, torch.full((2,), 3.0), torch.full((2,), 3.0), x_source=x)
        walked = pixel_indi(ModelBundle(pixel=net), x, [3.0, 0.0])
        fine = pixel_indi(ModelBundle(pixel=net), x, indi_schedule(3.0, 0.5))
    assert torch.equal(walked, one_shot)
    assert not torch.allclose(fine, one_shot)  # a real network's finer walk is a different estimate


def _path_batch(ladder, n: int) -> dict:
    """``n`` straight-path samples of the tiny ladder, stacked into a batch."""
    store = open_ladder(ladder)
    train, _ = split_fields([store], 0.0, 0)
    ds = LadderPatches([str(ladder)], train, "path", patch_size=16, norm=Normalization.from_stores([store]), seed=1,
                       length=n, augment=False, path="straight")
    return {k: torch.stack([ds[i][k] for i in range(n)]) for k in ds[0]}


def test_the_walk_loss_trains_on_the_state_one_sampler_step_reaches(ladder):
    batch = _path_batch(ladder, 8)
    torch.manual_seed(0)
    common = {"base_channels": 4, "depth": 1, "time_embed_dim": 8, "sample_delta": 0.5, "walk_span": "one-step"}
    plain = build_network(PixelModel(**common, walk_weight=0.0))
    walking = build_network(PixelModel(**common, walk_weight=1.0))
    walking.load_state_dict(plain.state_dict())
    with torch.no_grad():
        nn.init.normal_(plain.head.weight, std=0.1)
        walking.head.weight.copy_(plain.head.weight)
    assert restorer_loss(walking, batch) > restorer_loss(plain, batch)  # the extra term is there
    restorer_loss(walking, batch).backward()
    assert walking.head.weight.grad is not None and torch.isfinite(walking.head.weight.grad).all()


def test_walk_weight_needs_the_straight_path():
    with pytest.raises(ValueError, match="walk_weight needs path=straight"):
        PixelModel(path="ladder", walk_weight=0.5)
    assert PixelModel(path="ladder", walk_weight=0.0, source_image=False).walk_weight == 0.0


def test_the_uniform_walk_loss_state_is_a_jump_from_x_s_to_a_random_t(ladder):
    """walk_span=uniform: the state is x0_hat + (t/s)(x_s - x0_hat) for t ~ U(0, s) drawn from torch's RNG
    (so a seeded run repeats), x0_hat = R(x_s, s, s); the loss is the path term plus the loss there."""
    batch = _path_batch(ladder, 4)
    torch.manual_seed(0)
    net = build_network(PixelModel(base_channels=4, depth=1, time_embed_dim=8, walk_span="uniform"))
    with torch.no_grad():
        nn.init.normal_(net.head.weight, std=0.1)
        torch.manual_seed(5)
        got = restorer_loss(net, batch)
        torch.manual_seed(5)
        s = batch["s"]
        t = s * torch.rand(s.shape).clamp_min(1e-3)
        x_s = batch["x_s"]
        x0_hat = net(x_s, s, s, x_source=x_s)
        state = x0_hat + (t / s)[:, None, None, None] * (x_s - x0_hat)
        want = (F.mse_loss(net(batch["x"], batch["t"], s, x_source=x_s), batch["y"])
                + F.mse_loss(net(state, t, s, x_source=x_s), batch["y"]))
    assert torch.allclose(got, want, rtol=1e-5)
    assert PixelModel().walk_span == "uniform"


class GaussianMMSE(nn.Module):
    """The exact MMSE restorer of a Gaussian toy: x_0 ~ N(0, a^2) per pixel, x_s = x_0 + n, n ~ N(0, b^2),
    so x_t = x_0 + (t/s) n on the straight path and E[x_0 | x_t] = a^2 / (a^2 + (t/s)^2 b^2) x_t."""

    source_conditioned = True

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a2, self.b2 = a * a, b * b

    def forward(self, x, t, s):  # noqa: ANN001, ANN201
        r = (t / s)[:, None, None, None]
        return self.a2 / (self.a2 + r * r * self.b2) * x


def test_a_deterministic_walk_with_the_exact_mmse_restorer_loses_to_its_one_shot():
    """Why 'walk >= one-shot' in PSNR cannot hold for a restorer near the MMSE: with the exact E[x_0 | x_t],
    the walk's limit (delta -> 0) maps x_s to rho x_s, rho = a / sqrt(a^2 + b^2) (the transport map: its
    output has the prior's variance a^2), whose MSE is 2 / (1 + rho) times the one-shot MMSE a^2 b^2 / (a^2 + b^2)."""
    a, b, s = 1.0, 1.0, 3.0
    g = torch.Generator().manual_seed(0)
    x0 = a * torch.randn(4, 1, 64, 64, generator=g)
    xs = x0 + b * torch.randn(4, 1, 64, 64, generator=g)
    bundle = ModelBundle(pixel=GaussianMMSE(a, b))
    rho = a / (a * a + b * b) ** 0.5
    one_shot = pixel_indi(bundle, xs, [s, 0.0])
    assert torch.allclose(one_shot, a * a / (a * a + b * b) * xs)
    fine = pixel_indi(bundle, xs, indi_schedule(s, s / 256))
    assert torch.allclose(fine, rho * xs, rtol=1e-2)  # the walk's limit
    mse = {name: float(F.mse_loss(out, x0)) for name, out in (("one", one_shot), ("fine", fine))}
    assert mse["fine"] / mse["one"] == pytest.approx(2 / (1 + rho), rel=0.05)
    coarse = float(F.mse_loss(pixel_indi(bundle, xs, indi_schedule(s, s / 4)), x0))
    assert mse["one"] < coarse < mse["fine"]  # the loss grows as the step shrinks


def test_the_early_walk_returns_the_restorers_estimate_at_its_stop():
    """pixel-indi-early = the full walk's estimate R(x_t, t, s) at the first t <= indi_stop; the one-shot from
    a source step at or below the stop; the whole walk with indi_stop = 0."""
    torch.manual_seed(0)
    net = build_network(PixelModel(base_channels=4, depth=1, time_embed_dim=8)).eval()
    with torch.no_grad():
        nn.init.normal_(net.head.weight, std=0.1)
        bundle, x = ModelBundle(pixel=net), torch.rand(2, 1, 16, 16)
        seen: dict[float, torch.Tensor] = {}
        full = pixel_indi(bundle, x, indi_schedule(3.0, 0.5), callback=lambda t, e: seen.setdefault(t, e))
        early = pixel_indi_early(bundle, x, indi_schedule(3.0, 0.5), params=StrategyParams(indi_stop=1.2))
        assert torch.equal(early, seen[1.0]) and not torch.allclose(early, full)
        assert torch.equal(pixel_indi_early(bundle, x, indi_schedule(3.0, 0.5), params=StrategyParams(indi_stop=0.0)), full)
        assert torch.equal(pixel_indi_early(bundle, x, indi_schedule(1.0, 0.5), params=StrategyParams(indi_stop=1.0)),
                           pixel_indi(bundle, x, [1.0, 0.0]))
        ends: dict[float, torch.Tensor] = {}
        pixel_indi_early(bundle, x, indi_schedule(3.0, 0.5), params=StrategyParams(indi_stop=1.0), callback=lambda t, e: ends.setdefault(t, e))
        assert sorted(ends) == [0.0, 1.0, 1.5, 2.0, 2.5, 3.0] and torch.equal(ends[0.0], ends[1.0])


def test_the_early_walk_of_the_exact_restorer_is_x0():
    g = torch.Generator().manual_seed(0)
    x0, xs = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    out = pixel_indi_early(ModelBundle(pixel=ExactRestorer(x0)), xs, indi_schedule(3.0, 0.25))
    assert torch.allclose(out, x0, atol=1e-6)


class PathInverse(nn.Module):
    """R(x_t, x_s, t, s) that knows the straight path: at t = s a fixed estimate, below it the x_0 the path
    implies, (s x_t - t x_s) / (s - t): what the path's own samples at t < s teach a restorer that reads x_s."""

    source_conditioned, source_image = True, True

    def __init__(self, estimate: torch.Tensor) -> None:
        super().__init__()
        self.estimate = estimate

    def forward(self, x, t, s, x_source):  # noqa: ANN001, ANN201
        t, s = t[:, None, None, None], s[:, None, None, None]
        implied = (s * x - t * x_source) / (s - t).clamp_min(1e-12)
        return torch.where(t < s, implied, self.estimate.expand_as(x))


def test_with_the_source_image_the_path_restorer_walks_to_its_one_shot_for_any_delta():
    """Why the walk of a restorer reading x_s can only refine its one-shot by what the walk loss teaches: each
    step lands on the line from x_s to the estimates so far, where the path's x_0 is those estimates, so a
    restorer trained on the path alone hands back its first estimate at every step."""
    g = torch.Generator().manual_seed(0)
    estimate, xs = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    bundle = ModelBundle(pixel=PathInverse(estimate))
    for delta in (1.0, 0.25, 0.7):
        seen: dict[float, torch.Tensor] = {}
        out = pixel_indi(bundle, xs, indi_schedule(3.0, delta), callback=lambda t, e, seen=seen: seen.setdefault(t, e))
        torch.testing.assert_close(out, estimate, atol=1e-5, rtol=1e-5)
        assert all(torch.allclose(e, estimate, atol=1e-5) for e in seen.values())


def _source_image_net() -> nn.Module:
    torch.manual_seed(0)
    net = build_network(PixelModel(base_channels=4, depth=1, time_embed_dim=8, source_image=True)).eval()
    with torch.no_grad():
        nn.init.normal_(net.head.weight, std=0.1)  # not the zero map: what it reads shows in its output
    return net


def test_a_source_image_walk_reads_the_input_at_every_step():
    """R(x_t, x_s, t, s): the walk hands the restorer its input x_s beside every state it visits."""
    net, x = _source_image_net(), torch.rand(2, 1, 16, 16)
    schedule = indi_schedule(3.0, 1.0)
    with torch.no_grad():
        walked = pixel_indi(ModelBundle(pixel=net), x, schedule)
        state, s = x, torch.full((2,), 3.0)
        for t, t_next in zip(schedule, schedule[1:]):  # the walk written out, x_s held fixed
            r = net(state, torch.full((2,), t), s, x_source=x)
            state = ((t - t_next) / t) * r + (1 - (t - t_next) / t) * state
        one_shot = pixel_indi(ModelBundle(pixel=net), x, [3.0, 0.0])
        blind = net(x, s, s, x_source=torch.zeros_like(x))
    torch.testing.assert_close(walked, state)
    torch.testing.assert_close(one_shot, net(x, s, s, x_source=x))
    assert not torch.allclose(one_shot, blind)  # the source channel is read
    with pytest.raises(ValueError, match="pass x_source"):
        net(x, s, s)


def test_the_source_image_loss_reads_x_s_and_trains(ladder):
    batch = _path_batch(ladder, 4)
    net = _source_image_net().train()
    torch.manual_seed(5)
    loss = restorer_loss(net, batch)
    torch.manual_seed(5)
    other = restorer_loss(net, {**batch, "x_s": torch.zeros_like(batch["x_s"])})
    assert not torch.isclose(loss, other)  # both the path term and the walk term see x_s
    loss.backward()
    assert net.stem.weight.grad is not None and net.stem.weight.grad[:, 1].abs().sum() > 0


def test_folding_the_source_channel_is_exact_at_the_one_shot_state():
    # (what the flow's warm start from a source-image restorer relies on)
    from dehaze.models.unet import UNet, fold_source_channel

    net = _source_image_net()
    plain = UNet(base_channels=4, depth=1, time_embed_dim=8, residual=False, source_conditioned=True)
    plain.load_state_dict(fold_source_channel(net.state_dict()))
    x, s = torch.rand(2, 1, 16, 16), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(plain(x, s, s), net(x, s, s, x_source=x), atol=1e-6, rtol=1e-5)
    assert net.state_dict()["stem.weight"].shape[1] == 2  # the run's own weights are left as they were


def test_source_image_needs_the_straight_path():
    with pytest.raises(ValueError, match="source_image needs path=straight"):
        PixelModel(path="ladder", walk_weight=0.0, source_image=True)


def test_a_pixel_run_from_before_the_source_image_reads_as_x_t_alone_and_still_predicts(ladder, tmp_path):
    import json

    from dehaze.runs import load_model, read_run
    from training.config import TrainConfig
    from training.loop import train

    cfg = TrainConfig.model_validate({"model": {"kind": "pixel", "base_channels": 4, "depth": 1, "time_embed_dim": 8,
                                                "source_image": False}, "steps": 2, "batch_size": 2, "patch_size": 16,
                                      "device": "cpu", "data": {"val_patches": 2}})
    train("pixel", [ladder], tmp_path / "old", cfg, show_progress=False)
    info = json.loads((tmp_path / "old" / "run.json").read_text())
    del info["config"]["model"]["source_image"]  # written before the field existed
    (tmp_path / "old" / "run.json").write_text(json.dumps(info))
    assert read_run(tmp_path / "old").config.model.source_image is False and PixelModel().source_image is True
    _, net = load_model(tmp_path / "old")  # its weights fit the x_t-alone network it was trained as
    with torch.no_grad():
        assert pixel_indi(ModelBundle(pixel=net), torch.rand(1, 1, 16, 16), [2.0, 1.0, 0.0]).shape == (1, 1, 16, 16)
