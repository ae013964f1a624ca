"""The whole study as one config: simulate a ladder, train every model, predict with every strategy,
evaluate. ``dehaze study [CONFIG] -o DIR`` runs it; ``dehaze demo`` runs the embedded quickstart.

Each trainer's section is a partial training config merged onto that trainer's defaults (same keys as
``dehaze schema train``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dehaze.config import StrictModel
from dehaze.predict_config import PredictConfig
from training.config import TrainerKind, training_order

TRAIN_ORDER = tuple(training_order())  # every kind, each after the run it builds on

_CPU_COMMON = {"batch_size": 8, "patch_size": 32, "seed": 0, "log": {"val_every": 100, "ckpt_every": 100, "log_every": 20}}


class StudyConfig(StrictModel):
    """A whole study (``dehaze schema study``): the ladder, every trainer's section, prediction and scoring."""

    simulation: str = Field("default", description="simulation manifest: built-in name or YAML path")
    simulation_set: list[str] = Field([], description="dotted.key=value overrides of the manifest")
    trainers: dict[TrainerKind, dict[str, Any]] = Field(
        default_factory=dict, description="per trainer: partial training config merged onto its defaults")
    test_fields: int = Field(0, ge=0, description="fields of a held-out test ladder (same manifest, seed + 1000) that "
                             "predictions and the report use; 0: the training ladder itself (its validation fields included)")
    jobs: int = Field(1, ge=1, description="trainers run side by side (independent ones first; torch threads split between them)")
    # Why a study may pin it: torch's CPU kernels sum in an order that depends on the thread count, so the
    # same seed trains other weights on another core count (the demo's HVAE: validation 27.95 dB with 1
    # thread, 27.24 dB with 2), and a shared count depends on which trainer happens to finish first
    threads_per_trainer: int | None = Field(None, ge=1, description="torch threads of every trainer (None: the cores shared "
                                            "among the trainers running at once); pinned, the study trains the same models "
                                            "on any core count")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="how every strategy predicts (the keys of "
                                   "`dehaze schema predict`; the study runs every strategy its runs allow, on the study's device)")
    target: Literal["camera", "noise_free"] = Field("noise_free", description="x_0 the report scores against")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the study trains and predicts")

    @model_validator(mode="before")
    @classmethod
    def _predict_on_the_study_device(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("predict", {}), dict):
            section = data.get("predict", {})
            if section.get("device", "auto") not in ("auto", data.get("device", "auto")):
                raise ValueError("predict.device: the study predicts on its own device; set the study's `device` instead")
            data = {**data, "predict": {**section, "device": data.get("device", "auto")}}
        return data

    @field_validator("predict")
    @classmethod
    def _every_strategy(cls, predict: PredictConfig) -> PredictConfig:
        if predict.strategy not in (None, "all"):
            raise ValueError(f"predict.strategy={predict.strategy}: a study predicts with every strategy its runs allow; leave it out")
        return predict.model_copy(update={"strategy": "all"})


def quickstart() -> StudyConfig:
    """The README's first command: the whole pipeline on the embedded default in minutes on 2 CPU cores."""
    small = {"model": {"base_channels": 16, "depth": 2}}
    vae = {"model": {"preset": "small"}, "optim": {"lr": 1e-3}}
    # two trainers side by side (one core each beats two threads on one small network), one torch thread
    # each whatever the machine (the README's numbers then come out on any core count), and a report on 2
    # held-out fields of another seed (the trainers saw none of them)
    return StudyConfig(jobs=2, threads_per_trainer=1, test_fields=2, trainers={
        "unet": {**_CPU_COMMON, **small, "steps": 600, "optim": {"lr": 2e-3}},
        "pixel": {**_CPU_COMMON, **small, "steps": 600, "optim": {"lr": 2e-3}},
        "hdn": {**_CPU_COMMON, **vae, "steps": 500},
        "hvae": {**_CPU_COMMON, **vae, "steps": 500},
        "latent": {**_CPU_COMMON, "model": {"width": 16, "time_embed_dim": 16}, "steps": 400, "optim": {"lr": 1e-3}},
        "degradation": {**_CPU_COMMON, "model": {"width": 16}, "steps": 300},
    })
