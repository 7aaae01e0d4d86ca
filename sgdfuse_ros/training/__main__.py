"""Command line: ``python -m sgdfuse_ros.training stage1 --data DIR --out RUN [options]``.

One subcommand per training stage: ``stage1`` (training/stage1.py) and ``stage2`` (training/stage2.py), and
``stage2-validate`` (training/stage2_validation.py) to score Stage II weights on the held-out pairs.
"""

from __future__ import annotations

import argparse

from .stage1 import add_stage1_parser
from .stage2 import add_stage2_arguments
from .stage2_validation import add_stage2_validate_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sgdfuse_ros.training", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    add_stage1_parser(subparsers)
    add_stage2_arguments(subparsers)
    add_stage2_validate_arguments(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
