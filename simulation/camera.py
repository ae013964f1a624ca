"""Camera noise through microsim's camera model, with an independent random stream per step.

microsim draws noise from numpy's global RNG and reseeds it on every ``Simulation._xp`` access, so
repeated ``digital_image()`` calls repeat the same noise: the steps of a ladder would share noise. Here
microsim's own camera code (Poisson shot noise, dark current, full well, read noise, ADC gain, offset,
bit depth) draws from a ``numpy.random.Generator`` that we seed per (field, step).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from microsim.schema.backend import NumpyAPI
from microsim.schema.detectors import CameraCCD, CameraCMOS

from dehaze.manifests import Camera


class GeneratorBackend(NumpyAPI):
    """microsim's numpy backend drawing from one explicit ``Generator`` instead of the global RNG."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.rng = rng

    def poisson_rvs(self, lam, shape=None):  # noqa: ANN001 - microsim's signature
        return self.rng.poisson(np.asarray(lam, dtype=np.float64), size=shape)

    def norm_rvs(self, loc, scale=None):  # noqa: ANN001 - microsim's signature
        loc = np.asarray(loc, dtype=np.float64)
        return self.rng.normal(loc, 1.0 if scale is None else scale, size=loc.shape)


def microsim_camera(camera: Camera) -> CameraCCD | CameraCMOS:
    """The microsim camera model of a manifest's camera section (CCD or CMOS)."""
    cls = CameraCCD if camera.kind == "CCD" else CameraCMOS
    return cls(
        qe=camera.qe, read_noise=camera.read_noise_e, offset=camera.offset_adu, gain=camera.gain,
        bit_depth=camera.bit_depth, full_well=camera.full_well_e, dark_current=camera.dark_current_e_per_s,
    )


def expected_adu(photons_per_s: np.ndarray, camera: Camera) -> np.ndarray:
    """Noise-free camera value (float32, ADU) for incident photons/s: what the noisy image averages to.

    (QE x photons + dark electrons) x gain / ADC gain + offset; clipping at full well and bit depth is
    ignored here (it is a non-linearity of single noisy readouts).
    """
    adc_gain = camera.full_well_e / (2**camera.bit_depth - 1)
    exposure_s = camera.exposure_ms / 1000
    electrons = camera.qe * photons_per_s * exposure_s + camera.dark_current_e_per_s * exposure_s
    return (electrons * camera.gain / adc_gain + camera.offset_adu).astype(np.float32)


def camera_image(photons_per_s: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Noisy uint16 camera values for an image of incident photons/s (any shape).

    microsim's camera does not apply the QE (it expects it in the emission path), so it is applied here.
    """
    detected = xr.DataArray(np.asarray(photons_per_s, dtype=np.float64) * camera.qe)
    gray = microsim_camera(camera).simulate(detected, exposure_ms=camera.exposure_ms, xp=GeneratorBackend(rng))
    return np.asarray(gray).astype(np.uint16)
