"""Manifests: what a ladder store is made from.

A simulation manifest fully determines a simulated ladder: the same manifest and seed give byte-identical
stores. Units are in the names (``_um``, ``_nm``, ``_au``, ``_e``, ``_ms``); every model is strict, so a
misspelt key is an error that names it. The embedded default is the ``SimulationManifest()`` defaults;
``data_manifests/`` holds the same default as YAML plus ``paper-like.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from dehaze.config import StrictModel, build_model, read_yaml
from dehaze.errors import UserError

PositiveFloat = Annotated[float, Field(gt=0)]


class LineSample(StrictModel):
    """Line structures drawn by microsim's ``MatsLines`` in the simulated volume."""

    kind: Literal["matslines"] = "matslines"
    density: float = Field(1.0, gt=0, le=100, description="lines per pixel of field width (microsim: n_lines = nx * density)")
    length: int = Field(10, ge=1, description="MatsLines length factor: lines are nx/20 + length*ny/20*U(0,1) px long")
    azimuth: int = Field(10, ge=1, description="MatsLines azimuth: lines tilt out of the xy-plane by at most pi/azimuth")
    extent: float = Field(0.9, gt=0, le=1.5, description="lines are drawn inside this fraction of the volume's half-size (MatsLines max_r)")
    thickness_px: float = Field(1.0, ge=1.0, description="line diameter (FWHM) in voxels; MatsLines draws 1-voxel lines, wider ones are Gaussian-broadened")
    fluorophores_per_voxel: PositiveFloat = Field(1.0, description="scale of the rendered density (only ratios matter)")


class Optics(StrictModel):
    """Objective and wavelengths. Both excitation and emission PSFs are computed (a microsim pitfall)."""

    na: PositiveFloat = Field(1.4, description="numerical aperture")
    immersion_ri: PositiveFloat = Field(1.515, description="immersion medium refractive index")
    specimen_ri: PositiveFloat = Field(1.515, description="specimen refractive index (equal to immersion: no depth aberration)")
    ex_wavelength_nm: PositiveFloat = 488.0
    em_wavelength_nm: PositiveFloat = 525.0
    pixel_size_um: PositiveFloat = Field(0.05, description="lateral voxel and pixel size")
    z_step_um: PositiveFloat = Field(0.2, description="axial voxel size")
    psf_normalization: Literal["physical", "sum"] = Field(
        "physical",
        description=(
            "physical: the excitation and emission PSFs each carry a constant power per plane (their in-focus "
            "planes sum to 1) and the pinhole is a transmission mask over the emission PSF, so a wider pinhole "
            "passes more light and widefield passes all of it; sum: microsim's make_confocal_psf(normalize='sum'), "
            "every step's PSF sums to 1 (a constant photon budget: hazy steps get dimmer; for agreement with "
            "microsim and stores made before the photon budget)"
        ),
    )

    @model_validator(mode="after")
    def _na_below_immersion(self) -> Optics:
        if self.na >= self.immersion_ri:
            raise ValueError(
                f"na={self.na} must be below immersion_ri={self.immersion_ri} (no objective collects beyond the medium's index)"
            )
        if self.em_wavelength_nm < self.ex_wavelength_nm:
            raise ValueError("em_wavelength_nm must not be shorter than ex_wavelength_nm (Stokes shift)")
        return self

    @property
    def airy_diameter_um(self) -> float:
        """1 Airy unit: the diameter of the emission Airy disk, 1.22 * lambda_em / NA, in µm."""
        return 1.22 * self.em_wavelength_nm * 1e-3 / self.na


MAX_VOLUME_VOXELS = 2**30  # per simulated field: 4 GiB as float32 (the simulation holds a few such arrays)


class Volume(StrictModel):
    """The simulated 3-D volume. Haze comes only from fluorophores inside it, so it must be thick."""

    field_shape_yx: tuple[int, int] = Field((128, 128), description="lateral size of one field in pixels")
    nz: int = Field(24, ge=3, description="planes simulated (MatsLines needs nz >= 3; haze needs many)")
    keep_planes: list[int] | None = Field(None, description="planes stored (0-based); default: the central plane")

    @field_validator("field_shape_yx")
    @classmethod
    def _positive_field(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 16:
            raise ValueError(f"field_shape_yx={list(v)} is too small: each side needs at least 16 pixels")
        return v

    @model_validator(mode="after")
    def _planes_inside(self) -> Volume:
        voxels = self.field_shape_yx[0] * self.field_shape_yx[1] * self.nz
        if voxels > MAX_VOLUME_VOXELS:
            raise ValueError(f"field_shape_yx={list(self.field_shape_yx)} x nz={self.nz} is {voxels:.3g} voxels "
                             f"({voxels * 4 / 2**30:.3g} GiB per float32 volume), more than the {MAX_VOLUME_VOXELS:.3g} "
                             "a field may simulate; simulate smaller fields or fewer planes")
        planes = self.kept_planes
        if not planes:
            raise ValueError("keep_planes is empty: keep at least one plane")
        bad = [p for p in planes if not 0 <= p < self.nz]
        if bad:
            raise ValueError(f"keep_planes {bad} outside 0..{self.nz - 1}")
        if len(set(planes)) != len(planes) or planes != sorted(planes):
            raise ValueError(f"keep_planes {planes} must be strictly increasing")
        return self

    @property
    def kept_planes(self) -> list[int]:
        return list(self.keep_planes) if self.keep_planes is not None else [self.nz // 2]


class PinholeSweep(StrictModel):
    """Pinhole diameters in Airy units, cleanest (smallest) first; optionally a widefield last step."""

    steps_au: list[PositiveFloat] = Field([0.5, 1.0, 2.0, 4.0], description="confocal pinhole diameters, strictly increasing")
    widefield_last: bool = Field(True, description="append a widefield step (pinhole fully open) as the haziest step")

    @field_validator("steps_au")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("steps_au is empty: give at least one pinhole diameter")
        for a, b in zip(v, v[1:]):
            if b <= a:
                raise ValueError(f"steps_au must be strictly increasing (step 0 cleanest): {a} is followed by {b}")
        return v

    @property
    def n_steps(self) -> int:
        return len(self.steps_au) + int(self.widefield_last)

    @property
    def pinhole_au(self) -> list[float | None]:
        """Per-step pinhole diameter in AU; ``None`` marks the widefield step."""
        return [*self.steps_au, *([None] if self.widefield_last else [])]


class Camera(StrictModel):
    """Camera and exposure (microsim's camera model; defaults from the original study)."""

    kind: Literal["CCD", "CMOS"] = "CCD"
    qe: float = Field(0.82, gt=0, le=1)
    read_noise_e: float = Field(6.0, ge=0)
    offset_adu: int = Field(100, ge=0)
    gain: PositiveFloat = 1.0
    bit_depth: int = Field(12, ge=8, le=16)
    full_well_e: int = Field(18_000, gt=0)
    dark_current_e_per_s: float = Field(0.001, ge=0)
    exposure_ms: PositiveFloat = 1000.0
    peak_photons_per_s: PositiveFloat = Field(
        800.0,
        description="photon flux at the brightest pixels (99.9th percentile) of the reference pinhole (peak_reference), set per field",
    )
    peak_reference: PositiveFloat | Literal["widefield", "cleanest"] = Field(
        1.0,
        description=(
            "where peak_photons_per_s holds: a pinhole diameter in AU (simulated for the scale alone if it is not "
            "one of the steps), 'widefield', or 'cleanest' (step 0, what stores made before the photon budget used); "
            "the other steps are as much brighter or dimmer as the optics make them"
        ),
    )


class SimulationManifest(StrictModel):
    """Everything that determines a simulated haze ladder."""

    kind: Literal["simulation"] = "simulation"
    name: str = "default"
    sample: LineSample = Field(default_factory=LineSample)
    optics: Optics = Field(default_factory=Optics)
    volume: Volume = Field(default_factory=Volume)
    pinhole: PinholeSweep = Field(default_factory=PinholeSweep)
    camera: Camera = Field(default_factory=Camera)
    n_fields: int = Field(8, ge=1, le=100_000)
    seed: int = Field(0, ge=0, lt=2**32)

    def sha256(self) -> str:
        """Identity of the manifest: stores made from another manifest are refused unless overwritten."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


BUILTIN_MANIFESTS = ("default", "paper-like")


def load_simulation_manifest(source: str | Path | None, overrides: list[str] | None = None) -> SimulationManifest:
    """Load a simulation manifest from a YAML path or a built-in name (``default``, ``paper-like``).

    ``None`` means the embedded default. ``overrides`` are ``dotted.key=value`` strings.
    """
    overrides = overrides or []
    if source is None:
        return build_model(SimulationManifest, {}, overrides, "default manifest")
    if str(source) in BUILTIN_MANIFESTS and not Path(source).exists():
        text = resources.files("data_manifests").joinpath(f"{source}.yaml")
        with resources.as_file(text) as path:
            return build_model(SimulationManifest, read_yaml(path), overrides, f"{source} manifest")
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path}: no such manifest (give a YAML file or one of: {', '.join(BUILTIN_MANIFESTS)})")
    return build_model(SimulationManifest, read_yaml(path), overrides, str(path))
