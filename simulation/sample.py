"""Ground-truth line structures: microsim's ``MatsLines`` rendered in a seeded 3-D volume."""

from __future__ import annotations

import threading

import numpy as np
import xarray as xr
from microsim.schema.backend import NumpyAPI
from microsim.schema.sample import MatsLines
from scipy import ndimage

from dehaze.manifests import SimulationManifest

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

# MatsLines draws from numpy's global RNG: seeding and drawing must not interleave across threads.
_GLOBAL_RNG_LOCK = threading.Lock()


def field_seed(seed: int, field_index: int, *more: int) -> np.random.SeedSequence:
    """Independent, reproducible seed for a field (and optionally a step) of a ladder."""
    return np.random.SeedSequence([seed, field_index, *more])


def render_truth(manifest: SimulationManifest, field_index: int) -> np.ndarray:
    """(nz, ny, nx) float32 fluorophore density of one field, identical for the same manifest and index."""
    s = manifest.sample
    ny, nx = manifest.volume.field_shape_yx
    lines = MatsLines(density=s.density, length=s.length, azimuth=s.azimuth, max_r=s.extent)
    space = xr.DataArray(np.zeros((manifest.volume.nz, ny, nx), dtype=np.float32), dims=("z", "y", "x"))
    global_seed = int(field_seed(manifest.seed, field_index).generate_state(1)[0])
    with _GLOBAL_RNG_LOCK:
        backend = NumpyAPI()
        backend.set_random_seed(global_seed)
        rendered = lines.render(space, xp=backend)
    truth = np.asarray(rendered, dtype=np.float32) * np.float32(s.fluorophores_per_voxel)
    if s.thickness_px > 1.0:
        # Broaden the 1-voxel lines to the requested FWHM; Gaussian filtering keeps the fluorophore count.
        truth = ndimage.gaussian_filter(truth, sigma=s.thickness_px / FWHM_PER_SIGMA, mode="constant")
    return truth
