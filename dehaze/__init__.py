"""dehaze: widefield-microscopy dehazing on haze ladders stored as OME-Zarr.

The core package: the ladder store (the only code that reads or writes stores), manifests and
configuration, metrics, reports and the CLI. Simulation, acquisition and training live in sibling
packages that import from here, never the other way round (except in :mod:`dehaze.cli`).
"""

__version__ = "0.1.0"
