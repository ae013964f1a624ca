"""Every trainer kind is declared once (its model config) and reachable from `train`, `study` and `predict`;
the prediction options are declared once (PredictConfig) and the CLI's options are generated from it."""

from __future__ import annotations

import re

import pytest
import yaml
from torch import nn

from dehaze.predict import DEFAULT_STRATEGY
from dehaze.predict_config import PredictConfig
from dehaze.strategies import STRATEGIES, ModelBundle
from dehaze.study import study_train_configs
from dehaze.study_config import TRAIN_ORDER, StudyConfig
from training.config import MODEL_KINDS, TRAINER_KINDS, load_train_config, training_order
from training.tasks import TASKS


def _with_bases(kind: str) -> list[str]:
    chain = [kind]
    while MODEL_KINDS[chain[-1]].base:
        chain.append(MODEL_KINDS[chain[-1]].base)
    return chain


@pytest.mark.parametrize("kind", TRAINER_KINDS)
def test_every_kind_is_reachable_from_train_study_and_predict(cli, kind):
    help_text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", cli("train", "--help").stdout))
    assert f"{kind}: {MODEL_KINDS[kind].summary}" in help_text  # train: listed in its help ...
    cfg, _ = load_train_config(kind, None, [])  # ... and its defaults validate
    assert cfg.model.kind == kind and kind in TASKS
    # study: a section of its own, trained after the runs it builds on
    study = StudyConfig(trainers={k: {} for k in _with_bases(kind)}, device="cpu")
    assert list(study_train_configs(study)) == [k for k in TRAIN_ORDER if k in _with_bases(kind)]
    # predict: a strategy uses its networks (its own default, or one of a kind that builds on it)
    users = [name for name, spec in STRATEGIES.items() if kind in spec.needs]
    assert users, f"no strategy uses a {kind} run"
    if kind in DEFAULT_STRATEGY:
        assert kind in STRATEGIES[DEFAULT_STRATEGY[kind]].needs
    assert getattr(ModelBundle(**{kind: nn.Identity()}), kind) is not None


def test_training_order_puts_bases_first():
    order = training_order()
    assert sorted(order) == sorted(TRAINER_KINDS)
    for kind in order:
        base = MODEL_KINDS[kind].base
        assert base is None or order.index(base) < order.index(kind)
    assert training_order(["degradation", "latent", "unet"]) == ["unet", "latent", "degradation"]


def test_kind_lists_refuse_unknown_kinds(cli, tmp_path):
    result = cli("train", "gan", "--data", tmp_path / "x.zarr", "-o", tmp_path / "run")
    assert result.exit_code == 2 and "unknown trainer 'gan'" in result.stderr and "degradation" in result.stderr
    with pytest.raises(TypeError, match="no trainer kind 'gan'"):
        ModelBundle(gan=nn.Identity())
    with pytest.raises(ValueError, match="trainers"):
        StudyConfig(trainers={"gan": {}})


def test_every_predict_option_comes_from_the_config(cli):
    import typer

    from dehaze.cli import app

    command = typer.main.get_command(app).commands["predict"]
    flags = {opt for param in command.params for opt in param.opts}
    for name in PredictConfig.model_fields:
        assert "--" + name.replace("_", "-") in flags, name
    assert cli("schema", "predict").exit_code == 0


def test_predict_config_file_and_options(cli, tmp_path, run, good):
    """--config gives the settings, an option overrides the file, --set overrides both; bad values are one line."""
    config = tmp_path / "predict.yaml"
    config.write_text(yaml.safe_dump({"tile": 32, "margin": 4, "batch_size": 2}))
    out = tmp_path / "pred.zarr"
    result = cli("predict", run, "--input", good, "-o", out, "--config", config, "--margin", "6", "--set", "batch_size=3", "-q")
    assert result.exit_code == 0, result.stderr
    from dehaze.store import open_ladder

    info = open_ladder(out).meta.prediction.strategy
    assert (info["tile"], info["margin"]) == (32, 6)
    config.write_text(yaml.safe_dump({"tile": 8}))
    result = cli("predict", run, "--input", good, "-o", tmp_path / "p2.zarr", "--config", config)
    assert result.exit_code == 2 and "tile" in result.stderr and not (tmp_path / "p2.zarr").exists()
    result = cli("predict", run, "--input", good, "-o", tmp_path / "p3.zarr", "--precision", "fp16")
    assert result.exit_code == 2 and "precision" in result.stderr


def test_study_predict_section():
    cfg = StudyConfig(device="cpu", predict={"samples": 3, "tile": 64})
    assert (cfg.predict.strategy, cfg.predict.device, cfg.predict.samples) == ("all", "cpu", 3)
    with pytest.raises(ValueError, match="predict.strategy"):
        StudyConfig(predict={"strategy": "one-shot-unet"})
    with pytest.raises(ValueError, match="predict.device"):
        StudyConfig(device="cpu", predict={"device": "cuda"})
