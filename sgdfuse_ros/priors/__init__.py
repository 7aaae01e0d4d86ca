"""Semantic priors: per-modality soft saliency masks (M_ir, M_vis) that condition Stage II.

``build_prior(kind, ...)`` returns a :class:`SemanticPrior`: ``"sam"`` (segment_anything with a
user-supplied checkpoint) or ``"fallback"`` (weight-free); ``"auto"`` picks SAM when a checkpoint is
configured. ``KeyframePrior`` runs a prior on keyframes only and carries its masks to the frames in
between by optical flow (``build_prior(..., keyframe_interval=k)`` wraps SAM in it). See docs/priors.md.
"""

from .base import PRIOR_KINDS, SAM_MODEL_TYPES, SemanticPrior
from .builder import build_prior
from .fallback import FallbackPrior, SaliencyParams
from .keyframes import KeyframePrior

__all__ = [
    "PRIOR_KINDS",
    "SAM_MODEL_TYPES",
    "FallbackPrior",
    "KeyframePrior",
    "SaliencyParams",
    "SemanticPrior",
    "build_prior",
]
