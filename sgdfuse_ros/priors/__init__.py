"""Semantic priors: per-modality soft saliency masks (M_ir, M_vis) that condition Stage II.

``build_prior(kind, ...)`` returns a :class:`SemanticPrior`: ``"sam"`` (segment_anything with a
user-supplied checkpoint) or ``"fallback"`` (weight-free); ``"auto"`` picks SAM when a checkpoint is
configured. See docs/priors.md.
"""

from .base import PRIOR_KINDS, SAM_MODEL_TYPES, SemanticPrior
from .builder import build_prior
from .fallback import FallbackPrior, SaliencyParams

__all__ = [
    "PRIOR_KINDS",
    "SAM_MODEL_TYPES",
    "FallbackPrior",
    "SaliencyParams",
    "SemanticPrior",
    "build_prior",
]
