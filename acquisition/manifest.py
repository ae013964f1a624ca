"""The acquisition manifest: what the files do not say about a pinhole series.

An OME-TIFF (or LIF) series that carries its pinhole sizes needs no manifest. Plain and ImageJ TIFFs have
no pinhole field, so the manifest gives the values: a list in source order (files in natural name order,
then along the step axis) or a regex that parses them from file names. Units are in the names; values the
file metadata lacks (pixel size, wavelength, NA) can be filled in here. Everything is strict: a misspelt key
is an error naming it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from dehaze.config import StrictModel, build_model, read_yaml

PositiveFloat = Annotated[float, Field(gt=0)]
PinholeUnit = Literal["um", "µm", "nm", "mm", "m", "au"]


class Registration(StrictModel):
    """Alignment of every step to the cleanest one (windowed, band-passed phase correlation)."""

    enabled: bool = True
    reference_step: int = Field(0, ge=0, description="step the others are aligned to (0: the cleanest)")
    window_px: int = Field(256, ge=16, description="side of the central square used to estimate shifts (speed)")
    upsample: int = Field(50, ge=1, le=1000, description="sub-pixel precision of the peak: 1/upsample px")
    band_px: tuple[PositiveFloat, PositiveFloat] = Field(
        (2.0, 20.0), description="band-pass in px: structure between these sizes is matched (noise below, haze above)"
    )
    whitening: float = Field(
        0.5, ge=0, le=1, description="spectrum whitening: 1 phase correlation, 0 plain cross-correlation (in between: more weight to strong frequencies, robust to noise)"
    )
    max_shift_px: PositiveFloat | None = Field(None, description="shifts larger than this are refused (default: 1/4 of the window)")
    min_confidence: PositiveFloat = Field(6.0, description="peak-to-sidelobe ratio below which a pairwise match is not used")
    warn_residual_px: PositiveFloat = Field(0.3, description="loop-closure residual (RMS) above which a warning is printed")
    resample: Literal["subpixel", "integer"] = Field(
        "subpixel", description="subpixel: cubic-spline shift, rounded back to the raw dtype; integer: whole-pixel shifts, raw values bit-exact"
    )

    @field_validator("band_px")
    @classmethod
    def _band_order(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"band_px {list(v)}: the first (smallest structure) must be below the second (largest)")
        return v


class AcquisitionManifest(StrictModel):
    """How to read a microscope pinhole series into a ladder store."""

    kind: Literal["acquisition"] = "acquisition"
    name: str = "acquisition"
    files: str = Field("*", description="glob of the files to read inside a SOURCE folder (TIFF, OME-TIFF, LIF)")
    # --- pinhole values (override file metadata when given) ---
    pinhole_um: list[PositiveFloat] | None = Field(None, description="pinhole diameter per step in source order, µm")
    pinhole_au: list[PositiveFloat] | None = Field(None, description="pinhole diameter per step in source order, Airy units")
    pinhole_pattern: str | None = Field(
        None, description="regex whose group 'pinhole' (or first group) parses the value from each file name"
    )
    pinhole_unit: PinholeUnit = Field("um", description="unit of values parsed by pinhole_pattern")
    position_pattern: str | None = Field(
        None, description="regex whose group 'position' (or first group) names the field of view in file/series names"
    )
    step_axis: Literal["auto", "file", "channel", "time", "z"] = Field(
        "auto", description="where the steps are: one per file/series, or along an axis of each file (auto: channels with distinct "
        "pinholes, never channels of different dyes or transmitted light; set it to take such steps anyway, with a warning)"
    )
    image: int | str | list[int | str] | None = Field(
        None, description="take only this image (series) of each file, by index from 0 or by name, or a list of them: e.g. one "
        "image of a Leica project (.lif) whose steps lie along time or z; default: every image, each one step (a LIF project "
        "with one image per pinhole)"
    )
    channel: int | None = Field(None, ge=0, description="channel to use when the steps are not along channels (one dye of several)")
    channel_em_nm: PositiveFloat | None = Field(
        None, description="steps along channels with several dyes: keep the channels of this emission wavelength (nm)"
    )
    # --- calibration and optics (override the files' values when given: a warning says where they differ) ---
    magnification_at_pinhole: PositiveFloat | None = Field(None, description="total magnification sample -> pinhole plane")
    um_per_au: PositiveFloat | None = Field(None, description="size of 1 Airy unit at the pinhole plane, µm")
    em_wavelength_nm: PositiveFloat | None = None
    na: PositiveFloat | None = None
    pixel_size_um: PositiveFloat | None = Field(None, description="lateral pixel size, µm (needed when the files lack it; wins over theirs)")
    z_step_um: PositiveFloat | None = Field(None, description="z step, µm (needed when the files lack it; wins over theirs)")
    offset_adu: float = Field(0.0, ge=0, description="camera/detector offset subtracted by loaders before normalising")
    registration: Registration = Field(default_factory=Registration)

    @model_validator(mode="after")
    def _one_source_of_values(self) -> AcquisitionManifest:
        given = [k for k in ("pinhole_um", "pinhole_au", "pinhole_pattern") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of pinhole_um, pinhole_au, pinhole_pattern (got {', '.join(given)})")
        for key in ("pinhole_pattern", "position_pattern"):
            pattern = getattr(self, key)
            if pattern is None:
                continue
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{key} {pattern!r} is not a valid regex ({exc})") from None
            if compiled.groups < 1:
                raise ValueError(f"{key} {pattern!r} needs a group, e.g. (?P<{key.split('_')[0]}>...)")
        if self.magnification_at_pinhole is not None and self.um_per_au is not None:
            raise ValueError("give magnification_at_pinhole or um_per_au, not both")
        return self

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def load_acquisition_manifest(path: str | Path | None, overrides: list[str] | None = None) -> AcquisitionManifest:
    """The manifest at ``path`` (None: defaults, enough for OME-TIFF/LIF with pinhole sizes) with ``--set`` overrides."""
    overrides = overrides or []
    if path is None:
        return build_model(AcquisitionManifest, {}, overrides, "acquisition manifest")
    return build_model(AcquisitionManifest, read_yaml(Path(path)), overrides, str(path))
