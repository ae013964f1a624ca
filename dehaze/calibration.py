"""Calibration of a posterior's spread against its error (HazeMatching's per-data-set linear fit).

A sampler's per-pixel std sigma (over K samples) says how uncertain each pixel is, but an uncalibrated
spread under-states the error (HazeMatching's fitted scales were about 1.4-2.5). The fit, on predictions of
held-out fields whose clean image is known:

* bin the pixels by their predicted std (equal-count bins: every bin holds the same number of pixels);
* per bin: RMV = sqrt(mean sigma^2) (root mean variance) and RMSE = sqrt(mean (mean - x_0)^2);
* fit RMSE = scale * RMV + offset by least squares over the bins; a calibrated std is scale * sigma + offset;
* by default one (scale, offset) per input step of the ladder (see ``step_fit``), or one for all steps.

Calibration error "UCE" here, in ADU: sum over bins of (n_b / N) |RMV_b - RMSE_b|, the count-weighted gap in
std units (Laves et al. 2020's UCE weighs the same gap in variances; Levi et al. 2022's ENCE divides it by
RMV_b); and the largest relative gap per bin, |RMV_b - RMSE_b| / RMSE_b (the issue's goal: within 10 % in
every bin). The numbers ``dehaze calibrate`` prints are in-sample (scored on the pixels fitted);
``cross_fit`` gives held-out ones.

All values are in the prediction store's units (ADU), pooled over the steps asked for (default every input
step >= 1: step 0 is the clean image itself, where the error is only the target's noise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dehaze.errors import UserError

if TYPE_CHECKING:  # dehaze.evaluate is imported where used, at run time
    from dehaze.evaluate import Target

CALIBRATION_FILE = "calibration.json"  # in the run directory: later predictions apply it
# the sampler settings a calibration was fitted at: the fit depends on them (K above all: binning by a std
# estimated from K samples dilutes the slope, so even a perfectly calibrated Gaussian sampler fits a scale
# well below 1 at small K and nearer 1 at K = 16), so a prediction made with others writes its raw std
FITTED_AT = ("samples", "flow_steps", "flow_solver")
DEFAULT_BINS = 20


@dataclass(frozen=True)
class Reliability:
    """Binned reliability: per bin the root mean variance (predicted) and the RMSE (observed), ADU."""

    rmv: np.ndarray
    rmse: np.ndarray
    counts: np.ndarray

    def uce(self) -> float:
        """sum_b (n_b / N) |RMV_b - RMSE_b| (ADU)."""
        return float((self.counts * np.abs(self.rmv - self.rmse)).sum() / max(self.counts.sum(), 1))

    def max_relative_gap(self) -> float:
        """max_b |RMV_b - RMSE_b| / RMSE_b over bins with a non-zero error."""
        ok = self.rmse > 0
        return float((np.abs(self.rmv - self.rmse)[ok] / self.rmse[ok]).max()) if ok.any() else float("nan")

    def relative_gaps(self) -> np.ndarray:
        """|RMV_b - RMSE_b| / RMSE_b per bin (NaN where the error is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.rmse > 0, np.abs(self.rmv - self.rmse) / self.rmse, np.nan)

    def to_json(self) -> dict[str, Any]:
        return {"rmv": self.rmv.tolist(), "rmse": self.rmse.tolist(), "counts": self.counts.tolist(),
                "uce": self.uce(), "max_relative_gap": self.max_relative_gap(),
                "relative_gap_per_bin": [None if np.isnan(g) else float(g) for g in self.relative_gaps()]}


def reliability(std: np.ndarray, error: np.ndarray, bins: int = DEFAULT_BINS) -> Reliability:
    """Equal-count bins of the predicted ``std`` (any shape, ADU) against the ``error`` (same shape,
    prediction - truth, ADU); non-finite pixels are left out."""
    s, e = np.asarray(std, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    ok = np.isfinite(s) & np.isfinite(e)
    s, e = s[ok], e[ok]
    if s.size < bins:
        raise UserError(f"calibration: {s.size} valid pixels for {bins} bins; give more fields or steps")
    order = np.argsort(s, kind="stable")
    parts = np.array_split(order, bins)
    rmv = np.array([np.sqrt(np.mean(s[p] ** 2)) for p in parts])
    rmse = np.array([np.sqrt(np.mean(e[p] ** 2)) for p in parts])
    return Reliability(rmv, rmse, np.array([len(p) for p in parts]))


def fit_scale_offset(rel: Reliability, offset: bool = True) -> tuple[float, float]:
    """Least-squares RMSE = scale * RMV + offset over the bins (weighted by their counts), with offset >= 0
    and scale > 0; ``offset=False`` fits through the origin (whose scale is always > 0).

    Why offset >= 0 and scale > 0: a negative offset would give pixels of small spread a negative std, a
    negative scale (an error that falls as the spread grows) pixels of large spread; either would have to be
    floored at 0, and a floored std cannot be undone (``calibrate`` refits a calibrated prediction from its raw
    std). The bounds cost nothing where they are not active; where the offset's is, the least-squares optimum
    lies on it, which is the fit through the origin. Where the scale's is (an error that falls with the spread),
    the fallback is the same fit through the origin, not the constrained optimum (scale -> 0 with a constant
    offset, which could not be undone either). A std of 0 everywhere has no scale: ``fit_factors`` leaves such a
    step out."""
    w = rel.counts.astype(np.float64)
    if offset:
        a = np.stack([rel.rmv, np.ones_like(rel.rmv)], axis=1)
        sw = np.sqrt(w)[:, None]
        (scale, off), *_ = np.linalg.lstsq(a * sw, rel.rmse * sw[:, 0], rcond=None)
        if off >= 0 and scale > 0:
            return float(scale), float(off)
    return float((w * rel.rmv * rel.rmse).sum() / max((w * rel.rmv**2).sum(), 1e-30)), 0.0


def apply(std: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """The calibrated std: scale * std + offset (>= 0 for the factors fit_scale_offset returns; floored at 0
    for factors written by hand)."""
    return np.maximum(np.float32(scale) * np.asarray(std, np.float32) + np.float32(offset), np.float32(0))


def fit_isotonic(rel: Reliability) -> dict[str, list[float]]:
    """The monotone map std -> RMSE through the bins: knots at each bin's RMV, values the isotonic
    (non-decreasing, count-weighted least-squares) regression of the bins' RMSE (scipy's pool-adjacent-
    violators). Applied by linear interpolation, clamped at the end knots. Why: within one ladder step the
    error of the mean can be flat over most spreads and rise steeply in the top bins, a shape no scale and
    offset follow; why monotone: a larger spread should never promise a smaller error. Not invertible where
    it is flat, so a prediction written with it cannot be refitted (predict again with --no-calibrated-std).
    Applied by :func:`_isotonic_map`."""
    from scipy.optimize import isotonic_regression

    weights = rel.counts.astype(np.float64)
    values = isotonic_regression(rel.rmse, weights=weights).x
    knots, tie = np.unique(rel.rmv, return_inverse=True)  # np.interp needs increasing knots; bins can tie
    merged = np.bincount(tie, weights * values) / np.bincount(tie, weights)  # tied bins: their weighted mean
    return {"std": knots.tolist(), "rmse": merged.tolist()}


def _isotonic_map(fit: dict[str, list[float]], std: np.ndarray) -> np.ndarray:
    """Interpolated between the knots; below the first, its value (the error does not fall further); above the
    last, in proportion to the spread (rmse_last / std_last x std): the top bin holds the largest errors, and
    a clamp would promise them all the bin's RMSE."""
    s, knots, values = np.asarray(std, np.float64), fit["std"], fit["rmse"]
    out = np.interp(s, knots, values)
    top = s > knots[-1]
    out[top] = values[-1] / knots[-1] * s[top] if knots[-1] > 0 else values[-1]
    return out.astype(np.float32)


# ---- one fit per input step --------------------------------------------------------------------------------
# Why per step: a ladder's input step is known at predict time, and the sampler's spread errs by a factor that
# moves with it (on the CPU study the fitted scale rises from 0.65 at step 1 to 2.4-3.0 at x_T: the spread
# shrinks with the haze while the error grows). One pooled scale averages opposite errors and, pooled over
# steps, bins pixels of different steps together: the reliability curve goes flat. ``pooled=True`` is
# HazeMatching's one fit per data set.
Method = Literal["linear", "isotonic"]
METHODS: tuple[Method, ...] = ("linear", "isotonic")
_FIT_KEYS = {"linear": ("scale", "offset"), "isotonic": ("std", "rmse")}


def _fit(rel: Reliability, method: Method) -> dict[str, Any]:
    if method == "isotonic":
        return fit_isotonic(rel)
    return dict(zip(("scale", "offset"), fit_scale_offset(rel)))


def step_fit(cal: dict[str, Any], step: int) -> dict[str, Any] | None:
    """The fit a calibration gives input step ``step``: its own where it has one, the pooled one for a pooled
    calibration; None for a step it was not fitted on (step 0, where the error is only the target's noise and
    the spread is 20-100x the hazy steps', or a step whose std was 0): such a step keeps its raw std."""
    if step not in cal.get("steps", ()):
        return None
    own = (cal.get("per_step") or {}).get(str(step))
    return own if own else {k: cal[k] for k in _FIT_KEYS[cal.get("map", "linear")]}


def calibrated(cal: dict[str, Any] | None, step: int, std: np.ndarray) -> np.ndarray:
    """The calibrated std (ADU, float32) of input step ``step`` under ``cal`` (None: ``std`` as it is)."""
    fit = step_fit(cal, step) if cal else None
    if fit is None:
        return np.asarray(std, np.float32)
    if cal and cal.get("map", "linear") == "isotonic":
        return _isotonic_map(fit, std)
    return apply(std, fit["scale"], fit["offset"])


def uncalibrated(cal: dict[str, Any] | None, step: int, std: np.ndarray, where: Any) -> np.ndarray:
    """The raw std behind a std written calibrated by ``cal`` (linear fits only; ``where`` names the store)."""
    fit = step_fit(cal, step) if cal else None
    if fit is None:
        return np.asarray(std)
    if cal and cal.get("map", "linear") == "isotonic":
        raise UserError(f"{where}: its std was calibrated by an isotonic map, which cannot be undone; predict again "
                        "with --no-calibrated-std (and a new -o or --overwrite) to calibrate anew")
    return (np.asarray(std) - fit["offset"]) / fit["scale"]


def fit_factors(pairs: dict[int, tuple[np.ndarray, np.ndarray]], bins: int = DEFAULT_BINS, pooled: bool = False,
                method: Method = "linear") -> dict[str, Any]:
    """The calibration of ``pairs`` (input step -> (raw std, error), ADU) by ``method``: the pooled fit over
    every step (``scale``/``offset``, or the isotonic knots ``std``/``rmse``) and, unless ``pooled``, each
    step's own (``per_step``, keyed by the step as a string); ``map`` names the method."""
    if method not in METHODS:
        raise UserError(f"calibration: method {method!r} is not one of {', '.join(METHODS)}")
    fitted = {t: p for t, p in pairs.items() if np.any(p[0] > 0)}  # a std of 0 everywhere has nothing to scale
    if not fitted:
        raise UserError("calibration: the std is 0 at every step asked for; nothing to fit")
    std, err = (np.concatenate([p[i] for p in fitted.values()]) for i in (0, 1))
    per_step = {} if pooled else {str(t): _fit(reliability(s, e, bins), method) for t, (s, e) in fitted.items()}
    return {"map": method, **_fit(reliability(std, err, bins), method), "per_step": per_step, "steps": sorted(fitted)}


def reliability_of(pairs: dict[int, tuple[np.ndarray, np.ndarray]], cal: dict[str, Any] | None, bins: int = DEFAULT_BINS,
                   ) -> Reliability:
    """Pooled reliability of ``pairs`` with each step's std calibrated by ``cal`` (None: the raw std)."""
    std = np.concatenate([calibrated(cal, t, s) for t, (s, _) in pairs.items()])
    return reliability(std, np.concatenate([e for _, e in pairs.values()]), bins)


def gaps_per_step(pairs: dict[int, tuple[np.ndarray, np.ndarray]], cal: dict[str, Any] | None, bins: int = DEFAULT_BINS,
                  ) -> dict[str, float]:
    """Each step's largest relative gap per bin on its own pixels (pooled bins can hide a step's error: two
    steps off by opposite factors over the same spreads look calibrated together)."""
    return {str(t): reliability_of({t: p}, cal, bins).max_relative_gap() for t, p in pairs.items()}


def _label(cal: dict[str, Any]) -> str:
    if cal["map"] == "isotonic":
        return f"calibrated{' per step' if cal['per_step'] else ''} (isotonic)"
    scales = [v["scale"] for v in cal["per_step"].values()]
    offsets = [v["offset"] for v in cal["per_step"].values()]
    if scales:
        return f"calibrated per step (x{min(scales):.2f}..x{max(scales):.2f}, {min(offsets):+.3g}..{max(offsets):+.3g})"
    return f"calibrated (x{cal['scale']:.2f} {cal['offset']:+.3g})"


# ---- stores: predictions against their truth -----------------------------------------------------------
def _pairs(prediction: Any, truth: Any, target: Target, fields: list[str] | None, steps: list[int] | None,
           ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Input step -> (std, error) pooled over the chosen fields of a prediction store against its truth, with
    the std as it was written before any calibration the store records (ADU); and the fields."""
    from dehaze.evaluate import target_image

    info = prediction.meta.prediction.strategy if prediction.meta.prediction else {}
    previous = info.get("std_calibration")  # what predict applied, as read_calibration returned it
    if prediction.meta.prediction and truth.meta.manifest_sha256 != prediction.meta.prediction.input_sha256:
        raise UserError(f"--truth {truth.path}: is not the ladder {prediction.path} was predicted from "
                        f"({prediction.meta.prediction.input_store}); give that store (a single image's prediction has no ladder truth)")
    chosen = fields or prediction.fields
    unknown = [f for f in chosen if f not in prediction.fields or f not in truth.fields]
    if unknown:
        raise UserError(f"calibration: field {unknown[0]} is not in both the prediction and --truth")
    steps = steps or list(range(1, prediction.n_steps))
    if not steps:
        raise UserError(f"{prediction.path}: has no input step >= 1 to fit (step 0 is the clean image, where the error is the target's noise)")
    stds: dict[int, list[np.ndarray]] = {t: [] for t in steps}
    errors: dict[int, list[np.ndarray]] = {t: [] for t in steps}
    for f in chosen:
        if "std" not in prediction.root[f]:
            raise UserError(f"{prediction.path}: field {f} has no std array (not a sampling strategy's prediction)")
        x0 = target_image(truth, f, target)
        est, std = prediction.image(f)[...], prediction.extra(f, "std")[...]
        for t in steps:
            stds[t].append(uncalibrated(previous, t, std[t], prediction.path).ravel())  # undo predict's calibration
            errors[t].append((est[t] - x0).ravel())
    pairs = {t: (np.concatenate(stds[t]), np.concatenate(errors[t])) for t in steps}
    if not any(np.any(s > 0) for s, _ in pairs.values()):
        raise UserError(f"{prediction.path}: its std is 0 at every step >= 1 (K = 1?); predict with --samples K > 1 to calibrate")
    return pairs, chosen


def _prediction(path: str | Path) -> Any:
    from dehaze.store import open_ladder

    store = open_ladder(path)
    if store.meta.source != "prediction" or store.meta.prediction is None:
        raise UserError(f"{path}: is not a prediction store")
    return store


def calibrate(prediction_path: str | Path, truth_path: str | Path, *, target: Target = "noise_free",
              fields: list[str] | None = None, steps: list[int] | None = None, bins: int = DEFAULT_BINS,
              pooled: bool = False, method: Method = "linear", write: bool = True, figure: str | Path | None = None,
              ) -> dict[str, Any]:
    """Fit the std's scale and offset of a prediction store against its truth (the fields given, or every
    field: use held-out fields), per input step unless ``pooled`` (``method`` "isotonic": a monotone map
    instead of a scale and offset, see ``fit_isotonic``), and, with ``write``, store the factors as
    ``calibration.json`` in the run that made it (its later predictions apply them). Returns the factors and
    the calibration error before and after (pooled over the steps); ``figure``: a reliability-diagram PNG."""
    from dehaze.runs import checkpoint_sha256
    from dehaze.store import ensure_writable_parent, open_ladder

    pred, truth = _prediction(prediction_path), open_ladder(truth_path)
    info = pred.meta.prediction
    if info.method != "flow":  # the only sampler whose predictions apply a run's calibration
        raise UserError(f"{prediction_path}: is a {info.method} prediction; calibration is fitted for and applied to flow predictions")
    run_dirs = list(info.run_dirs)
    if write and (len(run_dirs) != 1 or not Path(run_dirs[0]).is_dir()):
        raise UserError(f"{prediction_path}: its run {run_dirs[0] if run_dirs else '(none)'} is not there to store the "
                        "calibration in; use --dry-run, or predict again from the run")
    if write and pred.meta.manifest.get("checkpoints") not in (None, [checkpoint_sha256(run_dirs[0])]):
        raise UserError(f"{prediction_path}: its run {run_dirs[0]} was trained again since this prediction; predict "
                        "again before calibrating (a fit of other weights' spread would be stored with these)")
    if figure is not None:
        ensure_writable_parent(Path(figure))
    pairs, chosen = _pairs(pred, truth, target, fields, steps)
    cal = fit_factors(pairs, bins, pooled, method)
    before, after = reliability_of(pairs, None, bins), reliability_of(pairs, cal, bins)
    fitted_at = {k: info.strategy.get(k) for k in FITTED_AT}
    result = {"method": info.method, "prediction": str(Path(prediction_path).resolve()),
              "truth": str(Path(truth_path).resolve()), "target": target, "fields": chosen,
              "bins": bins, "samples": fitted_at["samples"], "fitted_at": fitted_at, **cal,
              "before": before.to_json(), "after": after.to_json(),
              "max_relative_gap_per_step": {"before": gaps_per_step(pairs, None, bins), "after": gaps_per_step(pairs, cal, bins)}}
    if figure is not None:
        from dehaze.figures import reliability_diagram

        reliability_diagram({"uncalibrated": before, _label(cal): after}, Path(figure),
                            title=f"{result['method']}: reliability ({len(chosen)} field(s), steps {min(pairs)}..{max(pairs)})")
        result["figure"] = str(figure)
    if write:
        path = Path(run_dirs[0]) / CALIBRATION_FILE
        from dehaze.runs import atomic_write_text

        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        result["written"] = str(path)
    return result


def cross_fit(prediction_path: str | Path, truth_path: str | Path, *, target: Target = "noise_free", bins: int = DEFAULT_BINS,
              pooled: bool = False, method: Method = "linear", figure: str | Path | None = None) -> dict[str, Any]:
    """Held-out calibration: fit on each field alone and score the fitted factors on the other fields (the
    honest number: the factors never saw the pixels they are judged on). Writes nothing with the run;
    ``figure``: the reliability diagram of the first fit, on its held-out fields."""
    from dehaze.store import open_ladder

    pred, truth = _prediction(prediction_path), open_ladder(truth_path)
    if len(pred.fields) < 2:
        raise UserError(f"{prediction_path}: cross-fitting needs at least 2 fields")
    fits = []
    for i, f in enumerate(pred.fields):
        others = [g for g in pred.fields if g != f]
        cal = fit_factors(_pairs(pred, truth, target, [f], None)[0], bins, pooled, method)
        scored = _pairs(pred, truth, target, others, None)[0]
        before, after = reliability_of(scored, None, bins), reliability_of(scored, cal, bins)
        fits.append({"fitted_on": f, **cal, "scored_on": others,
                     "scored_on_others": {"before": before.to_json(), "after": after.to_json(),
                                          "relative_gap_per_bin": after.to_json()["relative_gap_per_bin"],
                                          "max_relative_gap_per_step": {"before": gaps_per_step(scored, None, bins),
                                                                        "after": gaps_per_step(scored, cal, bins)}}})
        if i == 0 and figure is not None:
            from dehaze.figures import reliability_diagram

            reliability_diagram({"uncalibrated": before, f"{_label(cal)} on {f}": after}, Path(figure),
                                title=f"{pred.meta.prediction.method}: reliability on held-out {', '.join(others)}")
    return {"method": pred.meta.prediction.method, "target": target, "bins": bins, "pooled": pooled,
            "map": method, "fits": fits,
            "figure": str(figure) if figure is not None else None}


def _number(value: Any, name: str, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name} {value!r} is not a finite number")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} {value!r} is not {'>' if strict else '>='} {minimum}")
    return float(value)


def _checked_fit(d: Any, method: Method) -> dict[str, Any]:
    """One fit of a calibration file, validated: a scale > 0 and offset >= 0, or isotonic knots increasing
    with values >= 0 that do not fall."""
    if method == "linear":
        return {"scale": _number(d["scale"], "scale", 0.0, strict=True), "offset": _number(d["offset"], "offset", 0.0)}
    knots, values = [_number(v, "std knot", 0.0) for v in d["std"]], [_number(v, "rmse value", 0.0) for v in d["rmse"]]
    if len(knots) != len(values) or not knots or any(b <= a for a, b in zip(knots, knots[1:])) \
            or any(b < a for a, b in zip(values, values[1:])):
        raise ValueError("isotonic knots must increase and their values must not fall")
    return {"std": knots, "rmse": values}


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's fitted std calibration ({"map", the pooled fit, "per_step", "steps", "fitted_at",
    "fitted_on"}: what ``calibrated`` applies), validated, or None where it has none."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        cal = json.loads(path.read_text())
        method = cal.get("map", "linear")  # files written before the isotonic map are linear
        if method not in METHODS:
            raise ValueError(f"map {method!r}")
        per_step = {str(int(t)): _checked_fit(v, method) for t, v in (cal.get("per_step") or {}).items()}
        steps = sorted(int(t) for t in cal.get("steps", per_step or range(1, 64)))  # older files: every step >= 1
        fitted_at = {k: (cal.get("fitted_at") or {}).get(k, cal.get("samples") if k == "samples" else None) for k in FITTED_AT}
        return {"map": method, **_checked_fit(cal, method), "per_step": per_step, "steps": steps,
                "fitted_at": fitted_at, "fitted_on": cal.get("prediction")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: unreadable calibration ({err}); run `dehaze calibrate` again") from None


def calibration_mismatch(cal: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """Why ``cal`` does not fit a prediction made with ``settings`` (samples, flow_steps, flow_solver), or
    None where it does (a setting the file does not record is not held against it)."""
    if (settings.get("samples") or 1) < 2:
        return "K = 1 has no spread to calibrate"
    for key in FITTED_AT:
        fitted = cal["fitted_at"].get(key)
        if fitted is not None and fitted != settings.get(key):
            return f"it was fitted at {key} = {fitted}, this prediction uses {settings.get(key)}"
    return None
