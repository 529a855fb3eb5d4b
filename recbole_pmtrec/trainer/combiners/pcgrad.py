"""PCGrad (Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020, Algorithm 1).

For every task i, its gradient is projected, task by task in a random order j, off every original gradient
g_j it conflicts with, and the projected gradients are summed:

    g_i^PC <- g_i^PC - min(0, g_i^PC . g_j) / ||g_j||^2 g_j   (j != i, random order);   d = sum_i g_i^PC

Stateless (the order comes from the global torch RNG; with T = 2 it does not matter). Source:
``torchjd.aggregation.PCGrad`` (works on the Gramian J J^T).
"""

from __future__ import annotations

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner


@register("pcgrad")
class PCGradCombiner(AggregatorCombiner):
    """d = sum_i g_i^PC (conflicting components projected away)."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        return jd.PCGrad()
