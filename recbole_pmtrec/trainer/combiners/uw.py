"""Uncertainty weighting, UW (Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses
for Scene Geometry and Semantics, CVPR 2018), in the common loss-level form with s_t = log sigma_t^2:

    L_UW = sum_t exp(-s_t) L_t + s_t;   d = dL_UW / dtheta = sum_t exp(-s_t) g_t

The log-variances s_t (a parameter of the combiner, starting at 0, i.e. EW) are learned by the combiner's
own Adam (``uw_lr``) on dL_UW / ds_t = 1 - exp(-s_t) L_t, one step per ``combine`` after the direction is
taken with the current s_t; their optimum is s_t = log L_t. State: s_t and the Adam moments, in
``state_dict``. Own code.
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import SelfTunedCombiner, knob


@register("uw")
class UncertaintyWeighting(SelfTunedCombiner):
    """d = sum_t exp(-s_t) g_t; s_t <- Adam step on sum_t exp(-s_t) L_t + s_t. Config: ``uw_lr``."""

    def __init__(self, config, num_tasks: int):
        super().__init__(config, num_tasks)
        self.log_variances = nn.Parameter(torch.zeros(num_tasks))
        self.make_optimizer(self.log_variances, lr=float(knob(config, "uw_lr")))

    def task_weights(self) -> torch.Tensor:
        """exp(-s_t) ``[T]``."""
        return torch.exp(-self.log_variances.detach())

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        weights = self.task_weights()
        direction = weights.to(jacobian.dtype) @ jacobian
        self.step_weights(self.log_variances, 1.0 - weights * losses.detach().to(weights.dtype))
        return direction
