"""`sgdfuse sheet`: one contact sheet across datasets (MSRS day and night, M3FD, medical) for the README.

    sgdfuse sheet --data ../shared/data --out docs/contact_sheet.png [--config FILE] [--set key=value ...]
                  [--pair DATASET:STEM[:PEER] ...] [--tile 160]

Each row is one pair: IR (or MRI) / VIS (or PET, SPECT) / F1 (Stage I) / final (what the configured pipeline
publishes) / a published method's output on the same pair / max(IR, Y_vis) with the visible colour. Datasets are
named by ``DATASETS`` (folder under ``--data``, the thermal-role and colour-role sub-folders, the peers folder);
the default rows are ``DEFAULT_PAIRS``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from ..files import find_pairs
from .baselines import maximum_with_visible_chroma
from .report import comparison_sheet
from .run import find_peers

__all__ = ["DATASETS", "DEFAULT_PAIRS", "SheetPair", "add_arguments", "build_rows", "parse_pair", "sheet_command"]


@dataclass(frozen=True)
class Dataset:
    """Where a dataset's pairs and peers' outputs live, relative to the data root."""

    folder: str
    ir_dir: str
    vis_dir: str
    peers: str
    default_peer: str


DATASETS: dict[str, Dataset] = {
    "msrs": Dataset("msrs", "ir", "vi", "peers/msrs", "SeAFusion"),
    "m3fd": Dataset("m3fd", "ir", "vi", "peers/m3fd", "CAF"),
    "roadscene": Dataset("roadscene", "ir", "vi", "peers/roadscene", ""),
    "mri_pet": Dataset("medical/mri_pet", "mri", "pet", "peers/medical/mri_pet", "CDDFuse"),
    "mri_spect": Dataset("medical/mri_spect", "mri", "spect", "peers/medical/mri_spect", "CDDFuse"),
}


@dataclass(frozen=True)
class SheetPair:
    """One row: a pair of ``dataset`` (a key of ``DATASETS``) and the peer shown beside it ("" = none)."""

    dataset: str
    stem: str
    peer: str


#: Two MSRS day pairs, two MSRS night pairs, one M3FD pair, one MRI-PET pair (all evaluation data).
DEFAULT_PAIRS: tuple[str, ...] = (
    "msrs:00537D",
    "msrs:01423D",
    "msrs:01016N",
    "msrs:01290N",
    "m3fd:00512",
    "mri_pet:21",
)


def parse_pair(text: str) -> SheetPair:
    """``DATASET:STEM[:PEER]`` -> SheetPair (the dataset's default peer when PEER is left out).

    Raises ValueError naming an unknown dataset or a malformed entry.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--pair must be DATASET:STEM[:PEER], got {text!r}")
    if parts[0] not in DATASETS:
        raise ValueError(f"unknown dataset {parts[0]!r} in {text!r}; known: {', '.join(DATASETS)}")
    peer = parts[2] if len(parts) == 3 else DATASETS[parts[0]].default_peer
    return SheetPair(parts[0], parts[1], peer)


def build_rows(pipeline: Any, data_root: str | Path, pairs: Sequence[SheetPair]) -> list[dict[str, Any]]:
    """Fuse each pair with ``pipeline`` (a ``FusionPipeline``) -> rows for ``report.comparison_sheet``.

    Raises FileNotFoundError naming a missing image (pair or peer output).
    """
    root = Path(data_root)
    rows = []
    for pair in pairs:
        ds = DATASETS[pair.dataset]
        found = {stem: (ir, vi) for stem, ir, vi in find_pairs(root / ds.folder, ds.ir_dir, ds.vis_dir)}
        if pair.stem not in found:
            raise FileNotFoundError(f"no pair {pair.stem} in {root / ds.folder} ({ds.ir_dir}/, {ds.vis_dir}/)")
        ir_path, vi_path = found[pair.stem]
        ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
        vis = cv2.imread(str(vi_path), cv2.IMREAD_COLOR)[..., ::-1].copy()
        result = pipeline.fuse(ir, vis, "mono8", "rgb8", keep_preliminary=True)
        peer = None
        if pair.peer:
            peer_file = find_peers(root / ds.peers, [pair.stem]).get(pair.peer, {}).get(pair.stem)
            if peer_file is None:
                raise FileNotFoundError(f"no output of {pair.peer} for {pair.stem} in {root / ds.peers}")
            peer = cv2.imread(str(peer_file), cv2.IMREAD_COLOR)[..., ::-1].copy()
        rows.append(
            {
                "label": f"{pair.dataset} {pair.stem}",
                "ir": ir,
                "vis": vis,
                "f1": result.preliminary,
                "final": result.fused,
                "peer": peer,
                "peer_name": pair.peer or "no peer",
                "pixel_max": maximum_with_visible_chroma(ir, vis),
            }
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="../shared/data", help="data root holding msrs/, m3fd/, medical/, peers/")
    parser.add_argument("--out", default="docs/contact_sheet.png", help="PNG to write")
    parser.add_argument(
        "--pair",
        action="append",
        metavar="DATASET:STEM[:PEER]",
        help=f"a row (repeatable; datasets: {', '.join(DATASETS)}); default: {' '.join(DEFAULT_PAIRS)}",
    )
    parser.add_argument("--tile", type=int, default=160, help="tile width in pixels (default 160)")


def sheet_command(args: argparse.Namespace, config: Any) -> int:
    """Build the pipeline from ``config``, fuse the rows and write the sheet; prints the path and its size."""
    from ..pipeline import FusionPipeline

    try:
        pairs = [parse_pair(p) for p in (args.pair or DEFAULT_PAIRS)]
    except ValueError as exc:
        print(f"sgdfuse sheet: {exc}")
        return 2
    if not Path(args.data).is_dir():
        print(f"sgdfuse sheet: data root {args.data} not found (it holds msrs/, m3fd/, medical/, peers/; pass --data)")
        return 2
    pipeline = FusionPipeline.from_config(config)
    try:
        rows = build_rows(pipeline, args.data, pairs)
    except FileNotFoundError as exc:
        print(f"sgdfuse sheet: {exc}")
        return 2
    stage2 = pipeline.refiner.name if pipeline.refiner is not None else ""
    comparison_sheet(rows, args.out, stage2_name=stage2, tile_width=args.tile)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB, {len(rows)} rows)")
    return 0
