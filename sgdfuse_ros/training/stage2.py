"""Stage II training: cache frozen Stage I outputs and prior masks once, then train the conditional diffusion model.

    python -m sgdfuse_ros.training stage2 --data DIR --out RUN [options]          # cache (if needed) + train
    python -m sgdfuse_ros.training stage2 --data DIR --out RUN --cache-only       # only build the cache
    torchrun --nproc_per_node=N -m sgdfuse_ros.training stage2 --out RUN --cache C --device cuda   # DDP

Step 1, the cache (``--cache``, default ``<out>/cache``; ``training/stage2_cache.py``): every training pair goes
once through the frozen Stage I weights and the configured prior (``--night-proxy``: a darkened copy too). Only
this step may need segment_anything; a cache built here can be copied to a GPU machine and trained there with
``--cache`` alone. Stage I's validation pairs (``validation.validation_indices``) are cached but never trained on
(``--validation-every``).

Step 2, training: random crops (with flips) from the cache, x0 := F1 in [-1, 1] noised at a random timestep,
the network predicts x0, the Stage II loss applies to the prediction (``losses_stage2``); Adam with warm-up and
cosine decay; resumable (``--resume`` from ``<out>/last.pt``: model, optimizer, step, elapsed time); losses logged
as JSON lines (``<out>/losses.jsonl``). With ``WORLD_SIZE > 1`` (torchrun) it runs DistributedDataParallel (gloo
on CPU, nccl on CUDA); ``--batch`` is the global batch, split evenly over the ranks, each rank drawing its own
crops from a generator seeded with (seed, step, rank); rank 0 logs and saves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..imaging import split_luma_chroma
from ..losses_stage2 import OBJECTIVES, Stage2Loss
from ..models.diffusion import NoiseSchedule, ScheduleConfig
from ..models.stage2 import CONDITIONS, Stage2Config, build_stage2, stage2_checkpoint
from .common import atomic_save, describe_device, lr_at, relative_arguments
from .data import HELD_OUT_NAMES
from .stage2_cache import CacheSet, build_cache, sample_stage2_batch, sha256_file, utc_now
from .validation import VALIDATION_EVERY

__all__ = ["add_stage2_arguments", "train_stage2"]
LICENCE_NOTE = (
    "Trained only on the RoadScene pairs found under the data folder (RoadScene, hanna-xu/RoadScene, built from "
    "the FLIR ADAS thermal dataset); the held-out bundled pairs were excluded. No LLVIP data was used. Check the "
    "RoadScene / FLIR ADAS terms before redistributing the weights."
)
LOSS_KEYS = ("total", "intensity", "gradient", "chroma", "anchor")


def add_stage2_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``stage2`` subcommand (sets ``func=train_stage2``)."""
    p = subparsers.add_parser("stage2", help="train the Stage II conditional diffusion refiner (cache, then train)")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and cache")
    g.add_argument("--data", default=None, help="folder with ir/ and vi/ registered pairs (needed to build the cache)")
    g.add_argument("--ir-dir", default="ir", help="thermal-role sub-folder of --data (medical: mri)")
    g.add_argument("--vis-dir", default="vi", help="colour-role sub-folder of --data (medical: pet, spect)")
    g.add_argument("--out", required=True, help="run folder (checkpoints, loss log, final weights)")
    g.add_argument("--cache", default=None, help="cache folder (default <out>/cache); built when it has no manifest")
    g.add_argument("--cache-only", action="store_true", help="build the cache and stop")
    g.add_argument("--stage1-weights", default=None, help="frozen Stage I weights (default: the shipped ones)")
    g.add_argument("--prior", default="fallback", choices=("fallback", "sam"), help="semantic prior for the masks")
    g.add_argument("--sam-checkpoint", default="", help="SAM checkpoint (.pth) when --prior sam")
    g.add_argument("--sam-model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    g.add_argument(
        "--exclude", nargs="*", default=list(HELD_OUT_NAMES), help="pair names (file stems) left out of training"
    )
    g.add_argument("--night-proxy", action="store_true", help="also cache a darkened copy of every pair")
    g.add_argument(
        "--validation-every",
        type=int,
        default=VALIDATION_EVERY,
        help="hold out every N-th pair as Stage I does (0: train on all cached pairs)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--base-channels", type=int, default=Stage2Config.base_channels)
    g.add_argument("--channel-mults", type=int, nargs="+", default=list(Stage2Config.channel_mults))
    g.add_argument("--num-res-blocks", type=int, default=Stage2Config.num_res_blocks)
    g.add_argument("--dropout", type=float, default=Stage2Config.dropout)
    g.add_argument("--no-hfah", action="store_true", help="ablation: plain head on the finest decoder level")
    g.add_argument(
        "--condition",
        choices=CONDITIONS,
        default=Stage2Config.condition,
        help="network condition: the paper's [F1, M_ir, M_vis] or that plus the sources [IR, Y_vis]",
    )
    g.add_argument(
        "--no-masks", action="store_true", help="ablation: masks zeroed in the condition and the losses (no prior)"
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, default=2000, help="total optimisation steps")
    g.add_argument("--batch", type=int, default=4, help="global batch (split over DDP ranks)")
    g.add_argument("--crop", type=int, default=128, help="square crop side in pixels (>= 16)")
    g.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate after warm-up (cosine decay after)")
    g.add_argument("--min-lr", type=float, default=2e-5)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument(
        "--max-strength",
        type=float,
        default=1.0,
        help="train on timesteps t < max_strength * T (1 = the whole schedule; inference strength must not exceed it)",
    )
    g.add_argument("--intensity-weight", type=float, default=1.5)
    g.add_argument("--gradient-weight", type=float, default=1.0)
    g.add_argument("--chroma-weight", type=float, default=1.0)
    g.add_argument("--anchor-weight", type=float, default=0.1)
    g.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="max",
        help="max: intensity target max(IR, VIS) outside M_ir (default); semantic: the visible luminance outside "
        "M_ir and the max-gradient target everywhere; fidelity: max intensity, edges never below F1's (losses_stage2)",
    )
    g.add_argument(
        "--vis-gradient-target",
        choices=("vis", "max"),
        default=None,
        help="gradient target inside M_vis: the visible gradients or max(IR, VIS) like outside "
        "(default: vis with --objective max, max with --objective semantic)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun: cuda = cuda:LOCAL_RANK)")
    g.add_argument("--threads", type=int, default=1, help="CPU threads per process (the dev machine is shared)")
    g.add_argument("--save-every", type=int, default=100, help="write last.pt every N steps")
    g.add_argument("--log-every", type=int, default=25, help="print running losses every N steps")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    g.add_argument("--stop-at", type=int, default=None, help="stop after this step with a resumable checkpoint")
    g.add_argument("--export", default=None, help="final weights path (default <out>/stage2.pt); JSON beside it")
    p.set_defaults(func=train_stage2)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def _command_line(world: int) -> str:
    script = Path(sys.argv[0]).as_posix() if sys.argv else ""
    module = "sgdfuse_ros.training.stage2" if script.endswith("training/stage2.py") else "sgdfuse_ros.training"
    launcher = [f"torchrun --nproc_per_node={world}"] if world > 1 else [Path(sys.executable).name]
    return " ".join([*launcher, "-m", module, shlex.join(relative_arguments(sys.argv[1:]))]).strip()


def _model_config(args: argparse.Namespace) -> Stage2Config:
    return Stage2Config(
        base_channels=args.base_channels,
        channel_mults=tuple(args.channel_mults),
        num_res_blocks=args.num_res_blocks,
        dropout=args.dropout,
        use_hfah=not args.no_hfah,
        condition=args.condition,
    )


def _validate(args: argparse.Namespace) -> None:
    if args.iters < 1 or args.batch < 1 or args.crop < 16:
        raise SystemExit("--iters and --batch must be >= 1 and --crop >= 16")
    if args.save_every < 1 or args.log_every < 1:
        raise SystemExit("--save-every and --log-every must be >= 1")
    if not 0.0 < args.max_strength <= 1.0:
        raise SystemExit("--max-strength must be in (0, 1]")


def _trim_log(log_path: Path, last_step: int) -> None:
    """Keep only rows up to ``last_step`` (rows logged after the last checkpoint are redone on resume)."""
    if not log_path.exists():
        return
    rows = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    log_path.write_text("".join(row + "\n" for row in rows))


class _Dist:
    """Process-group state: world size 1 without torchrun; gloo on CPU, nccl on CUDA otherwise."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda") and self.world > 1:
            device = f"cuda:{local_rank}"
        self.device = torch.device(device)
        if self.world > 1:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
        self.main = self.rank == 0

    def mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train_stage2(args: argparse.Namespace) -> dict | None:
    """Build the cache if needed, then train (or resume) Stage II as described by ``args``.

    Returns the provenance record written beside the exported weights (on rank 0), or None after
    ``--cache-only``, after ``--stop-at`` ended the run early, and on ranks other than 0.
    """
    _validate(args)
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    ddp = _Dist(args.device)
    try:
        if ddp.main:
            out.mkdir(parents=True, exist_ok=True)
            if args.data is not None or not (cache / "manifest.json").is_file():
                build_cache(args, cache)
        ddp.barrier()
        if args.cache_only:
            return None
        result = _train(args, out, cache, ddp)
        # Rank 0 exports after the others are done; tearing gloo down while it still works aborted rank 1.
        ddp.barrier()
        return result
    finally:
        ddp.close()


def _train(args: argparse.Namespace, out: Path, cache: Path, ddp: _Dist) -> dict | None:
    device = ddp.device
    if args.batch % ddp.world:
        raise SystemExit(f"--batch {args.batch} is not divisible by the world size {ddp.world}")
    local_batch = args.batch // ddp.world
    data = CacheSet.load(cache).without_validation(args.validation_every)
    if ddp.main:
        print(
            f"[stage2] training on {len(data)} cached images from {cache} (prior {data.manifest['prior']}, "
            f"validation pairs held out); world size {ddp.world}",
            flush=True,
        )
    last_path, log_path = out / "last.pt", out / "losses.jsonl"

    torch.manual_seed(args.seed)  # identical initialisation on every rank; batches use per-step generators
    config = _model_config(args)
    model = build_stage2(config).to(device)
    schedule = NoiseSchedule(ScheduleConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion = Stage2Loss(
        args.intensity_weight,
        args.gradient_weight,
        args.chroma_weight,
        args.anchor_weight,
        args.vis_gradient_target,
        args.objective,
    )
    t_max = schedule.start_timestep(args.max_strength)
    step, elapsed, commands = 0, 0.0, [_command_line(ddp.world)]

    if args.resume:
        if not last_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {last_path}")
        ckpt = torch.load(last_path, map_location=device, weights_only=True)
        if ckpt["config"] != config.to_dict():
            raise SystemExit(f"--resume: {last_path} was written for a different architecture")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, elapsed, commands = int(ckpt["step"]), float(ckpt["elapsed_s"]), [*ckpt["commands"], commands[0]]
        if ddp.main:
            _trim_log(log_path, step)
            print(f"[stage2] resumed from {last_path} at step {step}", flush=True)
    elif last_path.exists():
        raise SystemExit(f"{last_path} exists: pass --resume to continue or choose another --out")
    ddp.barrier()  # every rank has read last.pt before rank 0 may overwrite it

    net: torch.nn.Module = model
    if ddp.world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def save_last() -> None:
        state = {
            "step": step,
            "elapsed_s": elapsed,
            "commands": commands,
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        }
        atomic_save(state, last_path)

    recent: list[list[float]] = []
    stop = args.iters if args.stop_at is None else min(args.iters, args.stop_at)
    log_file = log_path.open("a") if ddp.main else None
    net.train()
    t0 = time.perf_counter() - elapsed
    try:
        while step < stop:
            step += 1
            # One generator per (seed, step, rank): each rank draws different crops, and a resumed run replays
            # exactly the batches it would have seen, without saving generator state.
            rng = np.random.default_rng([args.seed, step, ddp.rank])
            batch = {k: v.to(device, non_blocking=True) for k, v in sample_stage2_batch(
                data, local_batch, args.crop, rng).items()}
            t = torch.from_numpy(rng.integers(0, t_max + 1, size=local_batch)).to(device)
            noise = torch.from_numpy(rng.standard_normal(batch["f1"].shape, dtype=np.float32)).to(device)
            masks = torch.cat([batch["m_ir"], batch["m_vis"]], dim=1)
            if args.no_masks:
                masks = torch.zeros_like(masks)
            x_t = schedule.add_noise(batch["f1"] * 2.0 - 1.0, noise, t)
            cond = torch.cat([batch["f1"], masks], dim=1)
            if config.uses_sources:
                cond = torch.cat([cond, batch["ir"], split_luma_chroma(batch["vis"])[0]], dim=1)
            lr = lr_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr

            x0_rgb = (net(x_t, t, cond) + 1.0) * 0.5
            losses = criterion(x0_rgb, batch["ir"], batch["vis"], batch["f1"], masks[:, :1], masks[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

            values = ddp.mean([float(v.detach()) for v in losses])
            if not all(math.isfinite(v) for v in values):
                raise SystemExit(f"non-finite loss at step {step}: {values}")
            elapsed = time.perf_counter() - t0
            recent = (recent + [values])[-100:]
            if log_file is not None:
                row = {"step": step, **{k: round(v, 6) for k, v in zip(LOSS_KEYS, values, strict=True)}}
                row.update(lr=float(f"{lr:.3e}"), elapsed_s=round(elapsed, 1))
                log_file.write(json.dumps(row) + "\n")
                if step % args.log_every == 0 or step == stop:
                    mean = np.mean(recent[-args.log_every :], axis=0)
                    text = " ".join(f"{k[:5]} {m:.4f}" for k, m in zip(LOSS_KEYS, mean, strict=True))
                    print(f"[stage2] step {step}/{args.iters} {text} lr {lr:.2e} {elapsed:.0f}s", flush=True)
                if step % args.save_every == 0 or step == stop:
                    log_file.flush()
                    save_last()
    finally:
        if log_file is not None:
            log_file.close()
    ddp.barrier()
    if step < args.iters:
        if ddp.main:
            print(f"[stage2] stopped at step {step}; continue with --resume", flush=True)
        return None
    if not ddp.main:
        return None
    return _export(model, schedule, args, data, step, elapsed, commands, device, ddp.world)


def _final_losses(log_path: Path, window: int = 100) -> dict:
    """Mean of the last ``window`` logged steps (read from the log, so a resumed run counts its earlier rows)."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line] if log_path.exists() else []
    rows = rows[-window:]
    result: dict = {"window_steps": len(rows)}
    for key in LOSS_KEYS:
        result[key] = float(np.mean([r[key] for r in rows])) if rows else float("nan")
    return result


def _export(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    args: argparse.Namespace,
    data: CacheSet,
    step: int,
    elapsed: float,
    commands: list[str],
    device: torch.device,
    world: int,
) -> dict:
    out = Path(args.out)
    criterion_target = args.vis_gradient_target or ("max" if args.objective == "semantic" else "vis")
    export = Path(args.export) if args.export else out / "stage2.pt"
    export.parent.mkdir(parents=True, exist_ok=True)
    manifest = data.manifest
    prior = {"kind": manifest["prior_kind"], "name": manifest["prior"], "masks_used": not args.no_masks}
    atomic_save(stage2_checkpoint(model, schedule, {"prior": prior["name"], "masks_used": prior["masks_used"]}),
                 export)
    device_name = describe_device(device, "threads per process")
    record = {
        "format": "sgdfuse_ros stage2 checkpoint: {'format','config','schedule','state_dict' (float32),'meta'}",
        "file": export.name,
        "sha256": sha256_file(export),
        "command": commands[0],
        "resumed_with": commands[1:],
        "config": model.config.to_dict(),
        "schedule": schedule.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameterisation": "x0 (the head's Tanh output is the predicted clean image in [-1, 1]); x0 := F1",
        "training": {
            "iterations": step,
            "batch": args.batch,
            "world_size": world,
            "crop": args.crop,
            "optimizer": "Adam",
            "lr": args.lr,
            "min_lr": args.min_lr,
            "warmup": args.warmup,
            "lr_schedule": "linear warm-up then cosine decay",
            "timesteps": f"uniform in [0, {schedule.start_timestep(args.max_strength)}]",
            "loss_weights": {
                "intensity": args.intensity_weight,
                "gradient": args.gradient_weight,
                "chroma": args.chroma_weight,
                "anchor": args.anchor_weight,
            },
            "objective": args.objective,
            "gradient_target_inside_m_vis": criterion_target,
            "seed": args.seed,
            "augmentation": "random square crops, horizontal and vertical flips",
        },
        "prior": prior,
        "stage1": {"weights": manifest["stage1_weights"], "sha256": manifest["stage1_sha256"]},
        "dataset": {
            "name": Path(manifest["data"]).name,
            "root": manifest["data"],
            "training_images": len(data),
            "night_proxy": bool(manifest.get("night_proxy")),
            "validation_every": args.validation_every,
        },
        "excluded_names": manifest["excluded_names"],
        "final_losses": _final_losses(out / "losses.jsonl"),
        "wall_time_s": round(elapsed, 1),
        "cache_build_time_s": manifest.get("build_time_s"),
        "cache_command_arguments": manifest.get("command_arguments"),
        "device": device_name,
        "torch_version": torch.__version__,
        "licence": LICENCE_NOTE,
        "created_utc": utc_now(),
    }
    export.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"[stage2] wrote {export} and {export.with_suffix('.json')}", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m sgdfuse_ros.training.stage2 ...`` (same options as the ``stage2`` subcommand)."""
    parser = argparse.ArgumentParser(prog="python -m sgdfuse_ros.training.stage2", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
