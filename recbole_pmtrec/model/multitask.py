"""The contract between a multi-task model and the multi-task trainer.

A model that sets ``multi_task = True`` returns one loss per task from ``calculate_loss`` (main task first,
so RecBole's own trainer can still sum them) and implements ``multitask_forward``: the same losses plus the
embedding rows each task gathered (:class:`RowGather`). Because every task gathers its *own* copy of the
rows it uses, one backward of the summed loss gives every task's gradient with respect to its rows
(the gradient reaching task t's gathered tensor comes from task t's loss alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class RowGather:
    """Rows ``index`` of embedding source ``table`` (a key of ``model.row_tables()``), as gathered by task
    ``task``. ``rows`` is ``source[index]``, a non-leaf tensor in the autograd graph of that task's loss."""

    task: int
    table: str
    index: torch.Tensor
    rows: torch.Tensor


@dataclass
class MultiTaskOutput:
    """Per-task losses (main first) and the rows each task gathered."""

    losses: list[torch.Tensor]
    gathers: list[RowGather] = field(default_factory=list)


class MultiTaskModelMixin:
    """Marks a RecBole model as multi-task and states what the trainer may ask of it.

    - ``task_names``: one name per task, main first.
    - ``row_tables()``: the embedding parameters combined per row, by name (e.g. ``user``, ``item``).
    - ``gathers_from_base``: True when ``RowGather.rows`` are rows of ``row_tables()`` themselves (MF);
      False when they are rows of a propagated output (graph encoders), in which case the model maps
      per-task output gradients back to the base tables with ``base_gradients``.
    """

    multi_task = True
    gathers_from_base = True
    task_names: list[str]

    def row_tables(self) -> dict[str, nn.Parameter]:
        raise NotImplementedError

    def multitask_forward(self, interaction) -> MultiTaskOutput:
        raise NotImplementedError

    def base_gradients(self, output_grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map per-task gradients at the encoder output (``{table: [T, N, d]}``) to per-task gradients
        of the base tables (same shapes). Identity for encoders without propagation."""
        return output_grads
