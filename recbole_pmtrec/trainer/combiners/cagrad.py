"""CAGrad (Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021, Algorithm 1).

With the mean gradient g_0 = (1/T) sum_t g_t and a ball of radius c ||g_0|| around it, CAGrad picks the
direction in the ball that maximises the worst task's improvement; through its dual,

    w* = argmin_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||   (g_w = J^T w);   d = g_0 + c ||g_0|| / ||g_w*|| g_w*

c = 0 is the mean (EW / T); larger c moves towards MGDA. Stateless. Source: ``torchjd.aggregation.CAGrad``
(solves the dual with cvxpy's Clarabel on the normalised Gramian; no (1 + c^2) rescaling). Needs the
``torchjd[cagrad]`` extra (cvxpy).
"""

from __future__ import annotations

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner, knob


@register("cagrad")
class CAGradCombiner(AggregatorCombiner):
    """Config: ``cagrad_c`` (radius scale c >= 0)."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        return jd.CAGrad(c=float(knob(self.config, "cagrad_c")))
