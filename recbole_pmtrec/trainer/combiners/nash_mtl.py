"""Nash-MTL (Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022, Algorithm 1).

The Nash bargaining solution: weights alpha > 0 with, on the Gramian G = J J^T,

    alpha_t (G alpha)_t = 1 for every t   (i.e. g_t . d = 1 / alpha_t);   d = J^T alpha, clipped to ||d|| <= max_norm

solved as in the authors' code by a sequence of convex problems (cvxpy, ECOS), warm-started from the
previous step's alpha. Source: ``torchjd.aggregation.NashMTL`` (needs the ``torchjd[nash_mtl]`` extra:
cvxpy, ecos; it cannot take one task, solved here in closed form); its state lives in numpy attributes that ``state_dict`` does not see, so this combiner keeps
the previous alpha and the step count in buffers, hands the previous alpha to TorchJD before every solve,
and applies ``nash_mtl_update_weights_every`` and the ``nash_mtl_max_norm`` clipping itself (0 = no
clipping). ``nash_mtl_optim_niter`` bounds the convex iterations per solve.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from recbole_pmtrec.trainer.combiners.base import Combiner, register
from recbole_pmtrec.trainer.combiners.common import knob


@register("nash_mtl")
class NashMTLCombiner(Combiner):
    """d = J^T alpha with alpha_t (G alpha)_t = 1, clipped to ``nash_mtl_max_norm``."""

    def __init__(self, config, num_tasks: int):
        super().__init__(config, num_tasks)
        self.max_norm = float(knob(config, "nash_mtl_max_norm"))
        self.update_weights_every = int(knob(config, "nash_mtl_update_weights_every"))
        if self.max_norm < 0 or self.update_weights_every < 1:
            raise ValueError(
                "nash_mtl_max_norm must be >= 0 and nash_mtl_update_weights_every >= 1, got "
                f"{self.max_norm} and {self.update_weights_every}"
            )
        from torchjd import aggregation as jd

        self.aggregator = jd.NashMTL(
            n_tasks=num_tasks,
            max_norm=0.0,
            update_weights_every=1,
            optim_niter=int(knob(config, "nash_mtl_optim_niter")),
        )
        self.register_buffer("previous_weights", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def solve_weights(self, jacobian: torch.Tensor) -> torch.Tensor:
        """alpha for this Jacobian, warm-started from ``previous_weights`` (float64, on the Jacobian's device)."""
        if self.num_tasks == 1:  # alpha^2 ||g||^2 = 1 in closed form (TorchJD's cvxpy problem needs T >= 2)
            norm = torch.linalg.vector_norm(jacobian).to(torch.float64)
            return 1.0 / norm.reshape(1) if norm > 0 else self.previous_weights.clone()
        weighting = self.aggregator.weighting
        weighting.prvs_alpha = self.previous_weights.detach().cpu().numpy().astype(np.float64)
        with warnings.catch_warnings():
            # cvxpy: the authors' problem is not DPP, so re-solves are not faster (harmless, once per run)
            warnings.filterwarnings("ignore", message=".*not DPP.*", category=UserWarning)
            return weighting(jacobian).to(torch.float64)

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        if int(self.steps) % self.update_weights_every == 0:
            self.previous_weights.copy_(self.solve_weights(jacobian))
        self.steps += 1
        direction = self.previous_weights.to(jacobian.dtype) @ jacobian
        if self.max_norm > 0:
            norm = torch.linalg.vector_norm(direction)
            if norm > self.max_norm:
                direction = direction * (self.max_norm / norm)
        return direction

    def extra_repr(self) -> str:
        return (
            f"tasks={self.num_tasks}, max_norm={self.max_norm}, "
            f"update_weights_every={self.update_weights_every}, optim_niter={self.aggregator.optim_niter}"
        )
