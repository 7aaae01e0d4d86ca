"""launch/fuse.launch.py: arguments mirror real parameters, default to empty, and only set ones are forwarded.

Runs with the real launch / launch_ros when installed, else with the labelled test doubles
(test/doubles, see the pytest header). The launch_ros Node class is swapped for a recorder inside
the loaded launch module only, so the keyword arguments the launch file passes can be inspected
with either implementation; they are then also given to the (real or double) Node constructor.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

launch = pytest.importorskip("launch")
launch_ros_actions = pytest.importorskip("launch_ros.actions")
from launch.actions import DeclareLaunchArgument, OpaqueFunction  # noqa: E402
from launch.utilities import perform_substitutions  # noqa: E402

from sgdfuse_ros.config import FuseConfig, parameter_specs  # noqa: E402

LAUNCH_FILE = Path(__file__).resolve().parent.parent / "launch" / "fuse.launch.py"
SPECS = {spec.name: spec for spec in parameter_specs()}
MIRRORED = {
    "thermal_topic",
    "rgb_topic",
    "namespace",
    "device",
    "precision",
    "sam_checkpoint",
    "sam_model_type",
    "stage1_weights",
    "config_file",
    "use_sim_time",
    "autostart",
    "respawn",
}


@pytest.fixture()
def launch_module():
    spec = importlib.util.spec_from_file_location("sgdfuse_fuse_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NodeRecorder:
    created: list[dict] = []

    def __init__(self, **kwargs) -> None:
        _NodeRecorder.created.append(kwargs)


def _run(module, monkeypatch, **given: str) -> dict:
    """Execute the launch description as ros2 launch would with ``name:=value`` for each of ``given``."""
    _NodeRecorder.created = []
    monkeypatch.setattr(module, "Node", _NodeRecorder)
    context = launch.LaunchContext()
    context.launch_configurations.update(given)  # what ros2 launch does with name:=value
    entities = module.generate_launch_description().entities
    returned = []
    for entity in entities:
        result = entity.execute(context)
        if isinstance(entity, OpaqueFunction):
            returned.extend(result or [])
    assert len(_NodeRecorder.created) == 1 and len(returned) == 1
    kwargs = _NodeRecorder.created[0]
    launch_ros_actions.Node(**kwargs)  # the real (or double) Node accepts exactly these arguments
    return kwargs


def test_declared_arguments_have_empty_defaults(launch_module) -> None:
    entities = launch_module.generate_launch_description().entities
    declared = [e for e in entities if isinstance(e, DeclareLaunchArgument)]
    assert {d.name for d in declared} == MIRRORED
    context = launch.LaunchContext()
    for argument in declared:
        assert perform_substitutions(context, argument.default_value) == "", argument.name
        assert argument.description and argument.description != "no description given"
    assert sum(isinstance(e, OpaqueFunction) for e in entities) == 1


def test_mapping_names_real_parameters(launch_module) -> None:
    assert set(launch_module.PARAMETER_ARGUMENTS.values()) <= set(SPECS)
    assert launch_module.PARAMETER_ARGUMENTS == {
        "device": "compute.device",
        "precision": "compute.precision",
        "sam_checkpoint": "prior.sam_checkpoint",
        "sam_model_type": "prior.sam_model_type",
        "stage1_weights": "stage1.weights",
    }
    assert set(launch_module.REMAP_ARGUMENTS.values()) == {"thermal/image", "rgb/image"}
    assert set(launch_module.LAUNCH_ARGUMENTS) == MIRRORED
    # Argument descriptions come from the parameter descriptions.
    for argument, name in launch_module.PARAMETER_ARGUMENTS.items():
        assert SPECS[name].description in launch_module._description(argument)


def test_unset_arguments_are_not_forwarded(launch_module, monkeypatch) -> None:
    kwargs = _run(launch_module, monkeypatch)
    assert kwargs["package"] == "sgdfuse_ros" and kwargs["executable"] == "fusion_node"
    assert kwargs["name"] == "sgdfuse"
    assert "remappings" not in kwargs and "namespace" not in kwargs and "respawn" not in kwargs
    (config_file,) = kwargs["parameters"]  # only the parameter file: fuse.yaml decides everything
    assert Path(config_file).name == "fuse.yaml" and Path(config_file).is_file()
    document = yaml.safe_load(Path(config_file).read_text())
    assert "ros__parameters" in document["/**"]


def test_set_arguments_are_forwarded_with_types(launch_module, monkeypatch, tmp_path) -> None:
    custom = tmp_path / "robot.yaml"
    custom.write_text("/**:\n  ros__parameters:\n    compute:\n      device: cpu\n")
    kwargs = _run(
        launch_module,
        monkeypatch,
        thermal_topic="/flir/image_raw",
        rgb_topic="/camera/color/image_raw",
        namespace="front",
        device="cuda:1",
        precision="fp16",
        sam_checkpoint="/models/sam_vit_b.pth",
        sam_model_type="vit_l",
        stage1_weights="/models/stage1.pt",
        config_file=str(custom),
        use_sim_time="True",
        autostart="false",
        respawn="true",
    )
    file, overrides = kwargs["parameters"]
    assert file == str(custom)
    assert overrides == {
        "compute.device": "cuda:1",
        "compute.precision": "fp16",
        "prior.sam_checkpoint": "/models/sam_vit_b.pth",
        "prior.sam_model_type": "vit_l",
        "stage1.weights": "/models/stage1.pt",
        "use_sim_time": True,
        "autostart": False,
    }
    assert type(overrides["use_sim_time"]) is bool and type(overrides["autostart"]) is bool
    # respawn: launch_ros restarts the process on any exit (docs/node.md "Faults"), after a delay.
    assert kwargs["respawn"] is True and kwargs["respawn_delay"] == launch_module.RESPAWN_DELAY_S
    for name, value in overrides.items():
        if name in SPECS:
            assert isinstance(value, SPECS[name].type), name
    # The forwarded values form a valid configuration.
    FuseConfig().updated({k: v for k, v in overrides.items() if k in SPECS})
    assert kwargs["remappings"] == [("thermal/image", "/flir/image_raw"), ("rgb/image", "/camera/color/image_raw")]
    assert kwargs["namespace"] == "front"


def test_only_the_set_argument_is_forwarded(launch_module, monkeypatch) -> None:
    kwargs = _run(launch_module, monkeypatch, precision="bf16", rgb_topic="/cam/image")
    assert kwargs["parameters"][1] == {"compute.precision": "bf16"}
    assert kwargs["remappings"] == [("rgb/image", "/cam/image")]


@pytest.mark.parametrize(
    ("argument", "value", "says"),
    [
        ("precision", "fp8", "compute.precision"),
        ("device", "gpu", "compute.device"),
        ("sam_model_type", "vit_x", "prior.sam_model_type"),
        ("use_sim_time", "maybe", "use_sim_time"),
        ("autostart", "later", "autostart"),
        ("respawn", "always", "respawn"),
        ("config_file", "/nonexistent/fuse.yaml", "/nonexistent/fuse.yaml"),
    ],
)
def test_invalid_arguments_fail_before_the_node_starts(launch_module, monkeypatch, argument, value, says) -> None:
    with pytest.raises(RuntimeError, match=says.replace(".", r"\.")):
        _run(launch_module, monkeypatch, **{argument: value})
