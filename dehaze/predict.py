"""``dehaze predict``: apply trained runs to every step of a ladder store (or a TIFF) -> prediction store(s).

Plane h of a prediction is the estimate of x_0 made from input step h; ``std`` is the per-pixel spread of
K posterior samples; ``trajectory`` the x_0 estimate at each step of the walk from the haziest input (see
:mod:`dehaze.engine`). Runs a latent strategy needs are found through their bases (a degradation run
knows its latent run, which knows its HVAE run). ``strategy="all"`` writes one store per strategy the
runs allow into the output folder. Interrupted predictions resume at the next tile row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dehaze.device import pick_device
from dehaze.engine import DEFAULT_MARGIN, DEFAULT_TILE, EngineOptions, predict_field, prepare_bundle
from dehaze.errors import UserError
from dehaze.export import is_package, load_package
from dehaze.predict_config import PredictConfig
from dehaze.progress import progress_bar
from dehaze.runs import RunInfo, checkpoint_sha256, load_model, read_run, read_run_report
from dehaze.store import (
    DatasetMeta,
    LadderStore,
    PredictionInfo,
    check_output_store,
    finalize_with_step_stats,
    format_bytes,
    open_ladder,
    physical_memory_bytes,
    refuse_inside_store,
    writing_output,
)
from dehaze.strategies import STRATEGIES, ModelBundle, StrategyParams, StrategySpec, schedule_for
from training.config import MODEL_KINDS

# what `dehaze predict RUN` does with a run of each kind, as its model config declares
DEFAULT_STRATEGY = {kind: cls.default_strategy for kind, cls in MODEL_KINDS.items() if cls.default_strategy}
RESTORING_KINDS = tuple(DEFAULT_STRATEGY)  # kinds whose runs restore images (with their bases)


MAX_SINGLE_STEP = 1000  # --step of a single-image input
MAX_SINGLE_STACK_BYTES = 4 * 2**30  # the (step + 1, y, x) stack a single image at --step is predicted in


@dataclass
class InputLadder:
    """What predict reads: fields of (h, [z,] y, x) arrays, from a ladder store or a TIFF."""

    path: Path
    sha256: str
    fields: list[str]
    n_steps: int
    spatial_axes: list[str]
    pixel_size_um: dict[str, float]
    pinhole_au: list[float | None]
    arrays: dict[str, Any]
    whole_ladder: bool = True  # every step was measured (False: one image at --step, the rest zeros)


def open_input(path: str | Path, step: int | None = None) -> InputLadder:
    """A ladder store, or a TIFF: (h, y, x) planes are steps 0..h-1; a single (y, x) image is step ``step``."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):

        try:
            data = _read_tiff(path)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for a bad file
            raise UserError(f"{path}: not a readable TIFF ({exc})") from None
        data = np.asarray(data)
        if data.ndim == 2:
            if step is None:
                raise UserError(f"{path}: a single image needs --step T (which degradation step it was taken at)")
            if step > MAX_SINGLE_STEP or (step + 1) * data.nbytes > MAX_SINGLE_STACK_BYTES:
                raise UserError(f"--step {step}: a single image is predicted as step {step} of a {step + 1}-step ladder "
                                f"({(step + 1) * data.nbytes / 2**30:.1f} GiB in memory); ladders have a few steps "
                                f"(at most {MAX_SINGLE_STEP} here): give the step the image was taken at")
            stack = np.zeros((step + 1, *data.shape), dtype=data.dtype)
            stack[step] = data
            data, whole = stack, step == 0
        else:
            whole = True
        if data.ndim != 3:
            raise UserError(f"{path}: expected a (y, x) image or a (step, y, x) stack, got shape {data.shape}")
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return InputLadder(path, sha, ["field_000"], data.shape[0], ["y", "x"], {"y": 1.0, "x": 1.0},
                           [None] * data.shape[0], {"field_000": data}, whole_ladder=whole)
    store = open_ladder(path)
    if store.meta.source == "prediction":
        raise UserError(f"{path}: is a prediction store; predict from a ladder store")
    for field in store.fields:  # a deleted chunk would be predicted from zeros: refuse it before any work
        store.image(field).require_chunks()
    m = store.meta
    return InputLadder(path, m.manifest_sha256, store.fields, m.n_steps, m.spatial_axes, m.pixel_size_um,
                       m.pinhole_au, {f: store.image(f) for f in store.fields})


def _read_tiff(path: Path) -> np.ndarray:
    """The first series of a TIFF, refused before it is allocated when its metadata (OME-XML, ImageJ) claims
    planes the file does not hold (tifffile would allocate them all and fill them with zeros) or more bytes
    than this machine's memory."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        pages = list(series.pages)
        missing = sum(1 for pg in pages if pg is None)
        need = int(np.prod(series.shape, dtype=np.float64)) * series.dtype.itemsize
        if missing:
            raise UserError(f"{path}: its metadata claims {len(pages)} planes of shape {tuple(series.shape)} ({format_bytes(need)}) "
                            f"but {missing} are not in the file (truncated, or sizes that lie); copy or export the file again")
        ram = physical_memory_bytes()
        if ram and need > ram:
            raise UserError(f"{path}: a {tuple(series.shape)} {series.dtype} image is {format_bytes(need)}, more than this "
                            f"machine's {format_bytes(ram)} of memory; crop it or save it as a ladder store")
        return series.asarray(maxworkers=1)


@dataclass
class LoadedRuns:
    """The runs a prediction uses, one per kind: their networks (the bundle), descriptions and folders."""

    bundle: ModelBundle
    infos: dict[str, RunInfo]  # by kind
    dirs: dict[str, str]  # by kind


def load_runs(run_dirs: list[str | Path], device: torch.device) -> LoadedRuns:
    """Load every run (and the bases latent runs build on) into one bundle, one model per kind."""
    bundle = ModelBundle()
    infos: dict[str, RunInfo] = {}
    dirs: dict[str, str] = {}
    queue = [Path(r) for r in run_dirs]
    while queue:
        run = queue.pop(0)
        package = is_package(run)  # a `dehaze export` zip: the run's description and weights, self-contained
        info, model = load_package(run, device) if package else (read_run(run), None)
        if info.kind in infos:
            if Path(dirs[info.kind]).resolve() != run.resolve():
                raise UserError(f"{run}: a second {info.kind!r} run (first: {dirs[info.kind]}); give one run per kind")
            continue
        if model is None:
            _, model = load_model(run, device)
        bundle.add(info.kind, model)
        infos[info.kind], dirs[info.kind] = info, str(run)
        if info.base_run and not package:
            queue.append(Path(info.base_run))
    return LoadedRuns(bundle, infos, dirs)


def allowed_strategies(runs: LoadedRuns) -> list[str]:
    """The strategies whose every needed kind is among the loaded runs."""
    return [name for name, spec in STRATEGIES.items() if all(getattr(runs.bundle, k) is not None for k in spec.needs)]


def engine_options(cfg: PredictConfig) -> EngineOptions:
    """The engine's options from a prediction config (the per-strategy tile, margin and K are set later)."""
    return EngineOptions(tile=cfg.tile, margin=cfg.margin, batch_size=cfg.batch_size, seed=cfg.seed,
                         precision=cfg.precision, compile=cfg.compile, write_samples=cfg.write_samples)


def strategy_params(cfg: PredictConfig) -> StrategyParams:
    """The settings strategies get besides their networks (:class:`dehaze.strategies.StrategyParams`)."""
    return StrategyParams(alpha=cfg.alpha, flow_steps=cfg.flow_steps, flow_solver=cfg.flow_solver, indi_stop=cfg.indi_stop)


@dataclass
class PredictPlan:
    """What a prediction will read and write, every check done and nothing written (``--dry-run`` prints it)."""

    cfg: PredictConfig
    runs: LoadedRuns
    src: InputLadder
    out_paths: dict[str, Path]  # strategy -> its prediction store
    device: torch.device
    folder: Path | None  # the folder of stores of --strategy all

    def describe(self) -> str:
        lines = ["resolved prediction config: " + json.dumps(self.cfg.model_dump(mode="json"))]
        lines += [f"run {kind}: {self.runs.dirs[kind]}" for kind in self.runs.dirs]
        lines.append(f"input: {self.src.path} ({len(self.src.fields)} field(s) x {self.src.n_steps} steps"
                     f"{'' if self.src.whole_ladder else ', one image'})")
        for name, path in self.out_paths.items():
            spec, primary = STRATEGIES[name], self.runs.infos[STRATEGIES[name].primary]
            lines.append(f"would write {path}: {name} (tile {engine_tile(spec, primary, self.cfg.tile)} px, "
                         f"K = {samples_for(spec, primary, self.cfg.samples)}) on {self.device}")
        return "\n".join(lines)


def predict(run_dirs: list[str | Path], input_path: str | Path, output: str | Path, cfg: PredictConfig | None = None, *,
            step: int | None = None, overwrite: bool = False, replace_stale: bool = False,
            show_progress: bool = True) -> list[LadderStore]:
    """Predict x_0 from every step of every field with the given runs; one prediction store per strategy.

    ``cfg.samples`` (K) defaults to the HDN run's ``mmse_samples`` for one-shot-hdn and to 1 (posterior
    means, deterministic) for the latent strategies. ``step``: the step of a single-image TIFF input.
    ``overwrite``/``replace_stale``: see :func:`dehaze.store.plan_output`.
    """
    cfg = cfg or PredictConfig()  # the defaults of every setting
    plan = plan_prediction(run_dirs, input_path, output, cfg, step=step)
    if plan.folder is not None:
        try:
            plan.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{plan.folder}: cannot create the output folder ({exc.strerror}); choose another -o") from None
    opts = engine_options(cfg)
    bundle = prepare_bundle(plan.runs.bundle, opts)
    params = strategy_params(cfg)
    return [_predict_one(name, STRATEGIES[name], plan.runs, bundle, params, plan.src, path, plan.device, cfg.samples, opts,
                         overwrite=overwrite, replace_stale=replace_stale, show_progress=show_progress,
                         calibrated_std=cfg.calibrated_std)
            for name, path in plan.out_paths.items()]


def plan_prediction(run_dirs: list[str | Path], input_path: str | Path, output: str | Path, cfg: PredictConfig, *,
                    step: int | None = None) -> PredictPlan:
    """Load the runs, open the input and check every output: all that refuses a prediction, before any
    output is written (see :func:`predict`)."""
    strategy, samples, opts = cfg.strategy, cfg.samples, engine_options(cfg)
    dev = pick_device(cfg.device)
    runs = load_runs(run_dirs, dev)
    allowed = allowed_strategies(runs)
    if strategy == "all":
        names = allowed
    elif strategy is None:
        first = next(iter(runs.infos))  # the first run's kind: it is loaded first
        if first not in DEFAULT_STRATEGY:
            raise UserError(f"{run_dirs[0]}: a {first!r} run does not restore images on its own; give --strategy "
                            f"(these runs allow: {', '.join(allowed) or 'none'}) or add latent and degradation runs")
        names = [DEFAULT_STRATEGY[first]]
    else:
        names = [strategy]
    for name in names:
        if name not in STRATEGIES:
            raise UserError(f"--strategy {name}: unknown; choose one of: all, {', '.join(STRATEGIES)}")
        if name not in allowed:
            missing = [k for k in STRATEGIES[name].needs if getattr(runs.bundle, k) is None]
            raise UserError(f"--strategy {name}: needs a trained {' and '.join(missing)} run; these runs allow: {', '.join(allowed) or 'none'}")
    sampled = (samples or 1) > 1
    if sampled and not any(STRATEGIES[n].samples or n.startswith("latent") for n in names):
        raise UserError(f"--samples {samples}: {', '.join(names)} are deterministic; samples apply to hdn, flow and latent strategies")
    src = open_input(input_path, step)
    if not src.whole_ladder:  # a single image at --step: the other steps are not there to compare with
        if strategy != "all" and STRATEGIES[names[0]].needs_ladder:
            raise UserError(f"--strategy {names[0]}: needs the input at every step (a ladder store or a (step, y, x) stack), not one image at --step")
        names = [n for n in names if not STRATEGIES[n].needs_ladder]
    for name in names:  # an explicit margin must leave each tile an inner area (else: endless tiny tiles)
        tile = engine_tile(STRATEGIES[name], runs.infos[STRATEGIES[name].primary], opts.tile)
        _refuse_beyond_memory(name, samples_for(STRATEGIES[name], runs.infos[STRATEGIES[name].primary], samples), tile, samples)
        if opts.margin is not None and 2 * opts.margin >= tile:
            raise UserError(f"--margin {opts.margin} with {tile}-px tiles ({name}) leaves no inner area (a tile keeps "
                            f"tile - 2 x margin px); give --tile above {2 * opts.margin} or a smaller --margin")
    if not names:
        raise UserError(f"--strategy all: these runs allow no strategy that restores images{' from one image at --step' if not src.whole_ladder else ''}; "
                        "add a unet, pixel, hdn or degradation run")
    out_paths = {names[0]: Path(output)} if len(names) == 1 and strategy != "all" else {n: Path(output) / f"{n}.zarr" for n in names}
    if strategy == "all":  # -o is a folder of stores: not a file, not a store, not inside one
        folder = Path(output)
        if folder.is_symlink() and not folder.exists():
            raise UserError(f"{folder}: is a dangling symbolic link; choose another -o")
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder}: exists and is a file; --strategy all writes a folder of stores: choose another -o")
        refuse_inside_store(folder, "the output folder", itself=True)
    for path in out_paths.values():  # every output refused before anything is written
        check_output_store(path, "prediction", replacing=False, keep=[src.path])
    return PredictPlan(cfg, runs, src, out_paths, dev, Path(output) if strategy == "all" else None)


def engine_tile(spec: StrategySpec, primary: RunInfo, tile: int | None) -> int:
    """Tile size (px) for a strategy: the one asked for; else, for one-shot HDN, its run's training patch size;
    else DEFAULT_TILE.

    Why HDN differs: a ladder VAE is right only at the input size it learned. Its deepest levels see a 32-px
    training patch as 2x2 latents, all border; on a 128-px tile they see 8x8, mostly interior, and the
    posterior leaves what it was trained on. Measured on the default ladder: the small preset after 3200
    steps scores 25.7 dB at step 1 on whole 128-px fields, 35.4 dB on 32-px tiles (the hazy input: 33.3).
    """
    if tile is not None:
        return tile
    return primary.config.patch_size if spec.primary == "hdn" else DEFAULT_TILE


def samples_for(spec: StrategySpec, primary: RunInfo, samples: int | None) -> int:
    """K, the samples per input of a strategy."""
    if spec.samples:  # one-shot-hdn: K posterior draws make the MMSE and std
        return samples or primary.config.model.mmse_samples  # type: ignore[attr-defined]  # declared by hdn and flow
    return (samples or 1) if "hvae" in spec.needs else 1  # latent strategies: samples around the estimate


def _refuse_beyond_memory(name: str, k: int, tile: int, samples: int | None) -> None:
    """The K samples of a tile go through the networks together: refuse a K x tile x tile input that would
    not fit in this machine's memory (the network's activations take many times more)."""
    need = k * tile * tile * 4
    ram = physical_memory_bytes()
    if ram and need > ram:
        key = "--samples" if samples else "the run's model.mmse_samples"
        raise UserError(f"{key} {k} ({name}): the {k} samples of a {tile} x {tile} px tile go through the networks together: "
                        f"{format_bytes(need)} for the input alone, more than this machine's {format_bytes(ram)} of memory; "
                        "give fewer samples or a smaller --tile")


def _predict_one(name: str, spec: StrategySpec, runs: LoadedRuns, bundle: ModelBundle, params: StrategyParams,
                 src: InputLadder, output: Path,
                 device: torch.device, samples: int | None, opts: EngineOptions, *, overwrite: bool,
                 replace_stale: bool, show_progress: bool, calibrated_std: bool = True) -> LadderStore:
    primary = runs.infos[spec.primary]
    delta = getattr(primary.config.model, "sample_delta", 1.0)
    k = samples_for(spec, primary, samples)
    opts = replace(opts, samples=k, trajectory=not spec.one_shot, tile=engine_tile(spec, primary, opts.tile),
                   margin=DEFAULT_MARGIN if opts.margin is None else opts.margin, write_samples=opts.write_samples and k > 1)
    strategy_info = {"name": name, "one_shot": spec.one_shot, "samples": k, "sample_delta": delta, "alpha": params.alpha,
                     "tile": opts.tile, "margin": opts.margin, "seed": opts.seed}
    if spec.needs_noise:  # the flow sampler: its ODE settings, and the std calibration of its run (dehaze calibrate)
        from dehaze.calibration import calibrated, calibration_mismatch, read_calibration

        strategy_info.update(flow_steps=params.flow_steps, flow_solver=params.flow_solver)
        cal = read_calibration(runs.dirs[spec.primary]) if calibrated_std else None
        mismatch = calibration_mismatch(cal, strategy_info) if cal else None
        if mismatch:  # a fit made at other settings would state a wrong spread: the raw one, said so
            print(f"dehaze: note: {output}: std written uncalibrated: the run's calibration does not apply ({mismatch})",
                  file=sys.stderr, flush=True)
            strategy_info["std_calibration_skipped"] = mismatch
            cal = None
        if cal:
            opts = replace(opts, std_maps=tuple(functools.partial(calibrated, cal, h) for h in range(src.n_steps)))
        strategy_info["std_calibration"] = cal
    if opts.write_samples:
        strategy_info["samples_written"] = True
    if "degradation" in spec.needs:  # how far the run's G moves: evaluate reports it beside the scores
        check = read_run_report(runs.dirs["degradation"]).get("degradation_check")
        if check is not None:
            strategy_info["degradation_check"] = check
    run_list = sorted(str(Path(runs.dirs[kind]).resolve()) for kind in set(spec.needs) | {spec.primary})
    # the checkpoints too: a prediction from a run trained again (same folder) is made again
    identity = {"runs": run_list, "checkpoints": [checkpoint_sha256(r) for r in run_list],
                "input": src.sha256, "strategy": strategy_info}
    meta = DatasetMeta(
        source="prediction", manifest=identity,
        manifest_sha256=hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
        n_steps=src.n_steps, pinhole_au=src.pinhole_au, spatial_axes=src.spatial_axes, pixel_size_um=src.pixel_size_um,
        fields=src.fields, prediction=PredictionInfo(method=name, run_dirs=run_list, input_store=str(src.path),
                                                     input_sha256=src.sha256, strategy=strategy_info),
    )
    # one writer per store (a second predict is refused); a store of these runs and input resumes or is complete
    with writing_output(output, meta, overwrite=overwrite, replace_stale=replace_stale, keep=[src.path]) as plan:
        out, state = plan.open(), plan.state
        if state == "complete":
            return out
        multiple = max(int(getattr(getattr(bundle, kind), "multiple", 1)) for kind in spec.needs)
        todo = [f for f in src.fields if f not in out.completed_fields()]
        bar = progress_bar(total=len(todo), desc=f"predict {name}", unit="field", disable=not show_progress)
        for field in todo:
            predict_field(functools.partial(spec.fn, params=params), bundle, lambda h: schedule_for(spec, h, delta), src.arrays[field], primary.normalization,
                          out, field, src.fields.index(field), opts, device, multiple=multiple, show_progress=show_progress,
                          needs_ladder=spec.needs_ladder, needs_noise=spec.needs_noise, posterior=spec.posterior)
            bar.update(1)
        bar.close()
        finalize_with_step_stats(out)
        return out
