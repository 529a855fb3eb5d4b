"""Random loss weighting, RLW (Lin et al., Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning, TMLR 2022, Algorithm 2).

    lambda = softmax(z),  z ~ N(0, I_T) drawn anew every step;   d = sum_t lambda_t g_t

Stateless (draws from the global torch RNG). Source: ``torchjd.aggregation.Random``. The weights sum to 1,
so the step is on the scale of the mean of the task gradients (EW's sum / T).
"""

from __future__ import annotations

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner


@register("rlw")
class RandomLossWeighting(AggregatorCombiner):
    """d = softmax(z) @ J with z ~ N(0, I) per step."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        return jd.Random()
