"""SAM semantic prior: segment_anything with a user-supplied checkpoint, batched on the device.

Per frame (``SamPrior.masks``), with everything on ``self.device`` and no host synchronisation:

1. **Encode.** The visible image and the thermal image (replicated to 3 channels) are preprocessed
   exactly like ``SamPredictor`` / ``ResizeLongestSide`` (resize the longest side to
   ``image_encoder.img_size``, normalise with the model's ``pixel_mean`` / ``pixel_std``, zero-pad
   to a square) and go through the image encoder in ONE batch ``[2N, 3, S, S]``.
   The encoder's attention runs through ``scaled_dot_product_attention`` (``sdpa=True``,
   :func:`.sam_speed.use_sdpa`), optionally compiled (``compile=True``).
2. **Decode.** A regular grid of ``points_per_side**2`` single-point prompts (the automatic mask
   generator's grid, ``segment_anything.utils.amg.build_point_grid``) is decoded in chunks of
   ``points_per_batch`` prompts, each chunk in ONE call for all 2N images with the image-side work
   shared by the prompts (:func:`.sam_speed.decode_shared`; ``shared_decoder=False``: the stock
   decoder, one image per call). Memory per call grows with 2N x ``points_per_batch`` (the image
   tokens become per-prompt in the first decoder block). ``multimask_output=True`` -> 3 candidate
   masks per point, as low-resolution logits (256x256 for the official models) cropped to the
   un-padded area. With ``precision`` fp16/bf16 on CUDA, encoder and decoder run under
   ``torch.autocast``; selection and merge run in fp32 on the logits cast to float.
3. **Select.** A candidate is kept when its predicted IoU >= ``pred_iou_thresh`` and its stability
   score (IoU of the logits thresholded at +/- ``stability_score_offset``, computed on the
   low-resolution logits with ``segment_anything.utils.amg.calculate_stability_score``) >=
   ``stability_score_thresh``.
4. **Merge into one channel** (our design; the paper does not publish it), at low resolution:
   each kept segment ``S_k`` (binary, logits > 0) gets the saliency score ``s_k`` = mean over the
   segment of the modality's per-pixel score map from :mod:`.fallback` (IR: warmth in robust
   standard deviations of the frame plus local prominence -> "is this segment a warm target?";
   VIS: log texture/contrast energy in robust stds -> "is this segment a textured / high-contrast
   object?"). The channel is

       M(x) = max_k  keep_k * soft_threshold(s_k, threshold, softness) * w(area_k) * S_k(x)

   with the same ``threshold`` / ``softness`` as the fallback prior and
   ``w(a) = clip((1 - a) / (1 - large_segment_frac), 0, 1)``: segments up to 60 % of the image
   count fully, larger ones (sky, road, a wall filling the view) fade linearly to 0 at 100 %.
   The max (not a sum) keeps overlapping multimask candidates from stacking up, and makes the
   result independent of the chunking. If an image has no kept segment at all, its channel is the
   fallback prior's per-pixel soft mask (``empty_fallback=True``), so Stage II never receives an
   empty prior because SAM was unsure.
5. **Upsample** the merged low-resolution channel once (bilinear) to H x W.

``SamAutomaticMaskGenerator`` is not used per frame (its per-crop CPU post-processing costs 10-47 s
per image on an H100); :meth:`SamPrior.masks_offline_amg` offers it for offline comparisons.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import build_point_grid, calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor

from .base import SAM_MODEL_TYPES, SemanticPrior
from .fallback import FallbackPrior, SaliencyParams, ir_score_map, soft_threshold, vis_score_map
from .sam_speed import decode_shared, use_sdpa
from .segments import compose_segments, segment_scores

#: ``precision`` option -> autocast dtype (None: fp32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = [
    "SamPrior",
    "build_sam_tiny",
    "compose_segments",
    "load_sam_checkpoint",
    "read_sam_state_dict",
    "segment_scores",
    "select_segments",
]


# --------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------


def read_sam_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a SAM checkpoint (a state dict saved with ``torch.save``) safely.

    ``torch.load(..., map_location="cpu", weights_only=True)``: no arbitrary code runs from the file.
    A dict wrapping the state dict under ``"model"`` or ``"state_dict"`` is unwrapped.

    Raises:
        FileNotFoundError: ``path`` does not exist (message names it).
        ValueError: ``path`` is not a readable tensor state dict (message names it).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"SAM checkpoint not found: '{p}'")
    if not p.is_file():
        raise ValueError(f"SAM checkpoint '{p}' is not a file")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip/format errors come in many types; all mean "unreadable"
        raise ValueError(f"cannot read SAM checkpoint '{p}': {type(e).__name__}: {str(e)[:300]}") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise ValueError(f"SAM checkpoint '{p}' does not contain a state dict of tensors "
                         f"(got {type(obj).__name__})")
    return obj


def load_sam_checkpoint(model: Sam, path: str | Path, *, model_type: str = "") -> Sam:
    """Load the checkpoint at ``path`` into ``model`` (strict), in place; returns ``model``.

    Raises:
        FileNotFoundError: missing file (message names the path).
        ValueError: unreadable file, or keys/shapes that do not match the model (message names the
            path and ``model_type``: typically a vit_h checkpoint with ``sam_model_type: vit_b``).
    """
    state = read_sam_state_dict(path)
    _load_state(model, state, Path(path).expanduser(), model_type)
    return model


def _load_state(model: Sam, state: dict[str, Tensor], path: Path, model_type: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        what = f" for model type {model_type!r}" if model_type else ""
        hint = f" (allowed model types: {list(SAM_MODEL_TYPES)})" if model_type else ""
        raise ValueError(f"SAM checkpoint '{path}' does not match the model{what}{hint}: "
                         f"{str(e).strip()[:400]}") from e


# --------------------------------------------------------------------------------------------
# Tiny random SAM (tests, benchmarks)
# --------------------------------------------------------------------------------------------


def build_sam_tiny(img_size: int = 128, embed_dim: int = 32, depth: int = 2, prompt_dim: int = 32,
                   seed: int = 0) -> Sam:
    """A randomly initialised SAM built from the real segment_anything modules, small enough for CPU tests.

    Same architecture family as the official models (ViT encoder with windowed + global attention
    and relative positions, prompt encoder, two-way-transformer mask decoder with 3 multimask
    outputs), with tiny widths. ``img_size`` must be a multiple of 16; the decoder's low-resolution
    logits are ``img_size / 4`` square. Deterministic for a given ``seed`` (does not disturb the
    global RNG). Weights are random: the masks mean nothing, the plumbing is real.
    """
    if img_size % 16:
        raise ValueError(f"img_size must be a multiple of 16, got {img_size}")
    emb = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=2,
                mlp_ratio=2.0, out_chans=prompt_dim, qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=max(1, emb // 2), global_attn_indexes=(depth - 1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim, image_embedding_size=(emb, emb), input_image_size=(img_size, img_size),
                mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim,
                                              num_heads=2),
                transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=prompt_dim,
            ),
        )
        # rel-pos tables are zero-initialised; give them values so the path is exercised.
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Segment selection (a pure tensor function, unit-tested; scoring and merging: .segments)
# --------------------------------------------------------------------------------------------


def select_segments(logits: Tensor, iou_pred: Tensor, *, pred_iou_thresh: float, stability_score_thresh: float,
                    stability_score_offset: float = 1.0, mask_threshold: float = 0.0) -> Tensor:
    """Which candidate masks to keep.

    Args:
        logits: [K, h, w] mask logits (low resolution, cropped to the image area).
        iou_pred: [K] predicted IoU.
    Returns:
        [K] bool: ``iou_pred >= pred_iou_thresh`` and stability score >= ``stability_score_thresh``
        (stability = IoU of ``logits > t + offset`` and ``logits > t - offset``; an empty mask has
        stability 0 by convention here).
    """
    stab = calculate_stability_score(logits, mask_threshold, stability_score_offset)
    stab = torch.nan_to_num(stab, nan=0.0)  # 0/0 for masks empty at the low threshold
    return (iou_pred >= pred_iou_thresh) & (stab >= stability_score_thresh)


def _upsample(merged: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, h, w] merged channels -> [B, 1, H, W] in [0, 1] (bilinear, once per frame)."""
    return F.interpolate(merged[:, None], size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------


class SamPrior(SemanticPrior):
    """SAM-based semantic prior (see the module docstring for the per-frame algorithm).

    Args:
        model: a segment_anything ``Sam`` (official via :meth:`from_checkpoint`, or e.g.
            :func:`build_sam_tiny`). Moved to ``device`` and put in eval mode.
        name: reported name, e.g. ``"sam:vit_b"``.
        device: torch device.
        points_per_side: grid of ``points_per_side**2`` point prompts per image.
        points_per_batch: prompts per mask-decoder call (memory bound; the result does not depend on it).
        pred_iou_thresh, stability_score_thresh, stability_score_offset: segment selection.
        large_segment_frac: segments larger than this fraction of the image are down-weighted.
        empty_fallback: use the fallback per-pixel mask for an image with no kept segment.
        work_size, open_radius: options of the fallback prior (accepted so one configuration
            serves both priors; ``work_size`` is unused here since scoring happens on the low-res grid).
        sdpa: encoder attention through ``scaled_dot_product_attention`` (:func:`.sam_speed.use_sdpa`;
            changes ``model.image_encoder``'s attention blocks in place; same results).
        shared_decoder: decode each chunk for all images in one call with the image-side work shared
            (:func:`.sam_speed.decode_shared`; same results); False: stock decoder, one image per call.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``: on CUDA, encoder and decoder run under
            ``torch.autocast`` with that dtype (selection and merge stay fp32).
        cpu_autocast: also autocast on the CPU (bf16 only; a stand-in for validating ``precision``
            without a GPU, not faster on most CPUs).
        compile: ``torch.compile`` the image encoder (the first call's time is logged once).
        compile_options: extra ``torch.compile`` options (e.g. ``{"backend": "eager"}`` in tests).
        keep_segments: record ``last_segments`` (kept segments per image; costs a copy and a host
            sync per image, so off by default).
        **params: :class:`SaliencyParams` overrides (score maps, thresholds, softness).

    Attributes:
        profile: when True, ``masks`` synchronises the device and records ``last_timings``
            (seconds: ``preprocess``, ``encoder``, ``decoder``, ``merge``, ``upsample``,
            ``total``; ``decoder_calls``) and ``last_kept`` (kept segments per encoded image, VIS
            images first). Off by default: timing needs host/device synchronisation.
        last_segments: with ``keep_segments``, after each ``masks`` call: one bool tensor
            [K_i, hl, wl] per encoded image (VIS images first, then IR) holding the kept segments
            (logits > mask threshold) at the decoder's low resolution, cropped to the image area.
    """

    def __init__(self, model: Sam, *, name: str = "sam:custom", device: str | torch.device = "cpu",
                 points_per_side: int = 16, points_per_batch: int = 64, pred_iou_thresh: float = 0.8,
                 stability_score_thresh: float = 0.9, stability_score_offset: float = 1.0,
                 large_segment_frac: float = 0.6, empty_fallback: bool = True, work_size: int = 320,
                 open_radius: int = 1, sdpa: bool = True, shared_decoder: bool = True, precision: str = "fp32",
                 cpu_autocast: bool = False, compile: bool = False, compile_options: dict | None = None,
                 keep_segments: bool = False, **params: float) -> None:
        if int(points_per_side) < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side!r}")
        if int(points_per_batch) < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch!r}")
        if not 0.0 < float(large_segment_frac) <= 1.0:
            raise ValueError(f"large_segment_frac must be in (0, 1], got {large_segment_frac!r}")
        if float(stability_score_offset) <= 0:
            raise ValueError(f"stability_score_offset must be > 0, got {stability_score_offset!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {list(PRECISIONS)}")
        # Validates the option names / values the same way the fallback does.
        self._fallback = FallbackPrior(device, work_size=work_size, open_radius=open_radius, **params)
        self.params: SaliencyParams = self._fallback.params
        self.name = name
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.points_per_side = int(points_per_side)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.large_segment_frac = float(large_segment_frac)
        self.empty_fallback = bool(empty_fallback)
        self.img_size = int(model.image_encoder.img_size)
        self.shared_decoder = bool(shared_decoder)
        self.precision = precision
        self.cpu_autocast = bool(cpu_autocast)
        self.keep_segments = bool(keep_segments)
        use_sdpa(self.model.image_encoder, bool(sdpa))
        self._encoder: Callable[[Tensor], Tensor] = self.model.image_encoder
        if compile:
            from ..compiled import LoggedCompile

            self._encoder = LoggedCompile(self.model.image_encoder, "SAM image encoder", **(compile_options or {}))
        self.profile = False
        self.last_timings: dict[str, float] = {}
        self.last_kept: list[int] = []
        self.last_segments: list[Tensor] = []
        self._prompt_cache: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}

    def set_selection_thresholds(self, pred_iou_thresh: float, stability_score_thresh: float) -> None:
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)

    def to(self, device: str | torch.device) -> SamPrior:
        """Move the model (and the cached prompts) to ``device``; returns ``self``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._fallback.to(self.device)
        self._prompt_cache = {}
        return self

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, model_type: str = "vit_b",
                        device: str | torch.device = "cpu", **kwargs) -> SamPrior:
        """Build the official architecture ``model_type`` and load ``checkpoint`` into it.

        The state dict is read first (fast failure on a missing / garbage file, before building a
        large model), with ``weights_only=True``. Raises FileNotFoundError / ValueError naming the
        path, ValueError naming an unknown ``model_type`` and the allowed ones.
        """
        if model_type not in SAM_MODEL_TYPES:
            raise ValueError(f"unknown SAM model type {model_type!r}; allowed: {list(SAM_MODEL_TYPES)}")
        path = Path(checkpoint).expanduser()
        state = read_sam_state_dict(path)
        model = sam_model_registry[model_type](checkpoint=None)
        _load_state(model, state, path, model_type)
        del state
        return cls(model, name=f"sam:{model_type}", device=device, **kwargs)

    # ---- stages (public so tests / benchmarks can drive them) ---------------------------------

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """Size (h', w') of an H x W image after ResizeLongestSide (before padding)."""
        return ResizeLongestSide.get_preprocess_shape(h, w, self.img_size)

    def preprocess(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, 3, S, S] normalised, zero-padded encoder input.

        Same as ``SamPredictor.set_image``: resize the longest side to S (bilinear, antialiased, on
        the 0..255 scale), normalise with ``pixel_mean`` / ``pixel_std``, pad right / bottom.
        """
        h, w = images.shape[-2:]
        nh, nw = self.input_size(h, w)
        x = images.clamp(0.0, 1.0) * 255.0
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        return F.pad(x, (0, self.img_size - nw, 0, self.img_size - nh))

    def _prompts(self, nh: int, nw: int) -> tuple[Tensor, Tensor, Tensor]:
        """(sparse [P,2,C], dense [1,C,h,w], image_pe [1,C,h,w]) for the point grid; cached per input size.

        Prompts do not depend on the image, only on the input size they are scaled to.
        """
        key = (nh, nw)
        if key not in self._prompt_cache:
            grid = torch.as_tensor(build_point_grid(self.points_per_side), dtype=torch.float32, device=self.device)
            coords = grid * torch.tensor([nw, nh], dtype=torch.float32, device=self.device)
            labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=self.device)
            pe = self.model.prompt_encoder
            sparse, _ = pe(points=(coords[:, None, :], labels), boxes=None, masks=None)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                1, -1, pe.image_embedding_size[0], pe.image_embedding_size[1])
            self._prompt_cache = {key: (sparse, dense, pe.get_dense_pe())}
        return self._prompt_cache[key]

    def decode(self, embedding: Tensor, sparse: Tensor, dense: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        """One mask-decoder call. embedding [1,C,h,w], sparse [P,2,C] -> (logits [P,3,L,L], iou [P,3])."""
        return self.model.mask_decoder(
            image_embeddings=embedding,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.expand(sparse.shape[0], -1, -1, -1),
            multimask_output=True,
        )

    def _autocast(self) -> torch.autocast:
        """Autocast context for encoder and decoder per ``precision`` (disabled for fp32 / off-CUDA)."""
        dtype = PRECISIONS[self.precision]
        kind = self.device.type
        enabled = dtype is not None and (kind == "cuda" or (kind == "cpu" and self.cpu_autocast))
        return torch.autocast(device_type=kind, dtype=dtype or torch.float32, enabled=enabled)

    def decode_chunk(self, emb: Tensor, sparse: Tensor, dense: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor, int]:
        """Decode one chunk of prompts for every image.

        Args:
            emb: [B, C, h, w] image embeddings; sparse: [P, 2, C]; dense, image_pe: [1, C, h, w].
        Returns:
            (logits [B, P, 3, L, L], iou [B, P, 3], both float32; decoder calls made).
        """
        b, p = emb.shape[0], sparse.shape[0]
        with self._autocast():
            if self.shared_decoder:
                logits, iou = decode_shared(self.model.mask_decoder, emb, image_pe, sparse, dense, True)
                calls = 1
            else:
                outs = [self.decode(emb[i:i + 1], sparse, dense, image_pe) for i in range(b)]
                logits, iou = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
                calls = b
        return logits.float().unflatten(0, (b, p)), iou.float().unflatten(0, (b, p)), calls

    def score_maps(self, thermal: Tensor, visible_rgb: Tensor, size: tuple[int, int]) -> Tensor:
        """Per-pixel saliency score maps that segments are scored on, computed from the inputs (not SAM's
        normalised copies), area-downsampled to ``size``.

        thermal [N,1,H,W], visible_rgb [N,3,H,W] in [0,1] -> [2N, h, w] float: VIS_0..VIS_{N-1}, IR_0..IR_{N-1}
        (the encoder's batch order).
        """
        p = self.params
        if tuple(thermal.shape[-2:]) != tuple(size):
            thermal = F.interpolate(thermal, size=size, mode="area")
            visible_rgb = F.interpolate(visible_rgb, size=size, mode="area")
        return torch.cat([vis_score_map(visible_rgb, p), ir_score_map(thermal, p)], dim=0)[:, 0]

    def thresholds(self, n: int) -> list[float]:
        """Saliency threshold per image of a batch of ``n`` pairs, in :meth:`score_maps` order."""
        return [self.params.vis_threshold] * n + [self.params.ir_threshold] * n

    def merge_segments(self, segments: list[Tensor], scores: list[Tensor]) -> Tensor:
        """Merge already selected segments into one channel per image, as :meth:`masks` does.

        Args:
            segments: 2N tensors [K_b, h, w] in [0, 1] (binary or soft, e.g. warped), in :meth:`score_maps`
                order; K_b may be 0.
            scores: 2N tensors [K_b] of segment scores (:func:`.segments.segment_scores`).
        Returns:
            [2N, h, w] float in [0, 1]; an image without segments gives zeros (no ``empty_fallback`` here:
            the caller decides what replaces it).
        """
        n = len(segments) // 2
        out = [compose_segments(seg, sc, threshold=thr, softness=self.params.softness,
                                large_segment_frac=self.large_segment_frac)
               for seg, sc, thr in zip(segments, scores, self.thresholds(n), strict=True)]
        return torch.stack(out)

    def masks_from_segments(self, segments: list[Tensor], thermal: Tensor,
                            visible_rgb: Tensor) -> tuple[Tensor, Tensor]:
        """The second half of :meth:`masks` for given segments: score, merge, empty fallback, upsample.

        ``masks_from_segments(last_segments, ...)`` after ``masks(...)`` with ``keep_segments`` gives the same
        masks (tested); other segment sources (cached, warped, or a stand-in for SAM) go through the same merge.

        Args:
            segments: 2N tensors [K_b, hl, wl] in [0, 1], in :meth:`score_maps` order, all on one grid.
            thermal: [N,1,H,W], visible_rgb: [N,3,H,W] in [0,1] (the frame the segments are scored on).
        Returns:
            (m_ir, m_vis), each [N,1,H,W] float32 in [0,1].
        """
        n, h, w = thermal.shape[0], thermal.shape[-2], thermal.shape[-1]
        maps = self.score_maps(thermal, visible_rgb, tuple(segments[0].shape[-2:]))
        segments = [seg.to(maps.dtype) for seg in segments]
        merged = self.merge_segments(segments, [segment_scores(seg, maps[b]) for b, seg in enumerate(segments)])
        kept = torch.tensor([seg.shape[0] for seg in segments], device=merged.device)
        m = _upsample(self._fill_empty(merged, kept, maps), (h, w))
        return m[n:].contiguous(), m[:n].contiguous()

    def _fill_empty(self, merged: Tensor, kept: Tensor, maps: Tensor) -> Tensor:
        """``empty_fallback``: the fallback's per-pixel soft mask for each image with no kept segment.

        merged, maps [2N, h, w]; kept [2N] counts. Branch-free, so no host synchronisation.
        """
        if not self.empty_fallback:
            return merged
        softness = self.params.softness
        thresholds = self.thresholds(merged.shape[0] // 2)
        fallback = torch.stack([soft_threshold(maps[b], thresholds[b], softness) for b in range(merged.shape[0])])
        return torch.where((kept > 0)[:, None, None], merged, fallback)

    def _sync(self) -> None:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def masks(self, thermal: Tensor, visible_rgb: Tensor) -> tuple[Tensor, Tensor]:
        """See :meth:`SemanticPrior.masks`. thermal [N,1,H,W], visible_rgb [N,3,H,W] in [0,1]
        -> (m_ir, m_vis), each [N,1,H,W] float32 in [0,1] on ``self.device``."""
        thermal, visible_rgb = self._check_inputs(thermal, visible_rgb)
        n = thermal.shape[0]
        h, w = thermal.shape[-2:]
        nh, nw = self.input_size(h, w)
        times: dict[str, float] = {"decoder": 0.0, "merge": 0.0}
        t0 = time.perf_counter()

        # 1. both modalities through the encoder in ONE batch: [VIS_0..VIS_{N-1}, IR_0..IR_{N-1}].
        x = self.preprocess(torch.cat([visible_rgb, thermal.expand(-1, 3, -1, -1)], dim=0))
        self._sync()
        t1 = time.perf_counter()
        with self._autocast():
            emb = self._encoder(x)
        self._sync()
        t2 = time.perf_counter()
        times["preprocess"], times["encoder"] = t1 - t0, t2 - t1

        sparse, dense, image_pe = self._prompts(nh, nw)
        L = self.model.prompt_encoder.mask_input_size[0]  # decoder logits are L x L (256 for SAM)
        hl = max(1, min(L, int(round(nh * L / self.img_size))))
        wl = max(1, min(L, int(round(nw * L / self.img_size))))

        p = self.params
        score_maps = self.score_maps(thermal, visible_rgb, (hl, wl))  # [2N, hl, wl]
        thresholds = self.thresholds(n)

        b_all = 2 * n
        acc = score_maps.new_zeros((b_all, hl, wl))
        kept = torch.zeros(b_all, dtype=torch.long, device=self.device)
        candidates: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(b_all)]
        calls = 0
        for start in range(0, sparse.shape[0], self.points_per_batch):
            ta = time.perf_counter()
            logits, iou, used = self.decode_chunk(emb, sparse[start:start + self.points_per_batch], dense, image_pe)
            calls += used
            self._sync()
            tb = time.perf_counter()
            logits = logits[..., :hl, :wl].flatten(1, 2)  # [B, P*3, hl, wl]
            iou = iou.flatten(1)  # [B, P*3]
            for b in range(b_all):
                keep = select_segments(
                    logits[b], iou[b], pred_iou_thresh=self.pred_iou_thresh,
                    stability_score_thresh=self.stability_score_thresh,
                    stability_score_offset=self.stability_score_offset,
                    mask_threshold=self.model.mask_threshold,
                )
                binary = logits[b] > self.model.mask_threshold
                segs = binary.to(acc.dtype)
                scores = segment_scores(segs, score_maps[b])
                part = compose_segments(segs, scores, threshold=thresholds[b], softness=p.softness,
                                        large_segment_frac=self.large_segment_frac, keep=keep)
                acc[b] = torch.maximum(acc[b], part)
                kept[b] += keep.sum()
                if self.keep_segments:
                    candidates[b].append((binary, keep))
            self._sync()
            times["decoder"] += tb - ta
            times["merge"] += time.perf_counter() - tb
        acc = self._fill_empty(acc, kept, score_maps)
        if self.keep_segments:
            self.last_segments = [torch.cat([c[0] for c in cs])[torch.cat([c[1] for c in cs])] for cs in candidates]

        ts = time.perf_counter()
        m = _upsample(acc, (h, w))  # [2N,1,H,W]
        self._sync()
        times["upsample"] = time.perf_counter() - ts
        if self.profile:
            times["total"] = time.perf_counter() - t0
            times["decoder_calls"] = float(calls)
            self.last_timings = times
            self.last_kept = [int(k) for k in kept]
        return m[n:].contiguous(), m[:n].contiguous()

    # ---- offline helper -----------------------------------------------------------------------

    @torch.no_grad()
    def masks_offline_amg(self, thermal: Tensor, visible_rgb: Tensor, **amg_kwargs) -> tuple[Tensor, Tensor]:
        """Same channel composition, but segments from the stock ``SamAutomaticMaskGenerator``.

        For offline comparisons only (seconds per image: per-crop CPU post-processing, NMS, RLE).
        Segments are scored on full-resolution score maps and composed at full resolution; no
        ``empty_fallback``. ``amg_kwargs`` go to the generator (defaults: this prior's grid and
        thresholds). Same input/output contract as :meth:`masks`.
        """
        from segment_anything import SamAutomaticMaskGenerator

        thermal, visible_rgb = self._check_inputs(thermal, visible_rgb)
        opts = dict(points_per_side=self.points_per_side, points_per_batch=self.points_per_batch,
                    pred_iou_thresh=self.pred_iou_thresh, stability_score_thresh=self.stability_score_thresh,
                    stability_score_offset=self.stability_score_offset)
        opts.update(amg_kwargs)
        gen = SamAutomaticMaskGenerator(self.model, **opts)
        p = self.params
        outs: dict[str, list[Tensor]] = {"ir": [], "vis": []}
        for i in range(thermal.shape[0]):
            for kind, img, score_fn, thr in (
                ("vis", visible_rgb[i:i + 1], vis_score_map, p.vis_threshold),
                ("ir", thermal[i:i + 1].expand(-1, 3, -1, -1), ir_score_map, p.ir_threshold),
            ):
                arr = (img[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
                anns = gen.generate(arr)
                src = visible_rgb[i:i + 1] if kind == "vis" else thermal[i:i + 1]
                smap = score_fn(src, p)[0, 0]
                if anns:
                    segs = torch.stack([torch.as_tensor(a["segmentation"], device=self.device) for a in anns])
                    segs = segs.to(smap.dtype)
                    ch = compose_segments(segs, segment_scores(segs, smap), threshold=thr, softness=p.softness,
                                          large_segment_frac=self.large_segment_frac)
                else:
                    ch = smap.new_zeros(smap.shape)
                outs[kind].append(ch[None, None])
        return torch.cat(outs["ir"]), torch.cat(outs["vis"])
