"""What a reader reports about one image series in a file, before any pixel is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from acquisition.ome import ChannelMeta
from dehaze.errors import UserError

CANONICAL = "TCZYX"


@dataclass
class SeriesInfo:
    """One image series (an OME ``Image``, a TIFF, a LIF image or tile): shape (T, C, Z, Y, X) and metadata."""

    path: Path
    index: int  # series index inside its file
    name: str
    kind: str  # "ome-tiff", "imagej-tiff", "tiff", "lif"
    shape: tuple[int, int, int, int, int]  # T, C, Z, Y, X
    dtype: np.dtype
    read: Callable[[], np.ndarray]  # -> (T, C, Z, Y, X) array
    probe: Callable[[], None] | None = None  # decodes one plane (a file that cannot be decoded fails in --dry-run)
    channels: list[ChannelMeta] = field(default_factory=list)  # one per C (may be empty: nothing known)
    pixel_size_um: dict[str, float] = field(default_factory=dict)  # x, y, z where known
    na: float | None = None
    magnification: float | None = None
    position_hint: str = ""  # a field-of-view key the format itself gives (LIF mosaic tile)
    n_series_in_file: int = 1
    set_files: tuple[Path, ...] = ()  # every file of a multi-file OME-TIFF set this series spans (else empty)
    dims: str = ""  # the format's own dimensions, for listings (LIF: "x=512 y=512 z=10 c=2")
    refusal: str | None = None  # why this series cannot be pinhole steps (an XZ or λ scan): refused when used

    @property
    def label(self) -> str:
        return str(self.path) if self.n_series_in_file == 1 and not self.position_hint else f"{self.path} [{self.name}]"

    def channel(self, c: int) -> ChannelMeta:
        return self.channels[c] if c < len(self.channels) else ChannelMeta()


def to_tczyx(data: np.ndarray, axes: str, where: str) -> np.ndarray:
    """Reorder an array with tifffile-style ``axes`` to (T, C, Z, Y, X), adding length-1 axes.

    Unnamed page axes (``I``, ``Q``) are read as Z; RGB samples and other axes are refused.
    """
    axes = axes.upper().replace("I", "Z").replace("Q", "Z")
    if len(axes) != data.ndim:
        raise UserError(f"{where}: axes {axes!r} do not match data with {data.ndim} dimensions")
    for a in set(axes):
        if axes.count(a) > 1:
            raise UserError(f"{where}: axis {a} appears twice in {axes!r} (unnamed page axes are read as Z)")
    extra = [a for a in axes if a not in CANONICAL]
    if "S" in extra and data.shape[axes.index("S")] > 1:
        raise UserError(f"{where}: {data.shape[axes.index('S')]} samples per pixel (axis S of {axes!r}): pixels holding several "
                        "interleaved values are not read as pinhole steps; save each channel as its own grey plane "
                        "(e.g. ImageJ: Image > Color > Split Channels)")
    for a in extra:  # length-1 extra axes are dropped; longer ones are ambiguous
        if data.shape[axes.index(a)] != 1:
            raise UserError(f"{where}: unsupported axis {a!r} of length {data.shape[axes.index(a)]} in {axes!r}")
    keep = [i for i, a in enumerate(axes) if a in CANONICAL]
    data = data.reshape([data.shape[i] for i in keep]) if len(keep) != data.ndim else data
    axes = "".join(axes[i] for i in keep)
    for a in CANONICAL:
        if a not in axes:
            data = data[np.newaxis]
            axes = a + axes
    return np.transpose(data, [axes.index(a) for a in CANONICAL])
