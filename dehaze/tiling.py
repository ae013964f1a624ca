"""Tiled prediction with inner crops: overlapping tiles, each keeps only its centre, so no seams.

Tiles are processed in batches in row-major order and each result is written back to its own place,
so the order survives batching.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def tile_spans(length: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
    """(start, keep_lo, keep_hi) per tile along one axis of ``length`` (>= tile).

    Consecutive tiles overlap by ``2*margin``; tile i keeps [keep_lo, keep_hi), an inner crop at least
    ``margin`` away from its own border except at the image border. The kept parts partition the axis.
    """
    if length <= tile:
        return [(0, 0, length)]
    stride = tile - 2 * margin
    starts = list(range(0, length - tile, stride)) + [length - tile]
    spans, lo = [], 0
    for i, s in enumerate(starts):
        hi = length if i == len(starts) - 1 else s + tile - margin
        spans.append((s, lo, hi))
        lo = hi
    return spans


def predict_tiled(fn: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, *, tile: int = 256,
                  margin: int = 32, batch_size: int = 8, multiple: int = 1, device: str | torch.device = "cpu") -> np.ndarray:
    """Apply ``fn`` ((B,1,th,tw) -> (B,C,th,tw)) to a (H, W) image tile by tile; returns (H, W) float32, or
    (C, H, W) when ``fn`` returns C > 1 channels (e.g. an estimate and its per-pixel std).

    The image is reflect-padded to a multiple of ``multiple`` and the result cropped back.
    """
    h, w = image.shape
    tile = max(multiple, tile - tile % multiple)
    # Pad once, to the network's multiple, so tiled and whole-image passes see the same image.
    pad_h, pad_w = _ceil_to(h, multiple) - h, _ceil_to(w, multiple) - w
    padded = np.pad(image, ((0, pad_h), (0, pad_w)), mode="reflect" if min(h, w) > max(pad_h, pad_w) else "edge")
    H, W = padded.shape
    th, tw = min(tile, H), min(tile, W)
    m = min(margin, (th - multiple) // 2, (tw - multiple) // 2) if (th < H or tw < W) else 0
    tiles = [(ys, xs) for ys in tile_spans(H, th, max(0, m)) for xs in tile_spans(W, tw, max(0, m))]
    out: np.ndarray | None = None
    for b in range(0, len(tiles), batch_size):
        chunk = tiles[b : b + batch_size]
        batch = np.stack([padded[ys[0] : ys[0] + th, xs[0] : xs[0] + tw] for ys, xs in chunk])
        with torch.no_grad():
            pred = fn(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))[:, None].to(device))
        pred = pred.float().cpu().numpy()
        if out is None:
            out = np.zeros((pred.shape[1], H, W), dtype=np.float32)
        for (ys, xs), p in zip(chunk, pred):
            (y0, ylo, yhi), (x0, xlo, xhi) = ys, xs
            out[:, ylo:yhi, xlo:xhi] = p[:, ylo - y0 : yhi - y0, xlo - x0 : xhi - x0]
    return out[0, :h, :w] if out.shape[0] == 1 else out[:, :h, :w]


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
