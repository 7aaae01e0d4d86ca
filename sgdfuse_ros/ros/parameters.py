"""ROS-side helpers of the fusion node: parameter declaration from the config specs, QoS profiles, and the
bridge from the library's Python logging to the node's ROS logger."""

from __future__ import annotations

import array
import collections
import logging
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from sgdfuse_ros.config import ConfigError, FuseConfig, ParamSpec, parameter_specs

__all__ = [
    "RosLogHandler",
    "declare_config_parameters",
    "input_qos_profile",
    "output_qos_profile",
    "parameter_descriptor",
    "plain_value",
    "widen_parameters",
    "widen_value",
]

_ROS_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list: ParameterType.PARAMETER_DOUBLE_ARRAY,
}
_SECTIONS = {spec.name.split(".", 1)[0] for spec in parameter_specs()}


class RosLogHandler(logging.Handler):
    """Forwards the library's Python logging (``sgdfuse_ros.*``) to the node's ROS logger (and /rosout).

    Without it a library warning (e.g. the pipeline's CUDA fallback note) goes to Python's
    last-resort stderr handler, unformatted and invisible in /rosout.
    """

    #: Recent messages kept for ``seen`` (bounded: a long-running node must not grow a list per warning).
    MAX_KEPT = 100

    def __init__(self, ros_logger: Any) -> None:
        super().__init__(level=logging.INFO)
        self._ros_logger = ros_logger
        self.messages: collections.deque[str] = collections.deque(maxlen=self.MAX_KEPT)
        self._library_logger: logging.Logger | None = None
        self._library_level = logging.NOTSET

    @classmethod
    def attach(cls, ros_logger: Any) -> RosLogHandler:
        """A handler forwarding ``sgdfuse_ros.*`` records of level INFO and above to ``ros_logger``."""
        handler = cls(ros_logger)
        library = logging.getLogger("sgdfuse_ros")
        handler._library_logger, handler._library_level = library, library.level
        library.addHandler(handler)
        if library.getEffectiveLevel() > logging.INFO:
            library.setLevel(logging.INFO)
        return handler

    def detach(self) -> None:
        """Undo :meth:`attach` (idempotent)."""
        if self._library_logger is not None:
            self._library_logger.removeHandler(self)
            self._library_logger.setLevel(self._library_level)
            self._library_logger = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            message = str(record.msg)
        self.messages.append(message)
        # One call site per severity (rclpy binds a severity to each call site).
        if record.levelno >= logging.ERROR:
            self._ros_logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._ros_logger.warning(message)
        else:
            self._ros_logger.info(message)


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """ROS ParameterDescriptor of a config parameter: description, type, read_only, range, choices."""
    descriptor = ParameterDescriptor(
        name=spec.name, type=_ROS_TYPES[spec.type], description=spec.description, read_only=spec.read_only
    )
    if spec.choices or spec.length is not None:
        descriptor.additional_constraints = spec.allowed()
    elif spec.name == "compute.device":
        descriptor.additional_constraints = "allowed: 'cpu', 'cuda' or 'cuda:N'"
    if spec.minimum is not None and spec.maximum is not None:
        if spec.type is float:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0)
            ]
        elif spec.type is int:
            descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)]
    return descriptor


def plain_value(value: Any) -> Any:
    """rclpy array parameter values (array.array) -> list, so ParamSpec.coerce accepts them."""
    if isinstance(value, array.array):
        return list(value)
    return value


def widen_value(spec: ParamSpec, value: Any) -> float | list[float] | None:
    """An integer given for a float parameter (YAML ``27000``, ``ros2 param set ... 28000``) -> float.

    rclpy types parameters statically and would reject the integer with a type error; the config
    accepts it, so widen it before rclpy sees it. Returns None when nothing needs widening.
    """
    value = plain_value(value)
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        spec.type is list
        and isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and any(isinstance(v, int) for v in value)
    ):
        return [float(v) for v in value]
    return None


def input_qos_profile(name: str) -> QoSProfile:
    """QoS of one image subscription for ``node.input_qos``: a new object on every call.

    Never share a profile between entities (or hand out rclpy's qos_profile_sensor_data itself):
    rclpy applies the ``qos_overrides.<topic>.*`` parameters by modifying the profile it is given,
    so an override of one topic would leak into the other one, and into the module global.
    """
    if name == "sensor_data":
        base = qos_profile_sensor_data
        return QoSProfile(
            history=base.history, depth=base.depth, reliability=base.reliability, durability=base.durability
        )
    reliability = ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=10, reliability=reliability)


def output_qos_profile(name: str) -> QoSProfile:
    """QoS of one published topic for ``node.output_qos`` (a new object on every call, see input_qos_profile)."""
    reliability = ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=10, reliability=reliability)


def declare_config_parameters(node: Node) -> FuseConfig:
    """Declare every config parameter on ``node`` (with descriptors) and build the FuseConfig from the values.

    Values given as ``--ros-args -p`` or in a params file that are ints for float parameters are widened first;
    unknown keys under the config's sections are warned about.
    Raises:
        ConfigError: a value rclpy or the config rejected, naming the parameter and what is allowed.
    """
    specs = parameter_specs()
    overrides = getattr(node, "_parameter_overrides", None)  # values from --ros-args / params files
    if isinstance(overrides, dict):
        for spec in specs:
            widened = widen_value(spec, overrides[spec.name].value) if spec.name in overrides else None
            if widened is not None:
                overrides[spec.name] = Parameter(spec.name, value=widened)
        known = {spec.name for spec in specs}
        for name in sorted(overrides):
            if name.split(".", 1)[0] in _SECTIONS and name not in known:
                node.get_logger().warning(f"ignoring unknown parameter '{name}' (not an sgdfuse_ros parameter)")
    values: dict[str, Any] = {}
    for spec in specs:
        default = list(spec.default) if spec.type is list else spec.default
        try:
            declared = node.declare_parameter(spec.name, default, parameter_descriptor(spec))
        except ParameterException:
            # rclpy rejected the type or range of a value from the command line / params file.
            given = overrides[spec.name].value if isinstance(overrides, dict) and spec.name in overrides else "?"
            raise ConfigError(spec.name, plain_value(given), spec.allowed()) from None
        values[spec.name] = plain_value(declared.value)
    return FuseConfig().updated(values)


def widen_parameters(parameters: list[Parameter]) -> list[Parameter]:
    """Pre-set-parameters callback: ints for float parameters become floats before rclpy type-checks them."""
    specs = {spec.name: spec for spec in parameter_specs()}
    out = []
    for parameter in parameters:
        spec = specs.get(parameter.name)
        widened = widen_value(spec, parameter.value) if spec is not None else None
        if widened is not None:
            parameter = Parameter(parameter.name, value=widened)
        out.append(parameter)
    return out
