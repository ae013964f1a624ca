"""Issue #14 item 3: no output path destroys what the user has. Each case is refused in one line before
anything is written; --overwrite replaces only a store of the same kind that dehaze made."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dehaze.store import check_ladder
from tests.test_damaged_stores import one_line_error
from tests.test_evaluate import make_prediction


def tree(path: Path) -> list[tuple[str, int]]:
    """Every file under ``path`` with its size: what must stay as it was."""
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())


def test_predict_onto_its_own_input_is_refused_and_the_input_kept(cli, good, run, tmp_path):
    ladder = tmp_path / "ladder.zarr"
    shutil.copytree(good, ladder)
    before = tree(ladder)
    for extra in ((), ("--overwrite",)):
        one_line_error(cli("predict", run, "--input", ladder, "-o", ladder, "-q", *extra), "is the input store")
    assert tree(ladder) == before and check_ladder(ladder) == []
    folder = tmp_path / "d"  # --strategy all: the input is where one of the stores would go
    folder.mkdir()
    named = folder / "one-shot-unet.zarr"
    shutil.copytree(good, named)
    one_line_error(cli("predict", run, "--input", named, "-o", folder, "--strategy", "all", "-q", "--overwrite"),
                   "is the input store")
    assert tree(named) == tree(good)


def test_overwrite_replaces_only_a_store_of_the_same_kind(cli, good, run, tmp_path):
    other = tmp_path / "other.zarr"  # a simulation store that is not the input
    shutil.copytree(good, other)
    before = tree(other)
    one_line_error(cli("predict", run, "--input", good, "-o", other, "-q", "--overwrite"), "holds a simulation store")
    assert tree(other) == before
    pred = tmp_path / "pred.zarr"  # a prediction store with a file of the user's in it
    assert cli("predict", run, "--input", good, "-o", pred, "-q").exit_code == 0
    (pred / "notes.txt").write_text("mine")
    one_line_error(cli("predict", run, "--input", good, "-o", pred, "-q", "--overwrite", "--margin", "8"),
                   "notes.txt", "move them out first")
    assert (pred / "notes.txt").read_text() == "mine"
    (pred / "notes.txt").unlink()
    assert cli("predict", run, "--input", good, "-o", pred, "-q", "--overwrite", "--margin", "8").exit_code == 0


def test_outputs_inside_an_existing_store_are_refused(cli, good, run, tiny_manifest_path, tmp_path):
    store = tmp_path / "store.zarr"
    shutil.copytree(good, store)
    before = tree(store)
    one_line_error(cli("simulate", tiny_manifest_path, "-o", store / "nested.zarr", "-q"), "is inside the Zarr store")
    one_line_error(cli("simulate", tiny_manifest_path, "-o", store / "field_000" / "x.zarr", "-q"), "is inside the Zarr store")
    one_line_error(cli("train", "unet", "--data", good, "-o", store / "run", "-q", "--set", "steps=2", "--set", "patch_size=16",
                       "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2"), "is inside the Zarr store")
    one_line_error(cli("predict", run, "--input", good, "-o", store / "p.zarr", "-q"), "is inside the Zarr store")
    one_line_error(cli("predict", run, "--input", good, "-o", store, "--strategy", "all", "-q"), "is the Zarr store")
    one_line_error(cli("study", "-o", store / "study", "-q"), "is inside the Zarr store")
    assert tree(store) == before


def test_evaluate_report_into_a_store_is_refused(cli, good, tmp_path):
    pred = make_prediction(tmp_path / "pred.zarr", good, "copy", lambda x0, xt: xt)
    before = tree(pred)
    one_line_error(cli("evaluate", pred, "--truth", good, "--report", pred), "is the Zarr store")
    one_line_error(cli("evaluate", pred, "--truth", good, "--report", pred / "report"), "is inside the Zarr store")
    assert tree(pred) == before
    (tmp_path / "file").write_text("x")
    one_line_error(cli("evaluate", pred, "--truth", good, "--report", tmp_path / "file"), "is a file")


def test_overwrite_through_a_symlink_or_onto_a_fake_store_is_refused(cli, good, tiny_manifest_path, tmp_path):
    real = tmp_path / "real.zarr"
    shutil.copytree(good, real)
    before = tree(real)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    one_line_error(cli("simulate", tiny_manifest_path, "-o", link, "-q", "--overwrite"), "symbolic link", "real path")
    assert link.is_symlink() and tree(real) == before
    dangling = tmp_path / "dangling.zarr"
    dangling.symlink_to(tmp_path / "nowhere")
    one_line_error(cli("simulate", tiny_manifest_path, "-o", dangling, "-q"), "dangling symbolic link")
    assert not (tmp_path / "nowhere").exists()
    for i, attrs in enumerate(({"dehaze": {}}, {"dehaze": "x"}, ["dehaze"], "not json {")):
        fake = tmp_path / f"fake{i}"
        fake.mkdir()
        (fake / ".zattrs").write_text(attrs if isinstance(attrs, str) else json.dumps(attrs))
        (fake / "data.txt").write_text("mine")
        result = cli("simulate", tiny_manifest_path, "-o", fake, "-q", "--overwrite")
        one_line_error(result, str(fake))
        assert (fake / "data.txt").read_text() == "mine"


def test_outputs_that_are_existing_files_are_refused(cli, good, run, tmp_path):
    file = tmp_path / "file"
    file.write_text("mine")
    one_line_error(cli("train", "unet", "--data", good, "-o", file, "-q", "--set", "steps=2", "--set", "patch_size=16",
                       "--set", "device=cpu", "--set", "model.base_channels=4", "--set", "model.depth=2"), "is a file")
    one_line_error(cli("predict", run, "--input", good, "-o", file, "--strategy", "all", "-q"), "is a file")
    one_line_error(cli("predict", run, "--input", good, "-o", file, "-q"), "is a file")
    one_line_error(cli("study", "-o", file, "-q"), "is a file")
    assert file.read_text() == "mine"
    assert os.listdir(tmp_path) == ["file"]


def test_ingest_refuses_outputs_inside_a_store_and_other_kinds(good, tmp_path):
    from acq_data import write_position_folder

    from acquisition import ingest as ingest_mod
    from acquisition.manifest import AcquisitionManifest
    from dehaze.errors import UserError

    folder = write_position_folder(tmp_path / "tiffs", n_positions=1)
    manifest = AcquisitionManifest(pinhole_pattern=r"ph([\d.]+)um", position_pattern=r"pos(\d+)", pixel_size_um=0.08)
    store = tmp_path / "sim.zarr"
    shutil.copytree(good, store)
    before = tree(store)
    with pytest.raises(UserError, match="is inside the Zarr store"):
        ingest_mod.ingest(folder, store / "acq.zarr", manifest, show_progress=False)
    with pytest.raises(UserError, match="holds a simulation store"):
        ingest_mod.ingest(folder, store, manifest, overwrite=True, show_progress=False)
    assert tree(store) == before
    out = tmp_path / "acq.zarr"
    ingest_mod.ingest(folder, out, manifest, show_progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="move them out first"):
        ingest_mod.ingest(folder, out, manifest, overwrite=True, show_progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def _meta(sha: str, source: str = "acquisition"):
    from dehaze.store import DatasetMeta

    return DatasetMeta(source=source, manifest={}, manifest_sha256=sha, n_steps=2, pinhole_au=[1.0, 2.0],
                       spatial_axes=["y", "x"], pixel_size_um={"y": 0.1, "x": 0.1}, fields=["field_000"])


def test_plan_output_decides_before_anything_is_written_or_removed(tmp_path):
    """The lifecycle in two steps (what ingest needs: decide, then read and register, then create): the plan
    names the state, and the old store stays until open()."""
    from dehaze.errors import UserError
    from dehaze.store import create_ladder, open_ladder, plan_output

    path = tmp_path / "s.zarr"
    assert plan_output(path, _meta("a")).state == "new" and not path.exists()
    create_ladder(path, _meta("a"))
    with pytest.raises(UserError, match="made from other files or another manifest; pass --overwrite"):
        plan_output(path, _meta("b"), made_from="other files or another manifest")
    plan = plan_output(path, _meta("b"), overwrite=True)
    assert (plan.state, plan.replaces) == ("new", True) and open_ladder(path, require_complete=False).meta.manifest_sha256 == "a"
    assert plan.open().meta.manifest_sha256 == "b" and open_ladder(path, require_complete=False).meta.manifest_sha256 == "b"
    assert plan_output(path, _meta("b")).state == "resumed"
    # a store of the same identity that its writer cannot resume is rebuilt without --overwrite
    rebuilt = plan_output(path, _meta("b"), resumable=lambda store: False)
    assert (rebuilt.state, rebuilt.replaces) == ("new", True)


def test_writing_output_discards_only_a_store_it_created_and_keeps_it_on_ctrl_c(tmp_path):
    from dehaze.store import create_ladder, writing_output

    path = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError), writing_output(path, _meta("a"), discard_on_error=True) as plan:
        plan.open()
        raise RuntimeError("failed while writing")
    assert not path.exists()
    with pytest.raises(KeyboardInterrupt), writing_output(path, _meta("a"), discard_on_error=True) as plan:
        plan.open()
        raise KeyboardInterrupt
    assert path.exists()  # Ctrl-C: kept for the rerun
    shutil.rmtree(path)
    create_ladder(path, _meta("a"))
    with pytest.raises(RuntimeError), writing_output(path, _meta("b"), overwrite=True, discard_on_error=True) as plan:
        raise RuntimeError("failed before open: the old store is still the user's")
    assert json.loads((path / ".zattrs").read_text())["dehaze"]["manifest_sha256"] == "a"
    with pytest.raises(RuntimeError), writing_output(path, _meta("a"), discard_on_error=True) as plan:  # resumed: kept
        assert plan.state == "resumed" and plan.open() is plan.existing
        raise RuntimeError
    assert path.exists()
