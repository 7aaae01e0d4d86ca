"""Typed configuration for sgdfuse_ros: one object feeds ROS parameters, config/fuse.yaml and launch arguments.

The configuration is a tree of dataclasses. Every leaf field carries its documentation in its
``metadata`` (description, allowed range or choices, whether it may change at run time), so that
the ROS node can declare each parameter with a descriptor, the YAML file can be checked for
completeness, and validation errors name the key, the value and what is allowed.

ROS parameter names are the dotted paths of the fields (``thermal.range_min``); config/fuse.yaml
uses the standard ROS 2 parameter-file layout (``/**: ros__parameters: {...}``) with nested keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "parse_overrides",
    "ConfigError",
    "DeviceConfig",
    "FuseConfig",
    "NodeConfig",
    "ParamSpec",
    "PriorConfig",
    "RegistrationConfig",
    "Stage1Settings",
    "Stage2Settings",
    "ThermalConfig",
    "load_config",
    "parameter_specs",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"invalid parameter '{key}' = {value!r}: {allowed}")
        self.key = key
        self.value = value
        self.allowed = allowed


def _param(
    default: Any,
    description: str,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    read_only: bool = True,
    length: int | None = None,
) -> Any:
    """A dataclass field documented for ROS: description, choices or [minimum, maximum], read-only flag."""
    meta = {
        "description": description,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "read_only": read_only,
        "length": length,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ThermalConfig:
    """How raw thermal pixels become intensities in [0, 1] (deterministic, never per-frame min/max)."""

    scaling: str = _param(
        "fixed",
        "Thermal scaling: 'fixed' maps the configured range (counts_* or temperature_*) to [0, 1]; 'tracked' starts "
        "from that range and follows the scene's 1st/99th percentiles with a slow exponential average (no flicker).",
        choices=("fixed", "tracked"),
        read_only=False,
    )
    counts_min: float = _param(
        27000.0,
        "Raw count mapped to 0 for 16-bit thermal images (mono16 / 16UC1). Defaults suit radiometric "
        "cameras (FLIR Boson/Lepton counts roughly 27000-33000 indoors and outdoors).",
        minimum=0.0,
        maximum=65535.0,
        read_only=False,
    )
    counts_max: float = _param(
        33000.0, "Raw count mapped to 1 for 16-bit thermal images.", minimum=0.0, maximum=65535.0, read_only=False
    )
    temperature_min: float = _param(
        -10.0,
        "Temperature mapped to 0 for 32FC1 thermal images, in the unit the driver publishes (default Celsius).",
        minimum=-300.0,
        maximum=5000.0,
        read_only=False,
    )
    temperature_max: float = _param(
        50.0, "Temperature mapped to 1 for 32FC1 thermal images.", minimum=-300.0, maximum=5000.0, read_only=False
    )
    tracking_rate: float = _param(
        0.02,
        "Per-frame weight of the newest percentiles when scaling is 'tracked' (0.02 = about 50 frames to adapt).",
        minimum=0.0,
        maximum=1.0,
        read_only=False,
    )


@dataclass
class RegistrationConfig:
    """How the thermal image is brought onto the RGB camera's pixel grid (output size = RGB size)."""

    mode: str = _param(
        "resize",
        "'resize': cameras are co-registered, thermal is resized to the RGB size; 'homography': thermal is "
        "warped with the 3x3 matrix below (maps thermal pixel coordinates to RGB pixel coordinates).",
        choices=("resize", "homography"),
    )
    homography: list = _param(
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "Row-major 3x3 homography from thermal pixels to RGB pixels (9 numbers), used when mode is 'homography'.",
        length=9,
    )


@dataclass
class PriorConfig:
    """Semantic prior producing the masks M_ir and M_vis."""

    kind: str = _param(
        "auto",
        "'sam': Segment Anything with sam_checkpoint; 'fallback': weight-free saliency masks; 'auto': sam when "
        "sam_checkpoint is set, fallback otherwise.",
        choices=("auto", "sam", "fallback"),
    )
    sam_checkpoint: str = _param("", "Path to a Segment Anything checkpoint (.pth); empty = none.")
    sam_model_type: str = _param(
        "vit_b", "Segment Anything architecture of the checkpoint.", choices=("vit_b", "vit_l", "vit_h")
    )
    points_per_side: int = _param(
        16, "Grid of point prompts per side (points_per_side^2 prompts per image).", minimum=1, maximum=64
    )
    points_per_batch: int = _param(
        64, "Point prompts per mask-decoder chunk (bounds GPU memory).", minimum=1, maximum=4096
    )
    pred_iou_thresh: float = _param(
        0.8, "Keep SAM masks whose predicted IoU is at least this.", minimum=0.0, maximum=1.0, read_only=False
    )
    stability_score_thresh: float = _param(
        0.9, "Keep SAM masks whose stability score is at least this.", minimum=0.0, maximum=1.0, read_only=False
    )
    keyframe_interval: int = _param(
        1,
        "Run SAM on every keyframe_interval-th frame (and whenever the image size changes) and carry its masks "
        "to the frames in between by optical flow (docs/priors.md, 'Keyframes'); 1 = SAM on every frame. "
        "Used with the SAM prior only: the fallback prior runs on every frame.",
        minimum=1,
        maximum=100,
    )


@dataclass
class Stage1Settings:
    """Stage I preliminary fusion network."""

    weights: str = _param("", "Stage I weights file; empty = the weights shipped with the package.")


@dataclass
class Stage2Settings:
    """Stage II: SAM-guided conditional diffusion refinement of F1 (docs/stage2.md)."""

    enabled: bool = _param(
        False,
        "Refine F1 with the Stage II diffusion model: 'steps' network evaluations per frame (each roughly 0.26 s "
        "at 640x480 on 2 CPU threads; benchmarks/performance.py measures your hardware). Off: the output is F1.",
    )
    weights: str = _param("", "Stage II weights file; empty = the weights shipped with the package.")
    steps: int = _param(4, "Deterministic DDIM steps (network evaluations) per frame.", minimum=1, maximum=50)
    strength: float = _param(
        0.5,
        "Where the sampler starts, as a fraction of the noise schedule: F1 is noised to timestep "
        "round(strength * 1000) - 1 and denoised from there. Larger = more freedom to change F1.",
        minimum=0.05,
        maximum=1.0,
    )
    seed: int = _param(
        0,
        "Seed of the start noise, drawn once per image size and reused for every frame: the same input always "
        "gives the same output (no flicker).",
        minimum=0,
        maximum=2147483647,
    )
    use_masks: bool = _param(
        True, "Condition Stage II on the masks M_ir / M_vis; false zeroes them (ablation without semantic prior)."
    )


@dataclass
class DeviceConfig:
    """Where and how the networks run."""

    device: str = _param(
        "cpu",
        "Torch device: 'cpu', 'cuda' or 'cuda:N'. If CUDA is requested but unavailable the node falls back to "
        "the CPU and reports it.",
    )
    precision: str = _param(
        "fp32",
        "Network precision on CUDA ('fp16'/'bf16' autocast) of Stage I/II and of the SAM prior's encoder and "
        "decoder (its segment selection stays fp32); the CPU always runs fp32.",
        choices=("fp32", "fp16", "bf16"),
    )
    compile: bool = _param(
        False,
        "torch.compile the SAM image encoder and Stage I's network. The first frame then takes the compilation "
        "time (logged once; tens of seconds or more); later frames may run faster.",
    )
    torch_threads: int = _param(
        1,
        "torch.set_num_threads for CPU inference; 0 keeps torch's default (every core it sees). 1 holds up best "
        "when other processes compete for the CPU, as on a robot; an idle dedicated CPU fuses 640x480 about "
        "30 % faster with 0 (docs/node.md 'CPU threads').",
        minimum=0,
        maximum=256,
    )
    oom_cpu_fallback: bool = _param(
        False,
        "After 3 CUDA out-of-memory errors in a row move the networks to the CPU (with compute.torch_threads) "
        "instead of retrying on the GPU after a back-off.",
    )
    pipeline_prior: bool = _param(
        False,
        "On CUDA, run the semantic prior of the next pair on its own stream while Stage I/II of the current one "
        "run (same outputs, order and stamps; up to one more pair in flight, so up to one frame more latency). "
        "Not measured on a GPU yet; leave it off on the CPU, which gains nothing (docs/performance.md "
        "'Pipelining').",
    )
    cuda_error_exit_after: int = _param(
        3,
        "Exit with status 3 after this many consecutive frames failed with a 'CUDA error' (a sticky device "
        "fault); 0 keeps serving and dropping frames.",
        minimum=0,
        maximum=1000,
    )


@dataclass
class NodeConfig:
    """ROS-facing settings (read by sgdfuse_ros.ros only; the library ignores them)."""

    input_qos: str = _param(
        "sensor_data",
        "QoS of the two image subscriptions: 'sensor_data' (best effort, depth 5, what camera drivers publish), "
        "'reliable' or 'best_effort' (depth 10). qos_overrides./<topic>.subscription.* parameters still apply.",
        choices=("sensor_data", "reliable", "best_effort"),
    )
    output_qos: str = _param(
        "reliable",
        "QoS of the published images and stats: 'reliable' (depth 10; detectors on default QoS receive it) or "
        "'best_effort'.",
        choices=("reliable", "best_effort"),
    )
    thermal_compressed: bool = _param(
        False, "Subscribe to sensor_msgs/CompressedImage on the thermal topic instead of Image."
    )
    rgb_compressed: bool = _param(False, "Subscribe to sensor_msgs/CompressedImage on the RGB topic instead of Image.")
    sync_queue_size: int = _param(
        10, "Queue size of the ApproximateTimeSynchronizer (messages kept per topic).", minimum=1, maximum=1000
    )
    sync_slop: float = _param(
        0.05,
        "Largest stamp difference (s) between a thermal and an RGB message that still pair.",
        minimum=0.0,
        maximum=10.0,
    )
    diagnostics_period: float = _param(1.0, "Seconds between /diagnostics updates.", minimum=0.05, maximum=60.0)
    expected_rate: float = _param(
        0.0,
        "Expected pair and fused rate (Hz) for the diagnostics' frequency check (WARN below expected x "
        "(1 - rate_tolerance)); 0 reports the rates without judging them.",
        minimum=0.0,
        maximum=1000.0,
    )
    rate_tolerance: float = _param(
        0.1, "Fraction by which the rates may fall below node.expected_rate.", minimum=0.0, maximum=1.0
    )
    stale_after: float = _param(
        3.0,
        "Seconds without a message on a camera after which the diagnostics report it: ERROR naming the silent "
        "camera while the other one delivers, STALE when both are silent.",
        minimum=0.1,
        maximum=3600.0,
    )
    drop_warn_fraction: float = _param(
        0.05,
        "Diagnostics WARN when pairs dropped for reasons other than 'superseded' exceed this fraction of the "
        "period's pairs (0: any such drop).",
        minimum=0.0,
        maximum=1.0,
    )
    hardware_id: str = _param(
        "", "hardware_id of the diagnostics status; empty uses the compute device (e.g. 'cpu', 'cuda:0')."
    )
    log_throttle: float = _param(
        5.0,
        "Seconds between repeated log lines for the same rejection reason.",
        minimum=0.0,
        maximum=3600.0,
        read_only=False,
    )
    publish_preliminary: bool = _param(
        False, "Also publish Stage I's preliminary fusion F1 on fused/preliminary.", read_only=True
    )
    max_image_bytes: int = _param(
        64 * 1024 * 1024,
        "Largest input image accepted, in bytes: height x step of an Image, or the decoded size a PNG/JPEG header "
        "announces for a CompressedImage. Larger ones are rejected before decoding (reason <which>_too_large).",
        minimum=1024,
        maximum=2**31 - 1,
    )


@dataclass
class FuseConfig:
    """The whole configuration of the fusion pipeline and node."""

    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    stage1: Stage1Settings = field(default_factory=Stage1Settings)
    stage2: Stage2Settings = field(default_factory=Stage2Settings)
    compute: DeviceConfig = field(default_factory=DeviceConfig)
    node: NodeConfig = field(default_factory=NodeConfig)

    # -- access by dotted name -------------------------------------------------------------
    def get(self, name: str) -> Any:
        """Value of the parameter ``section.key``."""
        section, key = _split(name)
        return getattr(getattr(self, section), key)

    def as_flat_dict(self) -> dict[str, Any]:
        """{"section.key": value} for every parameter."""
        return {spec.name: self.get(spec.name) for spec in parameter_specs()}

    def updated(self, overrides: Mapping[str, Any]) -> FuseConfig:
        """A validated copy with ``{"section.key": value}`` overrides applied (self is unchanged)."""
        sections = {f.name: dataclasses.replace(getattr(self, f.name)) for f in dataclasses.fields(self)}
        specs = {spec.name: spec for spec in parameter_specs()}
        for name, value in overrides.items():
            if name not in specs:
                raise ConfigError(name, value, f"unknown parameter; known: {', '.join(sorted(specs))}")
            section, key = _split(name)
            setattr(sections[section], key, specs[name].coerce(value))
        new = FuseConfig(**sections)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid key, its value and what is allowed."""
        for spec in parameter_specs():
            spec.check(self.get(spec.name))
        t = self.thermal
        if t.counts_max <= t.counts_min:
            raise ConfigError(
                "thermal.counts_max", t.counts_max, f"must be greater than thermal.counts_min ({t.counts_min})"
            )
        if t.temperature_max <= t.temperature_min:
            raise ConfigError(
                "thermal.temperature_max",
                t.temperature_max,
                f"must be greater than thermal.temperature_min ({t.temperature_min})",
            )
        h = self.registration.homography
        det = (
            h[0] * (h[4] * h[8] - h[5] * h[7]) - h[1] * (h[3] * h[8] - h[5] * h[6]) + h[2] * (h[3] * h[7] - h[4] * h[6])
        )
        if abs(det) < 1e-12:
            raise ConfigError("registration.homography", h, "must be an invertible 3x3 matrix")
        device = self.compute.device
        if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError("compute.device", device, "allowed: 'cpu', 'cuda' or 'cuda:N'")
        if self.prior.kind == "sam" and not self.prior.sam_checkpoint:
            raise ConfigError("prior.sam_checkpoint", "", "must name a checkpoint file when prior.kind is 'sam'")


@dataclass(frozen=True)
class ParamSpec:
    """Documentation and checks of one parameter, derived from the dataclass field."""

    name: str
    default: Any
    type: type
    description: str
    choices: tuple[str, ...] | None
    minimum: float | None
    maximum: float | None
    read_only: bool
    length: int | None

    def allowed(self) -> str:
        """Human-readable statement of the allowed values."""
        if self.choices:
            return "allowed: " + ", ".join(repr(c) for c in self.choices)
        if self.length is not None:
            return f"allowed: a list of {self.length} finite numbers"
        parts = [self.type.__name__]
        if self.minimum is not None or self.maximum is not None:
            parts.append(f"in [{self.minimum}, {self.maximum}]")
        return "allowed: " + " ".join(parts)

    def coerce(self, value: Any) -> Any:
        """Convert YAML/ROS values to the field type (ints accepted for floats), or raise ConfigError."""
        t = self.type
        if t is bool:
            if isinstance(value, bool):
                return value
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif t is str:
            if isinstance(value, str):
                return value
        elif (
            t is list
            and isinstance(value, (list, tuple))
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            return [float(v) for v in value]
        raise ConfigError(self.name, value, self.allowed())

    def check(self, value: Any) -> None:
        """Raise ConfigError when value is outside the choices / range / length."""
        value = self.coerce(value)
        if self.choices and value not in self.choices:
            raise ConfigError(self.name, value, self.allowed())
        if self.length is not None:
            if len(value) != self.length or not all(math.isfinite(v) for v in value):
                raise ConfigError(self.name, value, self.allowed())
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(self.name, value, self.allowed())
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(self.name, value, self.allowed())
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(self.name, value, self.allowed())


def _split(name: str) -> tuple[str, str]:
    section, _, key = name.partition(".")
    return section, key


_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list}


def _iter_specs() -> Iterator[ParamSpec]:
    for section in dataclasses.fields(FuseConfig):
        section_type = section.default_factory  # type: ignore[misc]
        for f in dataclasses.fields(section_type):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            meta = f.metadata
            yield ParamSpec(
                name=f"{section.name}.{f.name}",
                default=default,
                type=_TYPES[f.type] if isinstance(f.type, str) else f.type,
                description=meta["description"],
                choices=meta["choices"],
                minimum=meta["minimum"],
                maximum=meta["maximum"],
                read_only=meta["read_only"],
                length=meta["length"],
            )


_SPECS: tuple[ParamSpec, ...] = tuple(_iter_specs())


def parameter_specs() -> tuple[ParamSpec, ...]:
    """Every parameter of FuseConfig, in declaration order."""
    return _SPECS


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def ros_parameters_from_yaml(path: str | Path) -> dict[str, Any]:
    """Flat {"section.key": value} from a ROS 2 parameter file (``<node or /**>: ros__parameters: ...``).

    Parameters under every node key are merged in file order (later keys win), which is what a
    node launched with this file sees when its name matches all of them.
    """
    import yaml  # here, not at the top: the library (and benchmarks/performance.py) runs without PyYAML

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError("config_file", str(path), f"not a readable YAML file ({error})") from None
    if not isinstance(document, Mapping):
        raise ConfigError("config_file", str(path), "must hold a mapping '<node>: {ros__parameters: ...}'")
    flat: dict[str, Any] = {}
    for node_key, body in document.items():
        if not isinstance(body, Mapping) or "ros__parameters" not in body:
            raise ConfigError(f"{node_key}", body, f"{path}: expected 'ros__parameters' under the node key")
        flat.update(flatten(body["ros__parameters"]))
    return flat


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> FuseConfig:
    """FuseConfig from defaults, then the ROS parameter file ``path`` (if any), then ``overrides``.

    Raises ConfigError (naming key, value and what is allowed) or FileNotFoundError (naming the path).
    """
    merged: dict[str, Any] = {}
    if path is not None:
        merged.update(ros_parameters_from_yaml(path))
    if overrides:
        merged.update(overrides)
    return FuseConfig().updated(merged)


def default_config_path() -> Path:
    """config/fuse.yaml of the installed package or the source tree (FileNotFoundError if neither has it)."""
    from .resources import find_resource

    return find_resource("config/fuse.yaml")


def parse_overrides(items: Sequence[str]) -> dict[str, object]:
    """["section.key=value", ...] -> {"section.key": value} with YAML typing of the values."""
    import yaml

    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(item, item, "--set expects section.key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
