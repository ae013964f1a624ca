"""The inference engine: run a strategy over whole fields, streaming tile rows from a store into a store.

Work is cut into units = (input step h, z plane, tile row). For each unit the engine reads only the rows
the tile row needs (bounded memory for arbitrarily large images), cuts overlapping tiles, batches tiles
and K posterior samples together (B*K images per forward pass), runs the strategy (channels-last tensors;
bf16 autocast on GPU, and on CPU when asked; torch.compile when asked), keeps each tile's inner crop, and
writes the finished rows:

* ``0``          (h, [z,] y, x)    the estimate of x_0 from each input step: mean over the K samples
* ``std``        (h, [z,] y, x)    per-pixel standard deviation over the K samples (0 when K = 1)
* ``trajectory`` (T+1, [z,] y, x)  for the haziest input x_T: the x_0 estimate reported at each step t
                                   (NaN where the schedule does not visit t); the study's PSNR-per-step curve
* ``samples``    (h, K, [z,] y, x) the K posterior samples themselves, when asked (``write_samples``)

Intermediate estimates cost a decode per step in the latent strategies, so the engine asks for them
(passes a callback) only for the units whose trajectory it records.

After every unit the field records how many units are done, so a killed run resumes at the next tile
row. Random draws are seeded per (field, unit, batch): a seeded run repeats exactly, resumed or not. A
strategy that starts from noise (``needs_noise``: the flow sampler) gets noise keyed by pixel position
(:func:`dehaze.noise.position_noise`), so its tiled prediction equals the untiled one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from dehaze.noise import noise_key, position_noise
from dehaze.normalization import Normalization
from dehaze.predict_config import Precision
from dehaze.progress import progress_bar
from dehaze.store import LadderStore
from dehaze.strategies import ModelBundle, Posterior, Strategy
from dehaze.tiling import tile_geometry

ScheduleFn = Callable[[int], Sequence[float]]


DEFAULT_TILE = 256  # px; a strategy may choose its own (dehaze.predict.engine_tile)
DEFAULT_MARGIN = 32  # px


@dataclass(frozen=True)
class EngineOptions:
    """How the engine cuts, batches and runs a field (tiles, samples, precision, compilation, seed)."""

    tile: int | None = None  # px; None: the strategy's own choice, else DEFAULT_TILE
    margin: int | None = None  # px; None: DEFAULT_MARGIN; either is capped at a quarter of the tile
    batch_size: int = 8  # images (tiles x samples) per forward pass
    samples: int = 1  # K posterior samples per input
    # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16": bf16 autocast on CPU too (fast where the CPU has
    # AVX512-BF16/AMX; results differ from fp32 by ~0.3 % of the signal); "fp32": no autocast anywhere
    precision: Precision = "auto"
    channels_last: bool = True  # NHWC tensors: oneDNN/cuDNN convolutions without layout reorders; exact
    # torch.compile the networks (and the HVAE's encode/decode): pays on GPU; on CPU inductor needs minutes
    # to compile these models. compile_backend "eager" only traces (a check that the models compile).
    compile: bool = False
    compile_backend: str = "inductor"
    trajectory: bool = True
    seed: int = 0
    write_samples: bool = False  # write the K samples too (array "samples", (h, K, [z,] y, x))
    # calibration of the std (dehaze.calibration): per input step h, std_written = std_maps[h](std in ADU);
    # () writes the raw std
    std_maps: tuple[Callable[[np.ndarray], np.ndarray], ...] = ()


def _read_rows(array: Any, index: tuple[int, ...], y0: int, rows: int, width: int, norm: Normalization) -> np.ndarray:
    """(rows, width) normalised block starting at row y0, reflect-padded past the image's bottom/right."""
    h, w = array.shape[-2:]
    block = norm.apply(np.asarray(array[(*index, slice(y0, min(y0 + rows, h)), slice(None))]))
    pad_y, pad_x = rows - block.shape[0], width - w
    if pad_y or pad_x:
        mode: Literal["reflect", "edge"] = "reflect" if min(block.shape) > max(pad_y, pad_x) else "edge"
        block = np.pad(block, ((0, pad_y), (0, pad_x)), mode=mode)
    return block


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


COMPILED_METHODS = ("encode", "decode", "sample_posterior")  # entry points strategies call besides forward


def prepare_bundle(bundle: ModelBundle, opts: EngineOptions) -> ModelBundle:
    """Put the bundle's networks in the engine's memory format, compiled if asked (in place; returns the bundle)."""
    fmt = torch.channels_last if opts.channels_last else torch.contiguous_format
    for model in bundle.models.values():
        model.to(memory_format=fmt)  # type: ignore[call-overload]  # torch's overloads omit the documented memory_format=
        if opts.compile and not getattr(model, "_dehaze_compiled", False):
            model.compile(backend=opts.compile_backend)  # forward, in place
            for name in COMPILED_METHODS:
                if hasattr(model, name):
                    setattr(model, name, torch.compile(getattr(model, name), backend=opts.compile_backend))
            model._dehaze_compiled = True  # type: ignore[assignment]  # torch types Module.__setattr__ values Tensor | Module
    return bundle


@torch.no_grad()
def run_tiles(strategy: Strategy, bundle: ModelBundle, tiles: np.ndarray, schedule: Sequence[float], opts: EngineOptions,
              device: torch.device, n_levels: int, record: bool, ladder: np.ndarray | None = None,
              noise: np.ndarray | None = None, samples_out: list[np.ndarray] | None = None,
              posterior: Posterior | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Strategy on (n, th, tw) normalised tiles with K samples each -> mean, std (n, th, tw) and the
    trajectory (n_levels, n, th, tw) of x_0 estimates per step (NaN where not visited) if ``record``.
    ``ladder`` (n, T+1, th, tw): the same tiles at every step, for strategies that need it (the oracle).
    ``noise`` (n, K, th, tw): the starting noise of each sample, for strategies that need it (flow).
    ``samples_out``: a list the (n, K, th, tw) samples are appended to.
    ``posterior`` (a deterministic strategy's :attr:`~dehaze.strategies.StrategySpec.posterior`): the strategy
    runs once per tile and its estimate is the mean; the K samples are drawn around that estimate."""
    k = opts.samples
    walks = 1 if posterior is not None else k  # walks per tile: K sampled ones, or one deterministic one
    x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))[:, None].to(device)
    x = x.repeat_interleave(walks, dim=0)  # (n*walks, 1, th, tw): walk j of tile i at i*walks + j
    # ladder= / noise= for the strategies whose spec asks for them: keywords the Strategy protocol does not declare
    extra: dict[str, Any] = {}
    if ladder is not None:
        extra["ladder"] = torch.from_numpy(np.ascontiguousarray(ladder, dtype=np.float32)).to(device).repeat_interleave(walks, dim=0)
    if noise is not None:  # sample j of tile i at row i*K + j, like x
        extra["noise"] = torch.from_numpy(np.ascontiguousarray(noise, dtype=np.float32)).reshape(len(tiles) * k, 1, *tiles.shape[1:]).to(device)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    traj = np.full((n_levels, *tiles.shape), np.nan, dtype=np.float32) if record else None

    def callback(t: float, estimate: torch.Tensor) -> None:
        if float(t).is_integer() and 0 <= int(t) < n_levels:  # passed only when recording: traj is set
            assert traj is not None
            traj[int(t)] = estimate.float().reshape(len(tiles), walks, *tiles.shape[1:]).mean(1).cpu().numpy()

    with _autocast(device, opts.precision):
        out = strategy(bundle, x, schedule, callback=callback if record else None, **extra).float()
        if posterior is not None and k > 1:
            estimate = out[:, 0]  # (n, th, tw)
            out = posterior(bundle, out, k).float()[:, :, 0].transpose(0, 1)  # (k, n, 1, th, tw) -> (n, k, th, tw)
    out = out.reshape(len(tiles), -1, *tiles.shape[1:])
    if posterior is None or k == 1:
        estimate = out.mean(1)
    if samples_out is not None:
        samples_out.append(out.cpu().numpy())
    # K = 1: x - x is bitwise what std over one sample gives (0, NaN where x is not finite) without torch's
    # slow CPU std kernel (about half of the engine's own time on large fields).
    std = out[:, 0] - out[:, 0] if k == 1 else out.std(1, unbiased=False)
    return estimate.cpu().numpy(), std.cpu().numpy(), traj


def predict_field(strategy: Strategy, bundle: ModelBundle, schedule_fn: ScheduleFn, source: Any, norm: Normalization,
                  out: LadderStore, field: str, field_index: int, opts: EngineOptions, device: torch.device,
                  multiple: int = 1, show_progress: bool = True, needs_ladder: bool = False, needs_noise: bool = False,
                  posterior: Posterior | None = None) -> None:
    """Predict one field (h, [z,] H, W) of ``source`` into ``out`` (see the module docstring).
    ``needs_ladder``: the strategy also gets each tile at every step (``ladder=``); ``needs_noise``: its
    starting noise, keyed by (seed, field, step, plane, sample, pixel) (``noise=``); ``posterior``: see
    :func:`run_tiles`."""
    n_steps, planes = source.shape[0], list(np.ndindex(*source.shape[1:-2]))
    height, width = source.shape[-2:]
    tile = DEFAULT_TILE if opts.tile is None else opts.tile
    margin = DEFAULT_MARGIN if opts.margin is None else opts.margin
    pad_h, pad_w, th, tw, rows, cols = tile_geometry(height, width, tile, margin, multiple)
    arrays = {"0": (tuple(source.shape), "float32"), "std": (tuple(source.shape), "float32")}
    if opts.trajectory:
        arrays["trajectory"] = ((n_steps, *source.shape[1:]), "float32")
    if opts.write_samples:
        arrays["samples"] = ((n_steps, opts.samples, *source.shape[1:]), "float32")
    out.begin_field(field, arrays)
    units = [(h, p, r) for h in range(n_steps) for p in planes for r in rows]
    done = out.field_progress(field)
    per_pass = max(1, opts.batch_size // opts.samples)
    bar = progress_bar(total=len(units), initial=done, desc=f"{field}", unit="row", disable=not show_progress, leave=False)
    for u in range(done, len(units)):
        h, plane, (y0, ylo, yhi) = units[u]
        block = _read_rows(source, (h, *plane), y0, th, pad_w, norm)
        tiles = np.stack([block[:, x0 : x0 + tw] for x0, _, _ in cols])
        ladder = None
        if needs_ladder:  # (n_tiles, T+1, th, tw): the same rows read at every step
            blocks = [block if t == h else _read_rows(source, (t, *plane), y0, th, pad_w, norm) for t in range(n_steps)]
            ladder = np.stack([np.stack([b[:, x0 : x0 + tw] for b in blocks]) for x0, _, _ in cols])
        record = opts.trajectory and h == n_steps - 1
        mean = np.empty((th, pad_w), np.float32)
        std = np.empty_like(mean)
        traj = np.full((n_steps, th, pad_w), np.nan, np.float32) if record else None
        samples = np.empty((opts.samples, th, pad_w), np.float32) if opts.write_samples else None
        for b in range(0, len(cols), per_pass):
            torch.manual_seed(hash((opts.seed, field_index, u, b)) % 2**63)
            noise = None
            if needs_noise:
                key = noise_key(opts.seed, field_index, h, *plane)
                noise = np.stack([position_noise(key, y0, x0, th, tw, opts.samples) for x0, _, _ in cols[b : b + per_pass]])
            drawn: list[np.ndarray] | None = [] if samples is not None else None
            m, s, tr = run_tiles(strategy, bundle, tiles[b : b + per_pass], schedule_fn(h), opts, device, n_steps, record,
                                 None if ladder is None else ladder[b : b + per_pass], noise=noise, samples_out=drawn,
                                 posterior=posterior)
            for j, (x0, xlo, xhi) in enumerate(cols[b : b + per_pass]):
                mean[:, xlo:xhi] = m[j][:, xlo - x0 : xhi - x0]
                std[:, xlo:xhi] = s[j][:, xlo - x0 : xhi - x0]
                if samples is not None and drawn:
                    samples[:, :, xlo:xhi] = drawn[0][j][:, :, xlo - x0 : xhi - x0]
                if traj is not None and tr is not None:
                    traj[:, :, xlo:xhi] = tr[:, j, :, xlo - x0 : xhi - x0]
        keep = slice(ylo - y0, min(yhi, height) - y0)
        rows_out = (slice(ylo, min(yhi, height)), slice(0, width))
        if ylo < height:
            out.write_block(field, "0", (h, *plane, *rows_out), norm.invert(mean[keep, :width]))
            std_adu = std[keep, :width] * np.float32(norm.scale)
            out.write_block(field, "std", (h, *plane, *rows_out), opts.std_maps[h](std_adu) if opts.std_maps else std_adu)
            if samples is not None:
                out.write_block(field, "samples", (h, slice(None), *plane, *rows_out), norm.invert(samples[:, keep, :width]))
            if traj is not None:
                out.write_block(field, "trajectory", (slice(None), *plane, *rows_out), norm.invert(traj[:, keep, :width]))
        out.set_field_progress(field, u + 1)
        bar.update(1)
    bar.close()
    out.complete_field(field, [name for name in arrays if name != "0"], info={"units": len(units)})
