"""Aligned-MTL (Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023,
Algorithm 1).

The task gradients are made orthogonal and of equal size (the condition number of the aligned Jacobian is
1): with the Gramian J J^T = V diag(lambda) V^T restricted to its rank,

    B = sqrt(lambda_min) V diag(lambda)^(-1/2) V^T;   d = (B w)^T J,   w = (1/T, ..., 1/T)

``aligned_mtl_scale_mode`` picks the scale: ``min`` (lambda_min, the paper's formula), ``median`` or
``rmse`` (the mean eigenvalue, as the authors' code). Stateless. Source: ``torchjd.aggregation.AlignedMTL``.
"""

from __future__ import annotations

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner, knob

SCALE_MODES = ("min", "median", "rmse")


@register("aligned_mtl")
class AlignedMTLCombiner(AggregatorCombiner):
    """Config: ``aligned_mtl_scale_mode`` (min | median | rmse)."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        scale_mode = str(knob(self.config, "aligned_mtl_scale_mode")).lower()
        if scale_mode not in SCALE_MODES:
            raise ValueError(f"aligned_mtl_scale_mode must be one of {SCALE_MODES}, got '{scale_mode}'")
        return jd.AlignedMTL(scale_mode=scale_mode)
