"""OME-XML parsing: per image, the channels' pinhole sizes, wavelengths, pixel sizes, NA and magnification.

Only what ingestion needs is read, namespace-agnostic. Schemas 2010-04 to 2016-06 keep the per-channel values on
``Pixels/Channel`` (``PinholeSize``, ``EmissionWavelength``, ``ExcitationWavelength``, ``IlluminationType``);
2008-09 and older keep them on ``Image/LogicalChannel`` (``PinholeSize``, ``EmWave``, ``ExWave``), mapped to
channels by its ``ChannelComponent@Index``, and the objective's ``LensNA`` as a child element rather than an
attribute: both are read. Lengths keep their unit strings here; :mod:`acquisition.units` converts them (OME's
defaults: µm for lengths, nm for wavelengths).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from acquisition.units import length_to_um
from dehaze.errors import UserError


@dataclass
class ChannelMeta:
    """What OME-XML (or a vendor format) says of one channel: name, pinhole, wavelengths."""

    name: str = ""
    pinhole: float | None = None  # native value; a diameter
    pinhole_unit: str | None = None  # None: µm (the OME default)
    pinhole_airy: float | None = None  # vendor Airy-unit value where the format has one (Leica LIF)
    pinhole_airy_at_nm: float | None = None  # wavelength the vendor computed pinhole_airy at (None: the emission's)
    em_wavelength_nm: float | None = None
    ex_wavelength_nm: float | None = None
    transmitted: bool = False  # transmitted light (brightfield, DIC, phase): not a fluorescence pinhole step


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


TRANSMITTED_CONTRAST = {"brightfield", "phase", "dic", "hoffman", "obliqueillumination", "polarizedlight", "darkfield"}
TRANSMITTED_MODES = {"brightfield", "phasecontrast", "differentialinterferencecontrast", "dic"}


def _wavelength_nm(elem: ET.Element, keys: tuple[str, ...], where: str) -> float | None:
    """A wavelength (nm) from the first of ``keys`` present (with its ``...Unit``, nm by default)."""
    for key in keys:
        value = _float(elem, key, where)
        if value is not None:
            return length_to_um(value, elem.get(f"{key}Unit", "nm"), f"{where} {key}") * 1e3
    return None


def _channel(ch: ET.Element, where: str) -> ChannelMeta:
    """A ``Channel`` (2010-2016) or ``LogicalChannel`` (2008-09 and older) element."""
    contrast = (ch.get("ContrastMethod") or "").lower()
    mode = (ch.get("AcquisitionMode") or ch.get("Mode") or "").lower()
    return ChannelMeta(
        name=ch.get("Name", ch.get("ID", "")),
        pinhole=_float(ch, "PinholeSize", where),
        pinhole_unit=ch.get("PinholeSizeUnit"),
        em_wavelength_nm=_wavelength_nm(ch, ("EmissionWavelength", "EmWave"), where),
        ex_wavelength_nm=_wavelength_nm(ch, ("ExcitationWavelength", "ExWave"), where),
        transmitted=(ch.get("IlluminationType") or "").lower() == "transmitted" or contrast in TRANSMITTED_CONTRAST or mode in TRANSMITTED_MODES,
    )


def _objective_value(obj: ET.Element, key: str, where: str) -> float | None:
    """An Objective value: an attribute (2010-2016) or a child element's text (2008-09)."""
    value = _float(obj, key, where)
    if value is None:
        child = next((e for e in obj if _local(e.tag) == key), None)
        text = (child.text or "").strip() if child is not None else ""
        if text:
            try:
                value = float(text)
            except ValueError:
                raise UserError(f"{where}: Objective {key}={text!r} is not a number") from None
    return value


def parse_ome_xml(text: str, where: str) -> list[ImageMeta]:
    """Parse OME-XML into one :class:`ImageMeta` per ``Image``; malformed XML is a one-line UserError."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise UserError(f"{where}: OME-XML is not valid XML ({exc})") from None
    objectives: dict[str, tuple[float | None, float | None]] = {}
    for obj in root.iter():
        if _local(obj.tag) == "Objective":
            objectives[obj.get("ID", "")] = (_objective_value(obj, "LensNA", where), _objective_value(obj, "NominalMagnification", where))
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
            # 0 is what some writers put for "not measured" (Bio-Formats' 2008-09 sample: PhysicalSizeZ="0.0");
            # a pixel of no size is no calibration, so the axis is left to the manifest or the default
            if value is not None and value > 0:
                px[axis.lower()] = length_to_um(value, pixels.get(f"PhysicalSize{axis}Unit"), f"{here} PhysicalSize{axis}")
        meta = ImageMeta(name=name, dimension_order=pixels.get("DimensionOrder", "XYCZT"), sizes=sizes, pixel_size_um=px)
        for data in (e for e in pixels if _local(e.tag) == "TiffData"):
            ref = next((u for u in data if _local(u.tag) == "UUID" and u.get("FileName")), None)
            # a UUID equal to the document's own is this file, whatever FileName says (renamed exports)
            if ref is not None and (ref.text or "").strip() != root.get("UUID") and ref.get("FileName") not in meta.files:
                meta.files.append(str(ref.get("FileName")))
        meta.channels = [_channel(ch, here) for ch in pixels if _local(ch.tag) == "Channel"]
        if not meta.channels:  # 2008-09 and older: LogicalChannel, placed by its ChannelComponent@Index
            logical: dict[int, ChannelMeta] = {}
            for k, lc in enumerate(e for e in img if _local(e.tag) == "LogicalChannel"):
                comp = next((e for e in lc if _local(e.tag) == "ChannelComponent"), None)
                index = int(comp.get("Index", k)) if comp is not None else k
                logical[index] = _channel(lc, here)
            meta.channels = [logical.get(c, ChannelMeta()) for c in range(max(logical, default=-1) + 1)]
        settings = next((e for e in img if _local(e.tag) in ("ObjectiveSettings", "ObjectiveRef")), None)
        objective_id = settings.get("ID") if settings is not None else None
        if objective_id is not None and objective_id in objectives:
            meta.na, meta.magnification = objectives[objective_id]
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
