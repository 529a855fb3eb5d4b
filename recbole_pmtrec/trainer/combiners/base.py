"""The combiner interface: per-task gradients in, one update direction out.

Task-level combiners (EW, PCGrad, Nash-MTL, ...) see the Jacobian ``J[T, P]`` of the task losses with respect
to the parameters they act on (the gathered embedding rows of the batch, then any shared dense parameters,
flattened and concatenated) and return a direction ``[P]``. Per-row combiners (PMTRec) instead see the
per-task gradients of each embedding row, ``[T, R, d]``, and return ``[R, d]``.

Combiners are ``nn.Module``s so that stateful ones (GradVac's targets, Nash-MTL's weights, DWA's loss
history, UW's / GradNorm's learnable weights) travel in checkpoints with ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

COMBINERS: dict[str, type[Combiner]] = {}


def register(name: str):
    """Class decorator: make a combiner selectable as ``mtl_method: <name>``."""

    def wrap(cls):
        cls.name = name
        COMBINERS[name] = cls
        return cls

    return wrap


class Combiner(nn.Module):
    """Base class. ``config`` is the RecBole Config (for the combiner's own knobs); ``num_tasks`` = T."""

    name = "base"
    per_row = False  # True: combine_rows() per embedding row; shared dense parameters use combine()

    def __init__(self, config, num_tasks: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.config = config

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        """``jacobian[T, P]``, ``losses[T]`` (detached), ``epoch`` counted from 1 -> direction ``[P]``."""
        raise NotImplementedError

    def combine_rows(self, row_grads: torch.Tensor, touched: torch.Tensor, epoch: int) -> torch.Tensor:
        """Per-row combiners only: ``row_grads[T, R, d]``, ``touched[T, R]`` -> ``[R, d]``."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, epoch_losses: torch.Tensor) -> None:
        """Called after each training epoch with the mean loss of every task (for DWA and the like)."""

    def extra_repr(self) -> str:
        return f"tasks={self.num_tasks}"


def build_combiner(config, num_tasks: int) -> Combiner:
    """The combiner named by ``config['mtl_method']``."""
    # importing the package registers every combiner
    import recbole_pmtrec.trainer.combiners  # noqa: F401

    name = (config["mtl_method"] or "ew").lower()
    if name not in COMBINERS:
        raise ValueError(f"Unknown mtl_method '{name}'. Available: {', '.join(sorted(COMBINERS))}")
    return COMBINERS[name](config, num_tasks)
