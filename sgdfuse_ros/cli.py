"""`sgdfuse`: fuse thermal/visible image pairs or folders to files, without ROS.

    sgdfuse fuse --thermal ir.png --rgb vis.png --out fused.png
    sgdfuse fuse --pairs samples/pairs --out out/fused          # folder with ir/ and vi/ (matched by stem)

Options --config (a ROS parameter file such as config/fuse.yaml) and --set section.key=value
configure the same FuseConfig the ROS node uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

from .config import ConfigError, FuseConfig, load_config

__all__ = ["find_pairs", "main", "parse_overrides", "read_thermal", "read_visible"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_thermal(path: str | Path) -> tuple[np.ndarray, str]:
    """Thermal image file -> (array [H, W], ROS encoding). 16-bit files stay raw counts ('mono16').

    Colour-stored thermal images (some datasets save grey as RGB) are converted to grey.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"cannot read thermal image: {path}")
    if image.ndim == 3:
        image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
    encoding = "mono16" if image.dtype == np.uint16 else "mono8"
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported thermal image type {image.dtype}: {path}")
    return image, encoding


def read_visible(path: str | Path) -> tuple[np.ndarray, str]:
    """Visible image file -> (uint8 array [H, W, 3], 'bgr8')."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read visible image: {path}")
    return image, "bgr8"


def find_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(stem, ir path, vi path) for every stem present in both ``folder/ir`` and ``folder/vi``, sorted."""
    folder = Path(folder)
    ir_dir, vi_dir = folder / "ir", folder / "vi"
    if not ir_dir.is_dir() or not vi_dir.is_dir():
        raise FileNotFoundError(f"{folder} must contain ir/ and vi/ folders")

    def by_stem(directory: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    ir, vi = by_stem(ir_dir), by_stem(vi_dir)
    return [(stem, ir[stem], vi[stem]) for stem in sorted(ir.keys() & vi.keys())]


def parse_overrides(items: Sequence[str]) -> dict[str, object]:
    """["section.key=value", ...] -> {"section.key": value} with YAML typing of the values."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(item, item, "--set expects section.key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _config_from_args(args: argparse.Namespace) -> FuseConfig:
    overrides = parse_overrides(args.set or [])
    if args.device:
        overrides["compute.device"] = args.device
    return load_config(args.config, overrides)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def _fuse_command(args: argparse.Namespace) -> int:
    from .pipeline import FusionPipeline  # torch import only when fusing

    config = _config_from_args(args)
    if args.pairs:
        jobs = [(stem, ir, vi, Path(args.out) / f"{stem}.png") for stem, ir, vi in find_pairs(args.pairs)]
        if not jobs:
            print(f"no pairs found in {args.pairs}", file=sys.stderr)
            return 1
    elif args.thermal and args.rgb:
        jobs = [(Path(args.rgb).stem, Path(args.thermal), Path(args.rgb), Path(args.out))]
    else:
        print("give --pairs DIR, or --thermal FILE and --rgb FILE", file=sys.stderr)
        return 2
    pipeline = FusionPipeline.from_config(config)
    print(
        f"prior: {pipeline.prior_name}; device: {pipeline.device}"
        + (f" ({pipeline.device_note})" if pipeline.device_note else "")
    )
    timings: list[dict[str, float]] = []
    for stem, ir_path, vi_path, out_path in jobs:
        thermal, thermal_encoding = read_thermal(ir_path)
        visible, visible_encoding = read_visible(vi_path)
        result = pipeline.fuse(thermal, visible, thermal_encoding, visible_encoding)
        _write_rgb(out_path, result.fused)
        if args.save_intermediate:
            stem_dir = out_path.parent
            _write_rgb(stem_dir / "preliminary" / out_path.name, result.preliminary)
            for name, mask in (("mask_ir", result.mask_ir), ("mask_vis", result.mask_vis)):
                (stem_dir / name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(stem_dir / name / out_path.name), mask)
        timings.append(result.timings_ms)
        print(f"{stem}: {out_path}  ({result.timings_ms['total']:.0f} ms)")
    if args.timings:
        Path(args.timings).write_text(json.dumps(timings, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgdfuse", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fuse = commands.add_parser("fuse", help="fuse image pairs to files")
    fuse.add_argument("--pairs", help="folder with ir/ and vi/ sub-folders (pairs matched by file stem)")
    fuse.add_argument("--thermal", help="one thermal image (8-bit or 16-bit)")
    fuse.add_argument("--rgb", help="one visible image")
    fuse.add_argument("--out", required=True, help="output file (single pair) or folder (--pairs)")
    fuse.add_argument("--config", help="ROS parameter file, e.g. config/fuse.yaml (defaults otherwise)")
    fuse.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter, e.g. prior.kind=sam")
    fuse.add_argument("--device", help="shortcut for --set compute.device=...")
    fuse.add_argument("--save-intermediate", action="store_true", help="also write F1 and both masks")
    fuse.add_argument("--timings", help="write per-pair stage timings (ms) to this JSON file")
    fuse.set_defaults(handler=_fuse_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sgdfuse` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as error:
        print(f"sgdfuse: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
