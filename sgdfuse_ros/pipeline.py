"""FusionPipeline: one thermal array and one RGB array in, fused image and masks out.

Data flows one way: preprocess (scale thermal, decode RGB, register thermal onto the RGB grid)
-> semantic prior (M_ir, M_vis) -> Stage I (preliminary fused luminance, recombined with the
visible chrominance into F1) -> optional refiner (Stage II slot) -> uint8 outputs. Everything
after preprocessing stays on the configured device; one uint8 copy of each output comes back, and F1
only when the caller asks for it (``keep_preliminary``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .config import FuseConfig
from .imaging import ThermalScaler, merge_luma_chroma, register_thermal, rgb_to_float, split_luma_chroma
from .models.stage1 import default_stage1_weights_path, load_stage1
from .priors import SemanticPrior, build_prior

__all__ = ["BegunFrame", "FusionPipeline", "FusionResult", "Refiner", "resolve_device"]

_LOG = logging.getLogger(__name__)
#: Thermal and RGB aspect ratios differing by more than this fraction are warned about under registration.mode
#: 'resize': the resize stretches the thermal image, which should not pass silently.
ASPECT_TOLERANCE = 0.10


class Refiner(Protocol):
    """Stage II slot: refines F1 guided by the masks and, if it uses them, the sources (all [N, C, H, W] in [0, 1]
    on one device)."""

    name: str

    def refine(
        self,
        preliminary: torch.Tensor,
        mask_ir: torch.Tensor,
        mask_vis: torch.Tensor,
        thermal: torch.Tensor | None = None,
        visible_y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """F1 [N,3,H,W], M_ir [N,1,H,W], M_vis [N,1,H,W], IR [N,1,H,W], Y_vis [N,1,H,W] -> RGB [N,3,H,W]."""
        ...


@dataclass
class FusionResult:
    """Outputs of one fused pair; all images on the RGB camera's grid (H, W)."""

    fused: np.ndarray  #: uint8 [H, W, 3] RGB, the final fused image
    #: uint8 [H, W, 3] RGB, Stage I's F1; None unless ``fuse(..., keep_preliminary=True)`` asked for it.
    preliminary: np.ndarray | None
    mask_ir: np.ndarray  #: uint8 [H, W], 0-255 soft mask of salient thermal regions
    mask_vis: np.ndarray  #: uint8 [H, W], 0-255 soft mask of salient visible regions
    timings_ms: dict[str, float] = field(default_factory=dict)  #: per-stage wall time, plus "total"


def resolve_device(requested: str) -> tuple[torch.device, str]:
    """The torch device to use for ``requested`` and a note ('' when it is the one requested).

    CUDA requested on a machine without it falls back to the CPU (the node keeps serving and reports it).
    """
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            return torch.device("cpu"), f"CUDA requested ('{requested}') but not available: running on the CPU"
        index = torch.device(requested).index or 0
        if index >= torch.cuda.device_count():
            return torch.device("cpu"), (
                f"'{requested}' requested but only {torch.cuda.device_count()} CUDA device(s): running on the CPU"
            )
    return torch.device(requested), ""


class FusionPipeline:
    """Thermal + RGB -> fused RGB and the two masks. Deterministic for the same input (and scaler state).

    Build with :meth:`from_config`; or pass ready modules (tests, training code).
    """

    def __init__(
        self,
        config: FuseConfig,
        prior: SemanticPrior,
        stage1: torch.nn.Module,
        refiner: Refiner | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.prior = prior
        self.stage1 = stage1.eval()
        #: what fuse() calls for Stage I: the module, or its torch.compile'd function (compute.compile)
        self._stage1_fn: Callable[..., torch.Tensor] = self.stage1
        if config.compute.compile:
            from .compiled import LoggedCompile

            self._stage1_fn = LoggedCompile(self.stage1, "Stage I")
        self.refiner = refiner
        self.device = torch.device(device)
        self.device_note = ""
        self.thermal_scaler = ThermalScaler(config.thermal)
        self._prior_stream: torch.cuda.Stream | None = None
        self._aspect_checked: set[tuple[tuple[int, int], tuple[int, int]]] = set()

    @classmethod
    def from_config(cls, config: FuseConfig) -> FusionPipeline:
        """Build the prior and load the weights named by ``config`` on its device.

        Raises FileNotFoundError / ValueError naming a missing or unreadable weights or checkpoint path.
        """
        config.validate()
        device, note = resolve_device(config.compute.device)
        if note:
            _LOG.warning(note)
        if device.type == "cpu" and config.compute.torch_threads > 0:
            torch.set_num_threads(config.compute.torch_threads)
        weights = config.stage1.weights or str(default_stage1_weights_path())
        stage1 = load_stage1(weights, device=device)
        prior = build_prior(
            config.prior.kind,
            device=device,
            sam_checkpoint=config.prior.sam_checkpoint,
            sam_model_type=config.prior.sam_model_type,
            points_per_side=config.prior.points_per_side,
            points_per_batch=config.prior.points_per_batch,
            pred_iou_thresh=config.prior.pred_iou_thresh,
            stability_score_thresh=config.prior.stability_score_thresh,
            keyframe_interval=config.prior.keyframe_interval,
            precision=config.compute.precision,
            compile=config.compute.compile,
        )
        refiner = None
        if config.stage2.enabled:
            # Imported here: a Stage I-only pipeline never loads the Stage II code.
            from .models.stage2 import default_stage2_weights_path, load_refiner

            s2 = config.stage2
            refiner = load_refiner(
                s2.weights or str(default_stage2_weights_path()),
                device=device,
                steps=s2.steps,
                strength=s2.strength,
                seed=s2.seed,
                use_masks=s2.use_masks,
            )
        pipeline = cls(config, prior=prior, stage1=stage1, refiner=refiner, device=device)
        pipeline.device_note = note
        return pipeline

    def reconfigure(self, new: FuseConfig, changed: set[str] | frozenset[str]) -> None:
        """Apply run-time parameters (``changed`` names them); call between frames, never during one.

        Only the run-time parameters take effect (thermal scaling, the prior's selection thresholds); the
        read-only ones never change after start-up.
        """
        self.config = new
        if any(name.startswith("thermal.") for name in changed):
            self.thermal_scaler.config = new.thermal
            self.thermal_scaler.reset()
        if {"prior.pred_iou_thresh", "prior.stability_score_thresh"} & set(changed):
            self.prior.set_selection_thresholds(new.prior.pred_iou_thresh, new.prior.stability_score_thresh)

    @property
    def prior_name(self) -> str:
        return self.prior.name

    def to(self, device: torch.device | str) -> FusionPipeline:
        """Move the networks (and prior) to ``device``; used to fall back to the CPU after CUDA faults."""
        device = torch.device(device)
        self.stage1.to(device)
        if hasattr(self.prior, "to"):
            self.prior.to(device)
        if self.refiner is not None and hasattr(self.refiner, "to"):
            self.refiner.to(device)
        self.device = device
        self._prior_stream = None  # a stream belongs to one device
        return self

    def prepare(
        self, thermal: np.ndarray, rgb: np.ndarray, thermal_encoding: str, rgb_encoding: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw arrays -> (thermal float [H, W], RGB float [H, W, 3]) in [0, 1] on the RGB grid.

        Raises imaging.InvalidImageError naming what is wrong with the input.
        """
        visible = rgb_to_float(rgb, rgb_encoding)
        scaled = self.thermal_scaler.scale(thermal, thermal_encoding)
        self._check_aspect(scaled.shape[:2], visible.shape[:2])
        registered = register_thermal(scaled, visible.shape[:2], self.config.registration)
        return registered, visible

    def _check_aspect(self, thermal_hw: tuple[int, int], rgb_hw: tuple[int, int]) -> None:
        """Warn once per size combination when 'resize' registration would stretch the thermal image."""
        key = (tuple(thermal_hw), tuple(rgb_hw))
        if self.config.registration.mode != "resize" or key in self._aspect_checked:
            return
        self._aspect_checked.add(key)
        difference = abs((thermal_hw[1] / thermal_hw[0]) / (rgb_hw[1] / rgb_hw[0]) - 1.0)
        if difference > ASPECT_TOLERANCE:
            _LOG.warning(
                "thermal %dx%d and RGB %dx%d differ in aspect ratio by %.0f%%: registration.mode 'resize' stretches "
                "the thermal image onto the RGB grid (use registration.mode 'homography' with a matrix for cameras "
                "that are not co-registered)",
                thermal_hw[1], thermal_hw[0], rgb_hw[1], rgb_hw[0], 100 * difference,
            )  # fmt: skip

    @torch.inference_mode()
    def fuse(
        self,
        thermal: np.ndarray,
        rgb: np.ndarray,
        thermal_encoding: str = "mono8",
        rgb_encoding: str = "rgb8",
        keep_preliminary: bool = False,
    ) -> FusionResult:
        """Fuse one pair: :meth:`begin` then :meth:`finish`.

        Args:
            thermal: raw thermal [h, w] (uint8 mono8/8UC1, uint16 mono16/16UC1, float32 32FC1).
            rgb: visible uint8 [H, W, 3|4] or [H, W] per ``rgb_encoding`` (rgb8, bgr8, rgba8, bgra8, mono8).
            keep_preliminary: also copy Stage I's F1 back to the host (``FusionResult.preliminary``); off by
                default, so a frame pays for one device-to-host image copy fewer when nobody reads F1.
        Returns:
            FusionResult on the RGB grid [H, W] with timings in milliseconds.
        Raises:
            imaging.InvalidImageError for unusable input; torch.cuda.OutOfMemoryError is left to the caller.
        """
        return self.finish(self.begin(thermal, rgb, thermal_encoding, rgb_encoding), keep_preliminary)

    @torch.inference_mode()
    def begin(self, thermal: np.ndarray, rgb: np.ndarray, thermal_encoding: str = "mono8",
              rgb_encoding: str = "rgb8") -> BegunFrame:
        """The first half of :meth:`fuse`: preprocess, upload, semantic prior (same arguments and errors).

        With ``compute.pipeline_prior`` on CUDA the prior is queued on its own stream and this returns without
        waiting for it, so the caller can :meth:`finish` the previous frame while the GPU computes this prior.
        Frames must be finished in the order they were begun (the thermal scaler and a keyframed prior keep
        state from frame to frame).
        """
        clock = _StageClock(self.device)
        with clock("preprocess", host=True):
            ir_np, vis_np = self.prepare(thermal, rgb, thermal_encoding, rgb_encoding)
        stream = self.prior_stream
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            with clock("upload"):
                ir = torch.from_numpy(ir_np)[None, None].to(self.device)
                vis = torch.from_numpy(vis_np).permute(2, 0, 1)[None].contiguous().to(self.device)
            with clock("prior"):
                mask_ir, mask_vis = self.prior.masks(ir, vis)
            done = None
            if stream is not None:
                done = torch.cuda.Event()
                done.record(stream)
        return BegunFrame(ir, vis, mask_ir, mask_vis, clock, done)

    @torch.inference_mode()
    def finish(self, frame: BegunFrame, keep_preliminary: bool = False) -> FusionResult:
        """The second half of :meth:`fuse`: Stage I, Stage II, outputs to the host (see :meth:`fuse`)."""
        ir, vis, mask_ir, mask_vis, clock = frame.thermal, frame.visible, frame.mask_ir, frame.mask_vis, frame.clock
        if frame.prior_done is not None:
            # The prior ran on its own stream: this stream waits for it on the GPU (the host does not), and the
            # allocator must not reuse its tensors before this stream is done with them.
            current = torch.cuda.current_stream(self.device)
            current.wait_event(frame.prior_done)
            for tensor in (ir, vis, mask_ir, mask_vis):
                tensor.record_stream(current)
        with clock("stage1"), self._autocast():
            vis_y, chroma = split_luma_chroma(vis)
            fused_y = self._stage1_fn(ir, vis_y).float()
            preliminary = merge_luma_chroma(fused_y, chroma)
        fused = preliminary
        if self.refiner is not None:
            with clock("stage2"), self._autocast():
                fused = self.refiner.refine(preliminary, mask_ir, mask_vis, ir, vis_y).float()
        with clock("postprocess"):
            fused_u8 = _to_uint8(fused)
            preliminary_u8 = None
            if keep_preliminary:
                # Without Stage II the fused image is F1: a host copy instead of a second device transfer.
                preliminary_u8 = fused_u8.copy() if fused is preliminary else _to_uint8(preliminary)
            masks = _to_uint8(mask_ir), _to_uint8(mask_vis)
        timings = clock.milliseconds()  # the copies above waited for the device: every event has completed
        return FusionResult(
            fused=fused_u8, preliminary=preliminary_u8, mask_ir=masks[0], mask_vis=masks[1], timings_ms=timings
        )

    @property
    def prior_stream(self) -> torch.cuda.Stream | None:
        """The prior's own CUDA stream (``compute.pipeline_prior`` on CUDA), else None: everything on one stream."""
        if not (self.config.compute.pipeline_prior and self.device.type == "cuda"):
            return None
        if self._prior_stream is None:
            self._prior_stream = torch.cuda.Stream(self.device)
        return self._prior_stream

    def _autocast(self) -> torch.autocast:
        precision = self.config.compute.precision
        enabled = self.device.type == "cuda" and precision != "fp32"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled)


@dataclass
class BegunFrame:
    """A frame between :meth:`FusionPipeline.begin` and :meth:`FusionPipeline.finish` (tensors on the device)."""

    thermal: torch.Tensor  #: [1, 1, H, W] in [0, 1], registered onto the RGB grid
    visible: torch.Tensor  #: [1, 3, H, W] in [0, 1]
    mask_ir: torch.Tensor  #: [1, 1, H, W] in [0, 1]
    mask_vis: torch.Tensor  #: [1, 1, H, W] in [0, 1]
    clock: _StageClock  #: the frame's stage timings so far
    prior_done: torch.cuda.Event | None  #: recorded on the prior stream after the prior (pipeline_prior on CUDA)


class _StageClock:
    """Times named stages without synchronising the device.

    On the CPU, and for ``host=True`` stages (host work), the wall time. On CUDA, a pair of events recorded on
    the current stream around the stage; :meth:`milliseconds` reads them once the frame's outputs have been
    copied to the host, which has already waited for them, so timing adds no synchronisation to the frame.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.stages: dict[str, float | tuple[torch.cuda.Event, torch.cuda.Event]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, host: bool = False) -> Iterator[None]:
        if self.cuda and not host:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.stages[name] = (start, end)
        else:
            begin = time.perf_counter()
            yield
            self.stages[name] = (time.perf_counter() - begin) * 1000.0

    def milliseconds(self) -> dict[str, float]:
        """{stage: ms} plus "total" (their sum); "upload" is reported as part of "preprocess"."""
        times = {name: value if isinstance(value, float) else value[0].elapsed_time(value[1])
                 for name, value in self.stages.items()}
        times["preprocess"] = times.get("preprocess", 0.0) + times.pop("upload", 0.0)
        ordered = {name: times[name] for name in ("preprocess", "prior", "stage1", "stage2", "postprocess")
                   if name in times}
        ordered["total"] = sum(ordered.values())
        return ordered


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1,C,H,W] in [0,1] -> uint8 [H,W,C] (C=3) or [H,W] (C=1), rounded."""
    array = (image[0].float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
    if array.shape[0] == 1:
        return array[0].numpy()
    return array.permute(1, 2, 0).contiguous().numpy()
