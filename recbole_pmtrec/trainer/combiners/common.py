"""What the task-level combiners share: their knobs (defaults in ``properties/combiners.yaml``), a combiner
that is one TorchJD aggregator, and a combiner whose task weights learn with an optimizer of its own."""

from __future__ import annotations

from functools import cache

import torch
import yaml

from recbole_pmtrec.config import properties_dir
from recbole_pmtrec.trainer.combiners.base import Combiner

DEFAULTS_FILE = "combiners.yaml"


@cache
def combiner_defaults() -> dict:
    """The knobs of every task-level combiner with their defaults, read from ``properties/combiners.yaml``."""
    with open(properties_dir() / DEFAULTS_FILE) as file:
        return yaml.safe_load(file) or {}


def knob(config, name: str):
    """``config[name]``, or its default from ``properties/combiners.yaml`` when the config leaves it unset
    (a RecBole Config answers None for a key it does not have)."""
    try:
        value = config[name]
    except KeyError:
        value = None
    if value is not None:
        return value
    defaults = combiner_defaults()
    if name not in defaults:
        raise KeyError(
            f"combiner knob '{name}' is not set and has no default in {properties_dir() / DEFAULTS_FILE}; "
            "add it there (with a comment saying what it does)"
        )
    return defaults[name]


class AggregatorCombiner(Combiner):
    """A combiner that is one TorchJD aggregator (``torchjd.aggregation``): direction = aggregator(J)."""

    def __init__(self, config, num_tasks: int):
        super().__init__(config, num_tasks)
        self.aggregator = self.make_aggregator()

    def make_aggregator(self) -> torch.nn.Module:
        """The TorchJD aggregator, built from this combiner's knobs (``self.config``). Subclasses import
        ``torchjd.aggregation`` here, not at module level: it imports cvxpy (about 2 s), which only the runs
        that build such a combiner should pay for."""
        raise NotImplementedError

    def combine(self, jacobian: torch.Tensor, losses: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.aggregator(jacobian)


class SelfTunedCombiner(Combiner):
    """A combiner whose task weights are its own parameters, trained by its own Adam, not by the model's
    optimizer (keep the combiner out of ``model.parameters()``). The optimizer's moments travel in
    ``state_dict`` as extra state, so a resumed run takes the same steps as an uninterrupted one."""

    optimizer: torch.optim.Optimizer

    def make_optimizer(self, parameter: torch.nn.Parameter, lr: float) -> None:
        self.optimizer = torch.optim.Adam([parameter], lr=lr)

    def step_weights(self, parameter: torch.nn.Parameter, gradient: torch.Tensor) -> None:
        """One step of the combiner's optimizer along the given (closed-form) gradient of its own objective."""
        parameter.grad = gradient.detach().to(parameter.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
