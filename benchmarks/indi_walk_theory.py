#!/usr/bin/env python
"""How much PSNR a deterministic InDI walk gives up against its own one-shot estimate when its restorer is
the exact MMSE: the engine's ``pixel_indi`` on a Gaussian toy whose E[x_0 | x_t] is known in closed form.

Toy: per pixel x_0 ~ N(0, a^2), x_s = x_0 + n with n ~ N(0, b^2); on the straight path
x_t = x_0 + (t/s) n, so E[x_0 | x_t] = a^2 / (a^2 + (t/s)^2 b^2) x_t. The one-shot estimate (one step of
size s) is the MMSE, error a^2 b^2 / (a^2 + b^2). As delta -> 0 the walk tends to rho x_s with
rho = a / sqrt(a^2 + b^2): a transport map whose output has the prior's variance a^2 (sharp, not
averaged), with error 2 / (1 + rho) times the MMSE, so up to 3 dB worse where the data say little
(rho -> 0) and no worse where they say everything (rho -> 1). The study's goal "walk >= one-shot" in PSNR
can therefore only be met by a restorer that is *not* near the MMSE at its source step; measured side by
side here (walk and one-shot in one run, same draws) for several signal-to-noise ratios and step sizes.

    python benchmarks/indi_walk_theory.py      # a few seconds; writes results/indi_walk_theory_cpu.json
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from machine import machine_info, write_result

from dehaze.strategies import ModelBundle, indi_schedule, pixel_indi

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE_STEP = 7.0  # s: the study's haziest step (any s gives the same numbers; only delta / s matters)
NOISE_OVER_SIGNAL = (0.1, 0.3, 1.0, 3.0, 10.0)  # b / a
STEPS_PER_WALK = (1, 4, 28, 256)  # s / delta: 28 is the study's delta = 0.25 from s = 7


class ToyMMSE(torch.nn.Module):
    """E[x_0 | x_t] of the Gaussian toy (module docstring); (B, 1, H, W) in, same out."""

    source_conditioned = True

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.signal_var, self.noise_var = a * a, b * b

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        frac = (t / s)[:, None, None, None]
        return self.signal_var / (self.signal_var + frac * frac * self.noise_var) * x


def main() -> None:
    t0 = time.perf_counter()
    rows = []
    for ratio in NOISE_OVER_SIGNAL:
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(8, 1, 128, 128, generator=g)
        xs = x0 + ratio * torch.randn(x0.shape, generator=g)
        bundle = ModelBundle(pixel=ToyMMSE(1.0, ratio))
        one_shot = float(torch.mean((pixel_indi(bundle, xs, [SOURCE_STEP, 0.0]) - x0) ** 2))
        rho = 1 / math.sqrt(1 + ratio * ratio)
        row = {"noise_over_signal": ratio, "rho": rho, "one_shot_mse": one_shot,
               "predicted_limit_loss_db": 10 * math.log10(2 / (1 + rho)), "walk_loss_db": {}}
        for n in STEPS_PER_WALK:
            walk = pixel_indi(bundle, xs, indi_schedule(SOURCE_STEP, SOURCE_STEP / n))
            row["walk_loss_db"][str(n)] = 10 * math.log10(float(torch.mean((walk - x0) ** 2)) / one_shot)
        rows.append(row)
        print(f"b/a {ratio:5.1f}  rho {rho:.3f}  walk loss vs one-shot, dB, by steps per walk "
              + "  ".join(f"{n}: {v:+.2f}" for n, v in row["walk_loss_db"].items())
              + f"  (limit {row['predicted_limit_loss_db']:+.2f})")
    write_result(RESULTS / "indi_walk_theory_cpu.json", {
        "benchmark": "indi_walk_theory", "command": "python benchmarks/indi_walk_theory.py",
        "what": "PSNR loss (dB, positive = walk worse) of the deterministic InDI walk against its one-shot estimate, "
                "exact MMSE restorer of a Gaussian toy; limit = 10 log10(2 / (1 + rho))",
        "source_step": SOURCE_STEP, "rows": rows, "wall_s": time.perf_counter() - t0, "machine": machine_info()})


if __name__ == "__main__":
    main()
