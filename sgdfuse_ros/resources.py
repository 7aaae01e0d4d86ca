"""Locate the package's data files (config/, msg/, samples/) wherever the package was installed.

Looked up, in order: the package share folder found through the ament index (colcon install with the
workspace sourced), ``<sys.prefix>/share/sgdfuse_ros`` (installed into a virtual environment by
tools/build_ros_package.sh, where no AMENT_PREFIX_PATH is set), and the source tree this module sits
in (a checkout, or the symlinked developer install).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["find_resource", "resource_roots"]

PACKAGE = "sgdfuse_ros"


def resource_roots() -> list[Path]:
    """Candidate roots holding config/, msg/ and samples/, most specific first."""
    roots = []
    try:
        from ament_index_python.packages import get_package_share_directory

        roots.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: BLE001 - no ament index or package not in it: the other roots remain
        pass
    roots.append(Path(sys.prefix) / "share" / PACKAGE)
    roots.append(Path(__file__).resolve().parent.parent)  # resolved through symlinked installs
    return roots


def find_resource(relative: str) -> Path:
    """The first existing ``<root>/<relative>`` (file or folder); FileNotFoundError lists where it looked."""
    candidates = [root / relative for root in resource_roots()]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relative} not found (looked in: {', '.join(str(c) for c in candidates)})")
