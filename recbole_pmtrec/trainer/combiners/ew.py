"""Equal weighting (EW): the plain sum of the task gradients, i.e. the gradient of the summed loss."""

from __future__ import annotations

import torch

from recbole_pmtrec.trainer.combiners.base import Combiner, register


@register("ew")
class EqualWeighting(Combiner):
    """d = sum_t g_t (the gradient of sum_t L_t, as RecBole's trainer takes for a tuple of losses).

    Marked per-row so that it takes exactly the gradient route PMTRec takes (row gradients summed and
    added into the tables once): the fair denominator of PMTRec's step-time ratio.
    """

    per_row = True

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        return jacobian.sum(dim=0)

    def combine_rows(self, row_grads: torch.Tensor, touched: torch.Tensor, epoch: int) -> torch.Tensor:
        return row_grads.sum(dim=0)
