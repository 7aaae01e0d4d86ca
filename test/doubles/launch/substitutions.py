"""TEST DOUBLE — not the real package; written from the public documentation/source of launch for CI only.

``LaunchConfiguration(variable_name, *, default=None)``: ``perform(context)`` returns the launch
configuration as a string, the default when unset, and raises SubstitutionFailure when neither
exists (as launch/substitutions/launch_configuration.py). ``TextSubstitution(*, text)``.
"""

from __future__ import annotations

from typing import Any


class SubstitutionFailure(RuntimeError):  # noqa: N818 - real API name
    """A substitution could not be performed."""


class Substitution:
    def perform(self, context: Any) -> str:
        raise NotImplementedError


class TextSubstitution(Substitution):
    def __init__(self, *, text: str) -> None:
        self.text = text

    def perform(self, context: Any) -> str:
        return self.text


class LaunchConfiguration(Substitution):
    def __init__(self, variable_name: str, *, default: Any = None) -> None:
        if not isinstance(variable_name, str):
            raise TypeError("LaunchConfiguration expects a str variable_name")
        self.variable_name = variable_name
        self.default = None if default is None else str(default)

    def perform(self, context: Any) -> str:
        configurations = context.launch_configurations
        if self.variable_name in configurations:
            return configurations[self.variable_name]
        if self.default is None:
            raise SubstitutionFailure(f"launch configuration '{self.variable_name}' does not exist")
        return self.default


__all__ = ["LaunchConfiguration", "Substitution", "SubstitutionFailure", "TextSubstitution"]
