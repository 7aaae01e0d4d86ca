"""TEST DOUBLE — not the real package; written from the public documentation/source of launch for CI only.

The real ``launch`` (ros2/launch) is not on PyPI. This stand-in provides just enough of its API to
execute a Python launch file's ``generate_launch_description()`` and inspect the result:
``LaunchDescription(entities)`` (``.entities``), ``LaunchContext`` (``.launch_configurations``),
``launch.actions.DeclareLaunchArgument`` / ``OpaqueFunction``, ``launch.substitutions``
``LaunchConfiguration`` / ``TextSubstitution`` and ``launch.utilities.perform_substitutions``.
Signatures follow the real classes (keyword-only arguments where the real ones have them) so a
launch file that works here calls the real API the same way. Nothing is executed as a process.
"""

from __future__ import annotations

from typing import Any

from . import actions, substitutions, utilities  # noqa: F401 - real package exposes these submodules


class LaunchContext:
    """Holds the launch configurations (launch argument values by name)."""

    def __init__(self, *, argv: list[str] | None = None, noninteractive: bool = False) -> None:
        self.argv = list(argv or [])
        self.noninteractive = noninteractive
        self._launch_configurations: dict[str, str] = {}

    @property
    def launch_configurations(self) -> dict[str, str]:
        return self._launch_configurations


class LaunchDescription:
    """An ordered list of launch entities (actions)."""

    def __init__(self, initial_entities: list[Any] | None = None, *, deprecated_reason: str | None = None) -> None:
        self._entities = list(initial_entities or [])

    @property
    def entities(self) -> list[Any]:
        return self._entities

    def add_action(self, action: Any) -> None:
        self._entities.append(action)


__all__ = ["LaunchContext", "LaunchDescription", "actions", "substitutions", "utilities"]
