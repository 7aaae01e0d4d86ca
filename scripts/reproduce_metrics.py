#!/usr/bin/env python3
"""Reproduce published fusion-metric means on MSRS with sgdfuse_ros.metrics.

Computes EN, SD, SF, AG, MI, SCD, VIF, Qabf and SSIM for three fused sets over every pair of a
dataset folder and prints a markdown table against third-party reference means:

* the peer method's outputs (``--peers``, matched to the inputs by file stem),
* the pixel maximum ``max(IR, VIS)`` of the grayscale sources,
* the pixel average ``round((IR + VIS) / 2)`` of the grayscale sources (numpy rounding, half to even;
  the reference values were computed on this rounded image, see docs/metrics.md).

Example (one CPU thread; about a minute for the 80 MSRS pairs)::

    python scripts/reproduce_metrics.py --data ../shared/data/msrs \\
        --peers ../shared/data/peers/msrs/SeAFusion

``--dump-json`` also writes per-image values for ``--dump-names`` (this is how
test/data/metrics_reference.json was made).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

try:
    from sgdfuse_ros import metrics
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sgdfuse_ros import metrics

#: Third-party reference means over the 80 MSRS pairs of ../shared/data/msrs (see docs/metrics.md).
REFERENCE: dict[str, dict[str, float]] = {
    "SeAFusion": dict(
        zip(
            metrics.METRIC_NAMES,
            (6.6541, 42.9921, 11.4644, 3.7591, 2.8584, 1.6946, 0.9780, 0.6823, 1.3992),
            strict=True,
        )
    ),
    "pixel maximum": dict(
        zip(
            metrics.METRIC_NAMES,
            (6.6263, 43.5222, 11.4091, 3.5835, 4.5438, 1.6394, 1.0493, 0.7225, 1.3951),
            strict=True,
        )
    ),
    "pixel average": dict(
        zip(
            metrics.METRIC_NAMES,
            (5.7478, 24.0870, 6.1928, 2.0771, 1.8691, 1.2415, 0.6930, 0.3699, 1.4421),
            strict=True,
        )
    ),
}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_gray(path: Path) -> np.ndarray:
    """Grayscale float64 (H, W) in [0, 255], read as the reference evaluator reads files."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return metrics.to_gray(img)


def pixel_max(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Pixel-wise maximum of two grayscale images (float64, integer-valued for integer inputs)."""
    return np.maximum(ir, vis)


def pixel_average(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Pixel-wise mean rounded to integer grey levels with numpy's half-to-even rounding."""
    return np.round((ir + vis) / 2.0)


def find_by_stem(folder: Path, stem: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no image with stem {stem!r} in {folder}")


def evaluate_dataset(
    data: Path, peers: Path, peer_name: str, names: list[str] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-image metrics: ``{fused set: {stem: {metric: value}}}`` for the peer, pixel max and average."""
    ir_dir, vi_dir = data / "ir", data / "vi"
    stems = sorted(p.stem for p in ir_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if names:
        missing = sorted(set(names) - set(stems))
        if missing:
            raise FileNotFoundError(f"not in {ir_dir}: {missing}")
        stems = [s for s in stems if s in set(names)]
    results: dict[str, dict[str, dict[str, float]]] = {peer_name: {}, "pixel maximum": {}, "pixel average": {}}
    for stem in stems:
        ir = read_gray(find_by_stem(ir_dir, stem))
        vis = read_gray(find_by_stem(vi_dir, stem))
        fused_sets = {
            peer_name: read_gray(find_by_stem(peers, stem)),
            "pixel maximum": pixel_max(ir, vis),
            "pixel average": pixel_average(ir, vis),
        }
        for key, fused in fused_sets.items():
            results[key][stem] = metrics.evaluate(fused, ir, vis)
    return results


def markdown_table(means: dict[str, dict[str, float]], reference: dict[str, dict[str, float]]) -> str:
    """Rows 'ours', 'reference' and 'rel. error' per fused set; columns = METRIC_NAMES."""
    names = metrics.METRIC_NAMES
    lines = [
        "| fused | row | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for key, ours in means.items():
        lines.append(f"| {key} | ours | " + " | ".join(f"{ours[n]:.4f}" for n in names) + " |")
        ref = reference.get(key)
        if ref is None:
            continue
        lines.append("| | reference | " + " | ".join(f"{ref[n]:.4f}" for n in names) + " |")
        errs = [100.0 * (ours[n] - ref[n]) / abs(ref[n]) for n in names]
        lines.append("| | rel. error | " + " | ".join(f"{e:+.3f} %" for e in errs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="dataset folder with ir/ and vi/")
    parser.add_argument("--peers", type=Path, required=True, help="folder of a peer method's fused outputs")
    parser.add_argument("--peer-name", default=None, help="label of the peer set (default: folder name)")
    parser.add_argument("--names", default=None, help="comma-separated stems to restrict to (default: all)")
    parser.add_argument("--dump-json", type=Path, default=None, help="write per-image values to this file")
    parser.add_argument(
        "--dump-names", default="00004N,00537D,00055D", help="comma-separated stems written by --dump-json"
    )
    args = parser.parse_args(argv)

    # One thread: the machine is shared. numpy's element-wise operations used here are single-threaded.
    cv2.setNumThreads(1)
    peer_name = args.peer_name or args.peers.name
    names = [n for n in args.names.split(",") if n] if args.names else None
    t0 = time.perf_counter()
    per_image = evaluate_dataset(args.data, args.peers, peer_name, names)
    elapsed = time.perf_counter() - t0

    n_pairs = len(next(iter(per_image.values())))
    means = {
        key: {m: float(np.mean([v[m] for v in rows.values()])) for m in metrics.METRIC_NAMES}
        for key, rows in per_image.items()
    }
    reference = dict(REFERENCE)
    if peer_name != "SeAFusion":
        reference.pop("SeAFusion")
    print(f"{n_pairs} pairs from {args.data}, peer outputs from {args.peers} ({elapsed:.1f} s)\n")
    print(markdown_table(means, reference))
    worst = max(
        (abs(means[k][m] - ref[m]) / abs(ref[m]), k, m) for k, ref in reference.items() for m in metrics.METRIC_NAMES
    )
    print(f"\nlargest relative error: {100 * worst[0]:.4f} % ({worst[1]}, {worst[2]})")

    if args.dump_json is not None:
        dump = [n for n in args.dump_names.split(",") if n]
        payload = {
            "description": (
                "Per-image fusion metrics (sgdfuse_ros.metrics.evaluate) for regression tests. 'pixel maximum' = "
                "max(IR, VIS) and 'pixel average' = numpy.round((IR + VIS) / 2) of the grayscale sources "
                "(to_gray of cv2.imread); the peer set is the peer method's fused output read the same way. "
                "Values come from this implementation; its means over the 80 MSRS pairs match the third-party "
                "reference table to 4 decimals (docs/metrics.md)."
            ),
            "generated_by": "scripts/reproduce_metrics.py --dump-json",
            "data": str(args.data),
            "peers": str(args.peers),
            "metric_names": list(metrics.METRIC_NAMES),
            "values": {key: {stem: rows[stem] for stem in dump if stem in rows} for key, rows in per_image.items()},
        }
        args.dump_json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"per-image values for {dump} written to {args.dump_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
