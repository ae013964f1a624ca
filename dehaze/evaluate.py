"""Evaluate prediction stores against a ladder's clean step: metrics per method and step, JSON + PNG report.

A *prediction store* is a ladder store with ``source == "prediction"``: same fields and steps as its input
ladder; plane h of a field is the method's estimate of x_0 made from input step h. :func:`evaluate` compares
every plane t ≥ 1 with the target x_0 of the truth ladder (DESIGN §7) and writes::

    report_dir/metrics.json        per method, per step: field means and per-field values of every metric
    report_dir/psnr_per_step.png   PSNR (dB) against step, the study's figure
    report_dir/montage.png         first field: methods × steps, one display range per row
    report_dir/study_psnr.png      the study's comparison (updated_results.png): starting from the haziest
                                   input x_T, PSNR (left) and range-invariant PSNR (right) of the x_0
                                   estimate at every step the walk of each iterative strategy reported one
                                   (its ``trajectory``: t = T ... 1 for the ladder schedule, see
                                   CONVENTIONS["trajectory"]), one-shot baselines as horizontal lines at
                                   their value from x_T; written when a store has a trajectory
    report_dir/uncertainty.png     estimate and posterior std (stores with K > 1 samples), first field

The hazy input itself (truth step t against x_0) is always added as the reference method ``hazy_input``.
3-D fields (h, z, y, x) are scored plane by plane and the planes averaged. A metric that comes out NaN
(NaN pixels: missing data) is refused with a :class:`UserError` naming the store, field and step: in
metrics.json null means an infinite PSNR, and a NaN must not pass for one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dehaze import __version__
from dehaze.errors import UserError
from dehaze.metrics import SSIM_WIN, frc_resolution_um, ms_ssim, psnr, psnr_range_invariant, ssim
from dehaze.store import LadderStore, PredictionInfo, make_output_folder, open_ladder

Target = Literal["camera", "noise_free"]
CurveKind = Literal["one_shot", "iterative", "identity"]  # how a method is drawn: dehaze.figures.StepCurve.kind
DEFAULT_BASELINES: tuple[str, ...] = ("unet", "hdn")
IDENTITY = "hazy_input"
METRICS = ("psnr", "psnr_range_invariant", "ssim", "ms_ssim", "frc_resolution_um")
CONVENTIONS = {
    "psnr": "PSNR in dB, data range = max - min of the target x_0 (per field, per plane), MSE in the store's units",
    "psnr_range_invariant": (
        "range-invariant PSNR in dB: target normalised to zero mean, unit std; prediction rescaled by least "
        "squares (a*pred + b) onto it; data range of the normalised target"
    ),
    "ssim": (
        "mean SSIM (Wang et al. 2004): Gaussian window sigma 1.5 px (11 taps), K1 0.01, K2 0.03, valid region, target's "
        "data range; on offset-subtracted values (see 'ssim_offset')"
    ),
    "ms_ssim": (
        "MS-SSIM (Wang et al. 2003): up to 5 scales, weights 0.0448/0.2856/0.3001/0.2363/0.1333, 2x average pooling; fewer "
        "scales (renormalised weights) for small images; on offset-subtracted values (see 'ssim_offset')"
    ),
    "ssim_offset": (
        "SSIM and MS-SSIM subtract one offset from prediction and target alike before their statistics: the truth store's "
        "camera offset where its metadata records one (a simulation's manifest camera.offset_adu; an acquisition's "
        "offset_adu when stated, i.e. > 0), else the minimum of each target plane; the data range stays the target's. "
        "A camera pedestal (e.g. 100 ADU) would otherwise push SSIM's luminance term to about 1 whatever the brightness "
        "error. The report's 'ssim_offset' says which was used: kind 'camera' with its value in the store's units, or "
        "kind 'target_minimum'"
    ),
    "frc_resolution_um": "Fourier ring correlation resolution in micrometres against the target (Hann window, 1/7 threshold); 2 pixels (Nyquist) if FRC never drops below it; smaller is sharper",
    "averaging": "'mean' is the plain mean over fields of the per-field values; 'mean_over_steps' the mean of those over steps",
    "trajectory": (
        "methods[...]['trajectory']: the walk from the haziest input x_T, one point per x_0 estimate the strategy "
        "reported at a step it visited, t = T, ..., 1 for the ladder schedule (T points, T - 1 transitions). The "
        "estimate a walk reports at t = 0 repeats its last one (there is no transition after t = 1) and is not a point "
        "of its own; a t = 0 estimate that differs from the previous one (e.g. an InDI walk with a fractional step) is "
        "kept. Per point: the mean over fields of every metric. drift_db_per_step and "
        "drift_range_invariant_db_per_step = (value at the last point - value at the first) / (points - 1) in dB per "
        "transition, 0 for one point; < 0: worse along the walk. One-shot methods and the hazy input: their value "
        "from x_T, constant over the steps of every walk in the report (from_trajectory false, drift 0)"
    ),
    "null": (
        "a null value is infinite: a PSNR of a prediction equal to the target exactly (or a drift that starts or ends "
        "at one); a NaN never appears (it is refused)"
    ),
}
TARGET_DESCRIPTION = {
    "camera": "truth store step 0 camera image (x_0 as measured, with camera noise)",
    "noise_free": "truth store step 0 noise-free image (extra 'noise_free', simulation only)",
}


# ---- checks ------------------------------------------------------------------------------------------
def _open_truth(path: Path) -> LadderStore:
    truth = open_ladder(path)
    if truth.meta.source == "prediction":
        raise UserError(f"{path}: is a prediction store; --truth needs the ladder store the predictions were made from")
    if truth.n_steps < 2:
        raise UserError(f"{path}: has {truth.n_steps} step; evaluation needs a clean step 0 and at least one degraded step")
    shape = truth.image(truth.fields[0]).shape
    if min(shape[-2:]) < SSIM_WIN:
        raise UserError(f"{path}: fields of {shape[-2]}x{shape[-1]} pixels are too small for SSIM (at least {SSIM_WIN}x{SSIM_WIN})")
    return truth


def _open_prediction(path: Path, truth: LadderStore) -> LadderStore:
    pred = open_ladder(path)
    meta = pred.meta
    if meta.source != "prediction" or meta.prediction is None:
        raise UserError(f"{path}: is a {meta.source} store, not a prediction store; pass ladder stores with --truth, predictions as arguments")
    if meta.prediction.input_sha256 != truth.meta.manifest_sha256:
        raise UserError(
            f"{path}: was predicted from input store {meta.prediction.input_store} (manifest {meta.prediction.input_sha256[:12]}), "
            f"not from {truth.path} (manifest {truth.meta.manifest_sha256[:12]}); evaluate it against its own input store"
        )
    if meta.fields != truth.meta.fields:
        raise UserError(f"{path}: fields {_short(meta.fields)} do not match the truth store's {_short(truth.meta.fields)}")
    if meta.n_steps != truth.n_steps:
        raise UserError(f"{path}: has {meta.n_steps} steps, the truth store {truth.path} has {truth.n_steps}")
    for field in meta.fields:
        if pred.image(field).shape != truth.image(field).shape:
            raise UserError(f"{path}: {field} has shape {pred.image(field).shape}, the truth store's is {truth.image(field).shape}")
    return pred


def _prediction(store: LadderStore) -> PredictionInfo:
    """The description of a store :func:`_open_prediction` opened."""
    info = store.meta.prediction
    assert info is not None  # _open_prediction refused a store without one
    return info


def _short(items: list[str], n: int = 3) -> str:
    return "[" + ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "") + "]"


def _target_image(truth: LadderStore, field: str, target: Target) -> np.ndarray:
    """The target x_0 of one field, ([z,] y, x) float64 in the store's units; refused if not finite."""
    if target == "camera":
        x0 = np.asarray(truth.image(field)[0], dtype=np.float64)
    elif "noise_free" not in truth.field_meta(field).extras:
        raise UserError(
            f"{truth.path}: {field} has no noise-free image (a {truth.meta.source} store); use --target camera"
        )
    else:
        x0 = np.asarray(truth.extra(field, "noise_free")[0], dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(x0)))
    if bad:
        raise UserError(f"{truth.path}: {field}, step 0 ({target} target): {bad} of {x0.size} pixels are not finite (missing data)")
    return x0


target_image = _target_image  # public: dehaze.calibration scores against the same target


def _ssim_offset(truth: LadderStore) -> tuple[float | None, str]:
    """The offset (store units, ADU) SSIM subtracts (CONVENTIONS['ssim_offset']) and where it comes from;
    ``None``: no offset is recorded and each target plane's minimum is used."""
    meta = truth.meta
    camera = meta.manifest.get("camera") if meta.source == "simulation" else None
    if isinstance(camera, dict) and camera.get("offset_adu") is not None:
        return float(camera["offset_adu"]), "simulation manifest camera.offset_adu"
    stated = (meta.normalization or {}).get("offset_adu")
    if stated:  # an acquisition manifest's 0 is its default, 'not stated', not a measured offset
        return float(stated), "acquisition manifest offset_adu"
    return None, "minimum of each target plane (the truth store records no camera offset)"


# ---- metrics -----------------------------------------------------------------------------------------
def image_metrics(pred: np.ndarray, target: np.ndarray, pixel_size_um: tuple[float, float],
                  offset: float | None = None) -> dict[str, float]:
    """All metrics of one prediction against its target: (y, x) or (z, y, x), planes averaged.

    pixel_size_um: (dy, dx) in µm, for FRC. offset: what SSIM and MS-SSIM subtract from both images, in
    the images' units (the camera offset); ``None``: each target plane's minimum (CONVENTIONS['ssim_offset']).
    """
    p = np.asarray(pred, dtype=np.float64).reshape(-1, *pred.shape[-2:])
    t = np.asarray(target, dtype=np.float64).reshape(-1, *target.shape[-2:])
    per_plane = []
    for a, b in zip(p, t):
        off = float(b.min()) if offset is None else offset
        per_plane.append({
            "psnr": psnr(a, b),
            "psnr_range_invariant": psnr_range_invariant(a, b),
            "ssim": ssim(a, b, offset=off),
            "ms_ssim": ms_ssim(a, b, offset=off),
            "frc_resolution_um": frc_resolution_um(a, b, pixel_size_um),
        })
    return {m: float(np.mean([d[m] for d in per_plane])) for m in METRICS}


def _scored(store: LadderStore, field: str, where: str, pred: np.ndarray, x0: np.ndarray,
            pixel_size_um: tuple[float, float], offset: float | None) -> dict[str, float]:
    """:func:`image_metrics` of one plane, refusing a NaN metric (missing data) by store, field and step."""
    values = image_metrics(pred, x0, pixel_size_um, offset)
    nan = [m for m, v in values.items() if math.isnan(v)]
    if nan:
        bad = int(np.count_nonzero(~np.isfinite(pred)))
        raise UserError(
            f"{store.path}: {field}, {where}: {', '.join(nan)} is NaN ({bad} of {np.size(pred)} pixels are not finite: "
            "missing data); refusing to report it (null in metrics.json means an infinite PSNR)"
        )
    return values


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _json_safe(obj: Any, where: str = "report") -> Any:
    """Strict JSON: infinite floats become null (see CONVENTIONS['null']). A NaN is a bug here: every metric
    was checked by :func:`_scored`, so it raises rather than pass for an infinite PSNR."""
    if isinstance(obj, float):
        if math.isnan(obj):
            raise ValueError(f"{where} is NaN; metrics.json would read it as an infinite value")
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


# ---- the evaluation --------------------------------------------------------------------------------
def current_report(pred_stores: Sequence[str | Path], truth_store: str | Path, report_dir: str | Path,
                   target: Target = "camera") -> dict[str, Any] | None:
    """The report in ``report_dir`` (metrics.json, as written) if :func:`evaluate` of these stores would write it
    again: the same dehaze version, target, truth ladder and prediction stores (each by its manifest identity:
    the runs' checkpoints and the strategy's settings), and every file it lists still there; else None.
    A prediction is deterministic given its identity, so the report would repeat: a study rerun keeps it."""
    path = Path(report_dir) / "metrics.json"
    try:
        report = json.loads(path.read_text())
        truth = open_ladder(truth_store)
        wanted = {str(store.path): store.meta.manifest_sha256 for store in map(open_ladder, pred_stores)}
    except Exception:  # anything unreadable: not current; evaluate() then names what is wrong
        return None
    if not isinstance(report, dict) or not isinstance(report.get("methods"), dict) or not isinstance(report.get("report"), dict):
        return None
    had = {m.get("store"): m.get("store_manifest_sha256") for m in report["methods"].values() if m.get("kind") == "prediction"}
    same = (report.get("dehaze_version") == __version__ and report.get("target") == target
            and report.get("truth_store") == str(truth.path) and report.get("truth_manifest_sha256") == truth.meta.manifest_sha256
            and had == wanted and all(Path(f).is_file() for f in report["report"].values()))
    return report if same else None


def evaluate(
    pred_stores: Sequence[str | Path],
    truth_store: str | Path,
    report_dir: str | Path,
    target: Target = "camera",
    baselines: Sequence[str] = DEFAULT_BASELINES,
) -> dict[str, Any]:
    """Score prediction stores against the truth ladder's x_0 and write the report.

    pred_stores: prediction stores made from ``truth_store`` (checked: manifest identity, fields, steps,
    shapes). target: ``camera`` (step-0 camera image) or ``noise_free`` (simulation's noise-free step 0).
    baselines: method names drawn as one-shot horizontal lines (besides those whose strategy says
    ``one_shot: true``). Returns the report dict that is written to ``metrics.json`` (with ``inf`` where
    the JSON has null) plus the paths of the written files under ``report``.
    """
    if target not in TARGET_DESCRIPTION:
        raise UserError(f"unknown target {target!r}; choose one of: {', '.join(TARGET_DESCRIPTION)}")
    if not pred_stores:
        raise UserError("no prediction stores given; pass at least one prediction store")
    truth = _open_truth(Path(truth_store))
    preds = [_open_prediction(Path(p), truth) for p in pred_stores]
    fields, steps = truth.fields, list(range(1, truth.n_steps))
    if target == "noise_free":  # fail before any work on a missing noise-free image
        for field in fields:
            if "noise_free" not in truth.field_meta(field).extras:
                _target_image(truth, field, target)
    for store in (truth, *preds):  # a deleted chunk reads as zeros (NaN in a prediction): refuse it before any work
        for field in fields:
            store.image(field).require_chunks()
            for name in store.field_meta(field).extras:
                if name in ("std", "trajectory") or (name == "noise_free" and target == "noise_free"):
                    store.extra(field, name).require_chunks()

    report_dir = make_output_folder(report_dir, "a report folder", "choose another --report")

    # ---- methods: the hazy input first, then each prediction store under a unique key ----------
    methods: dict[str, dict[str, Any]] = {
        IDENTITY: {"label": "hazy input", "kind": "identity", "one_shot": False, "store": str(truth.path), "prediction": None}
    }
    sources: dict[str, LadderStore] = {IDENTITY: truth}
    for store in preds:
        info = _prediction(store)
        key = info.method if info.method not in methods else f"{info.method} ({store.path.name})"
        one_shot = bool(info.strategy.get("one_shot", False)) or info.method in baselines
        methods[key] = {"label": key, "kind": "prediction", "one_shot": one_shot, "store": str(store.path),
                        "store_manifest_sha256": store.meta.manifest_sha256, "prediction": info.model_dump(mode="json")}
        if info.strategy.get("degradation_check"):  # how far the run's G moves, beside what the loop scored
            methods[key]["degradation_check"] = info.strategy["degradation_check"]
        sources[key] = store

    # ---- per field: load the target once, score every method's plane t against it -------------
    y_axis, x_axis = truth.meta.spatial_axes[-2:]  # (y, x) or (z, y, x): the plane's axes are the last two
    spacing = (float(truth.meta.pixel_size_um[y_axis]), float(truth.meta.pixel_size_um[x_axis]))
    offset, offset_source = _ssim_offset(truth)
    per_field: dict[str, dict[int, dict[str, dict[str, float]]]] = {k: {t: {} for t in steps} for k in methods}
    montage_planes: dict[str, dict[int, np.ndarray]] = {k: {} for k in methods}
    montage_steps = _montage_steps(steps)
    first_target = None
    for i, field in enumerate(fields):
        x0 = _target_image(truth, field, target)
        if i == 0:
            first_target = x0
        for key, store in sources.items():
            for t in steps:
                plane = np.asarray(store.image(field)[t], dtype=np.float64)
                per_field[key][t][field] = _scored(store, field, f"input step {t}", plane, x0, spacing, offset)
                if i == 0 and t in montage_steps:
                    montage_planes[key][t] = plane

    for key, entry in methods.items():
        by_step: dict[str, dict[str, Any]] = {}
        for t in steps:
            mean = {m: _mean([per_field[key][t][f][m] for f in fields]) for m in METRICS}
            by_step[str(t)] = {"mean": mean, "per_field": per_field[key][t]}
        entry["mean_over_steps"] = {m: _mean([by_step[str(t)]["mean"][m] for t in steps]) for m in METRICS}
        entry["steps"] = by_step

    report: dict[str, Any] = {
        "dehaze_version": __version__,
        "truth_store": str(truth.path),
        "truth_manifest_sha256": truth.meta.manifest_sha256,
        "target": target,
        "target_description": TARGET_DESCRIPTION[target],
        "conventions": CONVENTIONS,
        "metrics": list(METRICS),
        "steps": steps,
        "fields": fields,
        "pixel_size_um": dict(truth.meta.pixel_size_um),
        "ssim_offset": {"kind": "target_minimum", "source": offset_source} if offset is None
                       else {"kind": "camera", "value": offset, "source": offset_source},
        "methods": methods,
    }

    # ---- files ------------------------------------------------------------------------------------
    paths = {
        "metrics_json": report_dir / "metrics.json",
        "psnr_per_step_png": report_dir / "psnr_per_step.png",
        "montage_png": report_dir / "montage.png",
    }
    _plot_psnr(report, paths["psnr_per_step_png"])
    assert first_target is not None  # the loop ran: _open_truth read the first of the fields
    _plot_montage(report, first_target, montage_planes, montage_steps, paths["montage_png"])
    if _add_trajectories(report, truth, sources, target, spacing, offset):
        paths["study_psnr_png"] = report_dir / "study_psnr.png"
        _plot_study(report, paths["study_psnr_png"])
    posterior = _add_posterior_criteria(report, truth, sources, target, steps, spacing)
    if posterior:
        from dehaze.figures import posterior_figure

        paths["posterior_png"] = report_dir / "posterior.png"
        posterior_figure(posterior, paths["posterior_png"], title="posterior criteria: spectra at the haziest input, reliability of the std")
    uncertain = [(k, store) for k, store in sources.items() if k != IDENTITY and "std" in store.field_meta(fields[0]).extras
                 and float(np.nanmax(store.extra(fields[0], "std")[-1])) > 0]
    if uncertain:
        from dehaze.figures import uncertainty_figure

        paths["uncertainty_png"] = report_dir / "uncertainty.png"
        t_max = truth.n_steps - 1
        uncertainty_figure([(k, _plane2d(store.image(fields[0])[t_max]), _plane2d(store.extra(fields[0], "std")[t_max]))
                            for k, store in uncertain], paths["uncertainty_png"],
                           title=f"{fields[0]}, input step {t_max}: estimate and per-pixel posterior std")
    report["report"] = {k: str(v) for k, v in paths.items()}
    paths["metrics_json"].write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    return report


def _add_posterior_criteria(report: dict[str, Any], truth: LadderStore, sources: dict[str, LadderStore], target: Target,
                            steps: list[int], spacing: tuple[float, float]) -> dict[str, dict[str, Any]]:
    """``methods[key]["posterior"]`` for every sampling method (K > 1: flow, one-shot-hdn, latent with
    samples): the poster's criteria of a good posterior (:mod:`dehaze.posterior`), against the one-shot UNet
    where it is among the predictions. Returns them by method, for the figure."""
    from dehaze.posterior import criteria

    unet = next((store for k, store in sources.items() if k != IDENTITY and _prediction(store).method == "one-shot-unet"), None)
    found = {}
    for key, store in sources.items():
        if key == IDENTITY or (_prediction(store).strategy.get("samples") or 1) <= 1:
            continue
        found[key] = criteria(store, lambda f: _target_image(truth, f, target), steps, spacing, unet)
        report["methods"][key]["posterior"] = {k: v for k, v in found[key].items() if not k.startswith("_")}
    return found


def _plane2d(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    return img if img.ndim == 2 else img[img.shape[0] // 2]


def _add_trajectories(report: dict[str, Any], truth: LadderStore, sources: dict[str, LadderStore], target: Target,
                      spacing: tuple[float, float], offset: float | None) -> bool:
    """Score each store's ``trajectory`` (x_0 estimate at each step of the walk from x_T) against x_0.

    Adds ``methods[key]["trajectory"] = {"steps": [T, ..., 1], "from_trajectory": bool, <metric>: [one
    mean over fields per step] for every metric in METRICS, "drift_db_per_step": dB per transition,
    "drift_range_invariant_db_per_step": the same in range-invariant PSNR}`` (CONVENTIONS['trajectory']):
    the steps a store's walk visited with an estimate of its own; one-shot methods and the hazy input get
    their x_T value as a constant reference over the steps of every walk. Returns whether any store had a
    trajectory.
    """
    fields, t_max = report["fields"], truth.n_steps - 1
    walked = [k for k, store in sources.items() if k != IDENTITY and "trajectory" in store.field_meta(fields[0]).extras]
    points: dict[str, dict[int, list[dict[str, float]]]] = {k: {} for k in walked}  # step -> per-field metrics
    repeats: dict[str, list[bool]] = {k: [] for k in walked}  # per field: its t = 0 plane repeats the one before
    visits: dict[str, list[int]] = {}
    refs: dict[str, list[dict[str, float]]] = {k: [] for k in sources if k not in walked}  # per-field metrics at x_T
    for field in fields:
        x0 = _target_image(truth, field, target)
        for key, store in sources.items():
            if key not in walked:  # a reference: what the method makes from x_T (the hazy input: x_T itself)
                refs[key].append(_scored(store, field, f"input step {t_max}", store.image(field)[t_max], x0, spacing, offset))
                continue
            steps, repeat = _walk_field(store, field, x0, spacing, offset, points[key])
            if visits.setdefault(key, steps) != steps:
                raise UserError(f"{store.path}: the trajectory of {field} visits steps {steps}, that of {fields[0]} "
                                f"{visits[key]}: one schedule walks every field; predict this store again")
            repeats[key].append(repeat)

    walk_steps: set[int] = set()
    for key in walked:
        steps = visits[key]
        if not steps:
            raise UserError(f"{sources[key].path}: its trajectory holds no estimate at any step (all NaN); predict it again")
        if all(repeats[key]):  # the final report at t = 0 repeats the last estimate: no transition of its own
            steps = steps[:-1]
        walk_steps.update(steps)
        values = {m: [_mean([d[m] for d in points[key][s]]) for s in steps] for m in METRICS}
        report["methods"][key]["trajectory"] = {"steps": steps, "from_trajectory": True, **values,
                                                "drift_db_per_step": _drift(values["psnr"]),
                                                "drift_range_invariant_db_per_step": _drift(values["psnr_range_invariant"])}
    steps = sorted(walk_steps, reverse=True) or list(range(t_max, 0, -1))  # no walk: the ladder schedule's points
    for key, per_field in refs.items():
        values = {m: [_mean([d[m] for d in per_field])] * len(steps) for m in METRICS}
        report["methods"][key]["trajectory"] = {"steps": steps, "from_trajectory": False, **values,
                                                "drift_db_per_step": 0.0, "drift_range_invariant_db_per_step": 0.0}
    return bool(walked)


def _walk_field(store: LadderStore, field: str, x0: np.ndarray, spacing: tuple[float, float], offset: float | None,
                points: dict[int, list[dict[str, float]]]) -> tuple[list[int], bool]:
    """Score one field's trajectory (T+1, [z,] y, x) plane by plane, appending each visited step's metrics to
    ``points[step]``. Returns the visited steps (T ... 0 order) and whether the t = 0 plane is bitwise the
    previous visited one (the strategy's final report of its last estimate)."""
    trajectory = store.extra(field, "trajectory")
    steps: list[int] = []
    previous: np.ndarray | None = None
    repeat = False
    for s in range(trajectory.shape[0] - 1, -1, -1):
        plane = np.asarray(trajectory[s])
        if np.isnan(plane).all():
            continue  # the schedule did not visit step s (a partly NaN plane is missing data: _scored refuses it)
        if s == 0 and previous is not None:
            repeat = bool(np.array_equal(plane, previous))
        points.setdefault(s, []).append(_scored(store, field, f"trajectory step {s}", plane, x0, spacing, offset))
        steps.append(s)
        previous = plane
    return steps, repeat


def _drift(values: list[float]) -> float:
    """(last - first) / transitions of a walk's per-point values; 0 for one point or equal ends (also both
    infinite, where the difference would be NaN)."""
    if len(values) < 2 or values[-1] == values[0]:
        return 0.0
    return (values[-1] - values[0]) / (len(values) - 1)


def _plot_study(report: dict[str, Any], path: Path) -> None:
    from dehaze.figures import StepCurve, psnr_per_step_plot

    panels: dict[str, list[StepCurve]] = {"psnr": [], "psnr_range_invariant": []}
    drift_key = {"psnr": "drift_db_per_step", "psnr_range_invariant": "drift_range_invariant_db_per_step"}
    for entry in report["methods"].values():
        traj = entry["trajectory"]
        kind: CurveKind = "iterative" if traj["from_trajectory"] else ("identity" if entry["kind"] == "identity" else "one_shot")
        for metric, curves in panels.items():
            label = entry["label"] if kind != "identity" else "hazy input x_T"
            if kind == "iterative":
                label = f"{label} (drift {traj[drift_key[metric]]:+.2f} dB/step)"
            curves.append(StepCurve(label=label, values=list(traj[metric]), kind=kind, steps=list(traj["steps"])))
    title = (f"Iterative inference from the haziest input: x_0 estimate at each step of the walk (one point per estimate) "
             f"— {Path(report['truth_store']).name}")
    psnr_per_step_plot(list(report["methods"][IDENTITY]["trajectory"]["steps"]), panels["psnr"], path, title=title, ylabel="PSNR (dB)",
                       xlabel="time step t of the iterative walk (haziest → clean)",
                       second=(panels["psnr_range_invariant"], "range-invariant PSNR (dB)"))


def _montage_steps(steps: list[int], n: int = 4) -> list[int]:
    """Up to ``n`` steps spread evenly over 1..T, always including the first and last."""
    if len(steps) <= n:
        return list(steps)
    idx = np.linspace(0, len(steps) - 1, n).round().astype(int)
    return sorted({steps[i] for i in idx})


def _plot_psnr(report: dict[str, Any], path: Path) -> None:
    from dehaze.figures import StepCurve, psnr_per_step_plot

    steps = report["steps"]
    curves = []
    for entry in report["methods"].values():
        values = [entry["steps"][str(t)]["mean"]["psnr"] for t in steps]
        kind: CurveKind = "identity" if entry["kind"] == "identity" else ("one_shot" if entry["one_shot"] else "iterative")
        curves.append(StepCurve(label=entry["label"], values=values, kind=kind))
    title = f"PSNR against {report['target']} x_0 (data range of the target), mean over {len(report['fields'])} fields — {Path(report['truth_store']).name}"
    psnr_per_step_plot(steps, curves, path, title=title, ylabel="PSNR (dB)")


def _plot_montage(
    report: dict[str, Any],
    x0: np.ndarray,
    planes: dict[str, dict[int, np.ndarray]],
    steps: list[int],
    path: Path,
) -> None:
    from dehaze.figures import evaluation_montage

    def view(img: np.ndarray) -> np.ndarray:  # middle plane of a 3-D field
        return img if img.ndim == 2 else img[img.shape[0] // 2]

    field = report["fields"][0]
    rows: list[tuple[str, list[np.ndarray | None]]] = [(f"target x_0\n({report['target']})", [view(x0)] + [None] * (len(steps) - 1))]
    notes: list[list[str | None]] = [[None] * len(steps)]
    for key, entry in report["methods"].items():
        rows.append((entry["label"], [view(planes[key][t]) for t in steps]))
        notes.append([f"{entry['steps'][str(t)]['per_field'][field]['psnr']:.1f} dB" for t in steps])
    evaluation_montage(
        rows,
        [f"input step {t}" for t in steps],
        path,
        title=f"{Path(report['truth_store']).name} / {field}: estimate of x_0 from each input step, PSNR in the corner (one display range per row)",
        cell_notes=notes,
    )


def psnr_table(report: dict[str, Any]) -> list[str]:
    """A report's mean PSNR per method and input step, as printed lines (``dehaze evaluate``, the study)."""
    steps = report["steps"]
    width = max([20, *(len(k) + 1 for k in report["methods"])])
    lines = [f"mean PSNR (dB, data range of the {report['target']} x_0) per input step:",
             "  " + f"{'method':<{width}}" + "".join(f"{'t=' + str(t):>9}" for t in steps)]
    for key, entry in report["methods"].items():
        vals = [entry["steps"][str(t)]["mean"]["psnr"] for t in steps]
        lines.append("  " + f"{key:<{width}}" + "".join(f"{v:>9.2f}" if v is not None else f"{'inf':>9}" for v in vals))
    return lines
