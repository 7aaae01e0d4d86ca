"""TEST DOUBLE — not the real package; written from the public documentation/source of launch_ros for CI only.

``Node`` with the keyword-only signature of launch_ros/actions/node.py (Humble and newer):
``executable, package, name, namespace, exec_name, parameters, remappings, ros_arguments,
arguments, **kwargs`` where kwargs go to launch.actions.ExecuteProcess (only its documented
keyword names are accepted, so a misspelt or outdated argument such as ``node_executable`` fails
here as it would on a robot). Nothing is started: the arguments are recorded in ``.kwargs``.
"""

from __future__ import annotations

from typing import Any

from launch.actions import Action

# Keyword arguments of launch.actions.ExecuteProcess / ExecuteLocal that Node forwards.
_EXECUTE_PROCESS_KWARGS = {
    "condition",
    "cwd",
    "emulate_tty",
    "env",
    "additional_env",
    "log_cmd",
    "on_exit",
    "output",
    "output_format",
    "prefix",
    "respawn",
    "respawn_delay",
    "respawn_max_retries",
    "shell",
    "sigkill_timeout",
    "sigterm_timeout",
    "cached_output",
}


class Node(Action):
    def __init__(
        self,
        *,
        executable: Any,
        package: Any = None,
        name: Any = None,
        namespace: Any = None,
        exec_name: Any = None,
        parameters: Any = None,
        remappings: Any = None,
        ros_arguments: Any = None,
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - _EXECUTE_PROCESS_KWARGS
        if unknown:
            raise TypeError(f"Node got unexpected keyword argument(s): {sorted(unknown)}")
        if parameters is not None and not isinstance(parameters, list):
            raise TypeError("Node 'parameters' must be a list of files and/or dicts")
        super().__init__(condition=kwargs.get("condition"))
        self.kwargs = {
            "executable": executable,
            "package": package,
            "name": name,
            "namespace": namespace,
            "exec_name": exec_name,
            "parameters": parameters,
            "remappings": remappings,
            "ros_arguments": ros_arguments,
            "arguments": arguments,
            **kwargs,
        }

    @property
    def node_package(self) -> Any:
        return self.kwargs["package"]

    @property
    def node_executable(self) -> Any:
        return self.kwargs["executable"]


__all__ = ["Node"]
