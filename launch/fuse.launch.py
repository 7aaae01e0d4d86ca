"""Launch the sgdfuse_ros fusion node with its parameter file.

    ros2 launch sgdfuse_ros fuse.launch.py thermal_topic:=/flir/image_raw rgb_topic:=/camera/image_raw \
        [device:=cuda] [precision:=fp16] [sam_checkpoint:=/models/sam_vit_b.pth] [sam_model_type:=vit_b] \
        [stage1_weights:=/models/stage1.pt] [namespace:=front] [config_file:=/path/fuse.yaml] [use_sim_time:=true] \
        [autostart:=false] [respawn:=true]

The node reads config/fuse.yaml from the package share (or ``config_file``). Every launch argument
defaults to the empty string, which means "not set": only the arguments given on the command line
are forwarded (as parameters after the file, so they win; or as remappings / namespace), and
everything else comes from the YAML file, so editing fuse.yaml always takes effect.

The mapping of launch argument -> node parameter / remapping lives in the dictionaries below and
nowhere else; values are converted to the parameter's type and checked against the node's
configuration rules before the node starts.
"""

from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "sgdfuse_ros"
EXECUTABLE = "fusion_node"
NODE_NAME = "sgdfuse"

#: launch argument -> node parameter (a name of sgdfuse_ros.config.parameter_specs()).
PARAMETER_ARGUMENTS = {
    "device": "compute.device",
    "precision": "compute.precision",
    "sam_checkpoint": "prior.sam_checkpoint",
    "sam_model_type": "prior.sam_model_type",
    "stage1_weights": "stage1.weights",
}
#: launch argument -> the node's (relative) input topic it remaps.
REMAP_ARGUMENTS = {
    "thermal_topic": "thermal/image",
    "rgb_topic": "rgb/image",
}
#: launch arguments handled specially: namespace of the node, parameter file, ROS's use_sim_time, the node's
#: ``autostart`` parameter (not a FuseConfig one: it is about the lifecycle, not the fusion), and respawn.
OTHER_ARGUMENTS = {
    "namespace": "Namespace of the node (its topics are relative, so they move with it).",
    "config_file": "Parameter file; empty = config/fuse.yaml of the installed package.",
    "use_sim_time": "true/false: use /clock (ROS parameter use_sim_time); empty = the parameter's default.",
    "autostart": "true/false: the lifecycle node configures and activates itself at start-up (node parameter "
    "autostart); false waits for 'ros2 lifecycle set'. Empty = true.",
    "respawn": "true/false: restart the node process whenever it exits (launch_ros respawn, after 2 s), e.g. after "
    "a sticky CUDA error (exit status 3); a lifecycle shutdown then restarts it too. Empty = false.",
}
LAUNCH_ARGUMENTS = (
    *REMAP_ARGUMENTS, "namespace", *PARAMETER_ARGUMENTS, "config_file", "use_sim_time", "autostart", "respawn"
)  # fmt: skip
#: Seconds launch waits before restarting the node (respawn:=true).
RESPAWN_DELAY_S = 2.0

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def default_config_file() -> Path:
    """config/fuse.yaml of the installed package, or of the source tree this file sits in."""
    try:
        return Path(get_package_share_directory(PACKAGE)) / "config" / "fuse.yaml"
    except PackageNotFoundError:
        return Path(__file__).resolve().parent.parent / "config" / "fuse.yaml"


def _description(argument: str) -> str:
    if argument in REMAP_ARGUMENTS:
        return f"Topic remapped onto the node's '{REMAP_ARGUMENTS[argument]}'; empty = not remapped."
    if argument in PARAMETER_ARGUMENTS:
        from sgdfuse_ros.config import parameter_specs

        spec = {s.name: s for s in parameter_specs()}[PARAMETER_ARGUMENTS[argument]]
        return f"Sets parameter {spec.name}: {spec.description} Empty = the value in the parameter file."
    return OTHER_ARGUMENTS[argument]


def parameter_value(argument: str, text: str) -> object:
    """A launch argument's string -> the typed, validated value of its node parameter.

    Raises RuntimeError naming the argument, the value and what is allowed.
    """
    from sgdfuse_ros.config import ConfigError, FuseConfig, parameter_specs

    name = PARAMETER_ARGUMENTS[argument]
    spec = {s.name: s for s in parameter_specs()}[name]
    try:
        if spec.type is bool:
            lowered = text.lower()
            if lowered not in _TRUE + _FALSE:
                raise ConfigError(name, text, "allowed: true or false")
            value: object = lowered in _TRUE
        elif spec.type in (int, float):
            value = spec.type(text)
        else:
            value = text
        FuseConfig().updated({name: value})  # the node's own checks (choices, ranges, device syntax)
    except (ConfigError, ValueError) as error:
        raise RuntimeError(f"launch argument {argument}:={text!r} is invalid: {error}") from None
    return value


def node_arguments(values: dict[str, str]) -> dict[str, object]:
    """Keyword arguments of launch_ros.actions.Node for the given launch argument values.

    ``values`` maps launch argument names to their strings; empty or missing = not set (not forwarded).
    """
    given = {name: str(values.get(name, "")).strip() for name in LAUNCH_ARGUMENTS}
    config_file = Path(given["config_file"]) if given["config_file"] else default_config_file()
    if not config_file.is_file():
        raise RuntimeError(f"parameter file not found: {config_file} (launch argument config_file)")
    overrides: dict[str, object] = {
        PARAMETER_ARGUMENTS[argument]: parameter_value(argument, given[argument])
        for argument in PARAMETER_ARGUMENTS
        if given[argument]
    }
    for name in ("use_sim_time", "autostart"):  # ROS-level node parameters
        if given[name]:
            overrides[name] = _boolean(name, given[name])
    kwargs: dict[str, object] = {
        "package": PACKAGE,
        "executable": EXECUTABLE,
        "name": NODE_NAME,
        "output": "screen",
        "emulate_tty": True,
        # The file first, then only what was set on the command line (later entries win).
        "parameters": [str(config_file)] + ([overrides] if overrides else []),
    }
    remappings = [(topic, given[argument]) for argument, topic in REMAP_ARGUMENTS.items() if given[argument]]
    if remappings:
        kwargs["remappings"] = remappings
    if given["namespace"]:
        kwargs["namespace"] = given["namespace"]
    if given["respawn"] and _boolean("respawn", given["respawn"]):
        kwargs["respawn"] = True
        kwargs["respawn_delay"] = RESPAWN_DELAY_S
    return kwargs


def _boolean(argument: str, text: str) -> bool:
    lowered = text.lower()
    if lowered not in _TRUE + _FALSE:
        raise RuntimeError(f"launch argument {argument}:={text!r} is invalid: true or false")
    return lowered in _TRUE


def _launch_setup(context, *args, **kwargs):  # OpaqueFunction calls function(context, *args, **kwargs)
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    return [Node(**node_arguments(values))]


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument(name, default_value="", description=_description(name)) for name in LAUNCH_ARGUMENTS
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_launch_setup)])
