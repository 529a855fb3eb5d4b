"""Per-step batches for the auxiliary tasks: (anchor, positive, negatives) id triples, vectorised.

Link tasks (a relation of ``dataset.relations``: ``social``, ``coview``, ``cobuy``, ``cointeraction``)
draw ``B`` edges uniformly from the stored (symmetrized, for undirected relations) edge list.
The ``category`` task draws anchors uniformly over the training items that share a category with
another training item, then one of the anchor's categories uniformly, then another training item of
that category uniformly. Negatives are uniform over the task's id space ``1 .. num - 1`` (padding 0
never drawn); with ``aux_neg_reject`` a negative that is the anchor or a true positive (an edge
anchor -> negative; a shared category) is redrawn, at most ``REJECTION_ROUNDS`` times, after which the
rare survivors are kept. ``directau`` and ``rating`` train on the interaction batch and have no sampler.

With given ``anchors`` (``aux_anchors: batch``: the ids of the interaction batch in the task's space) the
anchors are not drawn: each given anchor that has a positive keeps its place, the others are dropped, and
its positive is drawn as above from that anchor (a uniform out-edge of a link task; for ``category`` a
uniform one of its shared categories, then a uniform other training item of it): edges incident to the batch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recbole_pmtrec.data.dataset import BATCH_TASKS, CATEGORY_TASK, aux_config

#: redraws of negatives that hit a true positive before the survivors are accepted (only an anchor
#: linked to nearly every id needs many: a hit has probability degree / num per draw)
REJECTION_ROUNDS = 100


def _isin_sorted(query: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Elementwise ``query in sorted_keys`` by binary search."""
    if len(sorted_keys) == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    position = torch.searchsorted(sorted_keys, query).clamp_(max=len(sorted_keys) - 1)
    return sorted_keys[position] == query


def _uniform_below(bound: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform integer in ``[0, bound)`` per element (``bound >= 1``)."""
    draw = torch.rand(bound.shape, generator=generator, dtype=torch.float64)
    return torch.minimum((draw * bound).long(), bound - 1)


def _csr_tensors(matrix: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = matrix.tocsr()
    matrix.sort_indices()
    return torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64))


class _LinkTask:
    """Edges of one relation; a positive is a stored edge's target."""

    def __init__(self, relation):
        if len(relation) == 0:
            raise ValueError(f"aux task '{relation.name}': the relation has no edges to sample")
        self.src, self.dst, self.num = relation.src, relation.dst, relation.num_nodes
        self.edge_keys = torch.sort(self.src * self.num + self.dst).values
        # src is sorted: the out-edges of node a are src_ptr[a] .. src_ptr[a + 1] - 1
        self.src_ptr = torch.searchsorted(self.src, torch.arange(self.num + 1))

    def positives(self, batch_size: int, generator: torch.Generator):
        edge = torch.randint(len(self.src), (batch_size,), generator=generator)
        return self.src[edge], self.dst[edge]

    def positives_of(self, anchor: torch.Tensor, generator: torch.Generator):
        """The anchors with an out-edge, in order, and a uniform out-edge's target for each."""
        start = self.src_ptr[anchor]
        degree = self.src_ptr[anchor + 1] - start
        keep = degree > 0
        start, degree = start[keep], degree[keep]
        return anchor[keep], self.dst[start + _uniform_below(degree, generator)]

    def is_positive(self, anchor: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return _isin_sorted(anchor * self.num + candidate, self.edge_keys)


class _CategoryTask:
    """Training items and their categories; a positive is another training item of a shared category."""

    def __init__(self, dataset):
        full = dataset.item_categories.tocsr()
        train = dataset.train_item_categories.tocsr()
        shared = np.diff(train.tocsc().indptr) >= 2  # categories of at least two training items
        usable = (train @ sp.diags(shared.astype(np.float32))).tocsr()
        usable.eliminate_zeros()
        self.item_ptr, self.item_cats = _csr_tensors(usable)
        self.cat_ptr, self.cat_items = _csr_tensors(usable.T.tocsr())
        self.anchors = torch.from_numpy(np.flatnonzero(np.diff(usable.indptr) > 0))
        if len(self.anchors) == 0:
            raise ValueError(
                f"aux task '{CATEGORY_TASK}': no category is shared by two training items "
                f"(category_field '{dataset.config['category_field']}')"
            )
        self.num, self.num_categories = full.shape
        self.full_ptr, self.full_cats = _csr_tensors(full)
        self.full_keys = torch.sort(
            torch.repeat_interleave(torch.arange(self.num), torch.diff(self.full_ptr)) * self.num_categories
            + self.full_cats
        ).values

    def positives(self, batch_size: int, generator: torch.Generator):
        anchor = self.anchors[torch.randint(len(self.anchors), (batch_size,), generator=generator)]
        return anchor, self._positive(anchor, generator)

    def positives_of(self, anchor: torch.Tensor, generator: torch.Generator):
        """The anchors that share a category with another training item, in order, and a positive each."""
        anchor = anchor[self.item_ptr[anchor + 1] > self.item_ptr[anchor]]
        return anchor, self._positive(anchor, generator)

    def _positive(self, anchor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        start = self.item_ptr[anchor]
        category = self.item_cats[start + _uniform_below(self.item_ptr[anchor + 1] - start, generator)]
        first = self.cat_ptr[category]
        size = self.cat_ptr[category + 1] - first
        # a uniform member among the first size-1 slots; the anchor's own slot maps to the last slot
        positive = self.cat_items[first + _uniform_below(size - 1, generator)]
        return torch.where(positive == anchor, self.cat_items[first + size - 1], positive)

    def is_positive(self, anchor: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """Whether ``candidate`` shares any category (of ``.item``) with ``anchor``, elementwise."""
        degree = self.full_ptr[candidate + 1] - self.full_ptr[candidate]
        owner = torch.repeat_interleave(torch.arange(len(candidate)), degree)
        offset = torch.arange(len(owner)) - torch.repeat_interleave(torch.cumsum(degree, 0) - degree, degree)
        category = self.full_cats[self.full_ptr[candidate][owner] + offset]
        hit = _isin_sorted(anchor[owner] * self.num_categories + category, self.full_keys)
        shares = torch.zeros(len(candidate), dtype=torch.bool)
        shares[owner[hit]] = True
        return shares


class AuxTaskSampler:
    """``sample(task) -> (anchor [B], positive [B], negatives [B, neg_num])`` LongTensors (CPU).

    ``dataset``: a training split built by :class:`~recbole_pmtrec.data.AuxDataset` (``train_data.dataset``).
    ``batch_size`` defaults to ``aux_batch_size``, else ``train_batch_size``; ``neg_num`` to ``aux_neg_num``;
    ``seed`` to ``seed`` (the sampler owns its ``torch.Generator``: RecBole's global random state is untouched);
    ``reject_positives`` to ``aux_neg_reject``.
    """

    def __init__(self, dataset, tasks, batch_size=None, neg_num=None, seed=None, reject_positives=None):
        config = dataset.config
        if getattr(dataset, "train_item_mask", None) is None:
            raise ValueError(
                "AuxTaskSampler needs a training split built by AuxDataset.build() (train_data.dataset): "
                f"got {type(dataset).__name__} without training structures"
            )
        self.batch_size = int(
            batch_size or aux_config(config, "aux_batch_size") or config["train_batch_size"]
        )
        self.neg_num = int(neg_num if neg_num is not None else aux_config(config, "aux_neg_num"))
        self.reject_positives = bool(
            aux_config(config, "aux_neg_reject") if reject_positives is None else reject_positives
        )
        if self.batch_size < 1 or self.neg_num < 1:
            raise ValueError(
                f"aux batch size and neg_num must be >= 1, got {self.batch_size}, {self.neg_num}"
            )
        self.generator = torch.Generator().manual_seed(int(config["seed"] if seed is None else seed))
        self.tasks = list(tasks)
        self._tasks: dict = {}
        for task in self.tasks:
            if task in BATCH_TASKS:
                continue
            if task == CATEGORY_TASK:
                if dataset.train_item_categories is None:
                    raise ValueError(f"aux task '{CATEGORY_TASK}' needs category_field in the dataset config")
                self._tasks[task] = _CategoryTask(dataset)
            elif task in dataset.relations:
                self._tasks[task] = _LinkTask(dataset.relations[task])
            else:
                raise ValueError(
                    f"AuxTaskSampler: unknown task '{task}'. Relations of {dataset.dataset_name}: "
                    f"{', '.join(dataset.relations) or 'none'}; also '{CATEGORY_TASK}' and {', '.join(BATCH_TASKS)}"
                )

    def sample(
        self, task: str, anchors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of ``task``: anchors, their positives and ``neg_num`` negatives each. ``anchors``
        (ids in the task's space, e.g. the interaction batch's): those of them that have a positive, in
        order, instead of ``batch_size`` drawn ones (possibly none: then empty tensors)."""
        if task in BATCH_TASKS:
            raise ValueError(
                f"aux task '{task}' trains on the interaction batch itself; it has nothing to sample"
            )
        if task not in self._tasks:
            raise ValueError(
                f"AuxTaskSampler: task '{task}' was not given at construction ({', '.join(self.tasks)})"
            )
        sampler = self._tasks[task]
        if anchors is None:
            anchor, positive = sampler.positives(self.batch_size, self.generator)
        else:
            anchor, positive = sampler.positives_of(
                torch.as_tensor(anchors, dtype=torch.long), self.generator
            )
        negative = torch.randint(1, sampler.num, (len(anchor), self.neg_num), generator=self.generator)
        if self.reject_positives:
            flat_anchor, flat_negative = anchor.repeat_interleave(self.neg_num), negative.view(-1)
            pending = torch.arange(len(flat_negative))
            for _ in range(REJECTION_ROUNDS):  # each round checks only the redrawn negatives
                candidate, owner = flat_negative[pending], flat_anchor[pending]
                pending = pending[(candidate == owner) | sampler.is_positive(owner, candidate)]
                if len(pending) == 0:
                    break
                flat_negative[pending] = torch.randint(
                    1, sampler.num, (len(pending),), generator=self.generator
                )
        return anchor, positive, negative
