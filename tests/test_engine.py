"""The inference engine and the strategies: every strategy runs, limit identities between strategies,
tiled equals untiled, seeded repeats, K posterior samples, per-row resume, bounded memory on big inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dehaze import engine as engine_mod
from dehaze.engine import DEFAULT_TILE, EngineOptions, predict_field, run_tiles
from dehaze.normalization import Normalization
from dehaze.predict import allowed_strategies, load_runs
from dehaze.store import DatasetMeta, create_ladder, open_ladder
from dehaze.strategies import STRATEGIES, ModelBundle, StrategyParams, latent_loop, pixel_indi, schedule_for
from dehaze.tiling import tile_spans
from tests.conftest import simulate_tiny_ladder
from training.config import TrainConfig
from training.loop import train

CPU = torch.device("cpu")
T = 3  # the tiny ladder has steps 0..3
MODELS = {
    "unet": {"base_channels": 4, "depth": 2},
    # sample_delta 1.5: the InDI walk from step 3 is [3, 1.5, 0], so its trajectory skips steps 1 and 2
    "pixel": {"base_channels": 4, "depth": 2, "time_embed_dim": 8, "sample_delta": 1.5},
    "flow": {"base_channels": 4, "depth": 2, "time_embed_dim": 8, "mmse_samples": 2},
    "hdn": {"preset": "tiny", "mmse_samples": 2},
    "hvae": {"preset": "tiny"},
    "latent": {"width": 8, "time_embed_dim": 8},
    "degradation": {"width": 8, "pool_size": 3},
}
BASE = {"latent": "hvae", "degradation": "latent"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A ladder of 2 fields of 64x96 (4 steps) and every kind of run, tiny and briefly trained."""
    root = tmp_path_factory.mktemp("engine")
    ladder = root / "ladder.zarr"
    simulate_tiny_ladder(ladder, 2, [64, 96])
    runs = {}
    for kind, model in MODELS.items():
        cfg = TrainConfig.model_validate({"model": {"kind": kind, **model}, "steps": 8, "batch_size": 2, "patch_size": 32,
                                          "seed": 1, "device": "cpu", "optim": {"lr": 1e-2},
                                          "log": {"log_every": 100, "val_every": 1000, "ckpt_every": 1000},
                                          "data": {"val_patches": 2}})
        runs[kind] = root / kind
        train(kind, [ladder], runs[kind], cfg, base_run=runs.get(BASE.get(kind, "")), show_progress=False)
    return ladder, runs


@pytest.fixture(scope="module")
def loaded(setup):
    _, runs = setup
    return load_runs([runs["unet"], runs["pixel"], runs["flow"], runs["hdn"], runs["degradation"]], CPU)


@pytest.fixture(scope="module")
def tiles(setup, loaded):
    """(2, 1, 32, 32) normalised crops of the haziest step, one per field (distinct images)."""
    ladder, _ = setup
    store = open_ladder(ladder)
    norm = loaded.infos["hvae"].normalization
    return torch.from_numpy(np.stack([norm.apply(store.image(f)[T, 16:48, 32:64]) for f in store.fields]))[:, None]


def _pred(path: Path) -> dict[str, np.ndarray]:
    store = open_ladder(path)
    return {f: store.image(f)[...] for f in store.fields}


# ---- every strategy runs -----------------------------------------------------------------------------
def test_every_strategy_runs_on_tiny_models(cli, setup, tmp_path):
    ladder, runs = setup
    result = cli("predict", runs["unet"], runs["pixel"], runs["flow"], runs["hdn"], runs["degradation"], "--input", ladder,
                 "-o", tmp_path / "all", "--strategy", "all", "--samples", "2", "-q")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(f"{n}.zarr" for n in STRATEGIES)
    source = open_ladder(ladder)
    for name, spec in STRATEGIES.items():
        store = open_ladder(tmp_path / "all" / f"{name}.zarr")
        assert store.meta.prediction.method == name
        k = 2 if (spec.samples or "hvae" in spec.needs) else 1
        assert store.meta.prediction.strategy["samples"] == k
        # the engine's tile: HDN's training patch size (a ladder VAE is right only there), else the default
        assert store.meta.prediction.strategy["tile"] == (32 if name == "one-shot-hdn" else DEFAULT_TILE), name
        for f in store.fields:
            image, std = store.image(f)[...], store.extra(f, "std")[...]
            assert image.shape == std.shape == (T + 1, 64, 96) and image.dtype == std.dtype == np.float32, name
            assert np.isfinite(image).all() and np.isfinite(std).all() and (std >= 0).all(), name
            assert not np.allclose(image, source.image(f)[...]), name  # the models changed something
            if k == 1:
                assert (std == 0).all(), name  # deterministic: no spread
            else:
                assert std.max() > 0, name  # posterior samples differ somewhere
            if spec.one_shot:
                assert "trajectory" not in store.root[f], name
                continue
            traj = store.extra(f, "trajectory")[...]
            assert traj.shape == (T + 1, 64, 96) and traj.dtype == np.float32, name
            visited = {int(t) for t in schedule_for(spec, T, MODELS["pixel"]["sample_delta"] if spec.schedule == "indi" else 1.0)
                       if float(t).is_integer()}
            if spec.schedule == "indi":
                assert visited == {3, 0}  # its walk [3, 1.5, 0] skips steps 2 and 1 (and the early walk's stop, 1)
            for t in range(T + 1):
                assert (np.isfinite(traj[t]).all() if t in visited else np.isnan(traj[t]).all()), (name, t)
            # the walk's last estimate is the prediction made from the haziest input (with K > 1 the latent
            # prediction is the mean of posterior samples drawn around that estimate)
            if k == 1:
                np.testing.assert_allclose(traj[0], image[T], rtol=1e-5, atol=1e-3)


# ---- limit identities -----------------------------------------------------------------------------------
@torch.no_grad()
def test_strategy_limits(loaded, tiles):
    b = loaded.bundle
    assert set(allowed_strategies(loaded)) == set(STRATEGIES)
    x, ladder = tiles, [3.0, 2.0, 1.0, 0.0]
    run = lambda name, bundle=b, schedule=ladder, **kw: STRATEGIES[name].fn(bundle, x, schedule, **kw)  # noqa: E731
    direct = run("latent-direct")
    assert direct.shape == x.shape and torch.isfinite(direct).all()
    # alpha = 1: every running combination is the direct loop; alpha = 0.5 really mixes
    for name in ("latent-combine-d", "latent-combine-r", "latent-combine-dr"):
        assert torch.allclose(run(name, params=StrategyParams(alpha=1.0)), direct, atol=1e-6), name
        assert not torch.allclose(run(name, params=StrategyParams(alpha=0.5)), direct, atol=1e-4), name
    # a one-step schedule [t, 0] is the one-shot latent restorer decode(R(E(x), t)), for every non-refining variant
    # (R: the degradation run's restorer, which that run fine-tunes on its loop's states)
    t = torch.full((len(x),), 3.0)
    one_shot = b.hvae.decode(b.degradation.restorer(b.hvae.encode(x, sample=False), t))
    for name in ("latent-direct", "latent-combine-d", "latent-combine-r", "latent-combine-dr", "latent-cold"):
        assert torch.allclose(run(name, schedule=[3.0, 0.0]), one_shot, atol=1e-6), name
        assert torch.allclose(run(name, schedule=[3.0, 0.0], params=StrategyParams(alpha=1.0)), run("latent-direct", schedule=[3.0, 0.0]), atol=1e-6)
    # pixel InDI with [t, 0] is R(x, t)
    assert torch.allclose(pixel_indi(b, x, [3.0, 0.0]), b.pixel(x, t, t, x_source=x), atol=1e-6)
    # Cold Diffusion: its first step (from T, no G(T+1)) is the direct one; from then on it differs
    seen_direct, seen_cold = {}, {}
    run("latent-direct", callback=lambda s, e: seen_direct.setdefault(s, e.clone()))
    cold = run("latent-cold", callback=lambda s, e: seen_cold.setdefault(s, e.clone()))
    assert list(seen_cold) == ladder == list(seen_direct)  # an estimate at every step, then the final one
    assert torch.allclose(seen_cold[3.0], seen_direct[3.0]) and torch.allclose(seen_cold[2.0], seen_direct[2.0])
    assert not torch.allclose(cold, direct, atol=1e-4)
    assert torch.equal(seen_cold[0.0], cold)
    # the refinement variants re-encode: they run and differ from the direct loop
    for name in ("latent-refine-d", "latent-refine-r", "latent-refine-dr"):
        out = run(name)
        assert torch.isfinite(out).all() and not torch.allclose(out, direct, atol=1e-4), name
    # no hidden state: the same inputs give the same output
    assert torch.equal(run("latent-combine-dr"), run("latent-combine-dr"))
    with pytest.raises(ValueError, match="degradation"):
        latent_loop(ModelBundle(hvae=b.hvae, latent=b.latent), x, ladder)


@torch.no_grad()
def test_oracle_and_identity_loops_attribute_the_drift(setup, loaded, tiles):
    """The oracle loop (D = the ladder's own latents) estimates decode(R(E(x_t), t)) at every step t: the
    one-shot latent estimate from the true x_t; the identity loop restores its own estimate again."""
    ladder_path, _ = setup
    store = open_ladder(ladder_path)
    norm = loaded.infos["hvae"].normalization
    steps = torch.from_numpy(np.stack([norm.apply(store.image(f)[:, 16:48, 32:64]) for f in store.fields]))  # (2, T+1, 32, 32)
    b, x, schedule = loaded.bundle, tiles, [3.0, 2.0, 1.0, 0.0]
    restorer, hvae = b.degradation.restorer, b.hvae
    seen: dict[float, torch.Tensor] = {}
    STRATEGIES["latent-oracle"].fn(b, x, schedule, ladder=steps, callback=lambda t, e: seen.setdefault(t, e.clone()))
    for t in (3, 2, 1):
        one_shot = hvae.decode(restorer(hvae.encode(steps[:, t : t + 1], sample=False), torch.full((2,), float(t))))
        assert torch.allclose(seen[float(t)], one_shot, atol=1e-5), t
    with pytest.raises(ValueError, match="every step"):
        STRATEGIES["latent-oracle"].fn(b, x, schedule)
    seen.clear()
    STRATEGIES["latent-identity"].fn(b, x, schedule, callback=lambda t, e: seen.setdefault(t, e.clone()))
    z0_3 = restorer(hvae.encode(x, sample=False), torch.full((2,), 3.0))
    assert torch.allclose(seen[2.0], hvae.decode(restorer(z0_3, torch.full((2,), 2.0))), atol=1e-5)
    direct = {}
    STRATEGIES["latent-direct"].fn(b, x, schedule, callback=lambda t, e: direct.setdefault(t, e.clone()))
    assert not torch.allclose(direct[2.0], seen[2.0], atol=1e-4)  # the learned G moved something


def test_predict_and_evaluate_report_how_far_the_degradation_moves(cli, setup, tmp_path):
    ladder, runs = setup
    recorded = json.loads((runs["degradation"] / "report.json").read_text())["degradation_check"]
    result = cli("predict", runs["degradation"], "--input", ladder, "-o", tmp_path / "p.zarr", "--strategy", "latent-cold", "-q")
    assert result.exit_code == 0, result.stderr
    assert "moved / residual" in result.stdout and "t=2 " in result.stdout
    assert open_ladder(tmp_path / "p.zarr").meta.prediction.strategy["degradation_check"] == recorded
    result = cli("evaluate", tmp_path / "p.zarr", "--truth", ladder, "--report", tmp_path / "r")
    assert result.exit_code == 0, result.stderr
    assert "moved / residual" in result.stdout
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["methods"]["latent-cold"]["degradation_check"]["per_step"].keys() == recorded["per_step"].keys()


def test_the_oracle_needs_every_step_of_the_input(cli, setup, tmp_path):
    import tifffile

    ladder, runs = setup
    image = tmp_path / "one.tif"
    tifffile.imwrite(image, open_ladder(ladder).image("field_000")[T])
    result = cli("predict", runs["degradation"], "--input", image, "--step", str(T), "-o", tmp_path / "o.zarr",
                 "--strategy", "latent-oracle", "-q")
    assert result.exit_code == 2 and "every step" in result.stderr and not (tmp_path / "o.zarr").exists()
    result = cli("predict", runs["degradation"], "--input", image, "--step", str(T), "-o", tmp_path / "all",
                 "--strategy", "all", "-q")
    assert result.exit_code == 0, result.stderr
    made = {p.name for p in (tmp_path / "all").iterdir()}
    assert "latent-direct.zarr" in made and "latent-oracle.zarr" not in made


# ---- tiling ---------------------------------------------------------------------------------------------
def test_tiled_equals_untiled_for_pixel_indi(cli, setup, tmp_path):
    ladder, runs = setup
    args = [runs["pixel"], "--input", ladder, "--strategy", "pixel-indi", "-q"]
    assert cli("predict", *args, "-o", tmp_path / "whole.zarr", "--tile", "256").exit_code == 0
    assert cli("predict", *args, "-o", tmp_path / "tiled.zarr", "--tile", "48", "--margin", "16", "--batch-size", "3").exit_code == 0
    whole, tiled = _pred(tmp_path / "whole.zarr"), _pred(tmp_path / "tiled.zarr")
    for f in whole:
        assert np.abs(whole[f] - tiled[f]).max() <= 1e-4 * np.abs(whole[f]).max()  # measured ~8e-6


def test_tiled_is_close_to_untiled_for_a_latent_strategy(cli, setup, tmp_path):
    """No layer of the latent pipeline sees the whole tile (no global pooling or normalisation; the HVAE's
    top prior is a per-channel constant), but the receptive field of encoder + latent nets + decoder at the
    coarsest level (~±60 px) is wider than any practical margin, so a tile's cropped border leaks into its
    kept centre a little, and a bit more with every latent step. Measured on these models (max |diff| /
    image range, over all steps): tile 48 / margin 16: 4e-4 (mean 3e-5); tile 32 / margin 8: 5e-3. We assert
    tile 48 / margin 16 within 3e-3 (max) and 2e-4 (mean), far below the model's own effect on the image."""
    ladder, runs = setup
    args = [runs["degradation"], "--input", ladder, "--strategy", "latent-direct", "-q"]
    assert cli("predict", *args, "-o", tmp_path / "whole.zarr", "--tile", "256").exit_code == 0
    assert cli("predict", *args, "-o", tmp_path / "tiled.zarr", "--tile", "48", "--margin", "16", "--batch-size", "3").exit_code == 0
    whole, tiled = _pred(tmp_path / "whole.zarr"), _pred(tmp_path / "tiled.zarr")
    source = open_ladder(ladder)
    for f in whole:
        scale = np.abs(whole[f]).max()
        diff = np.abs(whole[f] - tiled[f])
        assert diff.max() <= 3e-3 * scale and diff.mean() <= 2e-4 * scale, (diff.max() / scale, diff.mean() / scale)
        effect = np.abs(whole[f][1:] - source.image(f)[1:].astype(np.float32)).mean()
        assert diff.mean() < effect / 50


# ---- seeds, samples --------------------------------------------------------------------------------------
def test_seeded_predictions_repeat_exactly(cli, setup, tmp_path):
    ladder, runs = setup
    common = [runs["degradation"], "--input", ladder, "--strategy", "latent-direct", "--samples", "3", "-q"]
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert cli("predict", *common, "-o", tmp_path / f"{name}.zarr", "--seed", seed).exit_code == 0
    stores = {n: open_ladder(tmp_path / f"{n}.zarr") for n in "abc"}
    for f in stores["a"].fields:
        for array in ("0", "std", "trajectory"):
            a, b, c = (stores[n].root[f][array][...] for n in "abc")
            assert np.array_equal(a, b, equal_nan=True), array
            if array in ("0", "trajectory"):  # the walk runs on posterior means: no seed in its estimate
                assert np.array_equal(a, c, equal_nan=True), array
            else:
                assert not np.allclose(a, c, equal_nan=True), array  # another seed, other posterior samples


def test_k_samples_mean_and_std(loaded, tiles):
    """Without a spec posterior (the flow and HDN samplers' way: each of the K walks is random itself), the
    engine runs K walks per tile: the mean is theirs, the std their spread, each tile's own."""
    b = loaded.bundle
    spec = STRATEGIES["latent-direct"]
    images = tiles[:, 0].numpy()
    captured = []
    sampled = {"on": False}

    def capturing(bundle, x, schedule, *, callback=None):
        out = spec.fn(bundle, x, schedule, callback=callback)
        if sampled["on"]:  # a random strategy: the walk, then one posterior sample around its estimate
            out = spec.posterior(bundle, out, 1)[0]
        captured.append(out.clone())
        return out

    schedule = schedule_for(spec, T)
    # deterministic encodings: K copies agree, std is 0, and each tile's mean is its own (order survives batching)
    m1, s1, tr1 = run_tiles(capturing, b, images, schedule, EngineOptions(samples=1), CPU, T + 1, True)
    m3, s3, _ = run_tiles(capturing, b, images, schedule, EngineOptions(samples=3), CPU, T + 1, True)
    assert m1.shape == s1.shape == images.shape and tr1.shape == (T + 1, *images.shape)
    assert (s1 == 0).all() and np.abs(s3).max() < 1e-5
    np.testing.assert_allclose(m3, m1, atol=1e-5)
    assert not np.allclose(m1[0], m1[1])
    # random walks: the MMSE is the mean of the K samples of each tile, std their spread
    captured.clear()
    torch.manual_seed(0)
    sampled["on"] = True
    mean, std, traj = run_tiles(capturing, b, images, schedule, EngineOptions(samples=4), CPU, T + 1, True)
    (samples,) = captured
    samples = samples.view(len(images), 4, *images.shape[1:]).numpy()  # sample j of tile i is row i*K + j
    np.testing.assert_allclose(mean, samples.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, samples.std(1), rtol=1e-4, atol=1e-6)
    assert std.max() > 0 and np.isfinite(traj).all()
    # the walk itself runs on posterior means: its final estimate, recorded at step 0, is the K = 1 one
    np.testing.assert_allclose(traj[0], m1, atol=1e-5)
    assert np.abs(mean - m1).max() > 0  # sampled, not the posterior-mean encoding


def test_latent_samples_are_drawn_around_the_walk_estimate(loaded, tiles):
    """With the spec's posterior (how predict runs the latent strategies), the walk runs once per tile, its
    estimate is the mean whatever K (the samples do not move it), and std and samples are the K posterior
    samples drawn around it: their spread, seeded."""
    b, spec = loaded.bundle, STRATEGIES["latent-direct"]
    images, schedule = tiles[:, 0].numpy(), schedule_for(spec, T)
    walks = []

    def counting(bundle, x, schedule, *, callback=None):
        walks.append(len(x))
        return spec.fn(bundle, x, schedule, callback=callback)

    m1, s1, _ = run_tiles(counting, b, images, schedule, EngineOptions(samples=1), CPU, T + 1, True, posterior=spec.posterior)
    torch.manual_seed(0)
    drawn = []
    m4, s4, traj = run_tiles(counting, b, images, schedule, EngineOptions(samples=4), CPU, T + 1, True,
                             samples_out=drawn, posterior=spec.posterior)
    assert walks == [len(images), len(images)]  # one walk per tile, not K
    np.testing.assert_array_equal(m4, m1)  # the estimate itself: K > 1 loses nothing against K = 1
    (samples,) = drawn
    assert samples.shape == (len(images), 4, *images.shape[1:]) and (s1 == 0).all()
    np.testing.assert_allclose(s4, samples.std(1), rtol=1e-4, atol=1e-6)
    assert s4.max() > 0 and np.isfinite(traj).all()
    torch.manual_seed(0)
    again = []
    run_tiles(counting, b, images, schedule, EngineOptions(samples=4), CPU, T + 1, False, samples_out=again, posterior=spec.posterior)
    np.testing.assert_array_equal(again[0], samples)  # seeded: the same samples


# ---- fast paths ---------------------------------------------------------------------------------------
@torch.no_grad()
def test_fast_paths_agree_with_the_plain_fp32_run(loaded, tiles):
    """channels-last is exact; bf16 autocast (CPU here) stays within 2 % of the values (bf16 keeps 8 bits of
    mantissa: ~0.4 % per rounding; these barely trained models have a nearly flat output); skipping the
    intermediate decodes (no callback: units whose trajectory is not recorded) changes nothing."""
    import copy

    images, schedule = tiles[:, 0].numpy(), schedule_for(STRATEGIES["latent-cold"], T)
    fn = STRATEGIES["latent-cold"].fn
    results = {}
    for name, opts in {"plain": EngineOptions(channels_last=False, precision="fp32"),
                       "channels_last": EngineOptions(channels_last=True, precision="fp32"),
                       "bf16": EngineOptions(channels_last=True, precision="bf16")}.items():
        bundle = engine_mod.prepare_bundle(copy.deepcopy(loaded.bundle), opts)
        conv = next(m for m in bundle.hvae.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == opts.channels_last
        results[name] = run_tiles(fn, bundle, images, schedule, opts, CPU, T + 1, True)
    plain, cl, bf16 = results["plain"], results["channels_last"], results["bf16"]
    span = np.ptp(plain[0])
    np.testing.assert_allclose(cl[0], plain[0], atol=1e-5 * span)
    np.testing.assert_allclose(cl[2], plain[2], atol=1e-5 * span)
    assert np.abs(bf16[0] - plain[0]).max() <= 0.02 * np.abs(plain[0]).max() and not np.array_equal(bf16[0], plain[0])
    # no callback, no intermediate decodes: the same final estimate, bit for bit
    x = torch.from_numpy(images)[:, None]
    seen = []
    with_cb = fn(loaded.bundle, x, schedule, callback=lambda t, e: seen.append(t))
    assert torch.equal(fn(loaded.bundle, x, schedule), with_cb) and seen == schedule
    _, _, no_traj = run_tiles(fn, loaded.bundle, images, schedule, EngineOptions(), CPU, T + 1, False)
    assert no_traj is None


def test_tile_geometry_keeps_half_of_every_tile():
    from dehaze.tiling import tile_geometry

    pad_h, pad_w, th, tw, rows, cols = tile_geometry(100, 300, tile=64, margin=32, multiple=16)
    assert (pad_h, pad_w, th, tw) == (112, 304, 64, 64)
    for spans, length in ((rows, pad_h), (cols, pad_w)):
        assert spans[0][1] == 0 and spans[-1][2] == length  # the kept parts partition the axis
        assert all(hi - lo >= 16 for _, lo, hi in spans[:-1])  # margin capped at tile / 4: a step of 32 px
        assert all(b[1] == a[2] for a, b in zip(spans, spans[1:]))
    assert tile_geometry(40, 40, tile=64, margin=32, multiple=16)[2:4] == (48, 48)  # one tile: no margin
    assert tile_geometry(40, 40, tile=64, margin=32, multiple=16)[4] == [(0, 0, 48)]


# ---- resume ---------------------------------------------------------------------------------------------
def test_killed_latent_predict_resumes_to_the_same_result(cli, setup, tmp_path, monkeypatch):
    ladder, runs = setup
    # tile 48 on 64 rows: 2 tile rows per step, 4 steps -> 8 units per field; K=2 samples, seeded
    common = [runs["degradation"], "--input", ladder, "--strategy", "latent-combine-dr", "--samples", "2", "--seed", "5",
              "--tile", "48", "--margin", "16", "-q"]
    assert cli("predict", *common, "-o", tmp_path / "ref.zarr").exit_code == 0
    real, calls = engine_mod.run_tiles, {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8 + 3:  # batch 8 = 4 tiles x 2 samples: one call per unit -> field_001, third unit
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "run_tiles", interrupting)
    result = cli("predict", *common, "-o", tmp_path / "p.zarr")
    assert result.exit_code == 130 and "rerun" in result.stderr
    partial = open_ladder(tmp_path / "p.zarr", require_complete=False)
    assert partial.completed_fields() == {"field_000"} and partial.field_progress("field_001") == 2
    monkeypatch.setattr(engine_mod, "run_tiles", real)
    assert cli("predict", *common, "-o", tmp_path / "p.zarr").exit_code == 0
    ref, resumed = open_ladder(tmp_path / "ref.zarr"), open_ladder(tmp_path / "p.zarr")
    for f in ref.fields:
        for array in ("0", "std", "trajectory"):
            assert np.array_equal(ref.root[f][array][...], resumed.root[f][array][...], equal_nan=True), (f, array)


# ---- bounded memory ---------------------------------------------------------------------------------------
class RecordingArray:
    """A lazy array that records the size of every read."""

    def __init__(self, array) -> None:
        self.array, self.reads = array, []

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, index):
        block = self.array[index]
        self.reads.append(block.shape)
        return block


def identity(bundle, x, schedule, *, callback=None):
    if callback:
        callback(0.0, x)
    return x


def test_large_field_is_streamed_row_by_row(tmp_path):
    size, tile = 2048, 256
    src = zarr.open(str(tmp_path / "big.zarr"), mode="w", shape=(1, size, size), chunks=(1, 256, 256), dtype="uint16")
    rng = np.random.default_rng(0)
    for y in range(0, size, 512):
        src[0, y : y + 512] = rng.integers(0, 4000, (512, size), dtype=np.uint16)
    source = RecordingArray(src)
    meta = DatasetMeta(source="prediction", manifest={}, manifest_sha256="big", n_steps=1, pinhole_au=[None],
                       spatial_axes=["y", "x"], pixel_size_um={"y": 1.0, "x": 1.0}, fields=["field_000"])
    out, _ = create_ladder(tmp_path / "out.zarr", meta)
    norm = Normalization(offset=100.0, scale=3000.0)
    opts = EngineOptions(tile=tile, margin=16, batch_size=4, trajectory=False)
    predict_field(identity, None, lambda h: [0.0], source, norm, out, "field_000", 0, opts, CPU, multiple=4, show_progress=False)
    # every read is one tile row (at most `tile` rows x the width), never the whole image
    assert source.reads and all(np.prod(r) <= tile * size for r in source.reads), source.reads[:3]
    assert max(r[0] for r in source.reads) == tile and len(source.reads) == len(tile_spans(size, tile, 16))
    assert out.completed_fields() == {"field_000"}
    result = out.root["field_000"]["0"]
    for y in (0, 1000, size - 7):  # the identity strategy gives the input back, stitched without seams
        np.testing.assert_allclose(result[0, y], src[0, y].astype(np.float32), atol=1e-2)


def test_compiled_bundle_gives_the_same_estimates(loaded, tiles):
    """--compile: torch.compile of each network's forward and of the HVAE's encode/decode. The "eager"
    backend traces every graph through dynamo without code generation (inductor needs minutes on CPU),
    so this checks that the models and the strategies compile and that nothing changes."""
    import copy

    images, schedule = tiles[:, 0].numpy(), schedule_for(STRATEGIES["latent-combine-dr"], T)
    fn = STRATEGIES["latent-combine-dr"].fn
    plain = run_tiles(fn, loaded.bundle, images, schedule, EngineOptions(), CPU, T + 1, True)
    opts = EngineOptions(compile=True, compile_backend="eager")
    bundle = engine_mod.prepare_bundle(copy.deepcopy(loaded.bundle), opts)
    assert engine_mod.prepare_bundle(bundle, opts) is bundle  # compiling twice is a no-op
    compiled = run_tiles(fn, bundle, images, schedule, opts, CPU, T + 1, True)
    for a, b in zip(plain, compiled):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
