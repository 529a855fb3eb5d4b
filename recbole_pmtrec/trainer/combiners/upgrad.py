"""UPGrad (Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024, arXiv:2406.16232).

Every task gradient is projected onto the dual cone of all task gradients {x : J x >= 0}, and the
projections are averaged:

    d = (1/T) sum_t argmin_{x : J x >= 0} ||x - g_t||^2

so d never conflicts with any task (g_t . d >= 0 for all t). Stateless. Source:
``torchjd.aggregation.UPGrad`` (the projections are a QP on the Gramian, solved by quadprog). Needs the
``torchjd[quadprog_projector]`` extra.
"""

from __future__ import annotations

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner


@register("upgrad")
class UPGradCombiner(AggregatorCombiner):
    """d = mean of the task gradients projected onto the dual cone of the Jacobian."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        return jd.UPGrad()
