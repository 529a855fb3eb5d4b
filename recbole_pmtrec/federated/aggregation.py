"""The aggregation rules of PF-MSMTrec and its baselines, as pure functions over numpy arrays.

A client's arrays of one aggregation unit (a group of ``groups()`` with one role, e.g. all of expert 3's
``shared`` arrays) are flattened into one vector; N clients give a matrix ``[N, P]``. The rules:

- FedAvg (McMahan et al., AISTATS 2017): ``theta = sum_i n_i theta_i / sum_i n_i`` (:func:`fedavg`).
- FedProx (Li et al., MLSys 2020): server = FedAvg; local objective ``F_i(w) + mu/2 ||w - w_g||^2`` whose
  gradient term is :func:`proximal_gradient` (shared with the client).
- Ditto (Li et al., ICML 2021): server = FedAvg of the clients' global copies ``w``; the personal model ``v``
  trains on ``F_i(v) + lambda/2 ||v - w||^2``: the same :func:`proximal_gradient` with ``(v, w, lambda)``.
- FedBN (Li et al., ICLR 2021) and FedPer (Arivazhagan et al., 2019): partitions of the names by role
  (:func:`partition_names`): BatchNorm (``norm``) resp. towers never leave the client.
- PF-MSMTrec (Ding et al., arXiv 2406.18938, WSDM 2025; no public code, see docs/FEDERATED.md for the
  readings chosen where the paper is silent): the parameter template (:func:`split_additive`,
  :func:`split_partition`), conflict coordination of the clients' updates (:func:`pcgrad_updates`, or a
  project combiner through :class:`CombinerCoordination`), personalized aggregation
  (:func:`similarity_weights`), all put together per unit by :func:`aggregate_unit`.

Every function computes in float64; :func:`fedavg` returns each array in its upload's dtype.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]

# --------------------------------------------------------------------------------------------- FedAvg


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i x_i / sum_i w_i`` in float64, cast back to ``arrays[0]``'s dtype (integers rounded)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) != len(arrays) or not len(arrays):
        raise ValueError(f"need one weight per array, got {len(weights)} weights for {len(arrays)} arrays")
    if weights.sum() <= 0 or (weights < 0).any():
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights.tolist()}")
    stacked = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    mean = np.tensordot(weights / weights.sum(), stacked, axes=1)
    dtype = np.asarray(arrays[0]).dtype
    return np.rint(mean).astype(dtype) if np.issubdtype(dtype, np.integer) else mean.astype(dtype)


def fedavg(
    uploads: dict[str, Arrays], num_examples: dict[str, int], names: Iterable[str] | None = None
) -> Arrays:
    """FedAvg (McMahan et al. 2017): ``theta = sum_i n_i theta_i / sum_i n_i`` for every name (default: the
    names of the first client's upload), ``n_i`` = client i's training rows."""
    clients = sorted(uploads)
    if not clients:
        raise ValueError("fedavg of no clients")
    names = sorted(uploads[clients[0]]) if names is None else list(names)
    weights = [num_examples[c] for c in clients]
    return {name: weighted_mean([uploads[c][name] for c in clients], weights) for name in names}


def rowwise_mean(starts: np.ndarray, finals: np.ndarray, num_examples: Sequence[float]) -> np.ndarray:
    """FedAvg per row of a table (axis 1 of ``starts`` / ``finals`` ``[N, R, ...]``) over the clients that
    changed that row:

        theta[r] = start[r] + sum_{i in C_r} n_i delta_i[r] / sum_{i in C_r} n_i,   C_r = {i : delta_i[r] != 0}

    (start = the n-weighted mean of the starts, equal on every client for a global table). A row no client
    changed keeps its start; when every client changes every row this is FedAvg. Meant for embedding tables
    over a common vocabulary, where a client never sees most rows (Epinions' category scenarios share no
    items) and plain FedAvg shrinks every row's update by its clients' share of the examples. Float64."""
    starts = np.asarray(starts, dtype=np.float64)
    shape = starts.shape[1:]
    rows = shape[0] if shape else 1
    starts = starts.reshape(len(starts), rows, -1)
    deltas = np.asarray(finals, dtype=np.float64).reshape(starts.shape) - starts
    n = np.asarray(num_examples, dtype=np.float64)
    weights = (deltas != 0).any(axis=2) * n[:, None]  # [N, R]: n_i where client i changed row r
    total = weights.sum(axis=0)
    weights = weights / np.where(total > 0, total, 1.0)
    start = np.tensordot(n / n.sum(), starts, axes=1)
    return (start + np.einsum("nr,nrd->rd", weights, deltas)).reshape(shape)


# --------------------------------------------------------------------------------- local objective terms


def proximal_gradient(weights, anchor, strength: float):
    """Gradient of ``strength/2 ||weights - anchor||^2``: ``strength * (weights - anchor)``.

    FedProx: ``(w, w_global, mu)``; Ditto's personal model: ``(v, w, lambda)``. Plain operators only, so the
    client may pass torch tensors as well as numpy arrays."""
    return strength * (weights - anchor)


def proximal_penalty(pairs: Iterable[tuple], strength: float):
    """``strength/2 sum_k ||w_k - a_k||^2`` over ``(w_k, a_k)`` pairs (numpy arrays or torch tensors)."""
    return 0.5 * strength * sum(((w - a) ** 2).sum() for w, a in pairs)


# ------------------------------------------------------------------------------------ what leaves a client

FEDBN_KEPT_ROLES = frozenset({"norm", "private"})  # FedBN: BN affine parameters and running statistics
FEDPER_KEPT_ROLES = frozenset({"tower", "private"})  # FedPer: the personalization layers (task towers)


def partition_names(roles: dict[str, str], kept_roles: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split the names into (sent, kept) by role; ``private`` is always kept, whatever ``kept_roles`` says."""
    kept_roles = set(kept_roles) | {"private"}
    sent = sorted(n for n, r in roles.items() if r not in kept_roles)
    kept = sorted(n for n, r in roles.items() if r in kept_roles)
    return sent, kept


# ------------------------------------------------------------------------------------ parameter template


def split_additive(
    weight: np.ndarray, tasks: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Additive template ``W_k^(s) = W_k^G + W_k^(T) + W_k^(S,s)``, initialized from one weight: the global
    part takes it all, every task part and the scenario part start at zero (so the model starts as the plain
    one). Returns (global, {task: task part}, scenario part)."""
    zero = np.zeros_like(weight)
    return weight.copy(), {t: zero.copy() for t in tasks}, zero.copy()


def combine_additive(global_part: np.ndarray, task_part: np.ndarray, scenario_part: np.ndarray) -> np.ndarray:
    """The weight task t of scenario s uses: ``W^G + W^(t) + W^(S,s)``."""
    return global_part + task_part + scenario_part


def partition_sizes(size: int, shares: dict[str, float]) -> dict[str, int]:
    """How many of ``size`` units each part of a partition template gets: ``round(share * size)`` for every
    part but the last, the last takes the rest; every part keeps at least one unit."""
    parts = list(shares)
    if len(parts) < 2 or size < len(parts) or abs(sum(shares.values()) - 1.0) > 1e-9:
        raise ValueError(
            f"cannot split {size} units into parts {shares} (shares must sum to 1, one unit each)"
        )
    sizes = {p: min(max(1, round(shares[p] * size)), size - (len(parts) - 1)) for p in parts[:-1]}
    sizes[parts[-1]] = size - sum(sizes.values())
    if sizes[parts[-1]] < 1:
        raise ValueError(f"cannot split {size} units into parts {shares}: the last part is empty")
    return sizes


def split_partition(weight: np.ndarray, sizes: dict[str, int], axis: int = 0) -> dict[str, np.ndarray]:
    """Partition template: consecutive slices of ``weight`` along ``axis`` (an expert layer's output units),
    one per part, in the order of ``sizes``."""
    bounds = np.cumsum(list(sizes.values()))[:-1]
    return dict(zip(sizes, np.split(weight, bounds, axis=axis)))


def combine_partition(parts: dict[str, np.ndarray], axis: int = 0) -> np.ndarray:
    """Inverse of :func:`split_partition`."""
    return np.concatenate(list(parts.values()), axis=axis)


# ---------------------------------------------------------------------------------- conflict coordination


def project_conflicting(update: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """PCGrad's step (Yu et al., NeurIPS 2020): if ``update . reference < 0``, remove the conflicting
    component, ``update - (update . reference / ||reference||^2) reference``; else ``update`` unchanged."""
    dot = float(update @ reference)
    norm2 = float(reference @ reference)
    if dot >= 0 or norm2 == 0:
        return update
    return update - (dot / norm2) * reference


def pcgrad_updates(updates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Conflict coordination of the clients' updates ``[N, P]``, PCGrad-style: each client's update is
    projected, against every other client's *original* update in a random order (from ``rng``), off the
    ones it conflicts with. Returns the N coordinated updates (not their sum: aggregation comes next)."""
    updates = np.asarray(updates, dtype=np.float64)
    coordinated = updates.copy()
    for i in range(len(updates)):
        others = [j for j in range(len(updates)) if j != i]
        for j in rng.permutation(others) if others else []:
            coordinated[i] = project_conflicting(coordinated[i], updates[j])
    return coordinated


class CombinerCoordination:
    """Conflict coordination by one of the project's task-level combiners (``trainer/combiners``), with the
    clients in the place of the tasks: the clients' update matrix ``D[N, P]`` is the "Jacobian", and the
    combiner's direction, rescaled so that N identical updates ``u`` give ``u`` back (EW's and PCGrad's sums
    become means; UPGrad / MGDA are already on that scale; CAGrad's ``1 + c`` is divided out), is the one
    consensus update of the unit.

    Refused: the loss-driven combiners (UW, GradNorm, DWA: the server has no client losses) and the per-row
    PMTRec. Stateful ones (GradVac, Nash-MTL) keep one instance per unit and client count, whose buffers
    travel in :meth:`state` (the strategy's resume state); random ones (RLW)
    draw from a torch generator seeded by (seed, round, unit), so both runtimes give the same numbers.
    Knobs: the combiner's own (``properties/combiners.yaml``), read from ``knobs`` first. Needs torch
    (imported here only: the rest of this module is numpy)."""

    NOT_FOR_CLIENTS = frozenset({"uw", "gradnorm", "dwa", "pmtrec"})

    def __init__(self, name: str, knobs: dict, seed: int = 0):
        from recbole_pmtrec.trainer.combiners import COMBINERS

        self.name = name.lower()
        if self.name not in COMBINERS or self.name in self.NOT_FOR_CLIENTS:
            usable = sorted(set(COMBINERS) - self.NOT_FOR_CLIENTS)
            raise ValueError(
                f"pfm_conflict = {name!r}: not a combiner that can coordinate client updates; use none, pcgrad, "
                f"or one of the task-level combiners {', '.join(usable)} (uw / gradnorm / dwa need the clients' "
                "losses, pmtrec is per embedding row)"
            )
        self.knobs = {**knobs, "mtl_method": self.name}
        self.seed = int(seed)
        self._combiners: dict[tuple[str, int], object] = {}
        self._scales: dict[int, float] = {}

    def _build(self, num_clients: int):
        from recbole_pmtrec.trainer.combiners import COMBINERS

        return COMBINERS[self.name](self.knobs, num_clients)

    def _combine(self, combiner, updates: np.ndarray, server_round: int, unit: str) -> np.ndarray:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(self.seed, server_round, unit))
            jacobian = torch.as_tensor(np.asarray(updates, dtype=np.float64))
            losses = torch.zeros(len(updates), dtype=torch.float64)
            direction = combiner.combine(jacobian, losses, server_round)
        return direction.detach().cpu().numpy().astype(np.float64)

    def _scale(self, num_clients: int, size: int) -> float:
        """``||c(1 e^T)||`` for a unit vector ``e``, from a fresh combiner: what N identical unit updates give."""
        if num_clients not in self._scales:
            unit = np.zeros((num_clients, size))
            unit[:, 0] = 1.0
            scale = float(np.linalg.norm(self._combine(self._build(num_clients), unit, 1, "scale")))
            if not math.isfinite(scale) or scale <= 0:
                raise ValueError(
                    f"combiner {self.name} gives {scale} for identical client updates: cannot rescale"
                )
            self._scales[num_clients] = scale
        return self._scales[num_clients]

    def state(self) -> dict[str, np.ndarray]:
        """The stateful combiners' buffers (GradVac's targets, Nash-MTL's weights), as ``unit|N|buffer``."""
        return {
            f"{unit}|{num_clients}|{key}": tensor.detach().cpu().numpy().copy()
            for (unit, num_clients), combiner in self._combiners.items()
            for key, tensor in combiner.state_dict().items()
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state` (combiners of the units it names are rebuilt and loaded)."""
        import torch

        buffers: dict[tuple[str, int], dict] = {}
        for name, array in arrays.items():
            unit, num_clients, key = name.rsplit("|", 2)
            buffers.setdefault((unit, int(num_clients)), {})[key] = torch.as_tensor(np.array(array))
        self._combiners = {}
        for (unit, num_clients), state in buffers.items():
            combiner = self._combiners[(unit, num_clients)] = self._build(num_clients)
            combiner.load_state_dict(state)

    def __call__(self, unit: str, updates: np.ndarray, server_round: int) -> np.ndarray:
        """The consensus update ``[P]`` of the clients' updates ``[N, P]`` for this unit and round."""
        num_clients, size = updates.shape
        key = (unit, num_clients)
        if key not in self._combiners:
            self._combiners[key] = self._build(num_clients)
        direction = self._combine(self._combiners[key], updates, server_round, unit)
        return direction / self._scale(num_clients, size)


def stable_seed(seed: int, server_round: int, unit: str) -> int:
    """A seed for (run seed, round, unit) that is the same in every process (unlike ``hash``)."""
    return (int(seed) * 1_000_003 + int(server_round) * 7919 + zlib.crc32(unit.encode())) % (2**32)


# --------------------------------------------------------------------------------- personalized aggregation


def cosine_matrix(updates: np.ndarray) -> np.ndarray:
    """``C[i, j] = cos(delta_i, delta_j)``; 0 where either update is zero, 1 on the diagonal."""
    updates = np.asarray(updates, dtype=np.float64)
    norms = np.linalg.norm(updates, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    cos = (updates @ updates.T) / np.outer(safe, safe)
    cos[(norms == 0)[:, None] | (norms == 0)[None, :]] = 0.0
    np.fill_diagonal(cos, 1.0)
    return np.clip(cos, -1.0, 1.0)


def similarity_weights(
    updates: np.ndarray, temperature: float, num_examples: Sequence[float] | None = None
) -> np.ndarray:
    """Personalized aggregation weights ``a_ij = softmax_j(cos(delta_i, delta_j) / T)``, rows summing to 1.

    With ``num_examples`` (n_j) the softmax is weighted by them, ``a_ij = n_j exp(c_ij/T) / sum_k n_k
    exp(c_ik/T)`` (i.e. ``softmax_j(c_ij/T + log n_j)``), so ``T -> inf`` gives FedAvg's ``n_j / sum n``;
    without, ``T -> inf`` gives the uniform mean. ``T = inf`` is allowed."""
    cos = cosine_matrix(updates)
    n = len(cos)
    log_prior = np.zeros(n) if num_examples is None else np.log(np.asarray(num_examples, dtype=np.float64))
    if temperature <= 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    logits = (np.zeros_like(cos) if math.isinf(temperature) else cos / temperature) + log_prior[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------- one unit, N clients

UNIT_RULES = ("mean", "coordinated_mean", "personalized")  # on a unit's flattened vector: aggregate_unit
ROW_RULES = ("rowwise_mean",)  # per array, along its first axis: rowwise_mean


def aggregate_unit(
    starts: np.ndarray,
    finals: np.ndarray,
    num_examples: Sequence[float],
    rule: str,
    conflict: str = "none",
    temperature: float = 1.0,
    example_weights: bool = True,
    rng: np.random.Generator | None = None,
    consensus=None,
) -> np.ndarray:
    """One aggregation unit over N clients: ``starts[N, P]`` (what each client loaded before the round),
    ``finals[N, P]`` (what it uploaded after), ``delta_i = final_i - start_i``. Returns ``[N, P]``, what each
    client loads next:

    - ``mean`` (FedAvg): every row ``sum_j n_j final_j / sum_j n_j``;
    - ``coordinated_mean``: every row ``start + sum_j n_j delta_j^c / sum_j n_j`` (start = the n-weighted mean
      of the starts, which a global unit has equal on every client);
    - ``personalized``: row i ``sum_j a_ij (start_j + delta_j^c)``, ``a = similarity_weights(delta,
      temperature, n if example_weights else None)`` on the *raw* updates;

    where ``delta^c`` is the coordinated update: ``delta`` (``conflict = none``), :func:`pcgrad_updates`
    (``pcgrad``, order from ``rng``), or one consensus update ``u = consensus(delta)`` for every client
    (any other name: a :class:`CombinerCoordination` bound to the unit and round, given as ``consensus``)."""
    starts = np.asarray(starts, dtype=np.float64)
    finals = np.asarray(finals, dtype=np.float64)
    n = np.asarray(num_examples, dtype=np.float64)
    share = n / n.sum()
    if rule == "mean":
        return np.broadcast_to(share @ finals, finals.shape).copy()
    if rule not in UNIT_RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; use one of {', '.join(UNIT_RULES)}")
    deltas = finals - starts
    if conflict == "none":
        coordinated = deltas
    elif conflict == "pcgrad":
        coordinated = pcgrad_updates(deltas, rng if rng is not None else np.random.default_rng(0))
    elif consensus is not None:
        coordinated = np.broadcast_to(consensus(deltas), deltas.shape)
    else:
        raise ValueError(f"conflict = {conflict!r} needs its consensus function (a CombinerCoordination)")
    if rule == "coordinated_mean":
        return np.broadcast_to(share @ starts + share @ coordinated, finals.shape).copy()
    weights = similarity_weights(deltas, temperature, n if example_weights else None)
    return weights @ (starts + coordinated)
