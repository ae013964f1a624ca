"""Ingestion interrupted and resumed; the memory budget for raw pixels (read twice beyond it)."""

from __future__ import annotations

import numpy as np
import pytest
from acq_data import write_position_folder
from typer.testing import CliRunner

from acquisition import ingest as ingest_mod
from acquisition.manifest import AcquisitionManifest
from dehaze.cli import app
from dehaze.store import LadderStore, open_ladder

runner = CliRunner()
MANIFEST = AcquisitionManifest(pinhole_pattern=r"ph([\d.]+)um", position_pattern=r"pos(\d+)", pixel_size_um=0.08)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_position_folder(tmp_path_factory.mktemp("resume") / "tiffs", n_positions=3)


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The store of one uninterrupted ingestion."""
    out = tmp_path_factory.mktemp("ref") / "ladder.zarr"
    ingest_mod.ingest(folder, out, MANIFEST, show_progress=False)
    return open_ladder(out)


def _assert_same(store, reference):
    assert store.meta.step_stats == reference.meta.step_stats
    assert store.meta.normalization == reference.meta.normalization
    for f in reference.fields:
        assert np.array_equal(store.image(f)[...], reference.image(f)[...])
        assert np.array_equal(store.extra(f, "shifts")[...], reference.extra(f, "shifts")[...])
        assert store.field_meta(f).info == reference.field_meta(f).info


def _interrupt_at(monkeypatch, field: str):
    real = LadderStore.write_field

    def write_field(self, name, *args, **kwargs):
        if name == field:
            raise KeyboardInterrupt
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(LadderStore, "write_field", write_field)


def test_ctrl_c_keeps_finished_fields_and_the_same_command_resumes(folder, reference, tmp_path, monkeypatch):
    out = tmp_path / "ladder.zarr"
    _interrupt_at(monkeypatch, "field_002")
    res = runner.invoke(app, ["ingest", str(folder), "-o", str(out), "--set", r"pinhole_pattern=ph([\d.]+)um",
                              "--set", r"position_pattern=pos(\d+)", "--set", "pixel_size_um=0.08", "-q"])
    assert res.exit_code == 130 and "rerun the same command to resume" in res.output
    partial = open_ladder(out, require_complete=False)
    assert partial.meta.status == "incomplete" and partial.completed_fields() == {"field_000", "field_001"}
    monkeypatch.undo()

    # resuming reads no registration again: a registration failure now would show
    monkeypatch.setattr(ingest_mod, "register_steps", lambda *a, **k: pytest.fail("resumed run re-registered"))
    res = runner.invoke(app, ["ingest", str(folder), "-o", str(out), "--set", r"pinhole_pattern=ph([\d.]+)um",
                              "--set", r"position_pattern=pos(\d+)", "--set", "pixel_size_um=0.08", "-q"])
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output
    _assert_same(open_ladder(out), reference)


def test_interrupted_while_registering_leaves_no_store(folder, tmp_path, monkeypatch):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest_mod, "register_steps", stop)
    with pytest.raises(KeyboardInterrupt):
        ingest_mod.ingest(folder, tmp_path / "l.zarr", MANIFEST, show_progress=False)
    assert not (tmp_path / "l.zarr").exists()


def test_no_cache_reads_the_files_again_to_the_same_store(folder, reference, tmp_path, monkeypatch):
    reads = []
    real = ingest_mod._read_position
    monkeypatch.setattr(ingest_mod, "_read_position", lambda pos, axes: reads.append(pos.key) or real(pos, axes))
    ingest_mod.ingest(folder, tmp_path / "l.zarr", MANIFEST, show_progress=False, cache_mb=0)
    assert sorted(reads) == ["0", "0", "1", "1", "2", "2"]  # each field read for registration, then for writing
    _assert_same(open_ladder(tmp_path / "l.zarr"), reference)
    reads.clear()
    ingest_mod.ingest(folder, tmp_path / "cached.zarr", MANIFEST, show_progress=False)
    assert sorted(reads) == ["0", "1", "2"]  # the default budget keeps these small fields in memory


def test_write_failure_in_a_resumed_run_keeps_the_store(folder, tmp_path, monkeypatch):
    out = tmp_path / "l.zarr"
    _interrupt_at(monkeypatch, "field_001")
    with pytest.raises(KeyboardInterrupt):
        ingest_mod.ingest(folder, out, MANIFEST, show_progress=False)
    monkeypatch.undo()
    before = open_ladder(out, require_complete=False).completed_fields()
    assert "field_000" in before and "field_001" not in before  # field_002 may have run beside field_001

    def disk_full(self, name, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(LadderStore, "write_field", disk_full)
    with pytest.raises(OSError):
        ingest_mod.ingest(folder, out, MANIFEST, show_progress=False)
    assert open_ladder(out, require_complete=False).completed_fields() == before
