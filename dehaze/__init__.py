"""dehaze: widefield-microscopy dehazing on haze ladders stored as OME-Zarr.

The core package: the ladder store (the only code that reads or writes stores), manifests and
configuration, strategies, the engine, prediction, metrics, reports and the CLI. Simulation, acquisition
and training live in sibling packages that import from here. The core reads one module of training, its
leaf :mod:`training.config` (the model kinds and training configs, pydantic only); it runs training only
from :mod:`dehaze.cli` and :mod:`dehaze.study`.
"""

__version__ = "0.1.0"
