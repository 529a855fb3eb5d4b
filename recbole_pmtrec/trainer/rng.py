"""Random-number state of a training run, saved in checkpoints so that a resumed run continues exactly as
an uninterrupted one would: torch's global generator (CPU and CUDA), numpy's (RecBole's negative sampler),
Python's, the training loader's own generator (RecBole shuffles with it) and the auxiliary-task sampler's.

Stored as tensors, ints and tuples only, so the weights-only checkpoint loader reads it back.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture(train_loader=None, model=None) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = getattr(train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["loader"] = generator.get_state()
    sampler = getattr(model, "aux_sampler", None)
    if sampler is not None:
        state["aux"] = sampler.generator.get_state()
    return state


def restore_global(state: dict, model=None) -> None:
    """Everything but the training loader's generator (the trainer does not hold the loader yet)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler = getattr(model, "aux_sampler", None)
    if sampler is not None and "aux" in state:
        sampler.generator.set_state(state["aux"])


def restore_loader(state: dict, train_loader) -> None:
    generator = getattr(train_loader, "generator", None)
    if isinstance(generator, torch.Generator) and "loader" in state:
        generator.set_state(state["loader"])


def _tuples(value):
    """random.setstate wants tuples; a checkpoint round trip may hand back lists."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value
