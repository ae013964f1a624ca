"""TIFF readers (tifffile): OME-TIFF with OME-XML metadata, ImageJ hyperstacks and plain TIFFs.

Compressed data (LZW, Deflate, Zstd, JPEG-XR ...) is decoded by ``imagecodecs``, a dependency. Truncated
files are caught before reading pixels: every strip/tile a page points at must lie inside the file, an
ImageJ stack must hold the images its header announces, and a page chain tifffile found broken is refused
(tifffile would otherwise hand back fewer planes, or zeros, with only a log message). tifffile's own log
lines are kept out of the output: what they say becomes part of our one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile

from acquisition.ome import ChannelMeta, ImageMeta, parse_ome_xml
from acquisition.series import SeriesInfo, to_tczyx
from acquisition.units import length_to_um
from dehaze.errors import UserError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
_BROKEN = ("invalid page offset", "corrupted", "truncated")  # words of tifffile log lines on a broken file


class _TifffileLog(logging.Filter):
    """Keeps tifffile's log records out of the output while this thread reads a file (collected instead);
    other threads and other callers of tifffile are left alone."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        said = getattr(self._local, "said", None)
        if said is None:
            return True
        said.append(record.getMessage())
        return False

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        outer = getattr(self._local, "said", None)
        said: list[str] = []
        self._local.said = said
        try:
            yield said
        finally:
            self._local.said = outer
            if outer is not None:
                outer.extend(said)


_LOG = _TifffileLog()
logging.getLogger("tifffile").addFilter(_LOG)


def _open(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read as TIFF (truncated or corrupt: {str(exc).splitlines()[0]})") from None


def _refuse_broken(said: list[str], path: Path) -> None:
    """Tifffile logged that the file's structure is broken (and went on with what it could read): refuse."""
    broken = next((m for m in said if any(w in m.lower() for w in _BROKEN)), None)
    if broken is not None:
        first = broken.splitlines()[0].split("> ", 1)[-1]
        raise UserError(f"{path}: truncated or damaged ({first}; {path.stat().st_size} bytes on disk); copy the file again")


def _refuse_short_imagej(tif: tifffile.TiffFile, path: Path) -> None:
    """An ImageJ stack whose header announces more images than the file holds (a cut copy: tifffile falls
    back to the first page, which would pass for a single plane)."""
    announced = int((tif.imagej_metadata or {}).get("images", 1) or 1)
    series = tif.series[0]
    page = series.keyframe
    plane = page.imagelength * page.imagewidth * max(1, page.samplesperpixel)
    held = math.prod(series.shape) // max(1, plane)
    if announced > held:
        raise UserError(f"{path}: truncated: its ImageJ header announces {announced} images but the file holds {held} "
                        f"({path.stat().st_size} bytes on disk); copy the file again")


def _check_complete(tif: tifffile.TiffFile, path: Path) -> None:
    size = path.stat().st_size
    for i, page in enumerate(tif.pages):
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
        if not ends or max(ends) > size:
            raise UserError(f"{path}: truncated: page {i} image data ends at byte {max(ends, default=0)} but the file has {size} bytes")


def _refuse_truncated(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, index: int, path: Path) -> None:
    """Tifffile reads the planes a truncated file has lost as zeros (with a logged warning): refuse them."""
    pages = list(series.pages)
    missing = sum(1 for pg in pages if pg is None)
    size = tif.filehandle.size
    short = sum(1 for pg in pages if pg is not None and _cut_short(pg))
    if missing or short:
        raise UserError(f"{path}: the file is truncated or damaged: {missing + short} of {len(pages)} image planes "
                        f"of series {index} are missing or cut short ({size} bytes on disk); copy the file again")


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3g} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.3g} MiB"


def _refuse_lying_sizes(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, index: int, meta: ImageMeta,
                        shape: tuple[int, ...], path: Path, *, one_file: bool) -> None:
    """Before any pixel is read (or memory allocated for it): OME-XML sizes must describe the planes the
    file holds. A SizeX/SizeY other than the planes' (tifffile then reads the pages as something else), or
    a SizeZ x SizeC x SizeT that claims more planes than the file has (tifffile would allocate them all
    and hand back zeros for the missing ones) is refused, saying which keys and how much memory. The planes
    of a multi-file set are checked when it is read (:func:`_refuse_truncated`), once its members are found."""
    sizes = meta.sizes
    plane = shape[-2] * shape[-1] * series.dtype.itemsize
    if (sizes["Y"], sizes["X"]) != tuple(shape[-2:]):
        claimed = sizes["Y"] * sizes["X"] * series.dtype.itemsize
        raise UserError(f"{path}: OME-XML Pixels SizeX={sizes['X']} SizeY={sizes['Y']} (image {meta.name!r}; {_gib(claimed)} "
                        f"per plane) but the planes in the file are {shape[-1]} x {shape[-2]} px: the OME-XML does not "
                        "describe the pixel data; export the file again")
    if not one_file:
        return
    pages = list(series.pages)
    missing = sum(1 for pg in pages if pg is None)
    size = tif.filehandle.size
    short = sum(1 for pg in pages if pg is not None and _cut_short(pg))
    if missing or short:
        keys = " ".join(f"Size{a}={sizes[a]}" for a in "ZCT")
        raise UserError(f"{path}: the file is truncated or damaged, or its OME-XML sizes lie: {missing + short} of {len(pages)} "
                        f"image planes of series {index} are missing or cut short (OME-XML Pixels {keys}: {len(pages)} planes "
                        f"of {shape[-1]} x {shape[-2]} px, {_gib(len(pages) * plane)} in memory; {size} bytes on disk); "
                        "copy the file again, or export it with metadata that matches its planes")


def _cut_short(page: tifffile.TiffPage | tifffile.TiffFrame) -> bool:
    """Whether a page's image data runs past the end of its own file (a member of a set is another file)."""
    size = page.parent.filehandle.size
    return any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts))


def _decode_error(path: Path, page: tifffile.TiffPage | tifffile.TiffFrame | None, exc: Exception) -> UserError:
    text = str(exc).splitlines()[0] if str(exc) else ""
    compression = "" if page is None else f"{getattr(page.compression, 'name', page.compression)} compression; "
    hint = ("install imagecodecs (pip install imagecodecs), which decodes it" if "imagecodecs" in text
            else "the file is corrupt or its compression is not supported: export it uncompressed or LZW/Deflate/Zstd")
    return UserError(f"{path}: cannot decode image data ({compression}{type(exc).__name__}: {text}); {hint}")


def _reader(path: Path, index: int, axes: str):
    def read() -> np.ndarray:
        with _LOG.capture() as said, tifffile.TiffFile(path) as tif:
            _refuse_truncated(tif, tif.series[index], index, path)
            try:
                data = tif.series[index].asarray(maxworkers=1)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file
                raise _decode_error(path, tif.series[index].keyframe, exc) from None
            _refuse_broken(said, path)
        return to_tczyx(data, axes, str(path))

    return read


def _prober(path: Path, index: int, members: tuple[Path, ...] = ()):
    """Decodes the first plane of series ``index`` (of a multi-file set: the first plane of every member),
    what ``--dry-run`` checks of every file."""

    def decode(tif: tifffile.TiffFile, page: tifffile.TiffPage | tifffile.TiffFrame | None, where: Path) -> None:
        if page is None:
            raise UserError(f"{where}: series {index} has no image plane in the file; copy the file again")
        try:
            page.asarray(maxworkers=1)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt or undecodable file
            raise _decode_error(where, page, exc) from None

    def probe() -> None:
        for where in members or (path,):
            with _LOG.capture() as said, tifffile.TiffFile(where) as tif:
                pages = tif.pages if members else tif.series[index].pages
                decode(tif, next((pg for pg in pages if pg is not None), None), where)
                _refuse_broken(said, where)

    return probe


def _resolution_um(tif: tifffile.TiffFile, path: Path) -> dict[str, float]:
    """Pixel size from ImageJ metadata or the TIFF resolution tags; {} if the file does not say."""
    page = tif.pages.first
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return {}
    unit_code = int(getattr(tags.get("ResolutionUnit"), "value", 1) or 1)
    ij = tif.imagej_metadata or {}
    if ij.get("unit"):  # ImageJ: its unit wins over the ResolutionUnit tag; resolution tags in px/unit
        unit = "µm" if str(ij["unit"]) == "\\u00B5m" else str(ij["unit"])  # ImageJ's escaped µ; micron, inch: known lengths
        try:
            factor = length_to_um(1.0, unit, f"{path} ImageJ unit")
        except UserError:  # 'pixel' (uncalibrated) or not a length: the manifest's pixel_size_um is needed
            return {}
    elif unit_code == 2:
        factor = 25400.0  # inch
    elif unit_code == 3:
        factor = 10000.0  # cm
    else:
        return {}
    out = {}
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        num, den = tags[tag].value
        if num > 0 and den > 0:
            out[axis] = factor * den / num
    if ij.get("spacing"):
        out["z"] = factor * float(ij["spacing"])
    # ImageJ's default (1 px/unit, unit 'pixel') or 72 dpi screen resolutions are not physical: ignore them
    if unit_code == 2 and abs(out.get("x", 0) - 25400 / 72) < 1e-6:
        return {}
    return out


def _set_members(path: Path, images: list[ImageMeta]) -> tuple[Path, ...]:
    """The files of the multi-file OME-TIFF set ``path`` belongs to (Bio-Formats, Micro-Manager: one file per
    channel or position, each with the whole OME-XML), each checked present and complete; () for one file.

    tifffile reads the whole set from any member, and fills a missing member with zeros (a log line only),
    so a missing or truncated member is refused here, by name.
    """
    names = [n for meta in images for n in meta.files]
    if not names or {n.lower() for n in names} == {path.name.lower()}:
        return ()
    members = tuple(dict.fromkeys([path, *(_member(path.parent, n) for n in names)]))
    for member in members:
        if not member.is_file():
            raise UserError(f"{member}: missing: the OME-XML of {path} lists it among the {len(members)} files of its set; copy the whole set into {path.parent}")
        if member != path:
            with _open(member) as tif:
                _check_complete(tif, member)
    return members


def _member(folder: Path, name: str) -> Path:
    """The set member ``name`` in ``folder``; matched without regard to case, as tifffile does."""
    exact = folder / name
    if exact.is_file() or not exact.parent.is_dir():
        return exact
    return next((p for p in exact.parent.iterdir() if p.name.lower() == exact.name.lower()), exact)


def _shape(shape: tuple[int, ...], axes: str, path: Path) -> tuple[int, int, int, int, int]:
    """(T, C, Z, Y, X) shape of a series without reading it (a zero-stride stand-in array)."""
    t, c, z, y, x = to_tczyx(np.broadcast_to(np.zeros((), np.uint8), shape), axes, str(path)).shape
    return t, c, z, y, x


def read_tiff_series(path: Path) -> list[SeriesInfo]:
    """One :class:`SeriesInfo` per image series in a TIFF file (OME: per ``Image``)."""
    with _LOG.capture() as said, _open(path) as tif:
        series = _series(tif, path)
        out = _ome_series(tif, path, series) if tif.is_ome else _plain_series(tif, path, series)
        _refuse_broken(said, path)  # after the checks above, whose messages say more
        return out


def _series(tif: tifffile.TiffFile, path: Path) -> list[tifffile.TiffPageSeries]:
    """The file's series, its structure checked complete."""
    _check_complete(tif, path)
    series = list(tif.series)
    if not series:
        raise UserError(f"{path}: cannot read as TIFF (corrupt: no image found)")
    if tif.is_imagej:
        _refuse_short_imagej(tif, path)
    return series


def _ome_series(tif: tifffile.TiffFile, path: Path, series: list[tifffile.TiffPageSeries]) -> list[SeriesInfo]:
    images = parse_ome_xml(tif.ome_metadata or "", str(path))
    members = _set_members(path, images)
    out = []
    for i, s in enumerate(series):
        meta = images[i] if i < len(images) else images[0]
        data_shape = _shape(s.shape, s.axes, path)
        _refuse_lying_sizes(tif, s, i, meta, data_shape, path, one_file=not members)
        out.append(
            SeriesInfo(
                path=path, index=i, name=meta.name or f"series {i}", kind="ome-tiff", shape=data_shape,
                dtype=s.dtype, read=_reader(path, i, s.axes), probe=_prober(path, i, members), channels=meta.channels,
                pixel_size_um=meta.pixel_size_um, na=meta.na, magnification=meta.magnification,
                n_series_in_file=len(series), set_files=members,
            )
        )
    return out


def _plain_series(tif: tifffile.TiffFile, path: Path, series: list[tifffile.TiffPageSeries]) -> list[SeriesInfo]:
    px = _resolution_um(tif, path)
    kind = "imagej-tiff" if tif.is_imagej else "tiff"
    out = []
    for i, s in enumerate(series):
        data_shape = _shape(s.shape, s.axes, path)
        out.append(
            SeriesInfo(
                path=path, index=i, name=f"series {i}", kind=kind, shape=data_shape, dtype=s.dtype,
                read=_reader(path, i, s.axes), probe=_prober(path, i), channels=[ChannelMeta() for _ in range(data_shape[1])],
                pixel_size_um=px, n_series_in_file=len(series),
            )
        )
    return out
