"""Tiling with inner crops: overlapping tiles, each keeps only its centre, so no seams.

:func:`tile_spans` cuts one axis, :func:`tile_geometry` a whole image; the inference engine (:mod:`dehaze.engine`) uses it for tile rows and
for the tiles within a row, and writes each tile's kept centre back to its own place, so the order
survives batching.
"""

from __future__ import annotations


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


def tile_geometry(height: int, width: int, tile: int, margin: int, multiple: int = 1) -> tuple[int, int, int, int, list, list]:
    """How a (height, width) image is cut: (pad_h, pad_w, tile_h, tile_w, row spans, column spans).

    The image is padded up to a multiple of ``multiple`` (the model's downsampling factor); tiles are
    ``tile`` rounded down to that multiple, or the whole padded image if smaller. The margin (context
    dropped at each inner tile border) is capped at a quarter of the tile, so every tile keeps at least
    half its width, and is 0 when one tile covers the image. Spans are (start, keep_lo, keep_hi).
    """
    pad_h, pad_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    tile = max(multiple, tile - tile % multiple)
    th, tw = min(tile, pad_h), min(tile, pad_w)
    margin = min(margin, th // 4, tw // 4) if (th < pad_h or tw < pad_w) else 0
    return pad_h, pad_w, th, tw, tile_spans(pad_h, th, margin), tile_spans(pad_w, tw, margin)
