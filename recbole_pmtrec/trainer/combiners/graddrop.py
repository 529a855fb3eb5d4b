"""GradDrop (Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout,
NeurIPS 2020, Algorithm 1 lines 10-15), applied to the Jacobian of the shared parameters.

Per coordinate p, the positive sign purity P_p = (1 + sum_t J_tp / sum_t |J_tp|) / 2 and one draw
U_p ~ U(0, 1) keep either the positive or the negative task components:

    M_tp = [P_p > U_p][J_tp > 0] + [P_p < U_p][J_tp < 0];   d_p = sum_t (l_t + (1 - l_t) M_tp) J_tp

with leak l_t (``graddrop_leak``: 0 = the paper's plain GradDrop, 1 = EW's sum). Stateless. Source:
``torchjd.aggregation.GradDrop`` (f = identity).
"""

from __future__ import annotations

import torch

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import AggregatorCombiner, knob


@register("graddrop")
class GradDropCombiner(AggregatorCombiner):
    """Config: ``graddrop_leak`` (one number for every task, or a list of T numbers, each in [0, 1])."""

    def make_aggregator(self):
        from torchjd import aggregation as jd

        leak = knob(self.config, "graddrop_leak")
        leak = torch.as_tensor(leak, dtype=torch.float32).flatten()
        if leak.numel() == 1:
            leak = leak.expand(self.num_tasks).clone()
        if leak.numel() != self.num_tasks or not bool(((leak >= 0) & (leak <= 1)).all()):
            raise ValueError(
                f"graddrop_leak must be one number or {self.num_tasks} numbers in [0, 1], got {leak.tolist()}"
            )
        return jd.GradDrop(leak=leak)
