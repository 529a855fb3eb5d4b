"""PMTRec's per-row combination (Yang et al., Personalized Multi-task Training for Recommender System, 2024).

For every embedding row e and task t (task 0 = main), with epoch s counted from 1:

    g_t(e) = dL_t / de,  n_t(e) = ||g_t(e)||_2                                  (Eq. 3)
    n_0(e) <- n_0(e) * alpha^s               Task Focusing (alpha = focus_base >= 1)          (Eq. 4)
    w_t(e) = softmax_t(n_t(e) / tau)         Gradient Magnitude Balancing (tau = temperature) (Eq. 5)
    g(e)   = sum_t w_t(e) g_t(e)                                                   (Eq. 6)

By default this equals the paper's dense Algorithm 1 exactly: a task that does not touch a row has
g_t = 0, n_t = 0 and still takes its exp(0 / tau) share of the softmax. With ``skip_untouched`` those tasks
are left out of that row's softmax instead (a documented deviation; the row then follows only the tasks
that pull on it).
"""

from __future__ import annotations

import torch

from recbole_pmtrec.trainer.combiners.base import Combiner, register
from recbole_pmtrec.trainer.combiners.common import knob


def row_task_weights(
    row_grads: torch.Tensor,
    focus_base: float,
    temperature: float,
    epoch: int,
    touched: torch.Tensor | None = None,
    skip_untouched: bool = False,
) -> torch.Tensor:
    """The weights w_t(e) of Eqs. 3-5: ``row_grads[T, R, d]`` -> ``[T, R]`` (columns sum to 1).

    ``epoch`` is s, counted from 1. ``touched[T, R]`` (bool) says which task touched which row; it is only
    read when ``skip_untouched`` is set. The softmax is computed stably (max subtracted) in float64 for the
    logits, so alpha^s / tau up to ~1e300 neither overflows nor loses the ordering.
    """
    norms = torch.linalg.vector_norm(row_grads, dim=-1)
    return weights_from_norms(norms, focus_base, temperature, epoch, touched, skip_untouched).to(
        row_grads.dtype
    )


def weights_from_norms(
    norms: torch.Tensor,
    focus_base: float,
    temperature: float,
    epoch: int,
    touched: torch.Tensor | None = None,
    skip_untouched: bool = False,
) -> torch.Tensor:
    """Eqs. 4-5 from the row norms ``[T, R]``: focusing on task 0, then a stable softmax over tasks (float64)."""
    if temperature <= 0:
        raise ValueError(f"PMTRec temperature tau must be > 0, got {temperature}")
    if focus_base <= 0:
        raise ValueError(f"PMTRec focus base alpha must be > 0, got {focus_base}")
    norms = norms.to(torch.float64)
    focus = torch.ones(norms.shape[0], 1, dtype=norms.dtype, device=norms.device)
    focus[0] = float(focus_base) ** int(epoch)
    logits = norms * focus / float(temperature)
    if skip_untouched:
        if touched is None:
            raise ValueError("skip_untouched needs the touched[T, R] mask")
        logits = logits.masked_fill(~touched, float("-inf"))
        untouched_rows = ~touched.any(dim=0)
        logits[:, untouched_rows] = 0.0  # a row no task touches: weights are irrelevant (all g_t = 0)
    return torch.softmax(logits, dim=0)


def combine_row_gradients(
    row_grads: torch.Tensor,
    focus_base: float,
    temperature: float,
    epoch: int,
    touched: torch.Tensor | None = None,
    skip_untouched: bool = False,
) -> torch.Tensor:
    """PMTRec's Eq. 6 per row: ``row_grads[T, R, d]`` -> ``[R, d]`` = sum_t w_t(e) g_t(e).

    Pure function (no state), reusable outside the trainer; see :func:`row_task_weights` for the weights.
    """
    weights = row_task_weights(row_grads, focus_base, temperature, epoch, touched, skip_untouched)
    return weighted_task_sum(weights, row_grads)


def weighted_task_sum(weights: torch.Tensor, row_grads: torch.Tensor) -> torch.Tensor:
    """``sum_t weights[t, r] * row_grads[t, r, :]`` as T fused multiply-adds: no [T, R, d] temporary and no
    batched product of R tiny matrices (what einsum becomes; slow on a GPU for 300k rows)."""
    out = row_grads[0] * weights[0].unsqueeze(-1)
    for t in range(1, row_grads.shape[0]):
        out.addcmul_(row_grads[t], weights[t].unsqueeze(-1))
    return out


@register("pmtrec")
class PMTRecCombiner(Combiner):
    """Per-row PMTRec combination for the embedding tables; shared dense parameters (e.g. NGCF's weight
    matrices) take the plain sum of task gradients, as the paper is silent on them.

    Config: ``pmtrec_alpha`` (focus base, >= 1; 1 = no Task Focusing), ``pmtrec_tau`` (temperature;
    1 = the paper's no-balancing ablation, large = uniform), ``pmtrec_skip_untouched`` (bool).
    """

    per_row = True

    def __init__(self, config, num_tasks: int):
        super().__init__(config, num_tasks)
        self.focus_base = float(knob(config, "pmtrec_alpha"))
        self.temperature = float(knob(config, "pmtrec_tau"))
        self.skip_untouched = bool(knob(config, "pmtrec_skip_untouched"))
        self.last_weights: torch.Tensor | None = None  # [T, R] of the last combine_rows call (for logging)
        self.last_norms: torch.Tensor | None = None  # [T, R] row gradient norms of that call (to pick tau)

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        return jacobian.sum(dim=0)

    def combine_rows(self, row_grads: torch.Tensor, touched: torch.Tensor, epoch: int) -> torch.Tensor:
        norms = torch.linalg.vector_norm(row_grads, dim=-1)
        weights = weights_from_norms(
            norms, self.focus_base, self.temperature, epoch, touched, self.skip_untouched
        ).to(row_grads.dtype)
        self.last_weights, self.last_norms = weights.detach(), norms.detach()
        return weighted_task_sum(weights, row_grads)

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, alpha={self.focus_base}, tau={self.temperature}, skip_untouched={self.skip_untouched}"
