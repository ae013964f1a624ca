"""Issue #15 item 7: every image group is valid OME-NGFF 0.4, strictly, checked by an independent validator
(ome-zarr-models), and carries the rendering settings viewers need (an ``omero`` block from the store's
per-step statistics). Simulation (2-D and 3-D), acquisition and prediction stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr
from acq_data import PINHOLES_UM, hazy_steps, write_ome_set

from dehaze.store import open_ladder

# The NGFF 0.4 strict image schema (strict_image.schema) adds to the image schema that every multiscale
# names itself, its version, its downscaling ``type`` and its ``metadata``; ome-zarr-models checks the rest.
STRICT_MULTISCALE_KEYS = ("version", "name", "type", "metadata", "axes", "datasets")


@pytest.fixture(scope="module")
def stores(good, run, tmp_path_factory) -> dict[str, Path]:
    from acquisition.ingest import ingest
    from acquisition.manifest import AcquisitionManifest
    from dehaze.manifests import SimulationManifest
    from dehaze.predict import predict
    from simulation.ladder import simulate_ladder
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("ngff")
    volume = SimulationManifest.model_validate({**TINY, "n_fields": 1, "volume": {"field_shape_yx": [16, 24], "nz": 6,
                                                                                  "keep_planes": [2, 3]}})
    simulate_ladder(volume, root / "volume.zarr", show_progress=False)
    write_ome_set(root / "tiffs", hazy_steps(shape=48), PINHOLES_UM)
    ingest(root / "tiffs", root / "acquired.zarr", AcquisitionManifest(), show_progress=False)
    predict([run], good, root / "predicted.zarr", show_progress=False)
    return {"simulation": good, "simulation 3-D": root / "volume.zarr", "acquisition": root / "acquired.zarr",
            "prediction": root / "predicted.zarr"}


KINDS = ["simulation", "simulation 3-D", "acquisition", "prediction"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_group_passes_strict_ngff_validation(stores, kind):
    from ome_zarr_models.v04 import Image

    store = open_ladder(stores[kind])
    for field in store.fields:
        group = zarr.open_group(str(stores[kind] / field), mode="r")
        image = Image.from_zarr(group)  # raises on any NGFF 0.4 violation
        (multiscale,) = image.attributes.multiscales
        assert [a.name for a in multiscale.axes] == store.meta.axes
        raw = group.attrs["multiscales"][0]
        assert [k for k in STRICT_MULTISCALE_KEYS if k not in raw] == [], f"{kind} {field}: not strict NGFF 0.4"
        assert raw["name"] == field and raw["type"] and isinstance(raw["metadata"], dict)
        assert image.attributes.omero is not None, f"{kind} {field}: no omero rendering settings"


@pytest.mark.parametrize("kind", KINDS)
def test_viewers_name_each_field_and_get_contrast_limits_from_the_step_statistics(stores, kind):
    """What ome-zarr-py's reader (napari-ome-zarr's engine) hands a viewer: the field's own name, and one
    contrast window that clips no step (lowest p0.1 .. highest p99.9 of the stored per-step statistics)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    store = open_ladder(stores[kind])
    stats = store.meta.step_stats
    for field in store.fields:
        node = next(iter(Reader(parse_url(str(stores[kind] / field)))()))
        assert node.metadata["name"] == field and node.metadata["channel_names"] == [field]
        ((start, end),) = node.metadata["contrast_limits"]
        assert start == min(s.p01 for s in stats) and end == max(s.p999 for s in stats) and start < end
        window = zarr.open_group(str(stores[kind] / field), mode="r").attrs["omero"]["channels"][0]["window"]
        assert window["min"] <= start < end <= window["max"]


def test_the_validator_refuses_what_ngff_forbids(stores, tmp_path):
    """The check bites: the same group with its space axes before h, or with two axes named y, fails."""
    import shutil

    from ome_zarr_models.v04 import Image
    from pydantic import ValidationError

    bad = tmp_path / "field"
    shutil.copytree(stores["simulation"] / "field_000", bad)
    group = zarr.open_group(str(bad), mode="r+")
    multiscales = group.attrs["multiscales"]
    h, y, x = multiscales[0]["axes"]
    for axes in ([y, x, h], [h, y, {**x, "name": "y"}]):
        group.attrs["multiscales"] = [{**multiscales[0], "axes": axes}]
        with pytest.raises(ValidationError):
            Image.from_zarr(zarr.open_group(str(bad), mode="r"))
