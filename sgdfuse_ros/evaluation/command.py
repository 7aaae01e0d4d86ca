"""The command line of ``sgdfuse evaluate``: its arguments, the call that reproduces them, and the entry point.

    sgdfuse evaluate --data DIR [--peers DIR/peers/<dataset>] [--limit N | --stems A,B] [--out out/eval/<name>]
                     [--config FILE] [--set key=value ...] [--ablations] [--no-hfah-weights FILE]

``add_arguments`` fills the subparser (``sgdfuse_ros.cli`` builds it; argparse only, no torch import);
``evaluate_command`` selects the pairs, builds the pipeline and hands both to ``run.run_evaluation``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .ablation import DEFAULT_MORPH_RADII
from .run import run_evaluation, select_pairs

if TYPE_CHECKING:
    from ..config import FuseConfig

__all__ = ["add_arguments", "evaluate_command"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgdfuse evaluate`` (``--config``, ``--set`` and ``--device`` as ``sgdfuse fuse``)."""
    parser.add_argument("--data", required=True, help="dataset folder with ir/ and vi/ (pairs matched by file stem)")
    parser.add_argument("--peers", help="folder of published outputs, <peers>/<Method>/<stem>.png (by stem)")
    parser.add_argument(
        "--ir-dir", default="ir", help="sub-folder of --data with the thermal-role images (medical: mri)"
    )
    parser.add_argument(
        "--vis-dir", default="vi", help="sub-folder of --data with the colour-role images (medical: pet, spect)"
    )
    parser.add_argument("--limit", type=int, help="evaluate N pairs, evenly spaced over the sorted names")
    parser.add_argument(
        "--stems", action="append", metavar="A,B,...", help="evaluate only these pair names (comma-separated)"
    )
    parser.add_argument("--out", help="report folder (default out/eval/<data folder name>)")
    parser.add_argument("--config", help="ROS parameter file, e.g. config/fuse.yaml (defaults otherwise)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter, e.g. prior.kind=sam")
    parser.add_argument("--device", help="shortcut for --set compute.device=...")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    parser.add_argument("--ablations", action="store_true", help="also run the ablation variants (Stage II re-runs)")
    parser.add_argument(
        "--morph-radii",
        type=int,
        nargs="+",
        default=list(DEFAULT_MORPH_RADII),
        help="mask erosion/dilation radii in pixels for the ablations (default 3 7)",
    )
    parser.add_argument(
        "--no-hfah-weights", help="Stage II checkpoint trained without HFAH (default: weights/stage2*no*hfah*.pt)"
    )
    parser.add_argument(
        "--ablation-steps", type=int, nargs="*", default=[], help="also sample Stage II with these DDIM step counts"
    )
    parser.add_argument(
        "--ablation-strengths", type=float, nargs="*", default=[], help="also sample Stage II from these strengths"
    )
    parser.add_argument("--sheet-rows", type=int, default=4, help="pairs shown in the contact sheet (default 4)")
    parser.add_argument("--sheet-tile", type=int, default=240, help="contact-sheet tile width in pixels (default 240)")
    parser.add_argument(
        "--sheet-peers", metavar="A,B,...", help="peers shown in the contact sheet (default: all; metrics cover all)"
    )
    parser.add_argument("--no-images", action="store_true", help="do not write the fused images under <out>/images")


def _command_line(args: argparse.Namespace) -> str:
    """The ``sgdfuse evaluate`` call that reproduces ``args`` (for the report)."""
    parts = ["sgdfuse", "evaluate", "--data", str(args.data)]
    if (args.ir_dir, args.vis_dir) != ("ir", "vi"):
        parts += ["--ir-dir", args.ir_dir, "--vis-dir", args.vis_dir]
    for flag, value in (("--peers", args.peers), ("--limit", args.limit), ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    parts += [f"--stems {s}" for s in args.stems or []]
    if args.config:
        parts += ["--config", args.config]
    parts += [f"--set {s}" for s in args.set or []]
    if args.device:
        parts += ["--device", args.device]
    if args.sheet_rows != 4:
        parts += ["--sheet-rows", str(args.sheet_rows)]
    if args.sheet_tile != 240:
        parts += ["--sheet-tile", str(args.sheet_tile)]
    if args.sheet_peers:
        parts += ["--sheet-peers", args.sheet_peers]
    if args.ablations:
        parts.append("--ablations")
        if list(args.morph_radii) != list(DEFAULT_MORPH_RADII):
            parts += ["--morph-radii", *map(str, args.morph_radii)]
        if args.no_hfah_weights:
            parts += ["--no-hfah-weights", args.no_hfah_weights]
        if args.ablation_steps:
            parts += ["--ablation-steps", *map(str, args.ablation_steps)]
        if args.ablation_strengths:
            parts += ["--ablation-strengths", *(f"{x:g}" for x in args.ablation_strengths)]
    return " ".join(parts)


def evaluate_command(args: argparse.Namespace, config: FuseConfig) -> int:
    """Run ``sgdfuse evaluate`` with a parsed namespace and its FuseConfig; returns the exit status."""
    import torch

    from ..files import find_pairs
    from ..pipeline import FusionPipeline

    stems = [s.strip() for item in (args.stems or []) for s in item.split(",") if s.strip()]
    pairs = select_pairs(find_pairs(args.data, args.ir_dir, args.vis_dir), stems or None, args.limit)
    if not pairs:
        raise ValueError(f"no pairs found in {args.data} (expected ir/<name>.* and vi/<name>.* files)")
    out = Path(args.out) if args.out else Path("out") / "eval" / Path(args.data).resolve().name
    pipeline = FusionPipeline.from_config(config)
    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)
    run_evaluation(
        pairs,
        pipeline,
        out,
        peers_dir=args.peers,
        ablations=args.ablations,
        morph_radii=args.morph_radii,
        no_hfah_weights=args.no_hfah_weights,
        sampler_steps=args.ablation_steps,
        sampler_strengths=args.ablation_strengths,
        sheet_rows=args.sheet_rows,
        sheet_tile=args.sheet_tile,
        sheet_peers=[p.strip() for p in args.sheet_peers.split(",")] if args.sheet_peers else None,
        save_images=not args.no_images,
        dataset=str(args.data),
        command=_command_line(args),
    )
    return 0
