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
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from dehaze.device import environment, pick_device
from dehaze.errors import UserError
from dehaze.models import build_network
from dehaze.normalization import Normalization
from dehaze.progress import progress_bar
from dehaze.runs import (
    REPORT_FILE,
    RUN_FILE,
    DataRef,
    RunInfo,
    atomic_write_text,
    check_run_dir,
    extension,
    load_checkpoint,
    load_model,
    prepare_run_dir,
    read_run,
    record_resume_environment,
    save_checkpoint,
)
from dehaze.store import LadderStore
from training.config import MODEL_KINDS, OptimConfig, TrainConfig
from training.data import LadderPatches, SampleKind, StepSampler, open_training_stores, split_fields
from training.latent_data import LatentKind, LatentPatches
from training.latents import ensure_latent_cache
from training.tasks import TASKS, Task


@dataclass
class TrainResult:
    """What a finished (or resumed-to-the-end) training run reports."""

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


def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg`` names, over ``params``."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[cfg.name]
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):  # noqa: ANN201 - torch scheduler
    """The learning-rate schedule of ``cfg.optim`` over ``cfg.steps`` steps."""
    if cfg.optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.optim.lr * 0.01)
    if cfg.optim.scheduler == "plateau":  # stepped on validation PSNR: halve when it stalls
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=cfg.optim.plateau_patience)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def fast_forward(sched: Any, opt: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> None:
    """Put a freshly made scheduler (and its optimiser's learning rate) at ``step`` of ``cfg.steps``: a cosine
    schedule takes its closed-form value there; a constant one has nothing to do; a plateau schedule keeps
    no notion of the budget, so its saved state is loaded instead (see the caller)."""
    if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * step / sched.T_max)) / 2
        sched.last_epoch = step
        sched._last_lr = [g["lr"] for g in opt.param_groups]  # what get_last_lr() reports


class RunLogger:
    """CSV (``log.csv``) and TensorBoard (``tb/``) logs; silent on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int = 0) -> None:
        """``start_step``: the checkpoint's step a run resumes from; what a killed run logged after it is
        dropped (log.csv rows, TensorBoard events), so no step appears twice."""
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        path = run_dir / "log.csv"
        if start_step and path.exists():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            kept = [r for i, r in enumerate(rows) if i == 0 or (r and r[0].isdigit() and int(r[0]) <= start_step)]
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as f:
                csv.writer(f).writerows(kept)
            os.replace(tmp, path)
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


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors, and lists/dicts of them (latent batches are lists per level), to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_device(v, device) for v in obj]
    return obj


def _flat(x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """(B, N): one row per sample, all levels of a latent list concatenated."""
    parts = x if isinstance(x, list) else [x]
    return torch.cat([p.float().flatten(1) for p in parts], dim=1)


@torch.no_grad()
def validate(model: nn.Module, task: Task, loader: DataLoader, device: torch.device) -> float:
    """Mean PSNR (dB) of the estimates against ``batch[task.val_target]`` over the fixed validation patches
    (range of each target): x_0 for restorers, x_t for the HVAE's reconstruction; for latent models the
    PSNR is taken over all levels' latents together (latent units)."""
    model.eval()
    values = []
    for batch in loader:
        batch = to_device(batch, device)
        pred, y = _flat(task.estimate(model, batch)), _flat(batch[task.val_target])
        mse = ((pred - y) ** 2).mean(1)
        rng = (y.amax(1) - y.amin(1)).clamp_min(1e-6)
        values.append(10 * torch.log10(rng**2 / mse.clamp_min(1e-12)))
    model.train()
    return float(torch.cat(values).mean()) if values else float("nan")


@dataclass
class LatentSetup:
    """What a latent trainer adds: its base run, the latent cache, and the resolved config."""

    base_run: str
    cache_path: str
    cfg: TrainConfig


def resolve_latent_setup(kind: str, task: Task, base_run: str | Path | None, data: list[LadderStore], cfg: TrainConfig,
                         device: torch.device, show_progress: bool) -> LatentSetup:
    """Check the base run, encode (or reuse) the latent cache, and fill the config's derived fields."""
    base_kind = MODEL_KINDS[kind].base
    if base_run is None:
        raise UserError(f"`dehaze train {kind}` builds on a {base_kind!r} run: pass --base RUN_DIR")
    base = read_run(base_run)
    if base.kind != base_kind:
        raise UserError(f"--base {base_run}: is a {base.kind!r} run; {kind} builds on a {base_kind!r} run")
    if len(data) != 1:
        raise UserError(f"`dehaze train {kind}` takes one --data store (its latents are cached per store)")
    hvae_run = Path(base_run) if base.kind == "hvae" else Path(base.base_run or "")
    store = data[0]
    cache = Path(hvae_run) / "latents" / f"{Path(store.path).name.removesuffix('.zarr')}-{store.meta.manifest_sha256[:12]}.zarr"
    cache.parent.mkdir(exist_ok=True)  # the HVAE run owns its latent caches
    latents = ensure_latent_cache(hvae_run, store.path, cache, device=device, show_progress=show_progress)
    model = cfg.model.resolve_from_base(base.config.model, latents.meta)
    resolved = TrainConfig.model_validate({**cfg.model_dump(mode="json"), "model": model.model_dump(mode="json")})
    return LatentSetup(str(Path(base_run).resolve()), str(cache), resolved)


def resolve_warm_start(kind: str, base_run: str | Path | None, run_dir: Path, resume: bool) -> str | None:
    """The resolved path of an optional base run (a warm start, ``ModelKind.base_optional``), checked to be of
    the kind it must be; on ``--resume`` without ``--base``, the one the run recorded. None: no warm start."""
    cls = MODEL_KINDS[kind]
    if base_run is None:
        if resume and (run_dir / RUN_FILE).is_file():
            return getattr(read_run(run_dir).config.model, "warm_start", None)
        return None
    if not cls.base:
        raise UserError(f"`dehaze train {kind}` builds on no other run: drop --base")
    base = read_run(base_run)
    if base.kind not in cls.base_kinds():
        raise UserError(f"--base {base_run}: is a {base.kind!r} run; {kind} warm-starts from a "
                        f"{' or '.join(map(repr, cls.base_kinds()))} run")
    return str(Path(base_run).resolve())


def resolve_image_setup(kind: str, stores: list[LadderStore], cfg: TrainConfig, base_run: str | Path | None,
                        run_dir: Path, resume: bool) -> tuple[TrainConfig, Normalization]:
    """For a trainer on images (not latents): the run's normalisation and its config with the fields the
    data (and an optional warm-start base run) decide; a --base it cannot take is a UserError."""
    norm = Normalization.from_stores(stores)
    model_cfg = cfg.model.resolve_from_data(stores, norm)
    warm = resolve_warm_start(kind, base_run, run_dir, resume) if MODEL_KINDS[kind].base_optional else None
    if warm is not None:
        model_cfg = model_cfg.model_copy(update={"warm_start": warm})
    elif base_run is not None:
        raise UserError(f"`dehaze train {kind}` builds on no other run: drop --base")
    return TrainConfig.model_validate({**cfg.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json")}), norm


def run_info(kind: str, cfg: TrainConfig, norm: Normalization, stores: list[LadderStore], base_run: str | None) -> RunInfo:
    """The run's description (run.json) for a resolved config on ``stores``."""
    return RunInfo(kind=kind, config=cfg, normalization=norm, base_run=base_run,
                   data=[DataRef(path=str(Path(s.path).resolve()), manifest_sha256=s.meta.manifest_sha256) for s in stores])


# ---- the loop ------------------------------------------------------------------------------------
def train(kind: str, data: list[str | Path], run_dir: str | Path, cfg: TrainConfig, *, resume: bool = False,
          base_run: str | Path | None = None, show_progress: bool = True, in_memory: bool = False) -> TrainResult:
    """Train a ``kind`` model on ladder stores ``data`` into ``run_dir`` (see the module docstring).

    Latent trainers (``latent``, ``degradation``) build on ``base_run`` (an HVAE run, resp. a latent run)
    and train on the HVAE latents of the one ``data`` store, cached under the HVAE run.
    ``in_memory=True`` reads every field's arrays into memory once instead of streaming patches from
    Zarr (same patches, same results); ``benchmarks/loader.py`` uses it as the no-I/O reference.
    """
    task = TASKS[kind]
    run_dir = Path(run_dir)
    stores = open_training_stores(data)
    device = pick_device(cfg.device, option="--set device")
    latent = resolve_latent_setup(kind, task, base_run, stores, cfg, device, show_progress) if task.latent else None
    if latent is not None:
        cfg = latent.cfg
        norm = read_run(latent.base_run).normalization  # latents encode images normalised like the HVAE saw them
    else:
        cfg, norm = resolve_image_setup(kind, stores, cfg, base_run, run_dir, resume)
    env = environment(device)
    info = run_info(kind, cfg, norm, stores, latent.base_run if latent else None).model_copy(update={"trained_with": env})
    rank, world = init_distributed()
    if world > 1 and task.param_groups is not None:
        raise UserError(f"`dehaze train {kind}` runs on one process (its GAN steps are not data-parallel yet)")
    if rank == 0:  # -o conflicts now; the run description is written once the data and model are checked
        check_run_dir(run_dir, info, resume)
    extended_from = extension(run_dir, info) if resume else None  # the old budget when --set steps=N extends the run
    train_fields, val_fields = split_fields(stores, cfg.data.val_fraction, cfg.seed)
    paths = [str(s.path) for s in stores]

    # -- model, one optimiser (and scheduler) per parameter group, EMA
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.model).to(device)
    if task.init_from_base is not None and latent is not None:
        task.init_from_base(model, load_model(latent.base_run, device)[1])
    warm_start = getattr(cfg.model, "warm_start", None)
    if task.init_from_base is not None and latent is None and warm_start and not (resume and (run_dir / "checkpoint.pt").is_file()):
        task.init_from_base(model, load_model(warm_start, device)[1])  # a resumed run loads its own weights below
    groups = task.param_groups(model) if task.param_groups else {"main": list(model.parameters())}
    # a model config field "<group>_lr" (e.g. the degradation's restorer_lr) sets that group's learning rate
    opts = {name: make_optimizer(params, cfg.optim.model_copy(update={"lr": getattr(cfg.model, f"{name}_lr", cfg.optim.lr)}))
            for name, params in groups.items()}
    scheds = {name: make_scheduler(o, cfg) for name, o in opts.items()}
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay)) if cfg.optim.ema_decay else None
    step, resumed = 0, False
    if resume and (run_dir / "checkpoint.pt").is_file():
        state = load_checkpoint(run_dir, kind, map_location=device)
        model.load_state_dict(state["model"])
        for name in opts:
            opts[name].load_state_dict(state["optimizers"][name])
            if extended_from is None or cfg.optim.scheduler == "plateau":
                scheds[name].load_state_dict(state["schedulers"][name])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        step, resumed = int(state["step"]), True
        if extended_from is not None:  # a larger budget: the schedule as if it had been planned from the start
            for name in opts:
                fast_forward(scheds[name], opts[name], cfg, step)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model

    # -- data: patches (or latent crops) indexed by optimiser step, so a resumed run draws the same batches
    length = cfg.steps * cfg.batch_size * world
    train_ds: LatentPatches | LadderPatches
    val_ds: LatentPatches | LadderPatches | None
    # the casts: a latent setup is made for exactly the tasks of a latent sample kind (Task.latent), which the
    # type checker cannot follow from the property
    if latent is not None:
        latent_kind = cast(LatentKind, task.sample_kind)
        train_ds = LatentPatches(latent.cache_path, [r.field for r in train_fields], latent_kind, cfg.patch_size,
                                 cfg.seed, length, cfg.batch_size, cfg.data.input_steps)
        val_ds = LatentPatches(latent.cache_path, [r.field for r in val_fields], latent_kind, cfg.patch_size,
                               cfg.seed + 1, cfg.data.val_patches, cfg.batch_size, cfg.data.input_steps) if val_fields else None
    else:
        # what the training and validation patches share
        patches = functools.partial(LadderPatches, paths, patch_size=cfg.patch_size, norm=norm, input_steps=cfg.data.input_steps,
                                    target=cfg.data.target, in_memory=in_memory)
        train_ds = patches(train_fields, cast(SampleKind, task.sample_kind), seed=cfg.seed, length=length, augment=cfg.data.augment,
                           path_noise_std=getattr(cfg.model, "path_noise_std", 0.0), path=getattr(cfg.model, "path", "ladder"),
                           source_fraction=getattr(cfg.model, "source_fraction", 0.0))
        val_ds = patches(val_fields, "pair", seed=cfg.seed + 1, length=cfg.data.val_patches, augment=False) if val_fields else None
    if rank == 0:
        prepare_run_dir(run_dir, info, resume)
        moved = record_resume_environment(run_dir, env, step) if resumed else []
        if moved:  # the resume is allowed; its result is then not bit-identical to an uninterrupted run
            print(f"dehaze: note: {run_dir}: resumed on another setup ({'; '.join(moved)}): the run continues, but "
                  "will not repeat an uninterrupted one to the last digit", file=sys.stderr)
    if world > 1:
        dist.barrier()
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=StepSampler(step, cfg.steps, cfg.batch_size, rank, world),
                        num_workers=cfg.data.num_workers, generator=torch.Generator(), pin_memory=device.type == "cuda")
    # its own generator: a DataLoader without one draws its base seed from torch's global RNG at every
    # validation, so a run validated at the end of a first leg (then --resume) drew other noise afterwards
    # than an uninterrupted one (the flow and ladder-VAE losses sample from that RNG; tests/test_flow.py)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, generator=torch.Generator()) if val_ds is not None else None

    def checkpoint() -> None:
        if rank != 0:
            return
        state = {"kind": kind, "step": step, "model": model.state_dict(),
                 "optimizers": {n: o.state_dict() for n, o in opts.items()},
                 "schedulers": {n: s.state_dict() for n, s in scheds.items()},
                 "config_json": cfg.model_dump_json(), "rng_cpu": torch.get_rng_state()}
        if ema is not None:
            state["ema"] = ema.state_dict()
        if device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state()
        save_checkpoint(run_dir, state)

    logger = RunLogger(run_dir, enabled=rank == 0, start_step=step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (device.type == "cuda" and cfg.amp) else contextlib.nullcontext()
    bar = progress_bar(total=cfg.steps, initial=step, desc=f"train {kind}", unit="step", disable=not show_progress or rank != 0)
    val_psnr, bad_in_a_row = None, 0
    try:
        for batch in loader:
            batch = to_device(batch, device)
            # -- forward / backward per optimiser (in order), skipping non-finite losses (the NaN guard)
            with autocast:
                out = task.loss(net, batch)
            losses = out if isinstance(out, dict) else {"main": out}
            if all(torch.isfinite(v) for v in losses.values()):
                bad_in_a_row = 0
                for name, loss in losses.items():
                    opts[name].zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.optim.clip_grad_norm:
                        nn.utils.clip_grad_norm_(groups[name], cfg.optim.clip_grad_norm)
                    opts[name].step()
                if ema is not None:
                    ema.update_parameters(model)
            else:
                bad_in_a_row += 1
                if bad_in_a_row >= cfg.log.max_bad_steps:
                    raise UserError(f"{run_dir}: loss was not finite for {bad_in_a_row} steps in a row at step {step}; lower optim.lr")
            if cfg.optim.scheduler != "plateau":
                for sched in scheds.values():
                    sched.step()
            step += 1
            bar.update(1)
            # -- logs, validation, checkpoints
            if step % cfg.log.log_every == 0:
                values = {("loss" if n == "main" else f"loss_{n}"): v.item() for n, v in losses.items()}
                logger.log(step, **values, lr=next(iter(opts.values())).param_groups[0]["lr"])
                bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
            if val_loader is not None and (step % cfg.log.val_every == 0 or step == cfg.steps):
                val_psnr = validate(ema.module if ema is not None else model, task, val_loader, device)
                logger.log(step, val_psnr=val_psnr)
                if cfg.optim.scheduler == "plateau":
                    for sched in scheds.values():
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
    if task.final_report is not None and latent is not None and rank == 0:
        # on held-out fields where the split kept some, else (a tiny store) on the training fields
        fields = [r.field for r in (val_fields or train_fields)]
        final = ema.module if ema is not None else model
        final.eval()
        report = {"fields_are": "held_out" if val_fields else "training", "step": step,
                  **task.final_report(final, latent.cache_path, fields, device)}
        atomic_write_text(run_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return TrainResult(run_dir, step, val_psnr, resumed)
