"""Tiny pinhole series written the way acquisition software writes them (tifffile, OME-XML we compose)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

SHIFTS = np.array([[0.0, 0.0], [1.6, -2.3], [-3.4, 2.7], [4.2, 3.1]])  # (dy, dx) correction per step, px
PINHOLES_UM = [40.0, 80.0, 160.0, 320.0]


def clean_canvas(n: int = 128, seed: int = 0) -> np.ndarray:
    """Bright line-like and spot structure on black (float, photons)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n))
    for _ in range(40):
        y0, x0 = rng.uniform(0, n, 2)
        angle = rng.uniform(0, np.pi)
        for s in np.linspace(-15, 15, 60):
            y, x = int(y0 + s * np.sin(angle)), int(x0 + s * np.cos(angle))
            if 0 <= y < n and 0 <= x < n:
                img[y, x] += 1.0
    img[rng.integers(0, n, 80), rng.integers(0, n, 80)] += 3.0
    return ndimage.gaussian_filter(img, 1.0) * 400


def hazy_steps(n_steps: int = 4, shape: int = 64, shifts: np.ndarray = SHIFTS, seed: int = 0, z: int = 0) -> list[np.ndarray]:
    """Step t: more blur and background (haze) and more light, drifted so that shifting by shifts[t] aligns it."""
    rng = np.random.default_rng(seed + 1)
    canvas = clean_canvas(shape * 2, seed)
    out = []
    for t in range(n_steps):
        img = ndimage.gaussian_filter(canvas, 0.5 + 0.8 * t) * (1 + 0.3 * t) + ndimage.gaussian_filter(canvas, 12) * 3 * t
        img = ndimage.shift(img, -shifts[t], order=3, mode="nearest")
        c = shape // 2
        crop = img[c : c + shape, c : c + shape]
        planes = [crop * (1 - 0.1 * k) for k in range(z)] if z else [crop]
        noisy = np.stack([rng.poisson(np.clip(p, 0, None) + 20) + 100 for p in planes]).astype(np.uint16)
        out.append(noisy if z else noisy[0])
    return out


def ome_xml(
    channels: list[dict],
    size_yx: tuple[int, int],
    *,
    size_z: int = 1,
    size_t: int = 1,
    pixel_um: float = 0.1,
    pixel_unit: str | None = None,
    z_um: float = 0.3,
    n_images: int = 1,
    image_names: list[str] | None = None,
    na: float = 1.4,
    magnification: float = 63.0,
    channel_files: list[str] | None = None,
) -> str:
    """OME-XML as a confocal's software writes it: Instrument/Objective, Channel@PinholeSize, TiffData."""
    unit = f' PhysicalSizeXUnit="{pixel_unit}" PhysicalSizeYUnit="{pixel_unit}"' if pixel_unit else ""
    images = []
    ifd = 0
    for i in range(n_images):
        chs = "".join(
            f'<Channel ID="Channel:{i}:{c}" Name="{ch.get("name", f"ch{c}")}" SamplesPerPixel="1"'
            + (f' PinholeSize="{ch["pinhole"]}"' if ch.get("pinhole") is not None else "")
            + (f' PinholeSizeUnit="{ch["unit"]}"' if ch.get("unit") else "")
            + f' EmissionWavelength="{ch.get("em", 525)}" EmissionWavelengthUnit="nm" ExcitationWavelength="488"><LightPath/></Channel>'
            for c, ch in enumerate(channels)
        )
        n_planes = len(channels) * size_z * size_t
        name = image_names[i] if image_names else f"Image{i}"
        if channel_files:  # a multi-file set: channel c is the first plane of file c, named with its UUID
            tiff_data = "".join(f'<TiffData FirstC="{c}" IFD="0" PlaneCount="1"><UUID FileName="{f}">urn:uuid:{uuid.uuid4()}</UUID></TiffData>'
                                for c, f in enumerate(channel_files))
        else:
            tiff_data = f'<TiffData IFD="{ifd}" PlaneCount="{n_planes}"/>'

        images.append(
            f'<Image ID="Image:{i}" Name="{name}"><AcquisitionDate>2024-05-01T10:0{i}:00</AcquisitionDate>'
            f'<ObjectiveSettings ID="Objective:0:0" RefractiveIndex="1.515"/>'
            f'<Pixels ID="Pixels:{i}" DimensionOrder="XYCZT" Type="uint16" SizeX="{size_yx[1]}" SizeY="{size_yx[0]}" '
            f'SizeC="{len(channels)}" SizeZ="{size_z}" SizeT="{size_t}" PhysicalSizeX="{pixel_um}" PhysicalSizeY="{pixel_um}"{unit} '
            f'PhysicalSizeZ="{z_um}" BigEndian="false">{chs}{tiff_data}</Pixels></Image>'
        )
        ifd += n_planes
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'Creator="LAS X 3.7 (test double)" UUID="urn:uuid:{uuid.uuid4()}">'
        '<Instrument ID="Instrument:0"><Detector ID="Detector:0:0" Type="PMT"/>'
        f'<Objective ID="Objective:0:0" Immersion="Oil" LensNA="{na}" NominalMagnification="{magnification}"/></Instrument>'
        + "".join(images)
        + "</OME>"
    )


def write_ome(path: Path, data: np.ndarray, xml: str) -> Path:
    """Planes in XYCZT order (C fastest), the OME-XML in the first page's ImageDescription."""
    planes = data.reshape(-1, *data.shape[-2:])
    tifffile.imwrite(path, planes, description=xml, metadata=None, photometric="minisblack")
    return path


def write_ome_channels(path: Path, steps: list[np.ndarray], pinholes: list[float], unit: str | None = None, order: list[int] | None = None) -> Path:
    """One OME-TIFF, one channel per pinhole step, channels in the given (possibly shuffled) order."""
    order = order or list(range(len(steps)))
    chans = [{"pinhole": pinholes[i], "unit": unit, "name": f"PH {pinholes[i]}"} for i in order]
    data = np.stack([steps[i] for i in order])
    return write_ome(path, data, ome_xml(chans, data.shape[-2:]))


def write_ome_set(folder: Path, steps: list[np.ndarray], pinholes: list[float]) -> list[Path]:
    """A multi-file OME-TIFF set as Bio-Formats and Micro-Manager write it: one file per channel (pinhole step),
    each holding the whole OME-XML, whose TiffData point at every file of the set by name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"series_C{c}.ome.tif" for c in range(len(steps))]
    xml = ome_xml([{"pinhole": p, "name": f"PH {p}"} for p in pinholes], steps[0].shape, channel_files=names)
    return [write_ome(folder / name, img[None], xml) for name, img in zip(names, steps)]


def leica_detectors(bands_nm: list[tuple[float, float]], lasers_nm: list[float] = (488.0,), transmitted: int | None = None) -> str:
    """ATLConfocalSettingDefinition children as LAS X writes them: one active detector per channel, its band
    (Spectro/MultiBand, same Channel number) and the active laser lines."""
    bands = "".join(f'<MultiBand Channel="{k + 1}" TargetWaveLengthBegin="{lo}" TargetWaveLengthEnd="{hi}"/>' for k, (lo, hi) in enumerate(bands_nm))
    dets = "".join(f'<Detector Name="{"PMT Trans" if k == transmitted else f"HyD {k + 1}"}" Type="{"PMT" if k == transmitted else "HyD"}" '
                   f'Channel="{k + 1}" IsActive="1"/>' for k in range(len(bands_nm)))
    dets += f'<Detector Name="PMT {len(bands_nm) + 1}" Type="PMT" Channel="{len(bands_nm) + 1}" IsActive="0"/>'  # an inactive one
    lines = "".join(f'<LaserLineSetting LaserLine="{w}" IntensityDev="5.0"/>' for w in lasers_nm) + '<LaserLineSetting LaserLine="638" IntensityDev="0"/>'
    return f"<Spectro>{bands}</Spectro><AotfList><Aotf>{lines}</Aotf></AotfList><DetectorList>{dets}</DetectorList>"


def write_lif(path: Path, images: list[tuple], pixel_m: float = 1e-7) -> Path:
    """A Leica LIF file (LAS X container layout): XML header in UTF-16, then one memory block per image.

    ``images``: (name, data, ATLConfocalSettingDefinition attributes such as Pinhole in metres[, dims[, children]]).
    ``dims``: the LIF DimIDs in XML order (default (1, 2): x, y; (1, 2, 4) a time series, (1, 3) an XZ scan,
    (1, 2, 5) a λ-scan); ``data`` is (y, x), or (c, ...) with one axis per dim in reverse order, e.g.
    (c, t, y, x). ``children``: XML inside the settings element (e.g. :func:`leica_detectors`).
    """
    children = []
    blocks = []
    for i, entry in enumerate(images):
        name, data, settings = entry[:3]
        dims = tuple(entry[3]) if len(entry) > 3 and entry[3] else (1, 2)
        inner = entry[4] if len(entry) > 4 else ""
        data = np.asarray(data)
        if data.ndim == len(dims):
            data = data[None]
        n_channels = data.shape[0]
        sizes = list(reversed(data.shape[1:]))  # per dim in XML order
        plane = 2 * sizes[0] * sizes[1]
        attrs = " ".join(f'{k}="{v}"' for k, v in settings.items())
        chans = "".join(
            f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="12" NameOfMeasuredQuantity="" Min="0" Max="4095" Unit="" '
            f'LUTName="Green" IsLUTInverted="0" BytesInc="{c * plane}" BitInc="0"/>' for c in range(n_channels))
        incs = [2, 2 * sizes[0]] + [plane * n_channels * int(np.prod(sizes[2:k])) for k in range(2, len(sizes))]
        desc = "".join(
            f'<DimensionDescription DimID="{d}" NumberOfElements="{n}" Origin="0" Length="{pixel_m * (n - 1)}" Unit="m" BitInc="0" BytesInc="{inc}"/>'
            for d, n, inc in zip(dims, sizes, incs))
        block = np.moveaxis(data, 0, -3) if data.ndim > 3 else data
        children.append(
            f'<Element Name="{name}" Visibility="1" CopyOption="1" UniqueID="{uuid.uuid4()}"><Data><Image TextDescription="">'
            f"<ImageDescription><Channels>{chans}</Channels><Dimensions>{desc}</Dimensions></ImageDescription>"
            f'<Attachment Name="HardwareSettingList" Application="LAS AF"><ATLConfocalSettingDefinition {attrs}>{inner}</ATLConfocalSettingDefinition></Attachment>'
            f'</Image></Data><Memory Size="{block.nbytes}" MemoryBlockID="MemBlock_{i + 1}"/><Children/></Element>'
        )
        blocks.append((f"MemBlock_{i + 1}", np.ascontiguousarray(block).astype("<u2").tobytes()))
    xml = (
        '<LMSDataContainerHeader Version="2"><Element Name="project" Visibility="1" CopyOption="1" UniqueID="0">'
        '<Data><Experiment Path="project.lif"/></Data><Memory Size="0" MemoryBlockID="MemBlock_0"/>'
        f"<Children>{''.join(children)}</Children></Element></LMSDataContainerHeader>"
    )
    out = bytearray()
    header = b"\x2a" + len(xml).to_bytes(4, "little") + xml.encode("utf-16-le")
    out += b"\x70\x00\x00\x00" + len(header).to_bytes(4, "little") + header
    for block_id, data in blocks:
        desc = block_id.encode("utf-16-le")
        body = b"\x2a" + len(data).to_bytes(4, "little") + b"\x2a" + len(block_id).to_bytes(4, "little") + desc
        out += b"\x70\x00\x00\x00" + (len(body) + len(data)).to_bytes(4, "little") + body + data
    path.write_bytes(bytes(out))
    return path


def write_position_folder(folder: Path, n_positions: int = 2) -> Path:
    """Plain TIFFs ``pos{p}_ph{pinhole}um.tif`` for several fields of view, files in shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    for pos in range(n_positions):
        series = hazy_steps(seed=3 * pos)
        for i in [2, 0, 3, 1]:
            tifffile.imwrite(folder / f"pos{pos}_ph{PINHOLES_UM[i]:g}um.tif", series[i])
    return folder
