"""Gradient Vaccine, GradVac (Wang, Tsvetkov, Firat & Cao, Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models, ICLR 2021, Algorithm 1), on the whole Jacobian.

For every task i and every other task j (in a random order), with phi = cos(g_i^PC, g_j) and the target
phi^ (an EMA of past cosines), a gradient less aligned than the target is moved towards it:

    if phi < phi^_ij:  g_i^PC += ||g_i^PC|| (phi^ sqrt(1 - phi^2) - phi sqrt(1 - phi^^2))
                                 / (||g_j|| sqrt(1 - phi^^2)) g_j
    phi^_ij <- (1 - beta) phi^_ij + beta phi;          d = sum_i g_i^PC

Targets start at 0 (the first step acts like PCGrad). ``gradvac_beta`` is the EMA rate (1e-2 in the
paper). State: the targets phi^ ``[T, T]``, a buffer in ``state_dict``. Own code, on the Gramian J J^T, with
the same random visiting order as ``torchjd.aggregation.GradVac`` (whose lazily created state does not load
into a fresh instance, hence this one).
"""

from __future__ import annotations

import torch

from recbole_pmtrec.trainer.combiners.base import Combiner, register
from recbole_pmtrec.trainer.combiners.common import knob

EPS = 1e-8


@register("gradvac")
class GradVacCombiner(Combiner):
    """d = sum_i g_i^PC with every g_i^PC moved up to its EMA cosine targets. Config: ``gradvac_beta``."""

    def __init__(self, config, num_tasks: int):
        super().__init__(config, num_tasks)
        self.beta = float(knob(config, "gradvac_beta"))
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"gradvac_beta must be in [0, 1], got {self.beta}")
        self.register_buffer("cosine_targets", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))

    def task_weights(self, gramian: torch.Tensor) -> torch.Tensor:
        """The weights w with d = J^T w, from the Gramian ``[T, T]`` (float64, CPU); updates the targets.

        Row i of ``coefficients`` writes g_i^PC in the original gradients: g_i^PC = sum_k C_ik g_k, so
        g_i^PC . g_j = (C G)_ij and ||g_i^PC||^2 = C_i G C_i^T.
        """
        num_tasks = gramian.shape[0]
        targets = self.cosine_targets.detach().cpu().clone()
        coefficients = torch.eye(num_tasks, dtype=torch.float64)
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            for position in torch.randperm(num_tasks - 1).tolist():
                j = others[position]
                dots = coefficients[i] @ gramian
                norm_i = (dots @ coefficients[i]).clamp_min(0.0).sqrt()
                norm_j = gramian[j, j].clamp_min(0.0).sqrt()
                cosine = dots[j] / (norm_i * norm_j + EPS)
                target = targets[i, j]
                if cosine < target:
                    sine = (1.0 - cosine**2).clamp_min(0.0).sqrt()
                    target_sine = (1.0 - target**2).clamp_min(0.0).sqrt()
                    step = norm_i * (target * sine - cosine * target_sine) / (norm_j * target_sine + EPS)
                    coefficients[i, j] += step
                targets[i, j] = (1.0 - self.beta) * target + self.beta * cosine
        self.cosine_targets.copy_(targets)
        return coefficients.sum(dim=0)

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        gramian = (jacobian @ jacobian.T).to(device="cpu", dtype=torch.float64)
        weights = self.task_weights(gramian)
        return weights.to(device=jacobian.device, dtype=jacobian.dtype) @ jacobian

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, beta={self.beta}"
