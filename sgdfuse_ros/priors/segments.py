"""Scoring and merging SAM-style segments into one soft saliency channel (pure tensor functions).

Used by :class:`~.sam.SamPrior` on every SAM frame and by :class:`~.keyframes.KeyframePrior` when it
re-scores a keyframe's cached segments on a later frame (``method="rescore"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fallback import soft_threshold

__all__ = ["compose_segments", "segment_scores"]


def segment_scores(segments: Tensor, score_map: Tensor) -> Tensor:
    """Mean of ``score_map`` over each segment.

    Args:
        segments: [K, h, w] in [0, 1] (binary or soft).
        score_map: [h, w] per-pixel saliency score.
    Returns:
        [K] float; 0 for an empty segment.
    """
    flat = segments.flatten(1).to(score_map.dtype)
    area = flat.sum(dim=1)
    return (flat @ score_map.reshape(-1)) / area.clamp_min(1e-6)


def compose_segments(segments: Tensor, scores: Tensor, *, threshold: float, softness: float,
                     large_segment_frac: float = 0.6, keep: Tensor | None = None) -> Tensor:
    """Merge scored segments into one soft saliency channel.

    ``M(x) = max_k keep_k * soft_threshold(s_k, threshold, softness) * w(area_k) * S_k(x)``, with
    ``w(a) = clip((1 - a) / (1 - large_segment_frac), 0, 1)`` (area as a fraction of the map).

    Args:
        segments: [K, h, w] in [0, 1].
        scores: [K] saliency scores (same units as ``threshold``).
        keep: optional [K] bool/float selection (dropped segments contribute 0).
    Returns:
        [h, w] float in [0, 1]; zeros when K == 0.
    """
    k, h, w = segments.shape
    if k == 0:
        return segments.new_zeros((h, w), dtype=scores.dtype)
    segments = segments.to(scores.dtype)
    area = segments.mean(dim=(1, 2))
    if large_segment_frac < 1.0:
        w_area = ((1.0 - area) / (1.0 - large_segment_frac)).clamp(0.0, 1.0)
    else:
        w_area = torch.ones_like(area)
    conf = soft_threshold(scores, threshold, softness) * w_area
    if keep is not None:
        conf = conf * keep.to(conf.dtype)
    return (conf[:, None, None] * segments).amax(dim=0)
