"""The whole study as one config: simulate a ladder, train every model, predict with every strategy,
evaluate. ``dehaze study [CONFIG] -o DIR`` runs it; ``dehaze demo`` runs the embedded quickstart.

Each trainer's section is a partial training config merged onto that trainer's defaults (same keys as
``dehaze schema train``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dehaze.config import StrictModel

TRAIN_ORDER = ("unet", "pixel", "hdn", "hvae", "latent", "degradation")  # latent needs hvae, degradation needs latent

_CPU_COMMON = {"batch_size": 8, "patch_size": 32, "seed": 0, "log": {"val_every": 100, "ckpt_every": 100, "log_every": 20}}


class StudyConfig(StrictModel):
    simulation: str = Field("default", description="simulation manifest: built-in name or YAML path")
    simulation_set: list[str] = Field([], description="dotted.key=value overrides of the manifest")
    trainers: dict[Literal["unet", "pixel", "hdn", "hvae", "latent", "degradation"], dict[str, Any]] = Field(
        default_factory=dict, description="per trainer: partial training config merged onto its defaults")
    test_fields: int = Field(0, ge=0, description="fields of a held-out test ladder (same manifest, seed + 1000) that "
                             "predictions and the report use; 0: the training ladder itself (its validation fields included)")
    jobs: int = Field(1, ge=1, description="trainers run side by side (independent ones first; torch threads split between them)")
    samples: int | None = Field(None, ge=1, description="posterior samples K for the sampling strategies "
                                "(null: each strategy's default: HDN its mmse_samples, 16 by default; latent 1)")
    alpha: float = Field(0.5, ge=0, le=1, description="running-combination weight")
    tile: int | None = Field(None, ge=16, description="engine tile in px (default: 256; HDN: its training patch size)")
    target: Literal["camera", "noise_free"] = Field("noise_free", description="x_0 the report scores against")
    device: Literal["auto", "cpu", "cuda"] = "auto"


def quickstart() -> StudyConfig:
    """The README's first command: the whole pipeline on the embedded default in minutes on 2 CPU cores."""
    small = {"model": {"base_channels": 16, "depth": 2}}
    vae = {"model": {"preset": "small"}, "optim": {"lr": 1e-3}}
    # two trainers side by side (one core each beats two threads on one small network) and a report on 2
    # held-out fields of another seed (the trainers saw none of them)
    return StudyConfig(jobs=2, test_fields=2, trainers={
        "unet": {**_CPU_COMMON, **small, "steps": 600, "optim": {"lr": 2e-3}},
        "pixel": {**_CPU_COMMON, **small, "steps": 600, "optim": {"lr": 2e-3}},
        "hdn": {**_CPU_COMMON, **vae, "steps": 500},
        "hvae": {**_CPU_COMMON, **vae, "steps": 500},
        "latent": {**_CPU_COMMON, "model": {"width": 16, "time_embed_dim": 16}, "steps": 400, "optim": {"lr": 1e-3}},
        "degradation": {**_CPU_COMMON, "model": {"width": 16}, "steps": 300},
    })
