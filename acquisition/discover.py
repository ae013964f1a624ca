"""Find the files, steps, positions and pinhole values of a pinhole series, and check they fit together.

Reads metadata only (no pixels). Source order is: files in natural name order, series in file order, then
along the step axis; manifest lists of pinhole values follow it. Steps are then sorted by pinhole size
(cleanest first) inside every field of view, and every field must have the same pinhole values.

Readers are listed in :data:`READERS`: a vendor format is one module with a ``read_*_series(path) ->
list[SeriesInfo]`` function (metadata only; pixels through each series' ``read``) plus one line there.

Dyes are never steps by accident: channels (or files) whose emission or excitation wavelengths differ, or
that are transmitted light, are refused as steps unless ``step_axis`` says so explicitly (then a warning).
Per step, the plan keeps what the store records: wavelengths, NA, the pinhole in µm and AU and where the
AU came from (a vendor's AU at another wavelength is recomputed at the step's emission; a manifest
calibration wins over both).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, overload

from acquisition.lif import LIF_SUFFIXES, read_lif_series
from acquisition.manifest import AcquisitionManifest
from acquisition.ome import ChannelMeta
from acquisition.series import SeriesInfo
from acquisition.tiff import TIFF_SUFFIXES, read_tiff_series
from acquisition.units import length_to_um, pinhole_um_to_au
from dehaze.errors import UserError

# file suffixes -> reader (metadata of every series in the file); a new vendor format is one line here
READERS: tuple[tuple[tuple[str, ...], Callable[[Path], list[SeriesInfo]]], ...] = (
    (TIFF_SUFFIXES, read_tiff_series),
    (LIF_SUFFIXES, read_lif_series),
)
SUFFIXES = tuple(suffix for suffixes, _ in READERS for suffix in suffixes)

_AXIS = {"channel": "C", "time": "T", "z": "Z"}
REL_TOL = 1e-3  # pixel sizes and pinhole values closer than this are equal
WAVELENGTH_TOL_NM = 5.0  # channels whose wavelengths differ by more are different dyes (or filters)
MAX_PLAUSIBLE_PIXEL_UM = 20.0  # a larger lateral pixel from file metadata is a dpi tag, not a calibration


@dataclass
class Step:
    """One pinhole step of one field: which plane(s) of which series, and its pinhole values."""

    series: SeriesInfo
    axis: str | None  # "C", "T", "Z" when the steps lie along that axis of the series, None: one step per series
    index: int  # position along ``axis`` (0 when axis is None)
    channel: int  # channel read (== index when axis is "C")
    order: int  # source order inside its field (acquisition order as far as the files tell)
    pinhole_um: float | None = None
    pinhole_au: float | None = None
    pinhole_au_source: str = ""  # where pinhole_au came from (file, recomputed at the emission, manifest calibration)

    @property
    def light(self) -> ChannelMeta:
        """The channel this step reads (its wavelengths)."""
        return self.series.channel(self.channel)

    @property
    def label(self) -> str:
        return self.series.label + (f" [{self.axis}={self.index}]" if self.axis else "")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        _, _, z, y, x = self.series.shape
        return (y, x) if self.axis == "Z" or z == 1 else (z, y, x)


@dataclass
class Position:
    """One field of view: its key and its pinhole steps."""

    key: str
    steps: list[Step]  # cleanest (smallest pinhole) first


@dataclass
class Plan:
    """Everything ingestion needs to know before reading pixels."""

    source: Path
    files: list[Path]
    positions: list[Position]
    spatial_axes: list[str]
    spatial_shape: tuple[int, ...]
    pixel_size_um: dict[str, float]
    pinhole_um: list[float] | None
    pinhole_au: list[float | None]
    units_source: str
    em_wavelength_nm: float | None
    na: float | None
    warnings: list[str] = field(default_factory=list)
    step_optics: list[dict[str, Any]] = field(default_factory=list)  # per step (first field): what the store records
    images: list[str] = field(default_factory=list)  # listing of the images of files that hold several (dry run)

    @property
    def n_steps(self) -> int:
        return len(self.positions[0].steps)

    def describe(self) -> str:
        """A readable summary for ``--dry-run``."""
        px = ", ".join(f"{a}={self.pixel_size_um[a]:g}" for a in self.spatial_axes)
        lines = [
            f"{self.source}: {len(self.files)} file(s), {len(self.positions)} field(s) of view, {self.n_steps} steps",
            f"  shape per step: {self.spatial_shape} (axes {' '.join(self.spatial_axes)}), pixel size (µm): {px}",
            f"  emission: {_nm(self.em_wavelength_nm).replace('-', '?')} nm, NA: {f'{self.na:g}' if self.na else '?'}; pinhole values from: {self.units_source}",
        ]
        optics = self.step_optics or [{} for _ in self.positions[0].steps]
        file_au = [o.get("pinhole_au_file") for o in optics]
        show_file_au = any(("replacing" in o.get("pinhole_au_source", "") or "recomputed" in o.get("pinhole_au_source", ""))
                           and o.get("pinhole_au_file") is not None for o in optics)
        lines.append("  step  pinhole_um  pinhole_au" + ("     file_au" if show_file_au else "") + "   em_nm   ex_nm  source (first field)")
        for t, step in enumerate(self.positions[0].steps):
            um = "-" if self.pinhole_um is None else f"{self.pinhole_um[t]:.5g}"
            au = "-" if self.pinhole_au[t] is None else f"{self.pinhole_au[t]:.4g}"
            fau = (f"  {'-' if file_au[t] is None else f'{file_au[t]:.4g}':>10}") if show_file_au else ""
            em, ex = (_nm(optics[t].get(k)) for k in ("em_wavelength_nm", "ex_wavelength_nm"))
            lines.append(f"  {t:>4}  {um:>10}  {au:>10}{fau}  {em:>6}  {ex:>6}  {step.label}")
        sources = dict.fromkeys(o.get("pinhole_au_source", "") for o in self.step_optics) if self.step_optics else {}
        for source in sources:
            if source:
                lines.append(f"  pinhole_au: {source}")
        lines += self.images
        for pos in self.positions:
            lines.append(f"  field {pos.key or '(single)'}: " + ", ".join(s.label for s in pos.steps))
        return "\n".join(lines)


def _nm(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}".removesuffix(".0")


def _natural_key(path: Path) -> list[object]:
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", path.name)]


def list_files(source: Path, pattern: str) -> list[Path]:
    """The readable image files of SOURCE (a file, or the files matching ``pattern`` in a folder)."""
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if source.is_file():
        return [source]
    files = sorted((p for p in source.glob(pattern) if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")), key=_natural_key)
    if not files:
        raise UserError(f"{source}: no TIFF, OME-TIFF or LIF files matching {pattern!r}")
    return files


def read_series(path: Path) -> list[SeriesInfo]:
    """The series of one file, by the reader its suffix names (:data:`READERS`)."""
    for suffixes, reader in READERS:
        if path.suffix.lower() in suffixes:
            return reader(path)
    raise UserError(f"{path}: unsupported file type {path.suffix!r} (known: {', '.join(SUFFIXES)})")


def _light(ch: ChannelMeta) -> str:
    if ch.transmitted:
        return "transmitted light"
    parts = [f"{k} {_nm(v)} nm" for k, v in (("em", ch.em_wavelength_nm), ("ex", ch.ex_wavelength_nm)) if v is not None]
    return "/".join(parts) or "wavelength unknown"


def not_one_dye(channels: list[ChannelMeta]) -> str | None:
    """Why these channels cannot be pinhole steps of one dye (None: nothing says they differ)."""
    if any(ch.transmitted for ch in channels):
        return "transmitted light" + ("" if all(ch.transmitted for ch in channels) else " beside fluorescence")
    for key, what in (("em_wavelength_nm", "emission"), ("ex_wavelength_nm", "excitation")):
        values = [getattr(ch, key) for ch in channels if getattr(ch, key) is not None]
        if values and max(values) - min(values) > WAVELENGTH_TOL_NM:
            return f"different dyes: {what} " + ", ".join(f"{_nm(v)}" for v in dict.fromkeys(values)) + " nm"
    return None


def _image_listing(found: list[SeriesInfo], taken: list[SeriesInfo]) -> list[str]:
    """Lines of the dry run: the images of each file that holds several, which were taken, which refused."""
    lines: list[str] = []
    files = dict.fromkeys(s.path for s in found if s.n_series_in_file > 1)
    for path in files:
        lines.append(f"  images in {path.name} (* taken as steps):")
        seen = set()
        for s in (s for s in found if s.path == path):
            if s.index in seen:
                continue
            seen.add(s.index)
            ch = s.channel(0)
            pin = " / ".join(p for p in ((f"{ch.pinhole:.5g} {ch.pinhole_unit or 'µm'}" if ch.pinhole is not None else ""),
                                         (f"{ch.pinhole_airy:.4g} AU" if ch.pinhole_airy is not None else "")) if p) or "no pinhole"
            mark = "*" if any(t.path == path and t.index == s.index for t in taken) else " "
            t_, c_, z_, y_, x_ = s.shape
            lines.append(f"   {mark} {s.index:>3} {s.name!r}: {s.dims or f'x={x_} y={y_} z={z_} t={t_} c={c_}'}, {s.dtype}, pinhole {pin}"
                         + (f" — refused: {s.refusal}" if s.refusal else ""))
    return lines


def _choose_images(found: list[SeriesInfo], m: AcquisitionManifest) -> list[SeriesInfo]:
    """The series the manifest's ``image`` names (all when it names none); an unknown one is refused with the file's list."""
    if m.image is None:
        return found
    wanted = m.image if isinstance(m.image, list) else [m.image]
    out = []
    for path in dict.fromkeys(s.path for s in found):
        here = [s for s in found if s.path == path]
        for w in wanted:
            hit = [s for s in here if (s.index == w if isinstance(w, int) else s.name == w)]
            if not hit:
                names = ", ".join(f"{i} {n!r}" for i, n in dict.fromkeys((s.index, s.name) for s in here))
                raise UserError(f"{path}: no image {w!r} (manifest image); its images: {names}")
            out += [s for s in hit if s not in out]
    return out


def _refuse_unusable(s: SeriesInfo, found: list[SeriesInfo]) -> None:
    if s.refusal is None:
        return
    others = dict.fromkeys((t.index, t.name, "x-y" if t.refusal is None else t.refusal.split(" (")[0]) for t in found if t.path == s.path)
    listing = "; ".join(f"{i} {n!r}: {k}" for i, n, k in others)
    if all(k != "x-y" for _, _, k in others):
        raise UserError(f"{s.label}: {s.refusal}; this file holds no x-y image to ingest (its images: {listing})")
    raise UserError(f"{s.label}: {s.refusal}; choose x-y images with image: NAME or INDEX (or a list) in the manifest (this file's images: {listing})")


def _has_channel_pinholes(s: SeriesInfo) -> bool:
    values = {c.pinhole if c.pinhole is not None else c.pinhole_airy for c in s.channels}
    return s.shape[1] > 1 and len(values - {None}) > 1


def _step_axis(series: list[SeriesInfo], m: AcquisitionManifest) -> str | None:
    if m.step_axis != "auto":
        return None if m.step_axis == "file" else _AXIS[m.step_axis]
    if m.channel is not None:  # one channel chosen: the steps cannot be the channels
        return None
    if any(_has_channel_pinholes(s) for s in series) or (len(series) == 1 and series[0].shape[1] > 1):
        if m.channel_em_nm is None:  # channels of several dyes (or transmitted light) are never steps by accident
            for s in series:
                why = not_one_dye(s.channels[: s.shape[1]]) if s.shape[1] > 1 else None
                if why:
                    chans = ", ".join(f"{c} {_light(s.channel(c))}" for c in range(min(4, s.shape[1]))) + (" ..." if s.shape[1] > 4 else "")
                    em = next((ch.em_wavelength_nm for ch in s.channels if ch.em_wavelength_nm and not ch.transmitted), None)
                    choose = f"channel: N (one step per file; N of: {chans})" + (f", or channel_em_nm: {_nm(em)} to keep the channels of one dye taken at every pinhole" if em else "")
                    raise UserError(f"{s.label}: its channels are {why}, not pinhole steps of one dye; choose one with {choose}; "
                                    "set step_axis: channel only if they really are pinhole steps")
        return "C"
    return None


def _check_one_dye(positions: dict[str, list[Step]], m: AcquisitionManifest, warnings: list[str]) -> None:
    """Steps (files, series or channels) of different dyes or of transmitted light: refused unless the
    manifest sets step_axis explicitly (then a warning: the store records each step's wavelengths)."""
    for steps in positions.values():
        why = not_one_dye([st.light for st in steps])
        if why is None:
            continue
        detail = ", ".join(f"{st.series.path.name}{f' [{st.axis}={st.index}]' if st.axis else ''}: {_light(st.light)}"
                           for st in steps[:4]) + (" ..." if len(steps) > 4 else "")
        if m.step_axis == "auto":
            if why.startswith("transmitted"):
                raise UserError(f"the steps are {why} (brightfield, DIC or phase: no confocal pinhole to open) ({detail}); "
                                "set step_axis explicitly (file, time, z) only if they really are pinhole steps")
            raise UserError(f"the steps are {why}, not pinhole steps of one dye ({detail}); take one dye's files (files: GLOB), "
                            "image or channel: N; set step_axis explicitly only if they really are pinhole steps")
        warnings.append(f"the steps are {why} ({detail}): taken as pinhole steps because step_axis is {m.step_axis}")
        return


def _match(pattern: str, s: SeriesInfo, what: str) -> str:
    for text in (s.path.name, s.name):
        hit = re.search(pattern, text)
        if hit:
            return hit.group(what) if what in hit.groupdict() else hit.group(1)
    raise UserError(f"{s.label}: name does not match {what}_pattern {pattern!r}")


def _steps_of(s: SeriesInfo, axis: str | None, m: AcquisitionManifest) -> list[Step]:
    nt, nc, nz, _, _ = s.shape
    if m.channel is not None and m.channel >= nc:
        raise UserError(f"{s.label}: channel {m.channel} requested but the file has {nc} channel(s)")
    if axis != "C" and nc > 1 and m.channel is None:
        raise UserError(f"{s.label}: has {nc} channels but the steps are not along channels; set channel: N (or step_axis: channel)")
    if axis != "T" and nt > 1:
        raise UserError(f"{s.label}: has {nt} time points; set step_axis: time if the steps are along time, or save one time point")
    channel = m.channel or 0
    if axis is None:
        return [Step(s, None, 0, channel, 0)]
    if axis == "C" and m.channel_em_nm is not None:  # several dyes, each at every pinhole: one dye's channels
        wanted = m.channel_em_nm
        keep = [c for c in range(nc) if (em := s.channel(c).em_wavelength_nm) is not None and _close(em, wanted)]
        if not keep:
            found = sorted({em for c in range(nc) if (em := s.channel(c).em_wavelength_nm) is not None})
            raise UserError(f"{s.label}: no channel with emission wavelength {wanted:g} nm (channel_em_nm); the file's: {found or 'none given'}")
        return [Step(s, "C", c, c, k) for k, c in enumerate(keep)]
    n = {"C": nc, "T": nt, "Z": nz}[axis]
    return [Step(s, axis, i, i if axis == "C" else channel, i) for i in range(n)]


def _metadata_pinhole(step: Step) -> tuple[float | None, float | None]:
    ch = step.series.channel(step.channel)
    um = None if ch.pinhole is None else length_to_um(ch.pinhole, ch.pinhole_unit, f"{step.label} PinholeSize")
    if um is not None and not (math.isfinite(um) and um > 0):
        raise UserError(f"{step.label}: pinhole size {ch.pinhole} is not a positive number")
    return um, ch.pinhole_airy


def _assign_pinholes(positions: dict[str, list[Step]], m: AcquisitionManifest) -> str:
    """Fill pinhole_um / pinhole_au of every step; returns where they came from."""
    values = m.pinhole_um if m.pinhole_um is not None else m.pinhole_au
    if values is not None:
        key = "pinhole_um" if m.pinhole_um is not None else "pinhole_au"
        for pos, steps in positions.items():
            if len(steps) != len(values):
                names = ", ".join(s.label for s in steps[:3]) + (" ..." if len(steps) > 3 else "")
                nt, _, nz, _, _ = steps[0].series.shape
                hint = next((f"; if the steps lie along {name}, set step_axis: {name}" for name, n in (("z", nz), ("time", nt))
                             if n == len(values) and m.step_axis == "auto"), "")
                raise UserError(f"manifest {key} has {len(values)} values but {names} holds {len(steps)} steps{f' (field {pos})' if pos else ''}{hint}")
            for step, v in zip(steps, values):
                setattr(step, key, float(v))
        return f"manifest ({key} in source order)"
    if m.pinhole_pattern is not None:
        for steps in positions.values():
            for step in steps:
                raw = _match(m.pinhole_pattern, step.series, "pinhole")
                try:
                    value = float(raw.replace(",", ".").replace("p", "."))
                except ValueError:
                    raise UserError(f"{step.label}: pinhole_pattern matched {raw!r}, which is not a number") from None
                if m.pinhole_unit == "au":
                    step.pinhole_au = value
                else:
                    step.pinhole_um = length_to_um(value, m.pinhole_unit, step.label)
        return f"file names (pinhole_pattern, {m.pinhole_unit})"
    kinds = set()
    for steps in positions.values():
        for step in steps:
            step.pinhole_um, step.pinhole_au = _metadata_pinhole(step)
            if step.pinhole_um is None and step.pinhole_au is None:
                raise UserError(
                    f"{step.label}: no pinhole size in the file ({step.series.kind}); give pinhole_um, pinhole_au or pinhole_pattern in an acquisition manifest (--manifest)"
                )
            kinds.add(step.series.kind)
    return "file metadata (" + ", ".join(sorted(kinds)) + ")"


@overload
def _prefer(manifest: float, from_file: float | None, key: str, where: str, warnings: list[str]) -> float: ...


@overload
def _prefer(manifest: float | None, from_file: float | None, key: str, where: str, warnings: list[str]) -> float | None: ...


def _prefer(manifest: float | None, from_file: float | None, key: str, where: str, warnings: list[str]) -> float | None:
    """The manifest's value where given (an explicit choice wins), else the file's; a warning when both are
    given and differ (said once per key)."""
    if manifest is not None and from_file is not None and not _close(manifest, from_file) and not any(f"manifest {key}" in w for w in warnings):
        warnings.append(f"{where}: manifest {key} {manifest:g} replaces the file's {from_file:g}")
    return manifest if manifest is not None else from_file


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _vendor_au(st: Step, em_nm: float | None) -> tuple[float | None, str]:
    """A vendor's Airy units at the step's emission wavelength: LAS X computes ``PinholeAiry`` at one
    wavelength for every channel (``EmissionWavelengthForPinholeAiryCalculation``), and 1 AU scales with
    the wavelength, so AU(em) = AU(vendor) * vendor_nm / em."""
    ch = st.light
    au, at = st.pinhole_au, ch.pinhole_airy_at_nm
    if au is None:
        return None, ""
    if at is None or em_nm is None:
        return au, f"file ({st.series.kind})" + (f", computed by the vendor at {_nm(at)} nm" if at else "")
    if abs(at - em_nm) <= 0.5:
        return au, f"file ({st.series.kind}), at {_nm(at)} nm, the step's emission"
    return au * at / em_nm, f"file ({st.series.kind}) at {_nm(at)} nm, recomputed at the step's emission {_nm(em_nm)} nm (x {at / em_nm:.4g})"


def _optics(st: Step, em_nm: float | None, na: float | None) -> dict[str, Any]:
    """What the store records of one step: its light, optics and pinhole with the AU's source."""
    ch = st.light
    return {
        "source": st.label,
        "pinhole_um": st.pinhole_um,
        "pinhole_au": st.pinhole_au,
        "pinhole_au_source": st.pinhole_au_source,
        "pinhole_au_file": ch.pinhole_airy,
        "pinhole_au_file_at_nm": ch.pinhole_airy_at_nm,
        "em_wavelength_nm": em_nm,
        "ex_wavelength_nm": ch.ex_wavelength_nm,
        "transmitted_light": ch.transmitted,
        "na": na,
    }


def discover(source: str | Path, m: AcquisitionManifest) -> Plan:
    """Build the ingestion :class:`Plan` of SOURCE from file metadata and the manifest (no pixels read)."""
    source = Path(source)
    files = list_files(source, m.files)
    found: list[SeriesInfo] = []
    in_sets: set[Path] = set()  # files of multi-file OME-TIFF sets already read (any member reads the whole set)
    for f in files:
        if f.resolve() not in in_sets:
            here = read_series(f)
            in_sets |= {p.resolve() for s in here for p in s.set_files}
            found += here
    series = _choose_images(found, m)
    for s in series:
        _refuse_unusable(s, found)
    axis = _step_axis(series, m)
    if m.pinhole_pattern is not None and axis is not None:
        raise UserError(f"{source}: pinhole_pattern parses one value per file, but the steps lie along {axis}; give a pinhole_um list instead")

    # --- steps in source order, grouped by field of view ---
    positions: dict[str, list[Step]] = {}
    for s in series:
        if m.position_pattern is not None:
            key = _match(m.position_pattern, s, "position")
        elif axis is not None and len(series) > 1:
            key = s.path.name + (f"#{s.index}" if s.n_series_in_file > 1 else "")
        else:
            key = ""
        key = "/".join(k for k in (key, s.position_hint) if k)
        steps = _steps_of(s, axis, m)
        group = positions.setdefault(key, [])
        for st in steps:
            st.order = len(group)
            group.append(st)
    units_source = _assign_pinholes(positions, m)
    warnings: list[str] = []
    _check_one_dye(positions, m, warnings)

    # --- optics and calibration: the manifest's values win over the files' (a warning where they differ) ---
    all_steps = [st for steps in positions.values() for st in steps]
    file_na = next((s.na for s in series if s.na), None)
    na = _prefer(m.na, file_na, "na", all_steps[0].label, warnings)
    # the emission wavelength of the channel each step reads (a two-dye file: the chosen dye's, not channel 0's);
    # a step whose file does not say takes the first one the files give
    any_em = next((c.em_wavelength_nm for s in series for c in s.channels if c.em_wavelength_nm), None)
    em_of = {id(st): _prefer(m.em_wavelength_nm, st.series.channel(st.channel).em_wavelength_nm or any_em, "em_wavelength_nm", st.label, warnings)
             for st in all_steps}
    em = em_of[id(all_steps[0])]
    calibrated = m.um_per_au is not None or (m.magnification_at_pinhole is not None and na is not None and None not in em_of.values())
    if m.magnification_at_pinhole is not None and not calibrated:
        raise UserError("magnification_at_pinhole needs em_wavelength_nm and na (the files do not give them): add them to the manifest")
    cal = f"um_per_au={m.um_per_au:g}" if m.um_per_au else f"magnification_at_pinhole={m.magnification_at_pinhole}, 1 AU = 1.22*{em or 0:g} nm/{na or 0:g}"
    recomputed = False
    for st in all_steps:
        from_file = st.pinhole_au is not None and units_source.startswith("file")
        if st.pinhole_um is not None and calibrated:  # the manifest's calibration wins over a vendor's AU
            st.pinhole_au = pinhole_um_to_au(st.pinhole_um, um_per_au=m.um_per_au, magnification_at_pinhole=m.magnification_at_pinhole,
                                             em_wavelength_nm=em_of[id(st)], na=na)
            st.pinhole_au_source = f"manifest calibration ({cal})" + (", replacing the file's AU (file_au)" if from_file else "")
        elif from_file:
            st.pinhole_au, st.pinhole_au_source = _vendor_au(st, em_of[id(st)])
            recomputed |= "recomputed" in st.pinhole_au_source
        elif st.pinhole_au is not None:
            st.pinhole_au_source = units_source
    if calibrated and units_source.startswith(("file", "manifest (pinhole_um")):
        units_source += f"; AU from manifest calibration ({cal})"
    elif recomputed:
        units_source += "; AU recomputed at each step's emission wavelength"

    # --- sort by pinhole, check duplicates, missing values and agreement between fields ---
    use_um = all(st.pinhole_um is not None for steps in positions.values() for st in steps)
    sort_key = "pinhole_um" if use_um else "pinhole_au"
    if not use_um and any(st.pinhole_au is None for steps in positions.values() for st in steps):
        bad = next(st for steps in positions.values() for st in steps if st.pinhole_um is None and st.pinhole_au is None)
        raise UserError(f"{bad.label}: no pinhole value")
    ordered: list[Position] = []
    for key, steps in positions.items():
        steps = sorted(steps, key=lambda st: getattr(st, sort_key))
        for a, b in zip(steps, steps[1:]):
            if _close(getattr(a, sort_key), getattr(b, sort_key)):
                dyes = {st.series.channel(st.channel).em_wavelength_nm for st in (a, b)}
                hint = "; the channels are several dyes: keep one with channel_em_nm" if axis == "C" and len(dyes - {None}) > 1 else ""
                raise UserError(f"{b.label}: duplicated pinhole value {getattr(b, sort_key):g} ({sort_key}), also in {a.label}{hint}")
        ordered.append(Position(key, steps))
    ref = ordered[0]
    ref_values = [getattr(st, sort_key) for st in ref.steps]
    for pos in ordered[1:]:
        values = [getattr(st, sort_key) for st in pos.steps]
        if len(values) != len(ref_values) or not all(_close(a, b) for a, b in zip(values, ref_values)):
            missing = [v for v in ref_values if not any(_close(v, w) for w in values)]
            extra = [v for v in values if not any(_close(v, w) for w in ref_values)]
            what = f"missing {sort_key} {missing}" if missing else f"extra {sort_key} {extra}"
            hint = ("; the steps were taken along channels because they have different pinhole sizes: if the channels are dyes, "
                    "choose one with channel: N" if axis == "C" and m.step_axis == "auto" else "")
            raise UserError(f"field {pos.key}: {what} compared with field {ref.key} ({pos.steps[0].label}){hint}")
    if len(ref.steps) < 2:
        raise UserError(f"{source}: found only one pinhole step ({ref.steps[0].label}); a ladder needs at least two")

    # --- shapes and pixel sizes ---
    shape = ref.steps[0].spatial_shape
    spatial_axes = ["y", "x"] if len(shape) == 2 else ["z", "y", "x"]
    px_ref: dict[str, float] | None = None
    for pos in ordered:
        for st in pos.steps:
            if st.spatial_shape != shape:
                raise UserError(f"{st.label}: shape {st.spatial_shape} differs from {ref.steps[0].label} {shape}")
            if st.series.dtype != ref.steps[0].series.dtype:  # an 8-bit export among 16-bit steps: values not comparable
                raise UserError(f"{st.label}: data type {st.series.dtype} differs from {ref.steps[0].label} {ref.steps[0].series.dtype}; "
                                "export every step with the same bit depth")
            px = dict(st.series.pixel_size_um)
            if "x" in px:
                px.setdefault("y", px["x"])
            for dim, value in (("x", m.pixel_size_um), ("y", m.pixel_size_um), ("z", m.z_step_um if "z" in spatial_axes else None)):
                if value is not None:
                    px[dim] = _prefer(value, px.get(dim), "pixel_size_um" if dim != "z" else "z_step_um", st.label, warnings)
            for dim in spatial_axes:
                if px.get(dim) is None:
                    what = "pixel_size_um" if dim != "z" else "z_step_um"
                    raise UserError(f"{st.label}: no {dim} pixel size in the file; give {what} in an acquisition manifest")
            px = {a: float(px[a]) for a in spatial_axes}
            if px_ref is None:
                px_ref = px
            elif not all(_close(px[a], px_ref[a]) for a in spatial_axes):
                raise UserError(f"{st.label}: pixel size {px} µm differs from {ref.steps[0].label} {px_ref} µm")
    assert px_ref is not None
    if m.pixel_size_um is None and max(px_ref["x"], px_ref["y"]) > MAX_PLAUSIBLE_PIXEL_UM:
        warnings.append(f"{ref.steps[0].label}: pixel size {px_ref['x']:g} µm from the file's metadata is implausible for a microscope "
                        "(a screen or print resolution?); give pixel_size_um in an acquisition manifest")
    pinhole_au = [st.pinhole_au for st in ref.steps]
    if any(v is None for v in pinhole_au):
        warnings.append("pinhole sizes in Airy units unknown: give magnification_at_pinhole (with em_wavelength_nm, na) or um_per_au to record them")
    return Plan(
        source=source, files=files, positions=ordered, spatial_axes=spatial_axes, spatial_shape=shape,
        # use_um: every step has its pinhole_um (the filter only tells the type checker so)
        pixel_size_um=px_ref, pinhole_um=[st.pinhole_um for st in ref.steps if st.pinhole_um is not None] if use_um else None,
        pinhole_au=pinhole_au, units_source=units_source, em_wavelength_nm=em, na=na, warnings=warnings,
        step_optics=[_optics(st, em_of[id(st)], na) for st in ref.steps], images=_image_listing(found, series),
    )
