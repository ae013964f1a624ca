"""OME-NGFF 0.4 metadata of a field group: what napari, ome-zarr readers and NGFF validators see.

Written to pass the NGFF 0.4 *strict* image schema too, which also asks each multiscale for ``name``,
``type`` and ``metadata`` (the downscaling method: a ladder image has one full-resolution level).
"""

from __future__ import annotations

from typing import Any

from dehaze.store.layout import IMAGE_ARRAY
from dehaze.store.meta import StepStats

NGFF_VERSION = "0.4"
# One level and no pyramid: the "downscaling method" the strict schema asks to be named is none.
SINGLE_LEVEL = {"type": "none", "metadata": {"method": "none", "description": "one level at full resolution (no downscaling)"}}


def ngff_multiscales(name: str, spatial_axes: list[str], pixel_size_um: dict[str, float]) -> list[dict[str, Any]]:
    """OME-NGFF 0.4 ``multiscales`` for one single-level ladder image with a ``degradation`` axis h."""
    axes = [{"name": "h", "type": "degradation"}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in spatial_axes]
    scale = [1.0] + [float(pixel_size_um[a]) for a in spatial_axes]
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            **SINGLE_LEVEL,
            "axes": axes,
            "datasets": [{"path": IMAGE_ARRAY, "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]


def ngff_omero(name: str, step_stats: list[StepStats]) -> dict[str, Any]:
    """OME-NGFF 0.4 ``omero`` rendering settings of one field, from the store's per-step statistics (ADU).

    One greyscale channel labelled with the field's name: the image has no channel axis, so viewers
    (napari-ome-zarr, ome-zarr-py) take the first channel for the whole (h, [z,] y, x) image and show
    every step under one contrast setting. The window's start and end are the lowest p0.1 and the highest
    p99.9 of any step, so that the haziest (brightest) step is not clipped and the cleanest is not lost
    in the offset; min and max are the lowest and highest value of any step.
    """
    start = min(s.p01 for s in step_stats)
    end = max(s.p999 for s in step_stats)
    end = end if end > start else start + 1.0  # a flat image: viewers refuse equal contrast limits
    window = {"min": min(s.min for s in step_stats), "max": max(s.max for s in step_stats), "start": start, "end": end}
    channel = {"label": name, "color": "FFFFFF", "active": True, "coefficient": 1.0, "family": "linear",
               "inverted": False, "window": window}
    return {"name": name, "version": NGFF_VERSION, "channels": [channel], "rdefs": {"model": "greyscale"}}
