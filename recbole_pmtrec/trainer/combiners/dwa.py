"""Dynamic weight average, DWA (Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention,
CVPR 2019, Eq. 7).

With L_t(s) the mean training loss of task t over epoch s and r_t = L_t(s-1) / L_t(s-2) its rate of
descent, epoch s weights the tasks by

    w_t = T exp(r_t / temperature) / sum_k exp(r_k / temperature);   d = sum_t w_t g_t

and w_t = 1 while fewer than two epochs are recorded. A task whose loss falls slower gets more weight.
``dwa_temperature`` (2 in the paper). State: the last two epochs' mean losses (buffers, filled by
``end_epoch``), so a resumed run keeps its history. Own code.
"""

from __future__ import annotations

import torch

from recbole_pmtrec.trainer.combiners.base import Combiner, register
from recbole_pmtrec.trainer.combiners.common import knob


@register("dwa")
class DynamicWeightAverage(Combiner):
    """d = sum_t w_t g_t with w = T softmax(r / temperature) from the last two epochs' losses."""

    def __init__(self, config, num_tasks: int):
        super().__init__(config, num_tasks)
        self.temperature = float(knob(config, "dwa_temperature"))
        if self.temperature <= 0:
            raise ValueError(f"dwa_temperature must be > 0, got {self.temperature}")
        # row 0: epoch s-2, row 1: epoch s-1
        self.register_buffer("loss_history", torch.zeros(2, num_tasks, dtype=torch.float64))
        self.register_buffer("epochs_recorded", torch.zeros((), dtype=torch.long))

    def task_weights(self) -> torch.Tensor:
        """w ``[T]`` (float64) for the current epoch."""
        if int(self.epochs_recorded) < 2:
            return torch.ones(self.num_tasks, dtype=torch.float64, device=self.loss_history.device)
        rates = self.loss_history[1] / self.loss_history[0].clamp_min(torch.finfo(torch.float64).tiny)
        return self.num_tasks * torch.softmax(rates / self.temperature, dim=0)

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.task_weights().to(jacobian.dtype) @ jacobian

    def end_epoch(self, epoch: int, epoch_losses: torch.Tensor) -> None:
        epoch_losses = torch.as_tensor(epoch_losses, dtype=torch.float64, device=self.loss_history.device)
        self.loss_history[0] = self.loss_history[1]
        self.loss_history[1] = epoch_losses.detach()
        self.epochs_recorded += 1

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}, temperature={self.temperature}"
