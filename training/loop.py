"""The one training loop every trainer uses.

Read it top to bottom: set up (stores, normalisation, run dir, model, optimiser, resume), then one
optimiser step per batch (autocast on GPU, NaN guard, gradient clipping, EMA), then logging, validation
PSNR and atomic checkpoints. ``--resume`` restores model, optimiser, scheduler, EMA, RNG and the data
position (batches are indexed by optimiser step, see :class:`training.data.StepSampler`).
Multi-GPU: launched with ``torchrun``, each rank draws its own shard of every step's items (DDP).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from dehaze.errors import UserError
from dehaze.models import build_model
from dehaze.normalization import Normalization
from dehaze.progress import progress_bar
from dehaze.runs import DataRef, RunInfo, load_checkpoint, prepare_run_dir, save_checkpoint
from dehaze.train_config import OptimConfig, TrainConfig
from training.data import LadderPatches, StepSampler, open_training_stores, split_fields
from training.tasks import TASKS, Task


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_psnr: float | None
    resumed: bool


# ---- set-up helpers ------------------------------------------------------------------------------
def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when launched with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available; use --set device=cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[cfg.name]
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):  # noqa: ANN201 - torch scheduler
    if cfg.optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.optim.lr * 0.01)
    if cfg.optim.scheduler == "plateau":  # stepped on validation PSNR: halve when it stalls
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=cfg.optim.plateau_patience)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class RunLogger:
    """CSV (``log.csv``) and TensorBoard (``tb/``) logs; silent on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"))
        path = run_dir / "log.csv"
        new = not path.exists()
        self.file = path.open("a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "name", "value", "wall_s"])
        self.t0 = time.time()

    def log(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self.csv.writerow([step, name, f"{value:.6g}", f"{time.time() - self.t0:.1f}"])
            self.tb.add_scalar(name, value, step)
        self.file.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.file.close()


@torch.no_grad()
def validate(model: nn.Module, task: Task, loader: DataLoader, device: torch.device) -> float:
    """Mean PSNR (dB) of the x_0 estimates over the fixed validation patches (range of each target)."""
    model.eval()
    values = []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        pred, y = task.estimate(model, batch).float(), batch["y"]
        mse = ((pred - y) ** 2).flatten(1).mean(1)
        rng = (y.flatten(1).amax(1) - y.flatten(1).amin(1)).clamp_min(1e-6)
        values.append(10 * torch.log10(rng**2 / mse.clamp_min(1e-12)))
    model.train()
    return float(torch.cat(values).mean()) if values else float("nan")


# ---- the loop ------------------------------------------------------------------------------------
def train(kind: str, data: list[str | Path], run_dir: str | Path, cfg: TrainConfig, *, resume: bool = False,
          show_progress: bool = True, in_memory: bool = False) -> TrainResult:
    """Train a ``kind`` model on ladder stores ``data`` into ``run_dir`` (see the module docstring).

    ``in_memory=True`` reads every field's arrays into memory once instead of streaming patches from
    Zarr (same patches, same results); ``benchmarks/loader.py`` uses it as the no-I/O reference.
    """
    task = TASKS[kind]
    run_dir = Path(run_dir)
    stores = open_training_stores(data)
    norm = Normalization.from_stores(stores)
    info = RunInfo(kind=kind, config=cfg, normalization=norm,
                   data=[DataRef(path=str(Path(s.path).resolve()), manifest_sha256=s.meta.manifest_sha256) for s in stores])
    rank, world = init_distributed()
    if rank == 0:
        prepare_run_dir(run_dir, info, resume)
    if world > 1:
        dist.barrier()
    device = pick_device(cfg.device)
    train_fields, val_fields = split_fields(stores, cfg.data.val_fraction, cfg.seed)
    paths = [str(s.path) for s in stores]

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    opt = make_optimizer(model, cfg.optim)
    sched = make_scheduler(opt, cfg)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay)) if cfg.optim.ema_decay else None
    step, resumed = 0, False
    if resume and (run_dir / "checkpoint.pt").is_file():
        state = load_checkpoint(run_dir, kind, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        step, resumed = int(state["step"]), True
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    extra = {"path_noise_std": getattr(cfg.model, "path_noise_std", 0.0)}
    common = dict(patch_size=cfg.patch_size, norm=norm, input_steps=cfg.data.input_steps, target=cfg.data.target,
                  in_memory=in_memory)
    train_ds = LadderPatches(paths, train_fields, task.sample_kind, seed=cfg.seed, length=cfg.steps * cfg.batch_size * world,
                             augment=cfg.data.augment, **common, **extra)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=StepSampler(step, cfg.steps, cfg.batch_size, rank, world),
                        num_workers=cfg.data.num_workers, generator=torch.Generator(), pin_memory=device.type == "cuda")
    val_loader = None
    if val_fields:
        val_ds = LadderPatches(paths, val_fields, "pair", seed=cfg.seed + 1, length=cfg.data.val_patches, augment=False, **common)
        val_loader = DataLoader(val_ds, batch_size=cfg.batch_size)

    def checkpoint() -> None:
        if rank != 0:
            return
        state = {"kind": kind, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "config_json": cfg.model_dump_json(), "rng_cpu": torch.get_rng_state()}
        if ema is not None:
            state["ema"] = ema.state_dict()
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(run_dir, state)

    logger = RunLogger(run_dir, enabled=rank == 0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (device.type == "cuda" and cfg.amp) else contextlib.nullcontext()
    bar = progress_bar(total=cfg.steps, initial=step, desc=f"train {kind}", unit="step", disable=not show_progress or rank != 0)
    val_psnr, bad_in_a_row = None, 0
    try:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            # -- forward / backward, skipping non-finite losses (the NaN guard)
            with autocast:
                loss = task.loss(net, batch)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                bad_in_a_row = 0
                loss.backward()
                if cfg.optim.clip_grad_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
            else:
                bad_in_a_row += 1
                if bad_in_a_row >= cfg.log.max_bad_steps:
                    raise UserError(f"{run_dir}: loss was not finite for {bad_in_a_row} steps in a row at step {step}; lower optim.lr")
            if cfg.optim.scheduler != "plateau":
                sched.step()
            step += 1
            bar.update(1)
            # -- logs, validation, checkpoints
            if step % cfg.log.log_every == 0:
                loss_value = loss.item()
                logger.log(step, loss=loss_value, lr=opt.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{loss_value:.4g}")
            if val_loader is not None and (step % cfg.log.val_every == 0 or step == cfg.steps):
                val_psnr = validate(ema.module if ema is not None else model, task, val_loader, device)
                logger.log(step, val_psnr=val_psnr)
                if cfg.optim.scheduler == "plateau":
                    sched.step(val_psnr)
            if step % cfg.log.ckpt_every == 0 or step == cfg.steps:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()  # Ctrl-C keeps the work: --resume continues from here
        raise
    finally:
        bar.close()
        logger.close()
    if val_psnr is not None and not math.isfinite(val_psnr):
        val_psnr = None
    return TrainResult(run_dir, step, val_psnr, resumed)
