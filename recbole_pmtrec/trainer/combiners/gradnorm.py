"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks, ICML 2018), on the Jacobian of the shared parameters.

Task weights w_t (a parameter of the combiner, starting at 1) set the direction d = sum_t w_t g_t. With
G_t = ||w_t g_t|| (the "shared layer" gradient norms, here those of the whole Jacobian row), G_bar their
mean, the loss ratios L~_t = L_t / L_t(0) (L_t(0): the losses of the first step) and the inverse training
rates r_t = L~_t / mean_k L~_k, GradNorm moves the weights to shrink

    L_grad = sum_t | G_t - G_bar r_t^alpha |      (the targets G_bar r_t^alpha held constant, Eq. 2)

by one step of the combiner's own Adam (``gradnorm_lr``) on dL_grad / dw_t = sign(G_t - target_t) ||g_t||,
after the direction is taken with the current weights; then the weights are clipped at 0 and renormalised
to sum to T. ``gradnorm_alpha`` is the asymmetry alpha (1.5 in the paper). State: w_t, L_t(0) and the Adam
moments, in ``state_dict``. Own code (LibMTL's GradNorm differs: softmax-parametrised weights).
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_pmtrec.trainer.combiners.base import register
from recbole_pmtrec.trainer.combiners.common import SelfTunedCombiner, knob


@register("gradnorm")
class GradNormCombiner(SelfTunedCombiner):
    """d = sum_t w_t g_t; w <- Adam step on L_grad, clipped at 0 and renormalised to sum T.

    Config: ``gradnorm_alpha`` (asymmetry), ``gradnorm_lr`` (learning rate of the weights).
    """

    def __init__(self, config, num_tasks: int):
        super().__init__(config, num_tasks)
        self.asymmetry = float(knob(config, "gradnorm_alpha"))
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.register_buffer("initial_losses", torch.full((num_tasks,), float("nan"), dtype=torch.float64))
        self.make_optimizer(self.task_weights, lr=float(knob(config, "gradnorm_lr")))

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        losses = losses.detach().to(torch.float64)
        if bool(torch.isnan(self.initial_losses).any()):
            self.initial_losses.copy_(losses)
        weights = self.task_weights.detach()
        direction = weights.to(jacobian.dtype) @ jacobian

        grad_norms = torch.linalg.vector_norm(jacobian, dim=1).to(torch.float64)
        weighted_norms = weights.to(torch.float64) * grad_norms
        loss_ratios = losses / self.initial_losses.clamp_min(torch.finfo(torch.float64).tiny)
        inverse_rates = loss_ratios / loss_ratios.mean()
        targets = weighted_norms.mean() * inverse_rates**self.asymmetry
        self.step_weights(self.task_weights, torch.sign(weighted_norms - targets) * grad_norms)

        with torch.no_grad():
            clipped = self.task_weights.clamp_min(0.0)
            total = clipped.sum()
            self.task_weights.copy_(
                clipped * self.num_tasks / total if total > 0 else torch.ones_like(clipped)
            )
        return direction

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, alpha={self.asymmetry}"
