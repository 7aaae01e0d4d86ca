"""TEST DOUBLE — not the real package; written from the public documentation/source of launch_ros for CI only.

See launch_ros/actions.py: only ``launch_ros.actions.Node`` is provided.
"""

from . import actions  # noqa: F401 - real package exposes this submodule
