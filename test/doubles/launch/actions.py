"""TEST DOUBLE — not the real package; written from the public documentation/source of launch for CI only.

``DeclareLaunchArgument(name, *, default_value=None, description=None, choices=None, **kwargs)``:
``execute(context)`` stores the default (performed to a string) when the argument was not given,
raises when it is required and missing or not among ``choices`` (launch/actions/declare_launch_argument.py);
``default_value`` is kept as a list of substitutions like the real property.
``OpaqueFunction(*, function, args=None, kwargs=None)``: ``execute(context)`` returns
``function(context, *args, **kwargs)`` (launch/actions/opaque_function.py).
"""

from __future__ import annotations

from typing import Any

from .utilities import normalize_to_list_of_substitutions, perform_substitutions


class Action:
    def __init__(self, *, condition: Any = None) -> None:
        self.condition = condition

    def execute(self, context: Any) -> Any:
        return None


class DeclareLaunchArgument(Action):
    def __init__(
        self,
        name: str,
        *,
        default_value: Any = None,
        description: str | None = None,
        choices: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._name = name
        self._default_value = None if default_value is None else normalize_to_list_of_substitutions(default_value)
        if choices is not None and len(choices) == 0:
            raise RuntimeError("Provided choices arg is empty. Use None to ignore the choice list.")
        self._choices = choices
        if description is None:
            self._description = "no description given" if choices is None else f"One of: {choices}"
        else:
            self._description = description

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_value(self) -> Any:
        return self._default_value

    @property
    def description(self) -> str:
        return self._description

    @property
    def choices(self) -> list[str] | None:
        return self._choices

    def execute(self, context: Any) -> None:
        configurations = context.launch_configurations
        if self._name not in configurations:
            if self._default_value is None:
                raise RuntimeError(f'Required launch argument "{self._name}" was not provided.')
            configurations[self._name] = perform_substitutions(context, self._default_value)
        if self._choices is not None and configurations[self._name] not in self._choices:
            raise RuntimeError(f'Argument "{self._name}" provided value is not valid: {self._choices}')


class OpaqueFunction(Action):
    def __init__(self, *, function: Any, args: Any = None, kwargs: dict | None = None, **action_kwargs: Any) -> None:
        super().__init__(**action_kwargs)
        if not callable(function):
            raise TypeError(f"OpaqueFunction expected a callable for 'function', got '{type(function)}'")
        self.function = function
        self.args = list(args or [])
        self.kwargs = dict(kwargs or {})

    def execute(self, context: Any) -> Any:
        return self.function(context, *self.args, **self.kwargs)


__all__ = ["Action", "DeclareLaunchArgument", "OpaqueFunction"]
