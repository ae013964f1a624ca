"""Issue #14 (silent wrong results): a study rerun after editing a trainer's section trains that run again
(and what builds on it) and predicts again; an unchanged rerun keeps everything."""

from __future__ import annotations

import yaml

from dehaze.runs import CHECKPOINT_FILE, read_run
from dehaze.store import open_ladder


def test_study_rerun_after_editing_a_trainer_section_retrains_and_predicts_again(cli, tmp_path):
    tiny = {"batch_size": 2, "patch_size": 16, "steps": 2, "data": {"val_patches": 2}}
    cfg = {"simulation": "default", "simulation_set": ["n_fields=2", "volume.field_shape_yx=[32, 32]", "volume.nz=6"],
           "trainers": {"unet": {**tiny, "model": {"base_channels": 4, "depth": 2}}}, "predict": {"tile": 32}, "device": "cpu"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert cli("study", path, "-o", out, "-q").exit_code == 0
    run, pred = out / "runs" / "unet", out / "predictions" / "one-shot-unet.zarr"
    first_ckpt, first_pred = (run / CHECKPOINT_FILE).stat().st_mtime_ns, open_ladder(pred).meta.manifest_sha256
    assert cli("study", path, "-o", out, "-q").exit_code == 0  # unchanged: nothing is redone
    assert (run / CHECKPOINT_FILE).stat().st_mtime_ns == first_ckpt and open_ladder(pred).meta.manifest_sha256 == first_pred

    cfg["trainers"]["unet"]["model"]["base_channels"] = 6  # same steps, another network
    path.write_text(yaml.safe_dump(cfg))
    result = cli("study", path, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "section changed" in result.stderr
    assert read_run(run).config.model.base_channels == 6
    assert open_ladder(pred).meta.manifest_sha256 != first_pred  # predicted again from the new checkpoint
