"""Graph encoders for PMTRec: LightGCN (He et al., SIGIR 2020) and NGCF (Wang et al., SIGIR 2019).

Both propagate the base tables (the rows PMTRec combines) over RecBole's normalised adjacency of the
training interactions, Â = D^-1/2 A D^-1/2, with RecBole's own construction and RecBole's forward pass, so
their outputs equal RecBole's ``LightGCN`` / ``NGCF`` for the same weights. ``base_gradients`` maps the
per-task gradients at the output ``{table: [T, N, D]}`` back to the base tables ``[T, N, d]``:

- LightGCN is linear in the base table, E_out = P E0 with P = mean_{k=0..K} Â^k, and Â is symmetric, so
  P^T = P: the T tasks' output gradients are stacked as the columns of one ``[N, T*d]`` matrix and pushed
  back through P with one chain of K sparse products.
- NGCF is not (W matrices, LeakyReLU, dropout): the training forward keeps its autograd graph and each
  task's base gradient is one vector-Jacobian product of the propagation alone
  (``torch.autograd.grad(output, base, grad_outputs=G_t, retain_graph=True)``); the losses are not
  replayed. The trainer's backward of the summed loss reaches W through the same graph, so W takes the
  summed gradient, and every task sees the dropout masks of the one forward. A loop of T products and one
  ``is_grads_batched`` call cost the same within noise (docs/ENCODERS.md); the loop holds one task's
  intermediates at a time.
"""

from __future__ import annotations

import types

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.model.general_recommender.lightgcn import LightGCN
from recbole.model.init import xavier_normal_initialization, xavier_uniform_initialization
from recbole.model.layers import BiGNNLayer
from torch import nn
from torch.autograd.function import once_differentiable

from recbole_pmtrec.model.encoders import Encoder, register_encoder


def normalized_adjacency(dataset, n_users: int, n_items: int) -> torch.Tensor:
    """RecBole's Â = D^-1/2 A D^-1/2 of the user-item graph of ``dataset`` (``LightGCN.get_norm_adj_mat``,
    which NGCF's equals), as a sparse CSR tensor ``[n_users + n_items]^2``; users first, then items."""
    owner = types.SimpleNamespace(
        interaction_matrix=dataset.inter_matrix(form="coo").astype(np.float32),
        n_users=n_users,
        n_items=n_items,
    )
    return LightGCN.get_norm_adj_mat(owner).coalesce().to_sparse_csr()


def transpose_order(matrix: torch.Tensor) -> torch.Tensor:
    """For a CSR matrix with a symmetric pattern: ``order`` such that the CSR of M^T has the same
    indices as M and the values ``M.values()[order]``."""
    nnz = matrix.values().numel()
    positions = sp.csr_matrix(
        (np.arange(1, nnz + 1), matrix.col_indices().cpu().numpy(), matrix.crow_indices().cpu().numpy()),
        shape=tuple(matrix.shape),
    )
    transposed = positions.T.tocsr()
    transposed.sort_indices()
    return torch.from_numpy(transposed.data - 1).to(matrix.device)


class SparseProduct(torch.autograd.Function):
    """Y = A X for a sparse CSR A, whose backward dX = A^T dY uses a given CSR A^T (``transposed``; A itself
    when A is symmetric). torch's own backward transposes A on every call: 3-5x slower on CPU."""

    @staticmethod
    def forward(ctx, dense: torch.Tensor, matrix: torch.Tensor, transposed: torch.Tensor) -> torch.Tensor:
        ctx.transposed = transposed
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        return torch.sparse.mm(ctx.transposed, grad), None, None


class GraphEncoder(Encoder):
    """Base tables plus the normalised adjacency, kept as its CSR parts in non-persistent buffers (they move
    with ``.to()`` and survive ``copy.deepcopy``, which a CSR tensor does not)."""

    propagates = True

    def __init__(self, config, dataset, n_users: int, n_items: int, embedding_size: int):
        super().__init__(config, dataset, n_users, n_items, embedding_size)
        adjacency = normalized_adjacency(dataset, n_users, n_items)
        self.register_buffer("adjacency_crow", adjacency.crow_indices(), persistent=False)
        self.register_buffer("adjacency_col", adjacency.col_indices(), persistent=False)
        self.register_buffer("adjacency_values", adjacency.values(), persistent=False)

    def adjacency(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Â as a CSR tensor (a view of the buffers), or with the same pattern and other ``values``."""
        values = self.adjacency_values if values is None else values
        n_nodes = self.n_users + self.n_items
        return torch.sparse_csr_tensor(
            self.adjacency_crow, self.adjacency_col, values, (n_nodes, n_nodes), check_invariants=False
        )

    def ego_embeddings(self) -> torch.Tensor:
        """The base tables stacked, users first: ``[n_users + n_items, d]``."""
        return torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)

    def split(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[..., n_users + n_items, D]`` -> (users, items) along the node dimension."""
        users, items = torch.split(stacked, [self.n_users, self.n_items], dim=-2)
        return users, items

    def stack_output_grads(self, output_grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{"user": [T, n_users, D], "item": [T, n_items, D]}`` -> ``[T, n_users + n_items, D]``."""
        return torch.cat([output_grads["user"], output_grads["item"]], dim=1)


@register_encoder("lightgcn")
class LightGCNEncoder(GraphEncoder):
    """E_out = mean_{k=0..K} Â^k E0 (RecBole's LightGCN); K = ``n_layers``."""

    def __init__(self, config, dataset, n_users: int, n_items: int, embedding_size: int):
        super().__init__(config, dataset, n_users, n_items, embedding_size)
        self.n_layers = int(config["n_layers"])

    def propagate(self, embeddings: torch.Tensor) -> torch.Tensor:
        """P X = mean_{k=0..K} Â^k X for any ``[N, c]`` X (P is symmetric, so this is also P^T X)."""
        adjacency = self.adjacency()
        total = layer = embeddings
        for _ in range(self.n_layers):
            layer = SparseProduct.apply(layer, adjacency, adjacency)
            total = total + layer
        return total / (self.n_layers + 1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.propagate(self.ego_embeddings()))

    def base_gradients(self, output_grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """dL_t/dE0 = P^T dL_t/dE_out = P G_t for every task t at once: G as ``[N, T*d]``."""
        grads = self.stack_output_grads(output_grads)
        num_tasks, n_nodes, dim = grads.shape
        columns = grads.permute(1, 0, 2).reshape(n_nodes, num_tasks * dim)
        with torch.no_grad():
            back = self.propagate(columns)
        users, items = self.split(back.reshape(n_nodes, num_tasks, dim).permute(1, 0, 2))
        return {"user": users, "item": items}


@register_encoder("ngcf")
class NGCFEncoder(GraphEncoder):
    """RecBole's NGCF propagation: per layer h <- normalize(dropout(LeakyReLU_0.2(W1 (h + Â h) + W2 (Â h ⊙ h))));
    the output concatenates the base table and every layer, width d + sum(``ngcf_hidden_size_list``).

    ``node_dropout`` drops entries of Â (RecBole's ``SparseDropout``: kept entries scaled by 1/(1-p)),
    ``message_dropout`` is ``nn.Dropout`` after the activation; both only in training.
    """

    def __init__(self, config, dataset, n_users: int, n_items: int, embedding_size: int):
        super().__init__(config, dataset, n_users, n_items, embedding_size)
        sizes = [embedding_size, *[int(s) for s in config["ngcf_hidden_size_list"]]]
        self.layers = nn.ModuleList(BiGNNLayer(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.node_dropout = float(config["node_dropout"])
        self.message_dropout = nn.Dropout(float(config["message_dropout"]))
        init = (config["embedding_init"] or "xavier_normal").lower()
        initialisers = {
            "xavier_normal": xavier_normal_initialization,
            "xavier_uniform": xavier_uniform_initialization,
        }
        self.layers.apply(initialisers[init])  # as RecBole's NGCF: Xavier weights, zero biases
        if self.node_dropout > 0:  # a dropped Â is not symmetric: its transpose for the backward
            self.register_buffer("transpose_order", transpose_order(self.adjacency()), persistent=False)
        self._propagated: torch.Tensor | None = None  # this training step's output, graph attached

    def __getstate__(self):
        """Copies and pickles leave out the last forward's graph (a non-leaf tensor cannot be deep-copied)."""
        return {**super().__getstate__(), "_propagated": None}

    def _adjacency_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Â, Â^T) for this forward: Â itself, or in training with ``node_dropout`` each stored entry
        dropped with probability p and the rest scaled by 1/(1-p) (RecBole's ``SparseDropout``)."""
        if not (self.training and self.node_dropout > 0):
            adjacency = self.adjacency()
            return adjacency, adjacency
        keep = 1.0 - self.node_dropout
        values = self.adjacency_values
        values = values * (torch.rand(values.shape, device=values.device) + keep).floor() * (1.0 / keep)
        return self.adjacency(values), self.adjacency(values[self.transpose_order])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._propagated = None  # free the previous step's graph before building this one
        adjacency, transposed = self._adjacency_pair()
        hidden = self.ego_embeddings()
        layers = [hidden]
        for layer in self.layers:  # BiGNNLayer.forward, with the fast sparse backward
            neighbours = SparseProduct.apply(hidden, adjacency, transposed)
            hidden = layer.linear(hidden + neighbours) + layer.interActTransform(neighbours * hidden)
            hidden = self.message_dropout(F.leaky_relu(hidden, negative_slope=0.2))
            hidden = F.normalize(hidden, p=2, dim=1)
            layers.append(hidden)
        output = torch.cat(layers, dim=1)
        if output.requires_grad:
            self._propagated = output
        return self.split(output)

    def base_gradients(self, output_grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One vector-Jacobian product of the last training forward's propagation per task."""
        if self._propagated is None:
            raise RuntimeError(
                "NGCFEncoder.base_gradients needs the autograd graph of this step's forward: call the encoder "
                "in training with gradients enabled first, and keep that graph (retain_graph=True) through "
                "any earlier backward"
            )
        grads = self.stack_output_grads(output_grads)
        base = [self.user_embedding.weight, self.item_embedding.weight]
        per_task = [
            torch.autograd.grad(self._propagated, base, grad_outputs=g, retain_graph=True) for g in grads
        ]
        return {"user": torch.stack([u for u, _ in per_task]), "item": torch.stack([i for _, i in per_task])}
