"""HVAE training throughput (images/s) at the hdn-reference preset: eager fp32 against the fast path.

One training step is what ``training/loop.py`` does for ``hdn``: forward (x_t -> likelihood on x_0),
backward, gradient clipping, an Adamax step. Variants, measured side by side in one run (repeats alternate
between them, medians reported):

* ``eager_fp32``: contiguous tensors, float32, no compilation (the reference);
* ``channels_last``: channels_last memory format for weights and inputs, bf16 autocast on CUDA;
* ``channels_last_compiled``: the same under ``torch.compile`` (its compile time, the first steps minus a
  steady step, is recorded separately).

The fast path is the faster of the variants measured (compilation is kept only if it is faster);
``ratio = fast images/s / eager images/s``. Achieved FLOP/s come from ``FlopCounterMode`` on one step
(forward + backward; the optimiser's few FLOPs are not counted).

On CPU ``--compile`` is off by default: inductor needs minutes to compile this model's forward and
backward on 2 cores, far beyond the short default run; ``--compile on --name compile_trial`` measures it
(recorded in the same results file, one entry per ``--name``).

    PYTHONPATH=. python benchmarks/train_step.py                  # CPU: batch 4, 2 steps x 5 repeats
    PYTHONPATH=. python benchmarks/train_step.py --threads 1 --steps 1 --repeat 7 --name threads_1   # a shared CPU
    PYTHONPATH=. python benchmarks/train_step.py --compile on --name compile_trial
    PYTHONPATH=. python benchmarks/train_step.py --device cuda     # GPU: batch 64, 20 steps x 5 repeats, compiled
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import machine_info, sync
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dehaze.models import build_network
from training.config import HDNModel


class Variant:
    """A model + optimiser set up one way; ``step()`` runs one training step."""

    def __init__(self, name: str, preset: str, device: torch.device, batch: int, patch: int, *,
                 channels_last: bool, autocast: bool, compile_: bool) -> None:
        self.name, self.device = name, device
        torch.manual_seed(0)
        model = build_network(HDNModel(preset=preset)).to(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=fmt)
        self.opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(batch, 1, patch, patch, generator=g).to(device).contiguous(memory_format=fmt)
        self.y = torch.rand(batch, 1, patch, patch, generator=g).to(device).contiguous(memory_format=fmt)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        self.forward = torch.compile(model) if compile_ else model

    def loss(self) -> torch.Tensor:
        with self.autocast:
            return self.forward(self.x, target=self.y).loss

    def step(self) -> None:
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()

    def timed(self, steps: int) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return time.perf_counter() - t0


def step_flops(v: Variant) -> int:
    with FlopCounterMode(display=False) as counter:
        v.loss().backward()
    v.opt.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="hdn-reference")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 64 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed repeat (default: 2 on CPU, 20 on CUDA)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="also measure the torch.compile variant (auto: on CUDA only)")
    ap.add_argument("--name", default="default", help="key of this run in the results file")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 4)
    steps = args.steps or (20 if cuda else 2)
    repeat = args.repeat
    use_compile = args.compile == "on" or (args.compile == "auto" and cuda)
    out = args.out or Path(__file__).parent / "results" / f"train_step_{device.type}.json"

    common = dict(preset=args.preset, device=device, batch=batch, patch=args.patch)
    variants = [Variant("eager_fp32", channels_last=False, autocast=False, compile_=False, **common),
                Variant("channels_last" + ("_bf16" if cuda else ""), channels_last=True, autocast=cuda, compile_=False, **common)]
    compile_s = None
    if use_compile:
        compiled = Variant(variants[1].name + "_compiled", channels_last=True, autocast=cuda, compile_=True, **common)
        t_first = compiled.timed(1)  # compilation of forward and backward happens here
        t_second = compiled.timed(1)
        compile_s = round(t_first - t_second, 2)
        variants.append(compiled)
    for v in variants:  # warm-up (allocator, cuDNN/oneDNN algorithm choice)
        v.timed(1)
    params = sum(p.numel() for p in variants[0].model.parameters())
    flops = step_flops(variants[0])

    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(repeat):  # alternate: every variant sees the same machine conditions
        for v in variants:
            times[v.name].append(v.timed(steps))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ips = {name: batch * steps / t for name, t in med.items()}
    fast = max((n for n in ips if n != "eager_fp32"), key=ips.get)
    result = {
        "benchmark": "HVAE (supervised HDN) training step throughput: eager fp32 vs fast path",
        "command": "PYTHONPATH=. python benchmarks/train_step.py " + " ".join(sys.argv[1:]),
        "preset": args.preset, "parameters": params, "patch": args.patch, "batch": batch, "steps_per_repeat": steps,
        "repeats": repeat, "flops_per_step": flops,
        "images_per_s": {n: round(v, 3) for n, v in ips.items()},
        "achieved_tflops": {n: round(flops * steps / med[n] / 1e12, 4) for n in med},
        "fast_path": fast, "ratio": round(ips[fast] / ips["eager_fp32"], 3),
        "compile_kept": fast.endswith("_compiled"), "compile_time_s": compile_s,
        "all_times_s": {n: [round(t, 4) for t in ts] for n, ts in times.items()},
        "machine": machine_info(load_average_1min_at_start=load_start),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.is_file() else {}
    out.write_text(json.dumps({**old, "runs": {**old.get("runs", {}), args.name: result}}, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("images_per_s", "achieved_tflops", "fast_path", "ratio", "compile_time_s")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
