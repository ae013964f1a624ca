"""What ``dehaze predict`` is asked to do, declared once: the CLI's options are generated from
:class:`PredictConfig` (:func:`dehaze.cli_options.model_options`), ``--config``/``--set`` validate it like a
training config, and a study embeds it as its ``predict`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dehaze.config import StrictModel

Precision = Literal["auto", "fp32", "bf16"]


class PredictConfig(StrictModel):
    """Prediction settings (``dehaze schema predict``); every field is also a ``dehaze predict`` option."""

    strategy: str | None = Field(None, description="strategy name, or 'all' (every strategy the runs allow); default: the run's own")
    samples: int | None = Field(None, ge=1, description="posterior samples K per input (hdn: default its mmse_samples; "
                                "latent: default 1 = posterior means)")
    alpha: float = Field(0.5, ge=0, le=1, description="running-combination weight of the latent-combine strategies")
    indi_stop: float = Field(1.0, ge=0, description="pixel-indi-early: the step t of the InDI walk at which the "
                             "restorer's estimate is returned (0: the whole walk, as pixel-indi)")
    flow_steps: int = Field(20, ge=1, le=1000, description="ODE steps of the flow sampler (noise to clean image)")
    flow_solver: Literal["euler", "heun"] = Field("euler", description="flow ODE solver: euler (1 network evaluation per "
                                                  "step) or heun (2nd order, 2 per step but the last)")
    write_samples: bool = Field(False, description="also write the K posterior samples (array 'samples', (h, K, [z,] y, x)) "
                                "of the sampling strategies (flow, hdn)")
    calibrated_std: bool = Field(True, description="scale the flow std by its run's calibration (calibration.json, "
                                 "`dehaze calibrate`) where it has one")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda")
    tile: int | None = Field(None, ge=16, description="tile size in px (default: 256; for HDN its training patch size, "
                             "the only size a ladder VAE is right at)")
    margin: int | None = Field(None, ge=0, description="context dropped at each inner tile border, px (default 32, at most a "
                               "quarter of the tile); must leave an inner area: tile > 2 x margin")
    batch_size: int = Field(8, ge=1, description="images (tiles x samples) per forward pass")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the posterior samples")
    precision: Precision = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), fp32, or bf16 (also on CPU: fast "
                                 "with AVX512-BF16/AMX)")
    compile: bool = Field(False, description="torch.compile the networks (worth it on GPU; minutes of compilation on CPU)")
