"""Leica LIF reader through ``readlif`` (optional extra ``dehaze[lif]``).

Each LIF image is one pinhole step (LAS X saves one image per acquisition); its confocal settings
(``ATLConfocalSettingDefinition``) hold ``Pinhole`` as a diameter in metres and ``PinholeAiry`` in Airy
units, plus ``NumericalAperture`` and ``Magnification``. Mosaic tiles become fields of view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from acquisition.ome import ChannelMeta
from acquisition.series import SeriesInfo
from acquisition.units import length_to_um
from dehaze.errors import UserError

LIF_SUFFIXES = (".lif",)


def _num(settings: dict[str, Any], key: str, where: str) -> float | None:
    raw = settings.get(key)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{where}: {key}={raw!r} is not a number") from None


def lif_channel_meta(settings: dict[str, Any], n_channels: int, where: str) -> list[ChannelMeta]:
    """Per-channel pinhole values from LIF confocal settings: ``Pinhole`` (m) as µm diameter, ``PinholeAiry`` (AU)."""
    pinhole_m = _num(settings, "Pinhole", where)
    airy = _num(settings, "PinholeAiry", where)
    pinhole_um = None if pinhole_m is None else length_to_um(pinhole_m, "m", where)
    return [ChannelMeta(name=f"channel {c}", pinhole=pinhole_um, pinhole_unit="µm", pinhole_airy=airy) for c in range(n_channels)]


def _reader(path: Path, image_index: int, tile: int):
    def read() -> np.ndarray:
        from readlif.reader import LifFile

        img = LifFile(str(path)).get_image(image_index)
        nt, nc, nz = img.dims.t, img.channels, img.dims.z
        planes = [[[np.asarray(img.get_frame(z=z, t=t, c=c, m=tile)) for z in range(nz)] for c in range(nc)] for t in range(nt)]
        return np.asarray(planes)

    return read


def read_lif_series(path: Path) -> list[SeriesInfo]:
    """One :class:`SeriesInfo` per (LIF image, mosaic tile)."""
    try:
        from readlif.reader import LifFile
    except ImportError:
        raise UserError(f"{path}: reading Leica LIF needs the optional extra: pip install 'dehaze[lif]'") from None
    try:
        lif = LifFile(str(path))
        images = [lif.get_image(i) for i in range(lif.num_images)]
    except Exception as exc:  # noqa: BLE001 - readlif raises bare ValueErrors and struct errors on bad files
        raise UserError(f"{path}: cannot read as LIF (truncated or corrupt: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    out = []
    for i, img in enumerate(images):
        where = f"{path} [{img.name}]"
        size = path.stat().st_size
        if img.offsets[1] == 0 or img.offsets[0] + img.offsets[1] > size:
            raise UserError(f"{where}: truncated: the image data ends at byte {img.offsets[0] + img.offsets[1]} but the file has {size} bytes")
        if max(img.bit_depth) > 16:
            raise UserError(f"{where}: {max(img.bit_depth)}-bit data is not supported")
        px = {a: 1.0 / s for a, s in zip("xyz", img.scale[:3]) if s}
        settings = img.settings or {}
        dtype = np.dtype(np.uint8 if max(img.bit_depth) <= 8 else np.uint16)
        for m in range(img.n_mosaic):
            out.append(
                SeriesInfo(
                    path=path, index=i, name=img.name, kind="lif",
                    shape=(img.dims.t, img.channels, img.dims.z, img.dims.y, img.dims.x), dtype=dtype,
                    read=_reader(path, i, m), channels=lif_channel_meta(settings, img.channels, where),
                    pixel_size_um=px, na=_num(settings, "NumericalAperture", where),
                    magnification=_num(settings, "Magnification", where),
                    position_hint=f"tile{m}" if img.n_mosaic > 1 else "", n_series_in_file=len(images),
                )
            )
    return out
