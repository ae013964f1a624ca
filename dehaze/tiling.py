"""Tiling with inner crops: overlapping tiles, each keeps only its centre, so no seams.

:func:`tile_spans` cuts one axis; the inference engine (:mod:`dehaze.engine`) uses it for tile rows and
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
