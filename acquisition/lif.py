"""Leica LIF reader through ``readlif`` (optional extra ``dehaze-microscopy[lif]``).

A LIF file is a project of many images. The usual pinhole series is one image per pinhole setting (LAS X
saves one image per acquisition): each image is then one step, sorted by its pinhole. The manifest's
``image`` (a name or an index) takes one image instead, e.g. a series along time or z inside one image.

Per image, the confocal settings (``Attachment/ATLConfocalSettingDefinition``) hold ``Pinhole`` as a
diameter in metres and ``PinholeAiry`` in Airy units, plus ``NumericalAperture`` and ``Magnification``.
LAS X computes ``PinholeAiry`` at one wavelength for all channels, ``EmissionWavelengthForPinholeAiryCalculation``
(580 nm by default): each channel's emission wavelength is taken from the centre of its detector's band
(``Spectro/MultiBand`` of the active ``DetectorList/Detector``), so that ingestion can recompute the Airy
units at the channel's own wavelength. The excitation is the longest-wavelength active laser line below that band
(``LaserLineSetting`` with a non-zero intensity); a transmitted-light detector marks its channel as such.

Images that are not x-y planes are refused when used, one line each: XZ scans (their second dimension is
z) and λ-scans (a dimension over emission or excitation wavelength). Mosaic tiles become fields of view.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from acquisition.ome import ChannelMeta
from acquisition.series import SeriesInfo
from acquisition.units import length_to_um
from dehaze.errors import UserError

LIF_SUFFIXES = (".lif",)
DIM_NAMES = {1: "x", 2: "y", 3: "z", 4: "t", 5: "λem", 6: "dim6", 7: "dim7", 8: "dim8", 9: "λex", 10: "tile"}


def _num(settings: dict[str, Any], key: str, where: str) -> float | None:
    raw = settings.get(key)
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{where}: {key}={raw!r} is not a number") from None


def _detectors(conf: ET.Element | None, where: str) -> list[dict[str, Any]]:
    """Per active detector, in channel order: emission band centre (nm), excitation (nm), transmitted light."""
    if conf is None:
        return []
    spectro = conf.find("./Spectro")
    bands = {}
    for band in ([] if spectro is None else spectro.findall("./MultiBand")):
        lo, hi = _num(band.attrib, "TargetWaveLengthBegin", where), _num(band.attrib, "TargetWaveLengthEnd", where)
        if lo is not None and hi is not None and hi > lo > 0:
            bands[band.get("Channel")] = (lo, hi)
    lines = sorted(w for ll in conf.iter("LaserLineSetting")
                   if (w := _num(ll.attrib, "LaserLine", where)) and (_num(ll.attrib, "IntensityDev", where) or 0) > 0)
    out = []
    for det in conf.iter("Detector"):
        if det.get("IsActive") != "1":
            continue
        em_band = bands.get(det.get("Channel"))  # (lo, hi) nm; not ``band``, the MultiBand element above
        em = None if em_band is None else (em_band[0] + em_band[1]) / 2
        below = [w for w in lines if em_band is None or w < em_band[0]]
        kind = f"{det.get('Type', '')} {det.get('Name', '')}".lower()
        out.append({"em": em, "ex": below[-1] if below else None, "transmitted": "trans" in kind or "tld" in kind.split()})
    return out


def lif_channel_meta(settings: dict[str, Any], n_channels: int, where: str, conf: ET.Element | None = None) -> list[ChannelMeta]:
    """Per-channel values from LIF confocal settings: ``Pinhole`` (m) as µm diameter, ``PinholeAiry`` (AU)
    with the wavelength LAS X computed it at, and each channel's wavelengths from its detector (see the
    module docstring; unknown when the active detectors do not match the channels one to one)."""
    pinhole_m = _num(settings, "Pinhole", where)
    airy = _num(settings, "PinholeAiry", where)
    airy_nm = _num(settings, "EmissionWavelengthForPinholeAiryCalculation", where)
    pinhole_um = None if pinhole_m is None else length_to_um(pinhole_m, "m", where)
    detectors = _detectors(conf, where)
    if len(detectors) != n_channels:
        detectors = [{"em": None, "ex": None, "transmitted": False}] * n_channels
    return [
        ChannelMeta(name=f"channel {c}", pinhole=pinhole_um, pinhole_unit="µm", pinhole_airy=airy, pinhole_airy_at_nm=airy_nm,
                    em_wavelength_nm=d["em"], ex_wavelength_nm=d["ex"], transmitted=d["transmitted"])
        for c, d in enumerate(detectors)
    ]


def _image_elements(tree: ET.Element) -> list[ET.Element]:
    """The project's image elements, in readlif's order (depth first, an image before its children)."""
    out = []
    children = tree.findall("./Children/Element") or tree.findall("./Element")
    for item in children:
        if item.findall("./Data/Image"):
            out.append(item)
        if item.findall("./Children/Element/Data"):
            out += _image_elements(item)
    return out


def _refusal(dims_n: dict[int, int], settings: dict[str, Any]) -> str | None:
    """Why an image cannot be pinhole steps (None: it is x-y planes)."""
    order = list(dims_n)
    mode = settings.get("ScanMode", "") or "".join(DIM_NAMES.get(d, "?") for d in order)
    spectral = {d: n for d, n in dims_n.items() if d in (5, 9)}
    if spectral:
        what = " and ".join(f"{n} {'emission' if d == 5 else 'excitation'} bands" for d, n in spectral.items())
        return f"a λ-scan (ScanMode {mode}: {what}): its planes are wavelength bands, not pinhole steps of one x-y field"
    if (len(order) > 1 and order[1] == 3) or (3 in dims_n and 2 not in dims_n and 1 in dims_n):
        return f"an XZ scan (ScanMode {mode}): its planes are x-z sections, not the x-y field a pinhole ladder needs"
    odd = [d for d, n in dims_n.items() if d in (6, 7, 8) and n > 1]
    if odd:
        return f"has a dimension dehaze does not read (LIF DimID {odd[0]}, ScanMode {mode})"
    return None


@contextlib.contextmanager
def _lif_file(path: Path) -> Iterator[Any]:
    """A readlif LifFile on a handle this context closes: given a path, readlif opens the file again for
    every plane it reads and leaves those handles open."""
    from readlif.reader import LifFile

    with open(path, "rb") as handle:
        yield LifFile(handle)


def _reader(path: Path, image_index: int, tile: int):
    def read() -> np.ndarray:
        with _lif_file(path) as lif:
            img = lif.get_image(image_index)
            nt, nc, nz = img.dims.t, img.channels, img.dims.z
            planes = [[[np.asarray(img.get_frame(z=z, t=t, c=c, m=tile)) for z in range(nz)] for c in range(nc)] for t in range(nt)]
        return np.asarray(planes)

    return read


def _prober(path: Path, image_index: int, tile: int):
    def probe() -> None:
        try:
            with _lif_file(path) as lif:
                np.asarray(lif.get_image(image_index).get_frame(z=0, t=0, c=0, m=tile))
        except Exception as exc:  # noqa: BLE001 - readlif raises bare ValueErrors on data it cannot read
            raise UserError(f"{path}: cannot decode image {image_index} ({type(exc).__name__}: {exc})") from None

    return probe


def read_lif_series(path: Path) -> list[SeriesInfo]:
    """One :class:`SeriesInfo` per (LIF image, mosaic tile); images that are not x-y planes carry a refusal."""
    try:
        import readlif.reader  # noqa: F401 - the optional extra, checked before any file is opened
    except ImportError:
        raise UserError(f"{path}: reading Leica LIF needs the optional extra: pip install 'dehaze-microscopy[lif]' "
                        "(in a checkout: pip install -e '.[lif]')") from None
    try:
        with _lif_file(path) as lif:  # the metadata is read here; pixels later, by each series' reader
            images = [lif.get_image(i) for i in range(lif.num_images)]
    except Exception as exc:  # noqa: BLE001 - readlif raises bare ValueErrors and struct errors on bad files
        raise UserError(f"{path}: cannot read as LIF (truncated or corrupt: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    elements = _image_elements(lif.xml_root)
    if len(elements) != len(images):
        elements = [None] * len(images)  # type: ignore[list-item]  # not laid out as readlif's list: no detector values
    out = []
    for i, (img, elem) in enumerate(zip(images, elements)):
        where = f"{path} [{img.name}]"
        size = path.stat().st_size
        if img.offsets[1] == 0 or img.offsets[0] + img.offsets[1] > size:
            raise UserError(f"{where}: truncated: the image data ends at byte {img.offsets[0] + img.offsets[1]} but the file has {size} bytes")
        if max(img.bit_depth) > 16:
            raise UserError(f"{where}: {max(img.bit_depth)}-bit data is not supported")
        px = {a: 1.0 / s for a, s in zip("xyz", img.scale[:3]) if s}
        settings = img.settings or {}
        conf = None if elem is None else elem.find("./Data/Image/Attachment/ATLConfocalSettingDefinition")
        dtype = np.dtype(np.uint8 if max(img.bit_depth) <= 8 else np.uint16)
        dims = " ".join(f"{DIM_NAMES.get(d, d)}={n}" for d, n in img.dims_n.items()) + (f" c={img.channels}" if img.channels > 1 else "")
        for m in range(img.n_mosaic):
            out.append(
                SeriesInfo(
                    path=path, index=i, name=img.name, kind="lif",
                    shape=(img.dims.t, img.channels, img.dims.z, img.dims.y, img.dims.x), dtype=dtype,
                    read=_reader(path, i, m), probe=_prober(path, i, m),
                    channels=lif_channel_meta(settings, img.channels, where, conf),
                    pixel_size_um=px, na=_num(settings, "NumericalAperture", where),
                    magnification=_num(settings, "Magnification", where),
                    position_hint=f"tile{m}" if img.n_mosaic > 1 else "", n_series_in_file=len(images),
                    dims=dims, refusal=_refusal(img.dims_n, settings),
                )
            )
    return out
