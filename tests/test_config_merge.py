"""One config merge for `train --config/--set`, `study` and `demo`: a section override keeps the section's
other defaults (the study used to replace HDN/HVAE's Adamax + plateau with Adam + cosine)."""

from __future__ import annotations

from pathlib import Path

import yaml

from dehaze.config import merge_sections
from dehaze.runs import read_run
from dehaze.study import study_train_configs
from dehaze.study_config import StudyConfig, quickstart


def test_merge_keeps_the_other_keys_of_every_section_at_every_depth():
    base = {"optim": {"name": "adamax", "lr": 3e-4, "scheduler": "plateau"}, "model": {"kind": "hdn", "preset": "small"}, "steps": 5}
    over = {"optim": {"lr": 1e-3}, "model": {"dropout": 0.0}, "steps": 7}
    assert merge_sections(base, over) == {"optim": {"name": "adamax", "lr": 1e-3, "scheduler": "plateau"},
                                          "model": {"kind": "hdn", "preset": "small", "dropout": 0.0}, "steps": 7}
    assert base["optim"]["lr"] == 3e-4  # inputs untouched


def test_study_and_demo_ladder_vaes_keep_adamax_and_plateau_unless_the_study_says_otherwise():
    for cfg in (quickstart(), StudyConfig(trainers={"hdn": {"optim": {"lr": 1e-3}}, "hvae": {"optim": {"lr": 1e-3}}})):
        cfgs = study_train_configs(cfg)
        for kind in ("hdn", "hvae"):
            assert cfgs[kind].optim.name == "adamax" and cfgs[kind].optim.scheduler == "plateau", kind
    said = study_train_configs(StudyConfig(trainers={"hdn": {"optim": {"name": "adam", "scheduler": "cosine"}}}))
    assert said["hdn"].optim.name == "adam" and said["hdn"].optim.scheduler == "cosine"


def test_train_config_file_and_study_section_resolve_to_the_same_config(cli, tmp_path: Path):
    """`dehaze train hdn --config` and a study section with the same partial config give one resolved config."""
    from tests.conftest import simulate_tiny_ladder

    part = {"steps": 2, "batch_size": 2, "patch_size": 16, "device": "cpu", "optim": {"lr": 1e-3},
            "model": {"kind": "hdn", "preset": "tiny"}, "log": {"val_every": 100, "ckpt_every": 100}}
    cfg_path = tmp_path / "hdn.yaml"
    cfg_path.write_text(yaml.safe_dump(part))
    ladder = simulate_tiny_ladder(tmp_path / "l.zarr", 2, [32, 32])
    result = cli("train", "hdn", "--data", str(ladder), "-o", str(tmp_path / "run"), "--config", str(cfg_path), "-q")
    assert result.exit_code == 0, result.output
    trained = read_run(tmp_path / "run").config
    from_study = study_train_configs(StudyConfig(trainers={"hdn": part}, device="cpu"))["hdn"]
    assert trained == from_study
    assert trained.optim.name == "adamax"
