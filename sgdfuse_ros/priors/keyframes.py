"""Keyframed semantic prior: the inner prior on keyframes, masks carried by optical flow in between.

SAM costs far more than a frame period on most robots. :class:`KeyframePrior` wraps any
:class:`~sgdfuse_ros.priors.base.SemanticPrior` (in practice the SAM prior; the ~16 ms fallback is not
worth keyframing) and calls it only on *keyframes*:

* frame 0, then every ``interval`` frames after the last keyframe (0, k, 2k, ... while the input
  size does not change);
* whenever the batch size or the image size changes (that frame becomes the new keyframe and the
  count restarts from it), after :meth:`KeyframePrior.reset` and after :meth:`KeyframePrior.to`.

On a keyframe the inner prior's masks are returned unchanged. Between keyframes (``method="flow"``)
the keyframe's masks are carried to the current frame, per modality, by dense optical flow on that
modality's own luminance (the thermal image for ``M_ir``, the visible luma Y for ``M_vis``; the two
cameras are registered, but each mask follows the image it was computed from):

1. Downsample the current image to ``flow_size`` (longest side, area interpolation, on the
   prior's device) and copy that small uint8 image to the CPU.
2. OpenCV DIS optical flow (preset ULTRAFAST, finest scale ``finest_scale``) from the current small
   image to the reference: ``flow(x)`` says where pixel ``x`` of the current frame was in the
   keyframe. With ``reference="keyframe"`` the flow is computed against the keyframe directly;
   with ``reference="previous"`` it is computed against the previous frame and composed with the
   flow accumulated so far (``acc_t(x) = f_t(x) + acc_{t-1}(x + f_t(x))``). docs/priors.md records
   the measurement that chose the default.
3. ``cv2.remap`` (bilinear, replicated border) of the keyframe mask, kept at ``warp_size`` on the
   CPU, with the flow upsampled to that size; the warped mask goes back to the prior's device and is
   upsampled once (bilinear) to H x W.

DIS is deterministic: the same frames give the same masks (the tests check it, also with a
different OpenCV thread count). Every sample of a batch is propagated separately (N > 1 works, the
cost grows linearly with N). The cost does not depend on the input size beyond the two resizes
(docs/priors.md, ``benchmarks/keyframes.py``).

With ``method="rescore"`` (the inner prior must keep its segments: a :class:`~.sam.SamPrior`, whose
``keep_segments`` the wrapper switches on) the keyframe's kept SAM segments are cached instead, at
``segment_size`` (area-downsampled, soft), and on the frames in between:

1. the same flow as above (per modality, same reference) warps every cached segment to the current frame;
2. each warped segment is re-scored on the current frame's saliency score maps
   (:meth:`~.sam.SamPrior.score_maps`, the same maps and thresholds SAM's own merge uses);
3. the warped segments are merged with the new scores (:meth:`~.sam.SamPrior.merge_segments`), so SAM's
   segment geometry is reused while the decision "is this segment salient?" follows the current frame
   (a segment that warms up or cools down switches on or off). An image whose keyframe had no kept
   segment (SAM's ``empty_fallback`` mask) gets the flow-warped keyframe mask.

docs/priors.md records the measurement of both methods and the choice of the default.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SemanticPrior
from .fallback import luminance
from .segments import segment_scores

__all__ = ["METHODS", "REFERENCES", "KeyframePrior", "channels_last_chunks", "dis_flow", "warp_stack", "warp_with_flow"]

#: Propagation methods between keyframes: warp the merged masks, or warp and re-score SAM's segments.
METHODS = ("flow", "rescore")
#: Most channels one ``cv2.remap`` call takes (OpenCV 5; 4.x allows more).
_REMAP_MAX_CHANNELS = 128
#: What the flow is computed against: the keyframe itself, or the previous frame (flow accumulated).
REFERENCES = ("keyframe", "previous")


def dis_flow(dis: cv2.DISOpticalFlow, current: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Dense flow from ``current`` to ``reference``: ``current(x) ~ reference(x + flow(x))``.

    Args:
        dis: an OpenCV DIS optical-flow object (its settings are used as they are).
        current, reference: uint8 [h, w] images of the same size.
    Returns:
        float32 [h, w, 2] (dx, dy) in pixels of the given images.
    """
    return dis.calc(current, reference, None)


@lru_cache(maxsize=8)
def _base_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (xs, ys), each float32 [h, w]; cached, never written to."""
    xs = np.arange(w, dtype=np.float32)[None, :].repeat(h, axis=0)
    ys = np.arange(h, dtype=np.float32)[:, None].repeat(w, axis=1)
    return xs, ys


def warp_with_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward-warp ``image`` with ``flow``: ``out(x) = image(x + flow(x))`` (bilinear, replicated border).

    Args:
        image: float32 [h, w] or [h, w, C] (C <= 4).
        flow: float32 [hf, wf, 2] in pixels of a [hf, wf] grid; resized (and its vectors scaled) to
            [h, w] when the sizes differ.
    Returns:
        float32, the shape of ``image``.
    """
    h, w = image.shape[:2]
    hf, wf = flow.shape[:2]
    if (hf, wf) != (h, w):
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= w / wf
        flow[..., 1] *= h / hf
    xs, ys = _base_grid(h, w)
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def warp_stack(chunk: np.ndarray, flow: np.ndarray) -> Tensor:
    """:func:`warp_with_flow` for a channels-last stack of maps (one remap call).

    Args:
        chunk: float32 C-contiguous [h, w, k] with 1 <= k <= 128 (OpenCV's channel limit; see
            :func:`channels_last_chunks`).
        flow: float32 [hf, wf, 2] (see :func:`warp_with_flow`).
    Returns:
        float32 [k, h, w] CPU tensor, a channels-last view (no transposed copy is made).
    """
    out = warp_with_flow(chunk, flow)
    return torch.from_numpy(out if out.ndim == 3 else out[..., None]).permute(2, 0, 1)  # OpenCV drops 1 channel


def channels_last_chunks(stack: Tensor) -> list[np.ndarray]:
    """float [K, h, w] tensor -> float32 C-contiguous [h, w, <=128] arrays for :func:`warp_stack` ([] for K = 0)."""
    last = stack.float().cpu().permute(1, 2, 0)
    return [np.ascontiguousarray(last[..., i:i + _REMAP_MAX_CHANNELS].numpy())
            for i in range(0, stack.shape[0], _REMAP_MAX_CHANNELS)]


def _scaled_size(h: int, w: int, longest: int) -> tuple[int, int]:
    """(h', w') with the longest side ``longest`` (never larger than the input; 0 = unchanged)."""
    if longest <= 0 or max(h, w) <= longest:
        return h, w
    s = longest / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _small_uint8(x: Tensor, size: tuple[int, int]) -> np.ndarray:
    """[N, 1, H, W] in [0, 1] on any device -> uint8 [N, h, w] numpy on the CPU (area downsampling)."""
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="area")
    return (x[:, 0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()


@dataclass
class _State:
    """What the wrapper remembers between frames (all on the CPU)."""

    shape: tuple[int, int, int]  #: (N, H, W) of the keyframe
    masks: np.ndarray  #: float32 [N, 2, hw, ww] keyframe masks (M_ir, M_vis) at the warp size
    key_lum: np.ndarray  #: uint8 [N, 2, hf, wf] keyframe luminance (thermal, visible Y) at the flow size
    prev_lum: np.ndarray  #: uint8 [N, 2, hf, wf] previous frame's luminance (reference "previous")
    acc_flow: list[list[np.ndarray | None]] = field(default_factory=list)  #: [N][2] flow to the keyframe
    since_key: int = 0  #: frames since the keyframe (0 on the keyframe)
    #: method "rescore": per image in the inner prior's order (VIS_0..VIS_{N-1}, IR_0..IR_{N-1}) the
    #: keyframe's kept segments at the segment size, as :func:`channels_last_chunks` ([] when none was kept)
    segments: list[list[np.ndarray]] = field(default_factory=list)
    segment_grid: tuple[int, int] = (0, 0)  #: (hl, wl) of the inner prior's segments


class KeyframePrior(SemanticPrior):
    """Runs ``inner`` on keyframes and propagates its masks to the frames in between.

    Args:
        inner: the prior that makes the keyframe masks (e.g. a :class:`~.sam.SamPrior`).
        interval: a keyframe every ``interval`` frames (1 = every frame: the wrapper is then a
            pass-through).
        method: how masks are propagated between keyframes; one of :data:`METHODS`.
        reference: ``"keyframe"`` (flow from the current frame to the keyframe) or ``"previous"``
            (flow to the previous frame, accumulated); see docs/priors.md for the choice.
        flow_size: longest side of the images the flow is computed on (160: 160x120 for 640x480).
        warp_size: longest side at which the keyframe masks are stored and warped (0 = full size).
        finest_scale: DIS finest pyramid level (0 = flow at ``flow_size`` itself, 1 = half of it, ...;
            the ULTRAFAST preset's own value is 2).
        segment_size: method ``"rescore"``: longest side at which the keyframe's segments are cached,
            warped, re-scored and merged (0 = the inner prior's own segment grid, e.g. SAM's 256-px logits:
            a still frame then gives back the keyframe's masks exactly; smaller is cheaper and coarser).

    Attributes:
        last_keyframe: whether the last :meth:`masks` call ran the inner prior.
        inner_calls: how many times the inner prior has run.
    """

    def __init__(self, inner: SemanticPrior, interval: int = 5, *, method: str = "flow",
                 reference: str = "keyframe", flow_size: int = 160, warp_size: int = 320,
                 finest_scale: int = 1, segment_size: int = 0) -> None:
        if isinstance(interval, bool) or not isinstance(interval, numbers.Integral) or not 1 <= interval <= 100:
            raise ValueError(f"keyframe interval must be an integer in [1, 100], got {interval!r}")
        if method not in METHODS:
            raise ValueError(f"unknown keyframe propagation method {method!r}; allowed: {list(METHODS)}")
        if reference not in REFERENCES:
            raise ValueError(f"unknown flow reference {reference!r}; allowed: {list(REFERENCES)}")
        if int(flow_size) < 16:
            raise ValueError(f"flow_size must be >= 16, got {flow_size!r}")
        if int(warp_size) < 0:
            raise ValueError(f"warp_size must be >= 0, got {warp_size!r}")
        if not 0 <= int(finest_scale) <= 4:
            raise ValueError(f"finest_scale must be in [0, 4], got {finest_scale!r}")
        if int(segment_size) != 0 and int(segment_size) < 16:
            raise ValueError(f"segment_size must be 0 (the inner prior's grid) or >= 16, got {segment_size!r}")
        if method == "rescore":
            if not (hasattr(inner, "keep_segments") and hasattr(inner, "merge_segments")):
                raise ValueError(f"keyframe method 'rescore' needs a prior that keeps its segments (the SAM prior), "
                                 f"not {type(inner).__name__}")
            inner.keep_segments = True  # type: ignore[attr-defined]
        self.inner = inner
        self.interval = int(interval)
        self.method = method
        self.reference = reference
        self.flow_size = int(flow_size)
        self.warp_size = int(warp_size)
        self.finest_scale = int(finest_scale)
        self.segment_size = int(segment_size)
        self.name = inner.name if self.interval == 1 else f"{inner.name}+kf{self.interval}"
        self.last_keyframe = False
        self.inner_calls = 0
        self._state: _State | None = None
        # One DIS object per modality: each keeps its own buffers sized to its images.
        self._dis = [self._make_dis(), self._make_dis()]

    def _make_dis(self) -> cv2.DISOpticalFlow:
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        dis.setFinestScale(self.finest_scale)
        return dis

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        """The inner prior's device (inputs must be there; outputs stay there)."""
        return self.inner.device

    def to(self, device: str | torch.device) -> KeyframePrior:
        """Move the inner prior to ``device`` and start over with a keyframe; returns ``self``."""
        self.inner.to(device)
        self.reset()
        return self

    def set_selection_thresholds(self, pred_iou_thresh: float, stability_score_thresh: float) -> None:
        self.inner.set_selection_thresholds(pred_iou_thresh, stability_score_thresh)

    def reset(self) -> None:
        """Forget the keyframe: the next frame runs the inner prior (e.g. after a gap in the stream)."""
        self._state = None

    @torch.no_grad()
    def masks(self, thermal: Tensor, visible_rgb: Tensor) -> tuple[Tensor, Tensor]:
        """See :meth:`SemanticPrior.masks`. thermal [N,1,H,W], visible_rgb [N,3,H,W] in [0,1]
        -> (m_ir, m_vis), each [N,1,H,W] float32 in [0,1] on ``self.device``.

        Keyframes return the inner prior's masks unchanged; other frames the propagated ones.
        """
        thermal, visible_rgb = self._check_inputs(thermal, visible_rgb)
        n, _, h, w = thermal.shape
        state = self._state
        if self.interval == 1 or state is None or state.shape != (n, h, w) or state.since_key + 1 >= self.interval:
            return self._keyframe(thermal, visible_rgb)
        self.last_keyframe = False
        state.since_key += 1
        lum = self._luminance(thermal, visible_rgb)
        flows = self._flows(state, lum)
        if self.method == "rescore":
            m = self._propagate_rescore(state, flows, thermal, visible_rgb)
        else:
            m = torch.from_numpy(self._propagate_flow(state, flows))
        m = m.to(self.device)  # [N, 2, h', w'] float32
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        m = m.clamp(0.0, 1.0)
        return m[:, 0:1].contiguous(), m[:, 1:2].contiguous()

    # ---- keyframes --------------------------------------------------------------------------

    def _keyframe(self, thermal: Tensor, visible_rgb: Tensor) -> tuple[Tensor, Tensor]:
        m_ir, m_vis = self.inner.masks(thermal, visible_rgb)
        self.inner_calls += 1
        self.last_keyframe = True
        if self.interval == 1:
            return m_ir, m_vis
        n, _, h, w = thermal.shape
        size = _scaled_size(h, w, self.warp_size)
        m = torch.cat([m_ir, m_vis], dim=1).float()
        if tuple(m.shape[-2:]) != size:
            m = F.interpolate(m, size=size, mode="area")
        lum = self._luminance(thermal, visible_rgb)
        self._state = _State(shape=(n, h, w), masks=m.cpu().numpy().astype(np.float32), key_lum=lum,
                             prev_lum=lum, acc_flow=[[None, None] for _ in range(n)])
        if self.method == "rescore":
            self._state.segments = [self._small_segments(seg) for seg in self.inner.last_segments]
            self._state.segment_grid = tuple(self.inner.last_segments[0].shape[-2:])
        return m_ir, m_vis

    def _segment_size(self, grid: tuple[int, int]) -> tuple[int, int]:
        """(hs, ws): the segment grid (hl, wl) scaled to ``segment_size`` (0: unchanged)."""
        return _scaled_size(*grid, self.segment_size) if self.segment_size else grid

    def _small_segments(self, segments: Tensor) -> list[np.ndarray]:
        """bool [K, hl, wl] on the device -> chunks of float32 [hs, ws, k] on the CPU (area: soft edges)."""
        x = segments.float()[None]
        hs, ws = self._segment_size(tuple(segments.shape[-2:]))
        if tuple(x.shape[-2:]) != (hs, ws):
            x = F.interpolate(x, size=(hs, ws), mode="area")
        return channels_last_chunks(x[0])

    def _luminance(self, thermal: Tensor, visible_rgb: Tensor) -> np.ndarray:
        """uint8 [N, 2, hf, wf] on the CPU: (thermal, visible Y) at the flow size."""
        size = _scaled_size(*thermal.shape[-2:], self.flow_size)
        return np.stack([_small_uint8(thermal, size), _small_uint8(luminance(visible_rgb), size)], axis=1)

    # ---- propagation ------------------------------------------------------------------------------

    def _flows(self, state: _State, lum: np.ndarray) -> list[list[np.ndarray]]:
        """Flow from the current frame to the keyframe per sample and modality (0: thermal, 1: visible Y).

        lum uint8 [N,2,hf,wf] -> [N][2] float32 [hf, wf, 2]; updates the state of reference "previous".
        """
        flows = []
        for i in range(lum.shape[0]):
            row = []
            for c in range(2):
                if self.reference == "keyframe":
                    flow = dis_flow(self._dis[c], lum[i, c], state.key_lum[i, c])
                else:
                    step = dis_flow(self._dis[c], lum[i, c], state.prev_lum[i, c])
                    acc = state.acc_flow[i][c]
                    flow = step if acc is None else step + warp_with_flow(acc, step)
                    state.acc_flow[i][c] = flow
                row.append(flow)
            flows.append(row)
        state.prev_lum = lum
        return flows

    def _propagate_flow(self, state: _State, flows: list[list[np.ndarray]]) -> np.ndarray:
        """Warp the keyframe masks to the current frame -> float32 [N, 2, hw, ww] (M_ir, M_vis)."""
        out = np.empty_like(state.masks)
        for i, row in enumerate(flows):
            for c, flow in enumerate(row):
                out[i, c] = warp_with_flow(state.masks[i, c], flow)
        return out

    def _propagate_rescore(self, state: _State, flows: list[list[np.ndarray]], thermal: Tensor,
                           visible_rgb: Tensor) -> Tensor:
        """Warp the keyframe's segments, re-score them on this frame, merge -> float32 [N, 2, hs, ws] (CPU)."""
        n = len(flows)
        hs, ws = self._segment_size(state.segment_grid)
        # Score maps on SAM's own grid, as its merge computes them, then area-averaged: a segment's mean score
        # barely changes, whereas maps computed at the smaller size would (their filters scale with the size).
        maps = self.inner.score_maps(thermal, visible_rgb, state.segment_grid).float()
        if tuple(maps.shape[-2:]) != (hs, ws):
            maps = F.interpolate(maps[None], size=(hs, ws), mode="area")[0]
        maps = maps.cpu()  # [2N, hs, ws]
        # Merge chunk by chunk: the merge is a max over segments, so the max over chunks is the same result.
        merged = maps.new_zeros(maps.shape)
        for j in range(max(len(cached) for cached in state.segments)):
            segments, scores = [], []
            for b, cached in enumerate(state.segments):  # VIS_0..VIS_{N-1}, IR_0..IR_{N-1}
                warped = warp_stack(cached[j], flows[b % n][1 if b < n else 0]) if j < len(cached) \
                    else maps.new_zeros((0, hs, ws))
                segments.append(warped)
                scores.append(segment_scores(warped, maps[b]))
            merged = torch.maximum(merged, self.inner.merge_segments(segments, scores))  # [2N, hs, ws]
        empty = [b for b, cached in enumerate(state.segments) if not cached]
        if empty:  # SAM kept nothing on the keyframe: its mask was the fallback's; carry that by flow
            held = self._propagate_flow(state, flows)
            for b in empty:
                c = 1 if b < n else 0
                merged[b] = torch.from_numpy(cv2.resize(held[b % n, c], (ws, hs), interpolation=cv2.INTER_AREA))
        return torch.stack([merged[n:], merged[:n]], dim=1).clamp(0.0, 1.0)
