"""Calibration of a posterior's spread against its error (HazeMatching's per-data-set linear fit).

A sampler's per-pixel std sigma (over K samples) says how uncertain each pixel is, but an uncalibrated
spread under-states the error (HazeMatching's fitted scales were about 1.4-2.5). The fit, on predictions of
held-out fields whose clean image is known:

* bin the pixels by their predicted std (equal-count bins: every bin holds the same number of pixels);
* per bin: RMV = sqrt(mean sigma^2) (root mean variance) and RMSE = sqrt(mean (mean - x_0)^2);
* fit RMSE = scale * RMV + offset by least squares over the bins; a calibrated std is scale * sigma + offset.

Calibration error (Levi et al. 2022's UCE, in ADU): sum over bins of (n_b / N) |RMV_b - RMSE_b|; and the
largest relative gap per bin, |RMV_b - RMSE_b| / RMSE_b (the issue's goal: within 10 % in every bin).

All values are in the prediction store's units (ADU), pooled over the steps asked for (default every input
step >= 1: step 0 is the clean image itself, where the error is only the target's noise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dehaze.errors import UserError

if TYPE_CHECKING:  # dehaze.evaluate is imported where used, at run time
    from dehaze.evaluate import Target

CALIBRATION_FILE = "calibration.json"  # in the run directory: later predictions apply it
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
    """Least-squares RMSE = scale * RMV + offset over the bins (weighted by their counts), with offset >= 0;
    ``offset=False`` fits through the origin.

    Why offset >= 0: a negative one would give pixels of small spread a negative std, which would have to be
    floored at 0, and a floored std cannot be undone (``calibrate`` refits a calibrated prediction from its raw
    std). The bound costs nothing where it is not active; where it is, the least-squares optimum lies on it,
    which is the fit through the origin."""
    w = rel.counts.astype(np.float64)
    if offset:
        a = np.stack([rel.rmv, np.ones_like(rel.rmv)], axis=1)
        sw = np.sqrt(w)[:, None]
        (scale, off), *_ = np.linalg.lstsq(a * sw, rel.rmse * sw[:, 0], rcond=None)
        if off >= 0:
            return float(scale), float(off)
    return float((w * rel.rmv * rel.rmse).sum() / max((w * rel.rmv**2).sum(), 1e-30)), 0.0


def apply(std: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """The calibrated std: scale * std + offset (>= 0 for the factors fit_scale_offset returns; floored at 0
    for factors written by hand)."""
    return np.maximum(np.float32(scale) * np.asarray(std, np.float32) + np.float32(offset), np.float32(0))


# ---- stores: predictions against their truth -----------------------------------------------------------
def _pairs(prediction: Any, truth: Any, target: Target, fields: list[str] | None, steps: list[int] | None,
           ) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    """(std, error) pooled over the chosen fields and input steps of a prediction store against its truth,
    with the std as it was written before any calibration the store records (ADU)."""
    from dehaze.evaluate import target_image

    info = prediction.meta.prediction.strategy if prediction.meta.prediction else {}
    previous = info.get("std_calibration") or {"scale": 1.0, "offset": 0.0}
    chosen = fields or prediction.fields
    unknown = [f for f in chosen if f not in prediction.fields or f not in truth.fields]
    if unknown:
        raise UserError(f"calibration: field {unknown[0]} is not in both the prediction and --truth")
    steps = steps or list(range(1, prediction.n_steps))
    stds, errors = [], []
    for f in chosen:
        if "std" not in prediction.root[f]:
            raise UserError(f"{prediction.path}: field {f} has no std array (not a sampling strategy's prediction)")
        x0 = target_image(truth, f, target)
        est, std = prediction.image(f)[...], prediction.extra(f, "std")[...]
        for t in steps:
            raw = (std[t] - previous["offset"]) / previous["scale"]  # undo a calibration applied at predict time
            stds.append(raw.ravel())
            errors.append((est[t] - x0).ravel())
    std_all = np.concatenate(stds)
    if not np.any(std_all > 0):
        raise UserError(f"{prediction.path}: its std is 0 everywhere (K = 1?); predict with --samples K > 1 to calibrate")
    return std_all, np.concatenate(errors), chosen, steps


def calibrate(prediction_path: str | Path, truth_path: str | Path, *, target: Target = "noise_free",
              fields: list[str] | None = None, steps: list[int] | None = None, bins: int = DEFAULT_BINS,
              write: bool = True, figure: str | Path | None = None) -> dict[str, Any]:
    """Fit the std's scale and offset of a prediction store against its truth (the fields given, or every
    field: use held-out fields) and, with ``write``, store the factors as ``calibration.json`` in the run
    that made it (its later predictions apply them). Returns the factors and the calibration error before
    and after; ``figure``: a reliability-diagram PNG."""
    from dehaze.store import open_ladder

    pred, truth = open_ladder(prediction_path), open_ladder(truth_path)
    if pred.meta.source != "prediction" or pred.meta.prediction is None:
        raise UserError(f"{prediction_path}: is not a prediction store")
    std, err, chosen, steps = _pairs(pred, truth, target, fields, steps)
    before = reliability(std, err, bins)
    scale, offset = fit_scale_offset(before)
    after = reliability(apply(std, scale, offset), err, bins)
    result = {"method": pred.meta.prediction.method, "prediction": str(Path(prediction_path).resolve()),
              "truth": str(Path(truth_path).resolve()), "target": target, "fields": chosen, "steps": steps, "bins": bins,
              "samples": pred.meta.prediction.strategy.get("samples"), "scale": scale, "offset": offset,
              "before": before.to_json(), "after": after.to_json()}
    if figure is not None:
        from dehaze.figures import reliability_diagram

        reliability_diagram({"uncalibrated": before, f"calibrated (x{scale:.2f} {offset:+.3g})": after}, Path(figure),
                            title=f"{result['method']}: reliability ({len(chosen)} field(s), steps {steps[0]}..{steps[-1]})")
        result["figure"] = str(figure)
    if write:
        runs = [r for r in pred.meta.prediction.run_dirs]
        if len(runs) != 1:
            raise UserError(f"{prediction_path}: made with {len(runs)} runs; calibration is stored with a single run")
        path = Path(runs[0]) / CALIBRATION_FILE
        from dehaze.runs import atomic_write_text

        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        result["written"] = str(path)
    return result


def cross_fit(prediction_path: str | Path, truth_path: str | Path, *, target: Target = "noise_free", bins: int = DEFAULT_BINS,
              figure: str | Path | None = None) -> dict[str, Any]:
    """Held-out calibration: fit on each field alone and score the fitted factors on the other fields (the
    honest number: the factors never saw the pixels they are judged on). Writes nothing with the run;
    ``figure``: the reliability diagram of the first fit, on its held-out fields."""
    from dehaze.store import open_ladder

    pred, truth = open_ladder(prediction_path), open_ladder(truth_path)
    if len(pred.fields) < 2:
        raise UserError(f"{prediction_path}: cross-fitting needs at least 2 fields")
    fits = []
    for i, f in enumerate(pred.fields):
        others = [g for g in pred.fields if g != f]
        scale, offset = fit_scale_offset(reliability(*_pairs(pred, truth, target, [f], None)[:2], bins))
        std, err = _pairs(pred, truth, target, others, None)[:2]
        # _pairs found std arrays, which only a prediction writes, and it records its PredictionInfo
        assert pred.meta.prediction is not None
        before, after = reliability(std, err, bins), reliability(apply(std, scale, offset), err, bins)
        fits.append({"fitted_on": f, "scale": scale, "offset": offset, "scored_on": others,
                     "scored_on_others": {"before": before.to_json(), "after": after.to_json(),
                                          "relative_gap_per_bin": after.to_json()["relative_gap_per_bin"]}})
        if i == 0 and figure is not None:
            from dehaze.figures import reliability_diagram

            reliability_diagram({"uncalibrated": before, f"calibrated on {f} (x{scale:.2f} {offset:+.3g})": after}, Path(figure),
                                title=f"{pred.meta.prediction.method}: reliability on held-out {', '.join(others)}")
    assert pred.meta.prediction is not None  # as in the loop (it ran: at least 2 fields)
    return {"method": pred.meta.prediction.method, "target": target, "bins": bins, "fits": fits,
            "figure": str(figure) if figure is not None else None}


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's fitted std calibration ({"scale", "offset", ...}), or None where it has none."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        cal = json.loads(path.read_text())
        return {"scale": float(cal["scale"]), "offset": float(cal["offset"]), "fitted_on": cal.get("prediction")}
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: unreadable calibration (run `dehaze calibrate` again)") from None
