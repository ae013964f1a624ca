"""OME-XML parsing: per image, the channels' pinhole sizes, wavelengths, pixel sizes, NA and magnification.

Only what ingestion needs is read, namespace-agnostic (OME 2008-2016 schemas). Values keep their unit
strings here; :mod:`acquisition.units` converts them (OME's defaults: µm for lengths, nm for wavelengths).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from acquisition.units import length_to_um
from dehaze.errors import UserError


@dataclass
class ChannelMeta:
    name: str = ""
    pinhole: float | None = None  # native value; a diameter
    pinhole_unit: str | None = None  # None: µm (the OME default)
    pinhole_airy: float | None = None  # vendor Airy-unit value where the format has one (Leica LIF)
    em_wavelength_nm: float | None = None


@dataclass
class ImageMeta:
    """One OME ``Image``: sizes, physical pixel sizes (µm), objective and per-channel values."""

    name: str
    dimension_order: str
    sizes: dict[str, int]  # X Y Z C T
    pixel_size_um: dict[str, float] = field(default_factory=dict)  # keys x, y, z where known
    channels: list[ChannelMeta] = field(default_factory=list)
    na: float | None = None
    magnification: float | None = None  # objective nominal magnification (not the pinhole-plane one)
    files: list[str] = field(default_factory=list)  # TiffData UUID@FileName of other files (a multi-file set)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _float(elem: ET.Element, key: str, where: str) -> float | None:
    raw = elem.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{where}: {key}={raw!r} is not a number") from None


def parse_ome_xml(text: str, where: str) -> list[ImageMeta]:
    """Parse OME-XML into one :class:`ImageMeta` per ``Image``; malformed XML is a one-line UserError."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise UserError(f"{where}: OME-XML is not valid XML ({exc})") from None
    objectives: dict[str, tuple[float | None, float | None]] = {}
    for obj in root.iter():
        if _local(obj.tag) == "Objective":
            objectives[obj.get("ID", "")] = (_float(obj, "LensNA", where), _float(obj, "NominalMagnification", where))
    images = []
    for img in (e for e in root if _local(e.tag) == "Image"):
        name = img.get("Name", img.get("ID", ""))
        here = f"{where} image {name!r}"
        pixels = next((e for e in img if _local(e.tag) == "Pixels"), None)
        if pixels is None:
            raise UserError(f"{here}: OME-XML Image has no Pixels element")
        sizes = {a: int(pixels.get(f"Size{a}", "1")) for a in "XYZCT"}
        px = {}
        for axis in "XYZ":
            value = _float(pixels, f"PhysicalSize{axis}", here)
            if value is not None:
                px[axis.lower()] = length_to_um(value, pixels.get(f"PhysicalSize{axis}Unit"), f"{here} PhysicalSize{axis}")
        meta = ImageMeta(name=name, dimension_order=pixels.get("DimensionOrder", "XYCZT"), sizes=sizes, pixel_size_um=px)
        for data in (e for e in pixels if _local(e.tag) == "TiffData"):
            ref = next((u for u in data if _local(u.tag) == "UUID" and u.get("FileName")), None)
            # a UUID equal to the document's own is this file, whatever FileName says (renamed exports)
            if ref is not None and (ref.text or "").strip() != root.get("UUID") and ref.get("FileName") not in meta.files:
                meta.files.append(str(ref.get("FileName")))
        for ch in (e for e in pixels if _local(e.tag) == "Channel"):
            em = _float(ch, "EmissionWavelength", here)
            if em is not None:
                em = length_to_um(em, ch.get("EmissionWavelengthUnit", "nm"), f"{here} EmissionWavelength") * 1e3
            meta.channels.append(
                ChannelMeta(
                    name=ch.get("Name", ch.get("ID", "")),
                    pinhole=_float(ch, "PinholeSize", here),
                    pinhole_unit=ch.get("PinholeSizeUnit"),
                    em_wavelength_nm=em,
                )
            )
        settings = next((e for e in img if _local(e.tag) == "ObjectiveSettings"), None)
        if settings is not None and settings.get("ID") in objectives:
            meta.na, meta.magnification = objectives[settings.get("ID")]
        elif len(objectives) == 1:
            meta.na, meta.magnification = next(iter(objectives.values()))
        images.append(meta)
    if not images:
        binary_only = next((e for e in root if _local(e.tag) == "BinaryOnly"), None)
        if binary_only is not None:  # a multi-file set whose metadata lives in a companion .ome(.xml) file
            raise UserError(f"{where}: its OME-XML is BinaryOnly (the metadata is in {binary_only.get('MetadataFile', 'a companion file')!r}), "
                            "which is not supported; export the series as OME-TIFF with the metadata embedded")
        raise UserError(f"{where}: OME-XML has no Image element")
    return images
