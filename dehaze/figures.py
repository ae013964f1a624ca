"""Figures a person looks at (PNG, matplotlib's Agg backend, no display): step montages of a ladder, and the
evaluation report's PSNR-per-step plot and method-by-step montage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax, img: np.ndarray, title: str, cmap: str = "magma") -> None:  # noqa: ANN001 - matplotlib Axes
    """An image stretched to its own 0.5-99.8 percentiles, titled, without axes."""
    lo, hi = np.percentile(img, [0.5, 99.8])
    ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _save(fig, path: str | Path, title: str = "", dpi: int = 110) -> Path:  # noqa: ANN001 - matplotlib Figure
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def step_montage(steps: np.ndarray, labels: list[str], path: str | Path, title: str = "", crop: int | None = 256) -> Path:
    """Write a one-row montage of a field's steps, (h, y, x), each stretched to its own 0.5-99.8 percentiles.

    A per-step stretch shows haze as it looks on a microscope screen: a grey veil that lowers contrast.
    ``crop`` keeps the central ``crop x crop`` pixels so fine structure stays visible.
    """
    steps = np.asarray(steps, dtype=np.float32)
    if crop is not None:
        y0 = max(0, (steps.shape[-2] - crop) // 2)
        x0 = max(0, (steps.shape[-1] - crop) // 2)
        steps = steps[..., y0 : y0 + crop, x0 : x0 + crop]
    n = steps.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.7), squeeze=False)
    for ax, img, label in zip(axes[0], steps, labels):
        _show(ax, img, label)
    return _save(fig, path, title)


# ---- evaluation report ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepCurve:
    """One method's metric per step for :func:`psnr_per_step_plot`.

    kind: ``one_shot`` (drawn as a dashed horizontal line at its mean over steps, like the study's UNet/HDN
    baselines), ``iterative`` (a curve with markers) or ``identity`` (the hazy input, a grey curve).
    steps: where ``values`` lie, when the curve has its own steps (an iterative walk that visits fewer
    steps than the plot shows); ``None``: the plot's steps.
    """

    label: str
    values: list[float]  # one per step, in the order of ``steps`` (or the plot's); inf/nan are not drawn
    kind: Literal["one_shot", "iterative", "identity"] = "iterative"
    steps: list[int] | None = None


def psnr_per_step_plot(
    steps: list[int],
    curves: list[StepCurve],
    path: str | Path,
    title: str = "",
    ylabel: str = "PSNR (dB)",
    haziest_left: bool = True,
    xlabel: str | None = None,
    second: tuple[list[StepCurve], str] | None = None,
) -> Path:
    """Write the study's figure: a metric (PSNR in dB) against the input degradation step.

    ``haziest_left`` puts step T on the left and step 1 on the right, as in the study, where iterative
    inference runs from the haziest step towards the clean one. One-shot methods are horizontal dashed
    lines at their mean over steps (value in the legend); others are curves with markers.
    ``second = (curves, ylabel)`` adds a panel on the right with another metric over the same steps (e.g.
    range-invariant PSNR beside PSNR); each panel then has its legend below it.
    """
    panels = [(curves, ylabel)] + ([second] if second is not None else [])
    two = len(panels) == 2
    fig, axes = plt.subplots(1, len(panels), figsize=(16.0, 7.0) if two else (10.5, 5.2), squeeze=False)
    for ax, (panel_curves, panel_ylabel) in zip(axes[0], panels):
        _step_panel(ax, steps, panel_curves, panel_ylabel, haziest_left, xlabel)
        if two:
            ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, -0.12), borderaxespad=0.0, frameon=False)
        else:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    if title and two:
        fig.suptitle(title, fontsize=10)
    elif title:
        axes[0, 0].set_title(title, fontsize=10)
    return _save(fig, path, dpi=120)


def _step_panel(ax, steps: list[int], curves: list[StepCurve], ylabel: str, haziest_left: bool,  # noqa: ANN001 - Axes
                xlabel: str | None) -> None:
    """One panel of :func:`psnr_per_step_plot`: the curves against the step, axes labelled, no legend."""
    steps_arr = np.asarray(steps, dtype=float)
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    finite_all: list[float] = []
    for curve in curves:
        x = steps_arr if curve.steps is None else np.asarray(curve.steps, dtype=float)
        v = np.asarray(curve.values, dtype=float)
        v = np.where(np.isfinite(v), v, np.nan)
        finite_all += [float(y) for y in v[np.isfinite(v)]]
        if curve.kind == "one_shot":
            mean = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            label = f"{curve.label} (one-shot, mean {mean:.2f})" if np.isfinite(mean) else f"{curve.label} (one-shot, exact: ∞)"
            ax.hlines(mean, steps_arr.min(), steps_arr.max(), colors=next(colours), linestyles="--", linewidth=1.8, label=label)
        elif curve.kind == "identity":
            ax.plot(x, v, color="0.55", marker="s", markersize=4, linewidth=1.5, label=curve.label)
        else:
            ax.plot(x, v, color=next(colours), marker="o", markersize=5, linewidth=1.6, label=curve.label)
    ax.set_xticks(steps_arr)
    ax.set_xticklabels([str(s) for s in steps])
    if len(steps_arr) > 1:
        pad = 0.04 * (steps_arr.max() - steps_arr.min())
        lo, hi = steps_arr.min() - pad, steps_arr.max() + pad
        ax.set_xlim((hi, lo) if haziest_left else (lo, hi))
    if finite_all:
        lo, hi = min(finite_all), max(finite_all)
        margin = max(0.5, 0.08 * (hi - lo))
        ax.set_ylim(lo - margin, hi + margin)
    direction = "haziest → cleanest" if haziest_left else "cleanest → haziest"
    ax.set_xlabel(xlabel or f"input degradation step t ({direction})")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def evaluation_montage(
    rows: list[tuple[str, list[np.ndarray | None]]],
    column_labels: list[str],
    path: str | Path,
    title: str = "",
    crop: int | None = 256,
    cell_notes: list[list[str | None]] | None = None,
) -> Path:
    """Write a grid of (y, x) images: one row per method, one column per step (``None``: empty cell).

    Every row has one display range (its 0.5-99.8 percentiles over the row's images), so changes along a
    row are real; ``crop`` keeps the central ``crop x crop`` pixels. ``cell_notes[r][c]`` is written in the
    cell's lower-left corner (e.g. its PSNR).
    """
    n_rows, n_cols = len(rows), len(column_labels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols + 1.2, 2.3 * n_rows + 0.5), squeeze=False)
    for r, (label, images) in enumerate(rows):
        shown = [None if im is None else _crop(np.asarray(im, dtype=np.float32), crop) for im in images]
        values = np.concatenate([im.ravel() for im in shown if im is not None]) if any(im is not None for im in shown) else np.zeros(1)
        lo, hi = np.percentile(values, [0.5, 99.8])
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            im = shown[c] if c < len(shown) else None
            if im is not None:
                ax.imshow(im, cmap="magma", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
                note = cell_notes[r][c] if cell_notes and r < len(cell_notes) and c < len(cell_notes[r]) else None
                if note:
                    ax.text(0.03, 0.04, note, transform=ax.transAxes, fontsize=8, color="white",
                            bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "edgecolor": "none"})
            if r == 0:
                ax.set_title(column_labels[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    return _save(fig, path, title)


def _crop(img: np.ndarray, crop: int | None) -> np.ndarray:
    if crop is None:
        return img
    y0 = max(0, (img.shape[-2] - crop) // 2)
    x0 = max(0, (img.shape[-1] - crop) // 2)
    return img[..., y0 : y0 + crop, x0 : x0 + crop]


def uncertainty_figure(rows: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str = "", crop: int | None = 256) -> Path:
    """Per method: the estimate of x_0 and its per-pixel posterior std side by side (rows of 2 panels)."""
    fig, axes = plt.subplots(len(rows), 2, figsize=(6.4, 3.0 * len(rows)), squeeze=False)
    for (label, est, std), (ax_e, ax_s) in zip(rows, axes):
        if crop is not None:
            y0, x0 = max(0, (est.shape[-2] - crop) // 2), max(0, (est.shape[-1] - crop) // 2)
            est, std = est[y0 : y0 + crop, x0 : x0 + crop], std[y0 : y0 + crop, x0 : x0 + crop]
        _show(ax_e, est, f"{label}: estimate")
        im = ax_s.imshow(std, cmap="viridis", interpolation="nearest")
        ax_s.set_title(f"{label}: posterior std", fontsize=9)
        fig.colorbar(im, ax=ax_s, fraction=0.046, pad=0.04)
        ax_s.axis("off")
    return _save(fig, path, title)


def reliability_diagram(curves: dict, path: str | Path, title: str = "") -> Path:
    """Binned reliability of posterior stds: per curve (label -> :class:`dehaze.calibration.Reliability`) the
    observed RMSE against the predicted root mean variance (ADU), with the diagonal a calibrated std lies on
    and the band where the gap is within 10 % of the observed error."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    hi = max(float(max(np.max(r.rmv), np.max(r.rmse))) for r in curves.values()) * 1.05
    grid = np.linspace(0, hi, 50)
    # the gap is judged against the observed error, |RMV - RMSE| / RMSE <= 10 %: RMSE from RMV / 1.1 to RMV / 0.9
    ax.fill_between(grid, grid / 1.1, grid / 0.9, color="0.85", label="within 10 %")
    ax.plot(grid, grid, color="0.4", lw=1, ls="--", label="calibrated")
    for label, rel in curves.items():
        ax.plot(rel.rmv, rel.rmse, marker="o", ms=3, label=f"{label} (UCE {rel.uce():.3g})")
    ax.set(xlabel="predicted: root mean variance (ADU)", ylabel="observed: RMSE (ADU)", xlim=(0, hi), ylim=(0, hi))
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path, title)


def posterior_figure(criteria: dict, path: str | Path, title: str = "") -> Path:
    """Per sampling method (label -> :func:`dehaze.posterior.criteria`): left, the radially averaged power
    spectrum at the haziest input of the clean image, the one-shot UNet, the K-sample mean and a single sample
    (a sample that is in distribution follows the clean curve at high frequencies, an MMSE estimate falls
    below it); right, the std's reliability (observed RMSE against predicted root mean variance)."""
    fig, axes = plt.subplots(len(criteria), 2, figsize=(9.0, 3.6 * len(criteria)), squeeze=False)
    for (label, c), (ax_s, ax_r) in zip(criteria.items(), axes):
        spec = c["spectra_at_haziest_step"]
        if spec:
            freq = np.asarray(spec["frequency_per_um"])
            for name, style in (("clean", dict(color="k", lw=1.5)), ("unet", dict(color="tab:blue", ls="--")),
                                ("mean", dict(color="tab:orange")), ("sample", dict(color="tab:green"))):
                if name in spec:
                    ax_s.semilogy(freq, spec[name], label={"mean": f"{label}: K-sample mean", "sample": f"{label}: one sample",
                                                            "unet": "one-shot UNet", "clean": "clean x_0"}[name], **style)
            ax_s.set(xlabel="spatial frequency (cycles/µm)", ylabel="power", title=f"{label}: step {spec['step']}, {spec['field']}")
            ax_s.legend(fontsize=7)
        rel = c["_reliability"]
        hi = float(max(rel.rmv.max(), rel.rmse.max())) * 1.05
        grid = np.linspace(0, hi, 50)
        ax_r.fill_between(grid, 0.9 * grid, 1.1 * grid, color="0.85", label="within 10 %")
        ax_r.plot(grid, grid, color="0.4", lw=1, ls="--")
        ax_r.plot(rel.rmv, rel.rmse, marker="o", ms=3, label=f"UCE {rel.uce():.3g} ADU")
        ax_r.set(xlabel="root mean variance (ADU)", ylabel="RMSE of the mean (ADU)", xlim=(0, hi), ylim=(0, hi),
                 title=f"{label}: reliability of the std (K = {c['samples']})")
        ax_r.legend(fontsize=7)
    return _save(fig, path, title)
