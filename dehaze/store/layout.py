"""The on-disk layout of a ladder store: array names, chunk shapes, the compressor, field names."""

from __future__ import annotations

import numcodecs
import numpy as np
import zarr

IMAGE_ARRAY = "0"  # the image of a field group: the single level of its NGFF multiscale image
CHUNK_YX = 256  # pixels per chunk along y and x (DESIGN §3)
# lz4 with bit-shuffle: on noisy uint16 camera data (256^2 chunks, one thread) it compresses 1.85x against
# 1.98x for zstd level 1 (the previous choice), but encodes 2.3x and decodes 2.5x faster (645 and
# 900 MB/s): ingestion writes at that speed and training loaders read chunks over and over.
COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)

FLOAT_EXTRAS = ("noise_free", "truth", "std", "trajectory")  # float32 arrays whatever the store's source
STEP_ARRAYS = (IMAGE_ARRAY, "noise_free", "std", "trajectory")  # arrays whose first axis is the step h
ARRAY_LABELS = {IMAGE_ARRAY: "image", "noise_free": "noise-free image", "truth": "truth", "std": "std",
                "trajectory": "trajectory"}  # how messages name an array


def field_name(index: int) -> str:
    """The group name of field ``index``: ``field_000``, ``field_001`` ..."""
    return f"field_{index:03d}"


def chunk_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One step (and one plane) per chunk, ~256x256 pixels: best for random patch reads (DESIGN §3)."""
    lead = (1,) * (len(shape) - 2)
    return (*lead, min(CHUNK_YX, shape[-2]), min(CHUNK_YX, shape[-1]))


def write_array(group: zarr.Group, name: str, data: np.ndarray) -> None:
    """Write ``data`` whole as array ``name`` of ``group`` (replacing one there), chunked and compressed."""
    arr = group.create_dataset(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunk_shape(data.shape),
        compressor=COMPRESSOR,
        overwrite=True,
        dimension_separator="/",
        fill_value=0,
    )
    arr[...] = data
