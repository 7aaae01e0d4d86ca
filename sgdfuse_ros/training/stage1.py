"""Stage I training: random crops of registered pairs, Adam, intensity + gradient loss, resumable.

Run folder layout (``--out``):
    last.pt        resumable checkpoint (model, optimizer, step, elapsed time, arguments)
    losses.csv     one row per step: step,total,intensity,gradient,lr,elapsed_s
    stage1.pt/.json  final weights in the shipped format and their provenance (unless ``--export`` says where)
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..losses import Stage1Loss
from ..models.stage1 import Stage1Config, build_stage1, stage1_checkpoint
from .common import atomic_save, describe_device, lr_at, relative_arguments
from .data import HELD_OUT_NAMES, PairSet, sample_batch
from .validation import CONDITIONS, ValidationResult, split_validation, validate_stage1

__all__ = ["add_stage1_parser", "train_stage1"]

PRIOR_NOTE = "none (Stage I does not use masks)"
LICENCE_NOTE = (
    "Trained only on the RoadScene pairs found under the data folder (RoadScene, hanna-xu/RoadScene, "
    "built from the FLIR ADAS thermal dataset); the held-out bundled pairs were excluded. No LLVIP data "
    "was used. Check the RoadScene / FLIR ADAS terms before redistributing the weights."
)
LOSS_COLUMNS = ["step", "total", "intensity", "gradient", "structure", "lr", "elapsed_s"]


def add_stage1_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("stage1", help="train the Stage I fusion network (no masks)")
    p.add_argument("--data", required=True, help="folder with ir/ and vi/ subfolders of registered pairs")
    p.add_argument("--ir-dir", default="ir", help="thermal-role sub-folder of --data (medical: mri)")
    p.add_argument("--vis-dir", default="vi", help="colour-role sub-folder of --data (medical: pet, spect)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, loss log, final weights)")
    p.add_argument("--iters", type=int, default=3000, help="total optimisation steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128, help="square crop side in pixels (>= 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate at the start of the cosine schedule")
    p.add_argument("--min-lr", type=float, default=5e-5, help="learning rate at the end of the cosine schedule")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--intensity-weight", type=float, default=1.0)
    p.add_argument("--gradient-weight", type=float, default=1.0)
    p.add_argument("--structure-weight", type=float, default=0.0, help="weight of the SSIM term (0: off)")
    p.add_argument(
        "--gradient-gain", type=float, default=1.0, help="gradient target = gain x the stronger source gradient"
    )
    p.add_argument(
        "--darken-prob", type=float, default=0.0, help="probability of a night-like (darkened) visible crop"
    )
    p.add_argument(
        "--val-every", type=int, default=0, help="validate every N steps on the validation split (0: no split)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (the dev machine is shared)")
    p.add_argument("--save-every", type=int, default=250, help="write last.pt every N steps")
    p.add_argument("--log-every", type=int, default=50, help="print running losses every N steps")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop after this step with a resumable checkpoint (no export)"
    )
    p.add_argument("--export", default=None, help="final weights path (default <out>/stage1.pt); JSON beside it")
    p.add_argument(
        "--exclude", nargs="*", default=list(HELD_OUT_NAMES), help="pair names (file stems) left out of training"
    )
    p.set_defaults(func=train_stage1)
    return p


def _command_line() -> str:
    return shlex.join([Path(sys.executable).name, "-m", "sgdfuse_ros.training", *relative_arguments(sys.argv[1:])])


def _trim_log(log_path: Path, last_step: int) -> None:
    """Keep only rows up to ``last_step`` (rows written after the last checkpoint are replayed on resume)."""
    if not log_path.exists():
        return
    with log_path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= last_step]
    with log_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _validate(args: argparse.Namespace) -> None:
    if args.iters < 1 or args.batch < 1 or args.crop < 16:
        raise SystemExit("--iters and --batch must be >= 1 and --crop >= 16")
    if args.save_every < 1 or args.log_every < 1:
        raise SystemExit("--save-every and --log-every must be >= 1")
    if args.val_every < 0 or not 0.0 <= args.darken_prob <= 1.0:
        raise SystemExit("--val-every must be >= 0 and --darken-prob in [0, 1]")


def train_stage1(args: argparse.Namespace) -> dict | None:
    """Train (or resume) Stage I as described by the parsed ``args``.

    Returns the provenance record written beside the exported weights, or None when ``--stop-at`` ended the
    run early (``last.pt`` then holds everything ``--resume`` needs).
    """
    _validate(args)
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path, log_path = out / "last.pt", out / "losses.csv"

    data = PairSet.load(args.data, args.exclude, args.ir_dir, args.vis_dir)
    print(f"[stage1] {len(data)} pairs from {args.data} (excluded: {', '.join(args.exclude) or 'none'})", flush=True)
    val_data = None
    if args.val_every:
        data, val_data = split_validation(data)
        print(f"[stage1] validation split: {len(val_data)} pairs ({', '.join(val_data.names)})", flush=True)

    torch.manual_seed(args.seed)  # model initialisation; batches use their own per-step generators
    model = build_stage1(Stage1Config()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion = Stage1Loss(args.intensity_weight, args.gradient_weight, args.structure_weight, args.gradient_gain)
    step, elapsed, commands = 0, 0.0, [_command_line()]
    best: dict = {"score": [-1, -1], "step": 0}

    if args.resume:
        if not last_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {last_path}")
        ckpt = torch.load(last_path, map_location=device, weights_only=True)
        if ckpt["config"] != model.config.to_dict():
            raise SystemExit(f"--resume: {last_path} was written for a different architecture")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, elapsed, commands = int(ckpt["step"]), float(ckpt["elapsed_s"]), [*ckpt["commands"], commands[0]]
        best = ckpt.get("best", best)
        _trim_log(log_path, step)
        print(f"[stage1] resumed from {last_path} at step {step}", flush=True)
    elif last_path.exists():
        raise SystemExit(f"{last_path} exists: pass --resume to continue or choose another --out")

    def save_last() -> None:
        state = {
            "step": step,
            "elapsed_s": elapsed,
            "commands": commands,
            "config": model.config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "best": best,
        }
        atomic_save(state, last_path)

    def validate() -> None:
        """Score the current weights on the validation split and keep them; remember the best step."""
        result = validate_stage1(model, val_data, device)
        row = {"step": step, **result.row()}
        _append_validation(out / "validation.csv", row)
        print(f"[stage1] validation step {step}: {_describe(result)}", flush=True)
        # Every validated state is kept (0.3 MB each): the choice can be re-examined without retraining.
        (out / "validated").mkdir(exist_ok=True)
        atomic_save(stage1_checkpoint(model), out / "validated" / f"step{step:06d}.pt")
        if list(result.score) >= list(best["score"]):  # ties go to the later (longer-trained) weights
            best.update(score=list(result.score), step=step, row=row)

    new_log = not log_path.exists() or log_path.stat().st_size == 0
    recent: list[list[float]] = []
    model.train()
    with log_path.open("a", newline="") as log_file:
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(LOSS_COLUMNS)
        t0 = time.perf_counter() - elapsed
        stop = args.iters if args.stop_at is None else min(args.iters, args.stop_at)
        while step < stop:
            step += 1
            # A generator per step makes every batch a function of (seed, step): resuming replays nothing and
            # skips nothing, without saving generator state.
            rng = np.random.default_rng([args.seed, step])
            ir, vis_y = sample_batch(data, args.batch, args.crop, rng, args.darken_prob)
            ir, vis_y = ir.to(device, non_blocking=True), vis_y.to(device, non_blocking=True)
            lr = lr_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            fused = model(ir, vis_y)
            losses = criterion(fused, ir, vis_y)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

            values = [losses.total.item(), losses.intensity.item(), losses.gradient.item(), losses.structure.item()]
            if not all(math.isfinite(v) for v in values):
                raise SystemExit(f"non-finite loss at step {step}: {values}")
            elapsed = time.perf_counter() - t0
            writer.writerow([step, *(f"{v:.6f}" for v in values), f"{lr:.3e}", f"{elapsed:.1f}"])
            recent = (recent + [values])[-100:]
            if step % args.log_every == 0 or step == args.iters:
                log_file.flush()
                mean = np.mean(recent[-args.log_every :], axis=0)
                print(
                    f"[stage1] step {step}/{args.iters} total {mean[0]:.4f} int {mean[1]:.4f} "
                    f"grad {mean[2]:.4f} struct {mean[3]:.4f} lr {lr:.2e} {elapsed:.0f}s",
                    flush=True,
                )
            if val_data is not None and (step % args.val_every == 0 or step == args.iters):
                validate()
            if step % args.save_every == 0 or step == stop:
                log_file.flush()
                save_last()

    if step < args.iters:
        print(f"[stage1] stopped at step {step}; continue with --resume", flush=True)
        return None
    if val_data is not None:
        # Export the weights validation chose (the last ones when they score as well as any earlier).
        chosen = out / "validated" / f"step{best['step']:06d}.pt"
        model.load_state_dict(torch.load(chosen, map_location=device, weights_only=True)["state_dict"])
    return _export(model, args, data, step, elapsed, commands, recent, device, val_data, best)


def _describe(result: ValidationResult) -> str:
    parts = [f"pictures passed {result.score[0]}, rule counts {result.score[1]}"]
    for c in CONDITIONS:
        parts.append(
            f"{c}: >=max {result.at_least_max[c]}/9, above max {result.above_max[c]}/5, "
            f"pictures {result.pictures_passed[c]}/{result.pairs}"
        )
    return "; ".join(parts)


def _append_validation(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _final_losses(log_path: Path, recent: list[list[float]], window: int = 100) -> dict:
    """Mean of the last ``window`` logged steps (from the CSV, so a resumed run counts its earlier rows)."""
    rows = recent
    if log_path.exists():
        with log_path.open(newline="") as f:
            logged = [[float(r[k]) for k in LOSS_COLUMNS[1:5]] for r in csv.DictReader(f)]
        rows = logged[-window:] or recent
    mean = np.mean(rows, axis=0) if rows else [float("nan")] * 4
    return {"window_steps": len(rows), **{k: float(v) for k, v in zip(LOSS_COLUMNS[1:5], mean, strict=True)}}


def _export(
    model: torch.nn.Module,
    args: argparse.Namespace,
    data: PairSet,
    step: int,
    elapsed: float,
    commands: list[str],
    recent: list[list[float]],
    device: torch.device,
    val_data: PairSet | None = None,
    best: dict | None = None,
) -> dict:
    export = Path(args.export) if args.export else Path(args.out) / "stage1.pt"
    export.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(stage1_checkpoint(model), export)
    digest = hashlib.sha256(export.read_bytes()).hexdigest()
    device_name = describe_device(device)
    record = {
        "format": "sgdfuse_ros stage1 checkpoint: {'config': dict, 'state_dict': float32 tensors}",
        "file": export.name,
        "sha256": digest,
        "command": commands[0],
        "resumed_with": commands[1:],
        "config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {
            "iterations": step,
            "batch": args.batch,
            "crop": args.crop,
            "optimizer": "Adam",
            "lr": args.lr,
            "min_lr": args.min_lr,
            "warmup": args.warmup,
            "schedule": "linear warm-up then cosine decay",
            "intensity_weight": args.intensity_weight,
            "gradient_weight": args.gradient_weight,
            "structure_weight": args.structure_weight,
            "gradient_gain": args.gradient_gain,
            "seed": args.seed,
            "augmentation": "random square crops, horizontal and vertical flips"
            + (f", darkened visible crop with probability {args.darken_prob}" if args.darken_prob else ""),
            "visible_luminance": "BT.601 full-range Y from RGB",
        },
        "dataset": {
            "name": Path(args.data).resolve().name,
            "root": str(args.data),
            "folders": [args.ir_dir, args.vis_dir],
            "pairs": len(data),
        },
        "excluded_names": list(args.exclude),
        "validation": None
        if val_data is None
        else {
            "pairs": list(val_data.names),
            "every_steps": args.val_every,
            "chosen_step": best["step"] if best else None,
            "chosen_scores": best.get("row") if best else None,
        },
        "iterations": step,
        "final_losses": _final_losses(Path(args.out) / "losses.csv", recent),
        "wall_time_s": round(elapsed, 1),
        "device": device_name,
        "torch_version": torch.__version__,
        "prior": PRIOR_NOTE,
        "licence": LICENCE_NOTE,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    export.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"[stage1] wrote {export} and {export.with_suffix('.json')}", flush=True)
    return record
