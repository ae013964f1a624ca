"""OME-NGFF 0.4 metadata of a field group (what napari and ome-zarr readers see)."""

from __future__ import annotations

from typing import Any

from dehaze.store.layout import IMAGE_ARRAY

NGFF_VERSION = "0.4"


def ngff_multiscales(name: str, spatial_axes: list[str], pixel_size_um: dict[str, float]) -> list[dict[str, Any]]:
    """OME-NGFF 0.4 ``multiscales`` for one single-level ladder image with a ``degradation`` axis h."""
    axes = [{"name": "h", "type": "degradation"}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in spatial_axes]
    scale = [1.0] + [float(pixel_size_um[a]) for a in spatial_axes]
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": axes,
            "datasets": [{"path": IMAGE_ARRAY, "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]
