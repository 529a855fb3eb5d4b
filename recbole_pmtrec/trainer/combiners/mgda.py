"""MGDA (Desideri 2012; as solved by Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization,
NeurIPS 2018, Algorithm 2), on the Jacobian of the shared parameters (not MGDA-UB's shared representation).

The min-norm point of the convex hull of the task gradients, found by Frank-Wolfe on the Gramian:

    w* = argmin_{w in simplex} ||J^T w||^2;   d = J^T w*

Stateless. Source: ``torchjd.aggregation.MGDA``. Config: ``mgda_epsilon`` (stop when the Frank-Wolfe step
is below it), ``mgda_max_iters``.
"""

from __future__ import annotations

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner, knob


@register("mgda")
class MGDACombiner(AggregatorCombiner):
    """d = the min-norm convex combination of the task gradients."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        return jd.MGDA(
            epsilon=float(knob(self.config, "mgda_epsilon")),
            max_iters=int(knob(self.config, "mgda_max_iters")),
        )
