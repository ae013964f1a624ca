"""The ``dehaze`` command line. Thin: parse, validate with the pydantic models, call one function.

User mistakes (:class:`~dehaze.errors.UserError`) print one line on stderr and exit with code 2, without
a traceback; an interrupted command exits with 130 and says how to resume.
"""

from __future__ import annotations

import errno
import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, Sequence

import typer
from typer.core import TyperGroup

from dehaze.cli_options import model_options
from dehaze.errors import UserError
from dehaze.predict_config import PredictConfig


class _OneLineUsageErrors(TyperGroup):
    """A mistyped command line (an unknown option, a value outside its choices, a missing argument) is a user
    mistake like any other: one line on stderr naming the value and the help to read, exit code 2 (typer would
    draw a multi-line box around it)."""

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, windows_expand_args: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        except Exception as error:
            # Click's usage errors, matched by what they carry: typer >= 0.20 ships its own copy of click,
            # so the classes to name depend on the typer version.
            if not (callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)):
                raise
            if type(error).__name__ == "NoArgsIsHelpError":  # a bare `dehaze` or `dehaze COMMAND`: the help
                error.show()  # type: ignore[attr-defined]
                sys.exit(error.exit_code)  # type: ignore[attr-defined]
            context = getattr(error, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            typer.echo(f"dehaze: error: {error.format_message()}{hint}", err=True)  # type: ignore[attr-defined]
            sys.exit(error.exit_code)  # type: ignore[attr-defined]
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
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
def info(
    store: Annotated[Path, typer.Argument(help="Ladder store.")],
    png: Annotated[Optional[Path], typer.Option("--png", help="Also write a montage of a field's steps with each step's pinhole and statistics (PNG).")] = None,
    field: Annotated[Optional[str], typer.Option("--field", help="The field of the --png montage (default: the first).")] = None,
) -> None:
    """Print a readable summary of a ladder store."""
    from dehaze.store import describe_ladder, open_ladder

    ladder = open_ladder(store, require_complete=False)
    typer.echo(describe_ladder(ladder))
    if png is not None:
        from dehaze.quicklook import write_ladder_png

        typer.echo(f"wrote {write_ladder_png(ladder, png, field)}")


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


def _kinds_help() -> str:
    from training.config import kinds_help

    return kinds_help()


@app.command(help="Train a model from ladder stores. Trainers: " + _kinds_help() + ".")
@user_errors
def train(
    kind: Annotated[str, typer.Argument(help="Trainer kind (see above).")],
    data: Annotated[list[Path], typer.Option("--data", help="Ladder store to train on (repeatable).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run directory (config, checkpoints, logs).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Training config YAML (see `dehaze schema train`).")] = None,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o exactly where it stopped.")] = False,
    base: Annotated[Optional[Path], typer.Option("--base", help="Run this trainer builds on (see the trainers above).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config, the data it would read and what it would write; write nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train one model (the command's help, built from the model kinds, lists the trainers)."""
    from training.config import load_train_config
    from training.loop import train as run_training
    from training.preflight import check_train_config

    cfg, source = load_train_config(kind, config, set_ or [])
    check_train_config(cfg, source)
    if dry_run:
        from training.dry_run import describe_training

        typer.echo(describe_training(kind, list(data), output, cfg, resume=resume, base_run=base))
        typer.echo("dry run: nothing written")
        return
    result = run_training(kind, list(data), output, cfg, resume=resume, base_run=base, show_progress=not quiet)
    psnr = f", validation PSNR {result.val_psnr:.2f} dB" if result.val_psnr is not None else ""
    typer.echo(f"{output}: {kind} trained to step {result.step}{psnr}{' (resumed)' if result.resumed else ''}")


@app.command()
@user_errors
@model_options(PredictConfig)
def predict(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (from dehaze train); bases of latent runs are found automatically.")],
    input_path: Annotated[Path, typer.Option("--input", help="Ladder store or TIFF ((step, y, x) stack, or one image with --step).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Prediction store (.zarr); a folder of stores with --strategy all.")],
    step: Annotated[Optional[int], typer.Option("--step", min=0, help="Step of a single-image TIFF input.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Prediction config YAML (see `dehaze schema predict`); options given here override it.")] = None,
    set_: SetOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a prediction store made with other runs or settings. Only a dehaze store of the same kind holding nothing else is replaced (never your input, a symlink's target or a folder with your files).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config, the runs and input it would read and the stores it would write; write nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Predict x_0 from every step of a ladder store (or TIFF) with trained runs."""
    from dehaze.config import build_model, merge_sections, read_yaml
    from dehaze.predict import plan_prediction
    from dehaze.predict import predict as run_predict

    raw = merge_sections(read_yaml(config) if config is not None else {}, options or {})
    cfg = build_model(PredictConfig, raw, set_ or [], str(config or "dehaze predict"))
    if dry_run:
        typer.echo(plan_prediction(list(runs), input_path, output, cfg, step=step).describe())
        typer.echo("dry run: nothing written")
        return
    stores = run_predict(list(runs), input_path, output, cfg, step=step, overwrite=overwrite, show_progress=not quiet)
    infos = [s.meta.prediction for s in stores if s.meta.prediction is not None]  # every prediction store has one
    for store, info in zip(stores, infos):
        typer.echo(f"{store.path}: {info.method} predictions for {len(store.fields)} field(s) x {store.n_steps} steps")
    _print_degradation_check(next((i.strategy["degradation_check"] for i in infos if i.strategy.get("degradation_check")), None))


def _print_degradation_check(check: dict | None) -> None:
    """One line: how far the degradation run's G moves z_hat_0|t towards z_{t-1}, per step (its report.json)."""
    if check:
        typer.echo("degradation G per step t (moved / residual of the needed distance; the loops use t >= 2): " + ", ".join(
            f"t={t} {v['moved']:.2f}/{v['residual']:.2f}" for t, v in check["per_step"].items()))


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run directory of a unet or pixel run (from dehaze train).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Package to write (.zip); never replaced.")],
    step: Annotated[Optional[int], typer.Option("--step", min=1, help="Input step: pixel runs restore images of this step (t = s fed to the restorer); unet runs take the test image from it. Default: the haziest step the run trained on.")] = None,
) -> None:
    """Package a run as a BioImage Model Zoo model (Fiji/deepImageJ, napari, ilastik; `dehaze predict` takes it as a run)."""
    from dehaze.export import export_run

    r = export_run(run, output, step=step)
    tested = f"bioimageio.core test: {r.test_status}" if r.test_status else "not tested (bioimageio.core is not installed)"
    typer.echo(f"{r.path}: {r.kind} run as a BioImage Model Zoo model {r.format_version} (input step {r.step}); {tested}")


@app.command()
@user_errors
def ingest(
    source: Annotated[Path, typer.Argument(help="A file or folder: OME-TIFF(s), plain/ImageJ TIFFs, Leica LIF.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Ladder store to write (.zarr).")] = Path("ladder.zarr"),
    manifest: Annotated[Optional[Path], typer.Option("--manifest", "-m", help="Acquisition manifest YAML (pinhole values, calibration); not needed for OME-TIFF/LIF with pinhole sizes.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the files, steps, pinholes, shapes and pixel sizes found; write nothing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a store made from other files or another manifest. Only a dehaze store of the same kind holding nothing else is replaced (never your input, a symlink's target or a folder with your files).")] = False,
    set_: SetOption = None,
    image: Annotated[Optional[str], typer.Option("--image", help="Take only this image of each file (name or index), e.g. one image of a Leica project (the manifest's `image`).")] = None,
    cache_mb: Annotated[Optional[float], typer.Option("--cache-mb", min=0, help="Raw pixels kept in memory between registration and writing, MB (default 2 GB); fields beyond it are read twice.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Ingest a microscope pinhole series (same field, several pinholes) into a registered ladder store."""
    from acquisition.ingest import CACHE_MB
    from acquisition.ingest import ingest as run_ingest
    from acquisition.manifest import load_acquisition_manifest
    from dehaze.store import describe_ladder

    m = load_acquisition_manifest(manifest, [*(set_ or []), *([f"image={image}"] if image is not None else [])])
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


SCHEMAS = ("simulation", "acquisition", "train", "predict", "study")


@app.command()
@user_errors
def schema(kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCHEMAS)}.")]) -> None:
    """Print the JSON schema of a manifest or config kind."""
    from pydantic import BaseModel

    from acquisition.manifest import AcquisitionManifest
    from dehaze.manifests import SimulationManifest
    from dehaze.study_config import StudyConfig
    from training.config import TrainConfig

    models: dict[str, type[BaseModel]] = {"simulation": SimulationManifest, "acquisition": AcquisitionManifest,
                                          "train": TrainConfig, "predict": PredictConfig, "study": StudyConfig}
    if kind not in models:
        raise UserError(f"unknown schema {kind!r}; choose one of: {', '.join(models)}")
    typer.echo(json.dumps(models[kind].model_json_schema(), indent=2))


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
    from dehaze.study import run_study
    from dehaze.study_config import StudyConfig, quickstart

    base = quickstart().model_dump(mode="json") if config is None else read_yaml(config)
    cfg = build_model(StudyConfig, base, set_ or [], str(config or "quickstart"))
    report = run_study(cfg, output, quiet, echo=typer.echo)
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
    from dehaze.evaluate import psnr_table

    result = run_evaluation(predictions, truth, report, target=target)
    for line in psnr_table(result):
        typer.echo(line)
    _print_degradation_check(next((e["degradation_check"] for e in result["methods"].values() if e.get("degradation_check")), None))
    for path in result["report"].values():
        typer.echo(f"wrote {path}")


@app.command()
@user_errors
def calibrate(
    prediction: Annotated[Path, typer.Argument(help="A prediction store of a sampling strategy (flow), made from held-out fields.")],
    truth: Annotated[Path, typer.Option("--truth", help="The ladder store the prediction was made from.")],
    target: Annotated[Literal["camera", "noise_free"], typer.Option("--target", help="x_0 the error is measured against.")] = "noise_free",
    field: Annotated[Optional[list[str]], typer.Option("--field", help="Fit on this field only (repeatable; default: every field).")] = None,
    figure: Annotated[Optional[Path], typer.Option("--figure", help="Reliability diagram PNG (default: <store name>-reliability.png beside the store; with --dry-run, none unless named).")] = None,
    pooled: Annotated[bool, typer.Option("--pooled", help="One fit for every input step (default: one per step).")] = False,
    method: Annotated[Literal["linear", "isotonic"], typer.Option("--method", help="linear: RMSE = scale * RMV + offset (HazeMatching's); isotonic: a monotone map through the bins (follows a curved reliability; a prediction written with it cannot be refitted).")] = "linear",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Fit and report; store nothing with the run and write no file but a --figure named.")] = False,
) -> None:
    """Fit the posterior std against the error (binned RMSE vs root mean variance), per input step unless
    --pooled, and store the fit with the run (calibration.json): its later predictions write calibrated stds."""
    from dehaze.calibration import calibrate as run_calibration

    if figure is None and not dry_run:
        figure = prediction.with_name(prediction.name.removesuffix(".zarr") + "-reliability.png")
    result = run_calibration(prediction, truth, target=target, fields=field, pooled=pooled, method=method, write=not dry_run,
                             figure=figure)

    def described(fit: dict) -> str:
        if method == "isotonic":
            return f"isotonic map, std {fit['std'][0]:.4g}..{fit['std'][-1]:.4g} -> {fit['rmse'][0]:.4g}..{fit['rmse'][-1]:.4g} ADU"
        return f"scale {fit['scale']:.3f}, offset {fit['offset']:.4g} ADU"

    gaps = result["max_relative_gap_per_step"]
    for t, fit in result["per_step"].items():
        typer.echo(f"step {t}: {described(fit)}; worst bin {100 * gaps['before'][t]:.0f} % -> {100 * gaps['after'][t]:.0f} % off")
    skipped = sorted(set(map(int, gaps["before"])) - set(result["steps"]))
    typer.echo(f"std calibration{' pooled over the steps' if result['per_step'] else ''}: {described(result)}; "
               f"calibration error (binned RMSE of the K-sample mean vs root mean variance of the std, ADU, in-sample) "
               f"{result['before']['uce']:.4g} -> {result['after']['uce']:.4g}, worst bin "
               f"{100 * result['before']['max_relative_gap']:.0f} % -> {100 * result['after']['max_relative_gap']:.0f} % off"
               + (f"; steps {', '.join(map(str, skipped))} left raw (std 0)" if skipped else "")
               + "; step 0 and steps not fitted keep their raw std")
    written = [result[key] for key in ("figure", "written") if key in result]
    typer.echo(f"wrote {' and '.join(written)}" if written else "nothing written (--dry-run)")


def main() -> None:  # pragma: no cover - console entry point
    """The console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
