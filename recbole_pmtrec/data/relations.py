"""Auxiliary relations as data: :class:`Relation` (an edge list over one id space), the counts of what
loading one kept and dropped (:class:`RelationStats`), the strict reader of relation atomic files
(:func:`read_relation_file`) and the co-interaction pairs derived from the training split
(:func:`cointeraction_pairs`). :class:`recbole_pmtrec.data.dataset.AuxDataset` builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recbole_pmtrec.data.atomic import parse_header, read_atomic

SOURCE_FIELD, TARGET_FIELD, WEIGHT_FIELD = "source_id", "target_id", "weight"


@dataclass(frozen=True)
class Relation:
    """Edges of one auxiliary relation in RecBole's internal ids (never the padding id 0).

    ``src`` / ``dst`` are sorted by (src, dst) and free of duplicates and self loops; an undirected
    relation holds every pair in both directions. ``num_nodes`` is the size of the id space
    (``user_num`` or ``item_num``, padding included).
    """

    name: str
    space: str
    src: torch.Tensor
    dst: torch.Tensor
    weight: torch.Tensor | None
    directed: bool
    num_nodes: int

    def __len__(self) -> int:
        return len(self.src)

    def to_scipy(self, form: str = "csr") -> sp.spmatrix:
        """The ``num_nodes x num_nodes`` adjacency (edge weights, else ones) as a scipy matrix."""
        values = np.ones(len(self), dtype=np.float32) if self.weight is None else self.weight.numpy()
        coo = sp.coo_matrix(
            (values, (self.src.numpy(), self.dst.numpy())), shape=(self.num_nodes, self.num_nodes)
        )
        return coo.asformat(form)

    def to_torch(self) -> torch.Tensor:
        """The adjacency as a coalesced ``torch.sparse_coo_tensor`` (edge weights, else ones)."""
        values = torch.ones(len(self)) if self.weight is None else self.weight
        return torch.sparse_coo_tensor(
            torch.stack([self.src, self.dst]),
            values,
            (self.num_nodes, self.num_nodes),
            is_coalesced=True,  # src/dst are sorted and unique
            check_invariants=True,
        )


@dataclass
class RelationStats:
    """What happened to the rows of one relation on the way in (for the log and ``str(dataset)``)."""

    source: str
    raw_rows: int
    unknown_rows: int = 0
    unknown_ids: int = 0
    self_loops: int = 0
    duplicates: int = 0
    edges: int = 0
    notes: dict = field(default_factory=dict)
    from_file: bool = True

    def summary(self) -> str:
        parts = [f"{self.raw_rows} rows from {self.source}"]
        if self.from_file:
            parts += [
                f"dropped {self.unknown_rows} rows with ids not in the interactions ({self.unknown_ids} distinct ids)",
                f"{self.self_loops} self loops",
            ]
        parts += [f"{self.duplicates} duplicates"] + [f"{key} {value}" for key, value in self.notes.items()]
        return ", ".join(parts) + f"; {self.edges} edges"

    def why_empty(self) -> str:
        return (
            f"0 of {self.raw_rows} rows kept: {self.unknown_rows} have ids not in the interactions "
            f"({self.unknown_ids} distinct ids), {self.self_loops} are self loops, "
            f"{self.duplicates} are duplicates"
        )


# --------------------------------------------------------------------------------------------------
# reading relation atomic files


def read_relation_file(path, sep: str = "\t", encoding: str = "utf-8") -> tuple[pd.DataFrame, np.ndarray]:
    """Read a relation atomic file: header ``source_id:token<sep>target_id:token[<sep>weight:float]``.

    Returns a frame with columns ``source_id``, ``target_id`` (str) and ``weight`` (float, if present),
    and the 1-based file line of every row. The file goes through the plugin's one strict reader
    (:func:`recbole_pmtrec.data.atomic.read_atomic`): a bad header, a row with the wrong number of fields,
    an empty id or an unparsable (or missing) weight raises a ``ValueError`` naming the file, the line,
    the field and the value.
    """
    with open(path, "rb") as f:
        first = f.readline().decode(encoding or "utf-8").rstrip("\r\n").lstrip("\ufeff")
    if not first:
        raise ValueError(
            f"{path}: line 1: missing header (expected '{SOURCE_FIELD}:token{sep}{TARGET_FIELD}:token')"
        )
    header = dict(parse_header(path, first, sep))
    expected = {SOURCE_FIELD: "token", TARGET_FIELD: "token", WEIGHT_FIELD: "float"}
    for name, ftype in expected.items():
        cell = f"{name}:{ftype}"
        if name in header and header[name].value != ftype:
            raise ValueError(
                f"{path}: line 1: field '{name}' must be '{cell}', not '{name}:{header[name].value}'"
            )
        if name != WEIGHT_FIELD and name not in header:
            raise ValueError(f"{path}: line 1: no '{cell}' field in header {first!r}")
    parsed = read_atomic(
        path,
        sep=sep,
        encoding=encoding,
        select=list(expected),
        id_fields=(SOURCE_FIELD, TARGET_FIELD),
        fill_nan_float="error",
    )
    frame = parsed.frame
    for name in (SOURCE_FIELD, TARGET_FIELD):
        frame[name] = frame[name].astype(str)
    return frame, parsed.lines


# --------------------------------------------------------------------------------------------------
# edge-list helpers (numpy, vectorised)


def dedupe_edges(src, dst, weight, num_nodes: int, directed: bool):
    """Unique edges sorted by (src, dst), keeping the first row's weight; an undirected pair (a, b) and
    (b, a) count as one edge and are returned in both directions. Returns (src, dst, weight, duplicates)."""
    if not directed:
        src, dst = np.minimum(src, dst), np.maximum(src, dst)
    _, first = np.unique(src * num_nodes + dst, return_index=True)
    duplicates = len(src) - len(first)
    src, dst = src[first], dst[first]
    weight = None if weight is None else weight[first]
    if not directed:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        weight = None if weight is None else np.concatenate([weight, weight])
        order = np.argsort(src * num_nodes + dst, kind="stable")
        src, dst = src[order], dst[order]
        weight = None if weight is None else weight[order]
    return src, dst, weight, duplicates


def _pairs_within_groups(starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) inside each group ``[start, start + size)``, vectorised."""
    row = np.repeat(starts, sizes) + (np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    position = row - np.repeat(starts, sizes)
    later = np.repeat(sizes, sizes) - position - 1
    first = np.repeat(row, later)
    second = first + 1 + (np.arange(later.sum()) - np.repeat(np.cumsum(later) - later, later))
    return first, second


def cointeraction_pairs(users, items, num_items: int, max_pairs: int, seed: int):
    """Unordered item pairs consumed by the same user, at most ``max_pairs`` per user.

    A user with ``n`` distinct items has ``n(n-1)/2`` pairs; when that exceeds ``max_pairs``, ``max_pairs``
    pairs are drawn uniformly with replacement (then de-duplicated) with a generator seeded by ``seed``,
    so memory stays ``O(max_pairs * users)`` (Epinions' heaviest training user alone has ~5 million pairs).
    Returns (first, second, stats) with first < second.
    """
    keys = np.unique(np.asarray(users, dtype=np.int64) * num_items + np.asarray(items, dtype=np.int64))
    users, items = keys // num_items, keys % num_items
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(users)])
    all_pairs = sizes * (sizes - 1) // 2
    capped = all_pairs > max_pairs
    first, second = _pairs_within_groups(starts[~capped], sizes[~capped])
    rng = np.random.default_rng(seed)
    cap_starts = np.repeat(starts[capped], max_pairs)
    cap_sizes = np.repeat(sizes[capped], max_pairs)
    a = rng.integers(0, cap_sizes) if len(cap_sizes) else cap_sizes
    b = rng.integers(0, cap_sizes - 1) if len(cap_sizes) else cap_sizes
    b = b + (b >= a)
    first = items[np.concatenate([first, cap_starts + a])]
    second = items[np.concatenate([second, cap_starts + b])]
    stats = {
        "users capped": int(capped.sum()),
        f"pairs over the cap of {max_pairs}/user": int(all_pairs[capped].sum() - max_pairs * capped.sum()),
    }
    return np.minimum(first, second), np.maximum(first, second), stats
