"""IMTL-G (Liu et al., Towards Impartial Multi-task Learning, ICLR 2021), the gradient half of IMTL.

The direction whose projections onto every unit task gradient u_t = g_t / ||g_t|| are equal, as a convex
combination of the task gradients; on the Gramian G = J J^T (pseudo-inverse for dependent tasks, as
generalised by Quinton & Rey 2024):

    v = G^+ (||g_1||, ..., ||g_T||);   w = v / sum_t v_t;   d = J^T w

Stateless. Source: ``torchjd.aggregation.IMTLG``.
"""

from __future__ import annotations

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner


@register("imtl_g")
class IMTLGCombiner(AggregatorCombiner):
    """d with equal projections on every unit task gradient."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        return jd.IMTLG()
