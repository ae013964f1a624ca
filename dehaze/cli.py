"""The ``dehaze`` command line. Thin: parse, validate with the pydantic models, call one function.

User mistakes (:class:`~dehaze.errors.UserError`) print one line on stderr and exit with code 2, without
a traceback; an interrupted command exits with 130 and says how to resume.
"""

from __future__ import annotations

import errno
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import typer

from dehaze.errors import UserError

app = typer.Typer(
    name="dehaze",
    help="Widefield-microscopy dehazing: simulate and ingest haze ladders, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a manifest/config value: --set dotted.key=value (repeatable)."),
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"dehaze: error: {message}", err=True)
    raise typer.Exit(code)


# a full disk, a quota, a read-only or forbidden folder: the machine's state, not a bug; one line, exit 2
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user mistakes into one line + exit 2, and Ctrl-C into a resumable-exit message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            _fail(str(err))
        except KeyboardInterrupt:
            _fail("interrupted; finished work is kept: rerun the same command to resume", code=130)
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f"{err.filename}: " if err.filename else ""
            _fail(f"{where}{err.strerror or err}; make room or fix the folder's permissions, then rerun the same command "
                  "(finished work is kept where the command resumes)")

    return wrapper


@app.command()
@user_errors
def simulate(
    manifest: Annotated[Optional[str], typer.Argument(help="Manifest YAML or built-in name (default, paper-like); none: the embedded default.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Ladder store to write (.zarr).")] = Path("ladder.zarr"),
    workers: Annotated[int, typer.Option("--workers", min=1, help="Fields simulated in parallel (local dask threads).")] = 1,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="dask.distributed scheduler address (e.g. tcp://host:8786); the store path must be shared.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a store made from a different manifest. Only a dehaze store of the same kind holding nothing else is replaced (never your input, a symlink's target or a folder with your files).")] = False,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Simulate a haze ladder (microsim pinhole sweep) into an OME-Zarr ladder store."""
    from dehaze.manifests import load_simulation_manifest
    from dehaze.store import describe_ladder
    from simulation.ladder import simulate_ladder

    m = load_simulation_manifest(manifest, set_ or [])
    report = simulate_ladder(m, output, workers=workers, scheduler=scheduler, overwrite=overwrite, show_progress=not quiet)
    if report.state == "complete":
        typer.echo(f"{output}: already complete for this manifest; nothing to do (use --overwrite to rebuild)")
    elif report.state == "resumed":
        typer.echo(f"{output}: resumed, simulated the {report.fields_computed} missing fields")
    typer.echo(describe_ladder(report.store))


@app.command()
@user_errors
def info(store: Annotated[Path, typer.Argument(help="Ladder store.")]) -> None:
    """Print a readable summary of a ladder store."""
    from dehaze.store import describe_ladder, open_ladder

    typer.echo(describe_ladder(open_ladder(store, require_complete=False)))


@app.command()
@user_errors
def check(
    store: Annotated[Path, typer.Argument(help="Ladder store.")],
    quick: Annotated[bool, typer.Option("--quick", help="Metadata, dtypes and shapes only; do not read every chunk.")] = False,
) -> None:
    """Validate a ladder store against the store contract, reading every chunk; exit 2 if invalid or incomplete."""
    from dehaze.store import check_ladder

    problems = check_ladder(store, quick=quick)
    if problems:
        raise UserError(f"{store}: invalid store: " + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    typer.echo(f"{store}: valid ladder store" + (" (metadata, dtypes and shapes; chunks not read)" if quick else ""))


@app.command()
@user_errors
def train(
    kind: Annotated[str, typer.Argument(help="Trainer: unet (one-shot baseline), pixel (time-conditioned InDI restorer), hvae (ladder VAE of all steps) or hdn (supervised HDN baseline).")],
    data: Annotated[list[Path], typer.Option("--data", help="Ladder store to train on (repeatable).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run directory (config, checkpoints, logs).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Training config YAML (see `dehaze schema train`).")] = None,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o exactly where it stopped.")] = False,
    base: Annotated[Optional[Path], typer.Option("--base", help="Run this trainer builds on: an hvae run (latent), a latent run (degradation).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a model from ladder stores: unet, pixel, hvae, hdn, latent (--base HVAE_RUN), degradation (--base LATENT_RUN)."""
    from dehaze.config import build_model, read_yaml
    from dehaze.train_config import TRAINER_KINDS, TrainConfig, train_config_dict
    from training.loop import train as run_training

    if kind not in TRAINER_KINDS:
        raise UserError(f"unknown trainer {kind!r}; choose one of: {', '.join(TRAINER_KINDS)}")
    raw = train_config_dict(kind)
    source = f"{kind} config"
    if config is not None:
        file_cfg = read_yaml(config)
        file_kind = (file_cfg.get("model") or {}).get("kind", kind) if isinstance(file_cfg.get("model"), dict) else kind
        if file_kind != kind:
            raise UserError(f"{config}: model.kind is {file_kind!r} but the trainer is {kind!r}")
        raw = train_config_dict(kind, file_cfg)
        source = str(config)
    cfg = build_model(TrainConfig, raw, set_ or [], source)
    if cfg.model.kind != kind:
        raise UserError(f"model.kind={cfg.model.kind!r} does not match the trainer {kind!r}")
    check_train_config(cfg, source)
    result = run_training(kind, list(data), output, cfg, resume=resume, base_run=base, show_progress=not quiet)
    psnr = f", validation PSNR {result.val_psnr:.2f} dB" if result.val_psnr is not None else ""
    typer.echo(f"{output}: {kind} trained to step {result.step}{psnr}{' (resumed)' if result.resumed else ''}")


@app.command()
@user_errors
def predict(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (from dehaze train); bases of latent runs are found automatically.")],
    input_path: Annotated[Path, typer.Option("--input", help="Ladder store or TIFF ((step, y, x) stack, or one image with --step).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Prediction store (.zarr); a folder of stores with --strategy all.")],
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="Strategy name, or 'all' (every strategy the runs allow); default: the run's own.")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", min=1, help="Posterior samples K per input (hdn: default its mmse_samples; latent: default 1 = posterior means).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Running-combination weight of the latent-combine strategies.")] = 0.5,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    step: Annotated[Optional[int], typer.Option("--step", min=0, help="Step of a single-image TIFF input.")] = None,
    tile: Annotated[Optional[int], typer.Option("--tile", min=16, help="Tile size in pixels (default: 256; for HDN its training patch size, the only size a ladder VAE is right at).")] = None,
    margin: Annotated[Optional[int], typer.Option("--margin", min=0, help="Context dropped at each inner tile border, px (default 32, at most a quarter of the tile); must leave an inner area: tile > 2 x margin.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images (tiles x samples) per forward pass.")] = 8,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the posterior samples.")] = 0,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, or bf16 (also on CPU: fast with AVX512-BF16/AMX).")] = "auto",
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the networks (worth it on GPU; minutes of compilation on CPU).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a prediction store made with other runs or settings. Only a dehaze store of the same kind holding nothing else is replaced (never your input, a symlink's target or a folder with your files).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Predict x_0 from every step of a ladder store (or TIFF) with trained runs."""
    from dehaze.engine import EngineOptions
    from dehaze.predict import predict as run_predict

    opts = EngineOptions(tile=tile, margin=margin, batch_size=batch_size, seed=seed, precision=precision, compile=compile_)
    stores = run_predict(list(runs), input_path, output, strategy=strategy, device=device, step=step, samples=samples,
                         alpha=alpha, opts=opts, overwrite=overwrite, show_progress=not quiet)
    for store in stores:
        typer.echo(f"{store.path}: {store.meta.prediction.method} predictions for {len(store.fields)} field(s) x {store.n_steps} steps")
    _print_degradation_check(next((s.meta.prediction.strategy.get("degradation_check") for s in stores
                                   if s.meta.prediction.strategy.get("degradation_check")), None))


def _print_degradation_check(check: dict | None) -> None:
    """One line: how far the degradation run's G moves z_hat_0|t towards z_{t-1}, per step (its report.json)."""
    if check:
        typer.echo("degradation G per step t (moved / residual of the needed distance; the loops use t >= 2): " + ", ".join(
            f"t={t} {v['moved']:.2f}/{v['residual']:.2f}" for t, v in check["per_step"].items()))


@app.command()
@user_errors
def ingest(
    source: Annotated[Path, typer.Argument(help="A file or folder: OME-TIFF(s), plain/ImageJ TIFFs, Leica LIF.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Ladder store to write (.zarr).")] = Path("ladder.zarr"),
    manifest: Annotated[Optional[Path], typer.Option("--manifest", "-m", help="Acquisition manifest YAML (pinhole values, calibration); not needed for OME-TIFF/LIF with pinhole sizes.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the files, steps, pinholes, shapes and pixel sizes found; write nothing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a store made from other files or another manifest. Only a dehaze store of the same kind holding nothing else is replaced (never your input, a symlink's target or a folder with your files).")] = False,
    set_: SetOption = None,
    cache_mb: Annotated[Optional[float], typer.Option("--cache-mb", min=0, help="Raw pixels kept in memory between registration and writing, MB (default 2 GB); fields beyond it are read twice.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Ingest a microscope pinhole series (same field, several pinholes) into a registered ladder store."""
    from acquisition.ingest import CACHE_MB
    from acquisition.ingest import ingest as run_ingest
    from acquisition.manifest import load_acquisition_manifest
    from dehaze.store import describe_ladder

    m = load_acquisition_manifest(manifest, set_ or [])
    report = run_ingest(source, output, m, dry_run=dry_run, overwrite=overwrite, show_progress=not quiet,
                        cache_mb=CACHE_MB if cache_mb is None else cache_mb,
                        warn=lambda msg: typer.echo(f"dehaze: warning: {msg}", err=True))
    if report.state == "dry-run":
        typer.echo(report.plan.describe())
        typer.echo("dry run: nothing written")
        return
    if report.state == "complete":
        typer.echo(f"{output}: already complete for these files and manifest; nothing to do (use --overwrite to rebuild)")
    else:
        if report.state == "resumed":
            typer.echo(f"{output}: resumed an interrupted ingestion (fields already written were kept)")
        typer.echo("registration residual (px RMS) per field: " + ", ".join(f"{r:.3f}" for r in report.residual_px))
        typer.echo("seconds: " + ", ".join(f"{stage} {s:.2f}" for stage, s in report.stage_s.items()))
    assert report.store is not None
    typer.echo(describe_ladder(report.store))


SCHEMAS = ("simulation", "acquisition", "train", "study")


@app.command()
@user_errors
def schema(kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCHEMAS)}.")]) -> None:
    """Print the JSON schema of a manifest or config kind."""
    from acquisition.manifest import AcquisitionManifest
    from dehaze.manifests import SimulationManifest
    from dehaze.train_config import TrainConfig

    from dehaze.study_config import StudyConfig

    models = {"simulation": SimulationManifest, "acquisition": AcquisitionManifest, "train": TrainConfig, "study": StudyConfig}
    if kind not in models:
        raise UserError(f"unknown schema {kind!r}; choose one of: {', '.join(models)}")
    typer.echo(json.dumps(models[kind].model_json_schema(), indent=2))


def check_train_config(cfg: Any, source: str) -> None:
    """What a TrainConfig's types allow but training cannot take: refused in one line before any work."""
    betas = cfg.optim.betas
    if not all(0.0 <= b < 1.0 for b in betas):
        raise UserError(f"{source}: optim.betas {list(betas)}: each must be in [0, 1)")
    if cfg.seed >= 2**64:
        raise UserError(f"{source}: seed {cfg.seed} does not fit in 64 bits (torch's seeds are below 2**64)")
    from dehaze.store import format_bytes, physical_memory_bytes

    batch = 2 * cfg.batch_size * cfg.patch_size**2 * 4  # an input and a target patch each, float32: a lower bound
    ram = physical_memory_bytes()
    if ram and batch > ram:
        raise UserError(f"{source}: batch_size={cfg.batch_size} with patch_size={cfg.patch_size}: a batch is at least "
                        f"{format_bytes(batch)} (input and target patches, float32), more than this machine's "
                        f"{format_bytes(ram)} of memory; give a smaller batch_size or patch_size")
    params = _parameter_count(cfg.model)
    if ram and params is not None and 16 * params > ram:
        raise UserError(f"{source}: model: {params:.3g} parameters, {format_bytes(16 * params)} with their gradients and "
                        f"optimiser state (float32), more than this machine's {format_bytes(ram)} of memory; give a smaller "
                        "model (width, channels, depth)")
    depth = getattr(cfg.model, "depth", None)
    if cfg.model.kind in ("unet", "pixel") and depth is not None and cfg.patch_size % 2**depth:
        raise UserError(f"{source}: patch_size={cfg.patch_size} must be a multiple of 2**model.depth = {2**depth}")


def _parameter_count(model_cfg: Any) -> int | None:
    """Parameters of the network a model config builds, counted on torch's meta device (nothing is
    allocated); None for a model that needs its base run to be built, or cannot be built on meta."""
    import torch

    from dehaze.models import build_model

    if model_cfg.kind in ("latent", "degradation"):
        return None
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_model(model_cfg).parameters())
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked when it is built
        return None


def study_train_configs(cfg: Any) -> dict[str, Any]:
    """The validated training config of every trainer a study names (kind -> TrainConfig), in training
    order: each section merged onto the trainer's defaults with the same merge as ``train --config``."""
    from dehaze.config import build_model
    from dehaze.study_config import TRAIN_ORDER
    from dehaze.train_config import TrainConfig, train_config_dict

    out = {kind: build_model(TrainConfig, train_config_dict(kind, cfg.trainers[kind], {"device": cfg.device}), [],
                             f"study trainers.{kind}")
           for kind in TRAIN_ORDER if kind in cfg.trainers}
    for kind, train_cfg in out.items():
        check_train_config(train_cfg, f"study trainers.{kind}")
    return out


def run_study(cfg: Any, output: Path, quiet: bool) -> Path:
    """Simulate, train every model, predict with every strategy, evaluate; returns the report folder.

    Each stage keeps its outputs in ``output`` and is skipped when already complete, so an interrupted
    study resumes where it stopped (training runs continue with --resume semantics). A prediction made
    with other settings (samples, alpha, tile, or retrained runs) is made again.
    """
    from dehaze.store import output_lock

    with output_lock(output):  # a second study into this folder is refused while this one runs
        return _run_study(cfg, output, quiet)


def _run_study(cfg: Any, output: Path, quiet: bool) -> Path:
    from dehaze.evaluate import evaluate as run_evaluate
    from dehaze.figures import step_montage
    from dehaze.manifests import load_simulation_manifest
    from dehaze.predict import predict as run_predict
    from dehaze.engine import EngineOptions
    from dehaze.store import describe_ladder
    from simulation.ladder import simulate_ladder

    # Validate everything before any work: a bad trainer section must not leave a half-made study behind.
    manifest = load_simulation_manifest(cfg.simulation, cfg.simulation_set)
    train_cfgs = study_train_configs(cfg)
    missing = [k for k, need in BASES.items() if k in train_cfgs and need not in train_cfgs]
    if missing:
        raise UserError(f"study trainers: {missing[0]} builds on {BASES[missing[0]]}; add that trainer too")
    from dehaze.store import make_output_folder

    make_output_folder(output, "the study folder", "choose another -o")
    say = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    say("[1/4] simulating the ladder")
    ladder = simulate_ladder(manifest, output / "ladder.zarr", workers=2, show_progress=not quiet).store
    typer.echo(describe_ladder(ladder))
    labels = [("widefield" if t in ladder.meta.widefield_steps else f"step {t}: {au:g} AU") for t, au in enumerate(ladder.meta.pinhole_au)]
    step_montage(ladder.image(ladder.fields[0])[...], labels, output / "montage.png", title="the ladder: step 0 cleanest ... haziest")
    test = ladder
    if cfg.test_fields:
        say(f"[1/4] simulating the held-out test ladder ({cfg.test_fields} fields, seed {manifest.seed + TEST_SEED_OFFSET})")
        test_manifest = manifest.model_copy(update={"n_fields": cfg.test_fields, "seed": manifest.seed + TEST_SEED_OFFSET})
        test = simulate_ladder(test_manifest, output / "test.zarr", workers=2, show_progress=not quiet).store
    runs = {kind: output / "runs" / kind for kind in train_cfgs}
    for kind in _stale_runs(train_cfgs, runs):  # the study owns its runs: one of an edited section is retrained
        say(f"[2/4] {kind}: its trainer section changed since {runs[kind]} was trained; training it again")
        shutil.rmtree(runs[kind])
    todo = {kind: c for kind, c in train_cfgs.items() if _checkpoint_step(runs[kind]) < c.steps}  # new, or interrupted
    train_all(todo, ladder.path, runs, cfg.jobs, say, quiet)
    say("[3/4] predicting with every strategy")
    opts = EngineOptions(tile=cfg.tile, seed=0)
    stores = run_predict([runs[k] for k in ("unet", "pixel", "hdn", "degradation") if k in runs], test.path,
                         output / "predictions", strategy="all", device=cfg.device, samples=cfg.samples, alpha=cfg.alpha,
                         opts=opts, replace_stale=True, show_progress=not quiet)  # the study owns its folder
    say("[4/4] evaluating")
    report = run_evaluate([s.path for s in stores], test.path, output / "report", target=cfg.target)
    _print_psnr_table(report)
    return output / "report"


TEST_SEED_OFFSET = 1000  # the held-out test ladder of a study: the training manifest with seed + 1000
BASES = {"latent": "hvae", "degradation": "latent"}  # trainers that build on another run


def _train_one(kind: str, data: Path, run: Path, train_cfg: Any, base_run: Path | None, quiet: bool, threads: int | None) -> str:
    """One trainer, resumed if its run folder holds an interrupted run (also the body of a worker process)."""
    from training.loop import train as run_training

    if threads:
        import torch

        torch.set_num_threads(threads)
    run_training(kind, [data], run, train_cfg, resume=(run / "run.json").is_file(), base_run=base_run, show_progress=not quiet)
    return kind


def train_all(todo: dict[str, Any], data: Path, runs: dict[str, Path], jobs: int, say: Callable[[str], None], quiet: bool) -> None:
    """Train every run of ``todo`` (kind -> config), at most ``jobs`` at a time, each after the run it builds on.

    Side by side, each trainer runs in its own process with an equal share of the cores as torch threads
    and no progress bar (they would interleave); one at a time, in this process.
    """
    if jobs == 1 or len(todo) <= 1:
        for i, (kind, train_cfg) in enumerate(todo.items()):
            say(f"[2/4] training {kind} ({i + 1}/{len(todo)})")
            _train_one(kind, data, runs[kind], train_cfg, runs.get(BASES.get(kind, "")), quiet, None)
        return
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cores = os.cpu_count() or 1
    waiting, running = dict(todo), {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            ready = [k for k in waiting if BASES.get(k) not in waiting and BASES.get(k) not in running.values()]
            ready = ready[: jobs - len(running)]
            # the cores are shared among what runs now: a trainer left alone (the latent chain) gets them all
            at_once = len(running) + len(ready)
            threads = max(1, cores // max(1, at_once))
            for kind in ready:
                say(f"[2/4] training {kind} ({at_once} at a time, {threads} torch thread(s) for it)")
                running[pool.submit(_train_one, kind, data, runs[kind], waiting.pop(kind), runs.get(BASES.get(kind, "")), True,
                                    threads)] = kind
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind = running.pop(future)
                future.result()  # re-raises a trainer's error here (the pool waits for the other one to stop)
                say(f"[2/4] trained {kind}")


def _stale_runs(train_cfgs: dict[str, Any], runs: dict[str, Path]) -> list[str]:
    """Kinds whose run folder holds a run of another config than the study's section (and the runs that
    build on one of those). Model fields a trainer resolves from its base run (None in the section) are
    not compared."""
    from dehaze.runs import RUN_FILE, read_run

    stale: list[str] = []
    for kind, train_cfg in train_cfgs.items():
        if BASES.get(kind) in stale:
            stale.append(kind)
            continue
        if not (runs[kind] / RUN_FILE).is_file():
            continue
        old, new = read_run(runs[kind]).config.model_dump(mode="json"), train_cfg.model_dump(mode="json")
        for key, value in new["model"].items():
            if value is None:
                old["model"][key] = None
        if old != new:
            stale.append(kind)
    return stale


def _checkpoint_step(run: Path) -> int:
    import torch

    from dehaze.runs import CHECKPOINT_FILE

    path = run / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a damaged file
        raise UserError(f"{path}: not a loadable checkpoint ({type(exc).__name__}); delete {run} and rerun the study "
                        "to train it again") from None


def _print_psnr_table(report: dict) -> None:
    steps = report["steps"]
    typer.echo(f"mean PSNR (dB, data range of the {report['target']} x_0) per input step:")
    typer.echo("  " + f"{'method':<20}" + "".join(f"{'t=' + str(t):>9}" for t in steps))
    for key, entry in report["methods"].items():
        vals = [entry["steps"][str(t)]["mean"]["psnr"] for t in steps]
        typer.echo("  " + f"{key:<20}" + "".join(f"{v:>9.2f}" if v is not None else f"{'inf':>9}" for v in vals))


@app.command()
@user_errors
def study(
    config: Annotated[Optional[Path], typer.Argument(help="Study config YAML (see `dehaze schema study`); none: the quickstart.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the ladder, runs, predictions and report.")] = Path("study-output"),
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """The whole pipeline: simulate, train every model, predict with every strategy, evaluate."""
    from dehaze.config import build_model, read_yaml
    from dehaze.study_config import StudyConfig, quickstart

    base = quickstart().model_dump(mode="json") if config is None else read_yaml(config)
    cfg = build_model(StudyConfig, base, set_ or [], str(config or "quickstart"))
    report = run_study(cfg, output, quiet)
    typer.echo(f"report: {report}/ (metrics.json, psnr_per_step.png, study_psnr.png, montage.png, uncertainty.png)")


@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the demo's ladder, runs, predictions and report.")] = Path("demo-output"),
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """The quickstart: the whole pipeline on the embedded default ladder, sized for a few minutes on a CPU."""
    study(None, output, set_, quiet)


@app.command()
@user_errors
def evaluate(
    predictions: Annotated[list[Path], typer.Argument(help="Prediction stores (.zarr) made from the --truth store.")],
    truth: Annotated[Path, typer.Option("--truth", help="The ladder store the predictions were made from (x_0 = its step 0).")],
    report: Annotated[Path, typer.Option("--report", help="Folder for metrics.json, psnr_per_step.png, montage.png.")],
    target: Annotated[Literal["camera", "noise_free"], typer.Option("--target", help="x_0: step-0 camera image, or the simulation's noise-free step 0.")] = "camera",
) -> None:
    """Score prediction stores per step (PSNR, range-invariant PSNR, SSIM, MS-SSIM, FRC) and write a report."""
    from dehaze.evaluate import evaluate as run_evaluation

    result = run_evaluation(predictions, truth, report, target=target)
    steps = result["steps"]
    width = max(len(k) for k in result["methods"])
    typer.echo(f"mean PSNR (dB, data range of the {target} x_0) per input step:")
    typer.echo(f"  {'method':<{width}}" + "".join(f"{'t=' + str(t):>9}" for t in steps))
    for key, entry in result["methods"].items():
        typer.echo(f"  {key:<{width}}" + "".join(f"{entry['steps'][str(t)]['mean']['psnr']:>9.2f}" for t in steps))
    _print_degradation_check(next((e["degradation_check"] for e in result["methods"].values() if e.get("degradation_check")), None))
    for path in result["report"].values():
        typer.echo(f"wrote {path}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
