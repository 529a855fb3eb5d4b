"""Encoders that turn the base user / item embedding tables into the embeddings the tasks score with.

An encoder owns the base tables (``user_embedding``, ``item_embedding``: the rows PMTRec combines) and
returns the output tables. ``propagates`` says whether the output differs from the base tables; if it does,
``base_gradients`` maps per-task gradients at the output back to per-task gradients of the base tables.
"""

from __future__ import annotations

import torch
from torch import nn

ENCODERS: dict[str, type[Encoder]] = {}


def register_encoder(name: str):
    def wrap(cls):
        ENCODERS[name] = cls
        return cls

    return wrap


class Encoder(nn.Module):
    """Base: two embedding tables, Xavier-initialised (the paper's init)."""

    propagates = False

    def __init__(self, config, dataset, n_users: int, n_items: int, embedding_size: int):
        super().__init__()
        self.n_users, self.n_items, self.embedding_size = n_users, n_items, embedding_size
        self.user_embedding = nn.Embedding(n_users, embedding_size)
        self.item_embedding = nn.Embedding(n_items, embedding_size)
        init = (config["embedding_init"] or "xavier_normal").lower()
        initialisers = {"xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_}
        if init not in initialisers:
            raise ValueError(f"embedding_init must be one of {sorted(initialisers)}, got '{init}'")
        for table in (self.user_embedding, self.item_embedding):
            initialisers[init](table.weight)

    def base_tables(self) -> dict[str, nn.Parameter]:
        return {"user": self.user_embedding.weight, "item": self.item_embedding.weight}

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def base_gradients(self, output_grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return output_grads


@register_encoder("mf")
class MFEncoder(Encoder):
    """Matrix factorisation: the output tables are the base tables."""

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight


def build_encoder(config, dataset, n_users: int, n_items: int) -> Encoder:
    name = (config["encoder"] or "mf").lower()
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder '{name}'. Available: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](config, dataset, n_users, n_items, int(config["embedding_size"]))


from recbole_pmtrec.model import graph_encoders  # noqa: E402,F401  (registers lightgcn, ngcf)
