"""The dehaze metadata schemas of a ladder store: the root's ``dehaze`` key and each field group's."""

from __future__ import annotations

from typing import Any, Literal

from dehaze import __version__
from dehaze.config import StrictModel

FORMAT_VERSION = 1


class StepStats(StrictModel):
    """Intensity statistics of one step over all fields (camera values, ADU)."""

    mean: float
    std: float
    min: float
    max: float
    p01: float
    p999: float
    haze_index: float | None = None  # background / peak of the noise-free image (0 crisp ... 1 flat)


class PredictionInfo(StrictModel):
    """What made a prediction store: its image at step h is the estimate of x_0 from input step h."""

    method: str  # e.g. "unet", "pixel-indi", "hdn", "latent-direct"
    run_dirs: list[str]
    input_store: str
    input_sha256: str  # manifest identity of the input store (fields and steps line up with it)
    strategy: dict[str, Any] = {}


class DatasetMeta(StrictModel):
    """Dataset-level metadata under the root's ``dehaze`` key."""

    format_version: int = FORMAT_VERSION
    dehaze_version: str = __version__
    source: Literal["simulation", "acquisition", "prediction"]
    manifest: dict[str, Any]
    manifest_sha256: str
    status: Literal["incomplete", "complete"] = "incomplete"
    n_steps: int
    pinhole_au: list[float | None]  # None: unknown in AU, or the widefield step (see widefield_steps)
    pinhole_um: list[float] | None = None
    pinhole_units_source: str = ""  # where the AU/µm values came from (manifest, OME-XML, calibration...)
    widefield_steps: list[int] = []
    spatial_axes: list[str]  # ["y", "x"] or ["z", "y", "x"]
    pixel_size_um: dict[str, float]  # per spatial axis
    fields: list[str]
    step_stats: list[StepStats] | None = None
    # The writer's intensity record: the camera offset_adu (evaluate subtracts an acquisition's for SSIM) and,
    # from ingest, per-step brightness and bleaching. Loaders normalise from step_stats, not from this.
    normalization: dict[str, Any] | None = None
    prediction: PredictionInfo | None = None  # only for source == "prediction"
    photometry: dict[str, Any] | None = None  # simulation: PSF normalisation and brightness reference (None: older store)

    @property
    def axes(self) -> list[str]:
        return ["h", *self.spatial_axes]


class FieldMeta(StrictModel):
    """Per-field metadata under the image group's ``dehaze`` key."""

    complete: bool = False
    extras: list[str] = []
    info: dict[str, Any] = {}
