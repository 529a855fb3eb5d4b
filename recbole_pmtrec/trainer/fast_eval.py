"""Full-ranking evaluation that gives RecBole's numbers at a fraction of its cost on large catalogs.

RecBole's full-sort path (``Trainer.evaluate`` + ``Collector.eval_batch_collect``) materializes, per batch of
users, the ``[users, items]`` score matrix, an int matrix of positives of the same size, sums it over items,
and runs ``torch.topk`` over every row. On Epinions (296k items) those passes over memory, not the arithmetic,
are the cost. :class:`FastFullSortMixin` replaces them for the ``rec.topk`` / ``rec.items`` metrics (Recall,
NDCG, MRR, Hit, Precision, MAP, ItemCoverage, AveragePopularity, GiniIndex, ShannonEntropy, TailPercentage)
and hands anything else (GAUC's ``rec.meanrank``, sampled or value evaluation) to RecBole's own ``evaluate``:

- it iterates RecBole's own loader, so every batch holds the same users as RecBole's;
- a model whose ``full_sort_predict`` is ``user_rows @ item_table.T`` (BPR, LightGCN, NGCF, PMTRec, or any
  model with a ``full_sort_factors(interaction) -> (user_rows, item_table)`` method) is scored in item blocks
  that stay in cache; each block is masked (item 0, training history) and only entries above the row's running
  (k+1)-th best value are kept (:func:`fused_topk`). Other models: RecBole's ``_full_sort_batch_eval`` and
  ``torch.topk``, exactly as RecBole calls them;
- positives are matched against the top-k ids only; the result tensor and RecBole's ``Evaluator`` are as in
  ``Collector.eval_batch_collect``.

Exactness. (1) Scores: the blocks are the columns of the same product over the same batch of users. BLAS
may round a narrower product differently (MKL does for some widths), so for the first batch of every batch
size the block widths of :func:`block_widths` are tried in turn against RecBole's ``_full_sort_batch_eval``
scores, bit for bit, and the first equal one is used for every batch of that size (same shapes, same
kernels); the last width tried is the whole row; if none is equal, RecBole's route takes the evaluation.
(2) Ties: a row whose best k+1 values are strictly decreasing has a unique top-k list (every discarded entry
is <= the (k+1)-th value < the k-th), so any correct top-k, RecBole's ``torch.topk`` included, returns the
same ids in the same order. A row that has a tie among its best k+1 values, a NaN, or fewer than k+1 unmasked
items gets ``torch.topk`` over its full score row (bit-equal to RecBole's, by (1)): CPU ``topk`` handles each
row alone, so the tie-breaking is RecBole's (it follows the heap / nth_element order, not the item ids:
nothing else reproduces it). On other devices such a batch takes RecBole's route whole.
"""

from __future__ import annotations

from logging import getLogger

import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType, set_color
from tqdm import tqdm

from recbole_pmtrec.checkpoint import load_model_weights

# scores per block (1 MiB of float32): the block stays in cache
BLOCK_ELEMENTS = 1 << 18
# item block widths tried next; the last resort is one block (the full row)
BLOCK_CHOICES = (4096, 16384, 65536)
# smaller catalogs: RecBole's score matrix is cheap; its scores and torch.topk are used
FUSED_MIN_ITEMS = 16384
_COLLECTED = ("rec.topk", "rec.items")
_NOT_COVERED = ("rec.meanrank", "rec.score", "data.label")


# ---------------------------------------------------------------------------------------------- factors


def _bpr_factors(model, interaction):
    return model.get_user_embedding(interaction[model.USER_ID]), model.item_embedding.weight


def _restored_factors(model, interaction):  # LightGCN, NGCF: the cached propagation, as full_sort_predict
    if model.restore_user_e is None or model.restore_item_e is None:
        model.restore_user_e, model.restore_item_e = model.forward()
    return model.restore_user_e[interaction[model.USER_ID]], model.restore_item_e


def _pmtrec_factors(model, interaction):
    users_out, items_out = model._outputs()
    return users_out[interaction[model.USER_ID]], items_out


def _factor_rules():
    from recbole.model.general_recommender import BPR, NGCF, LightGCN

    from recbole_pmtrec.model.pmtrec import PMTRec

    return (
        (BPR, _bpr_factors),
        (LightGCN, _restored_factors),
        (NGCF, _restored_factors),
        (PMTRec, _pmtrec_factors),
    )


def score_factors(model):
    """A function ``(model, interaction) -> (user_rows [B, d], item_table [N, d])`` whose product is the model's
    ``full_sort_predict``, or None. Only for classes whose ``full_sort_predict`` is the known one."""
    if callable(getattr(model, "full_sort_factors", None)):
        return lambda m, interaction: m.full_sort_factors(interaction)
    for cls, rule in _factor_rules():
        if isinstance(model, cls) and type(model).full_sort_predict is cls.full_sort_predict:
            return rule
    return None


# ---------------------------------------------------------------------------------------------- top-k


GROUP = 64  # columns per group: a group whose maximum is <= the threshold is left out whole


def _not_below(scores, threshold):
    """(rows ascending, cols, values) of the entries of ``scores`` not <= the row's ``threshold`` (NaN
    included), looked for only in the groups of ``GROUP`` columns whose maximum is not <= it."""
    m, w = scores.shape
    groups = w // GROUP
    body = scores[:, : groups * GROUP].unflatten(1, (groups, GROUP))
    g_rows, g_idx = torch.le(body.amax(dim=2), threshold).logical_not_().nonzero(as_tuple=True)
    values = body[g_rows, g_idx]  # [selected groups, GROUP]
    at, offset = torch.le(values, threshold[g_rows]).logical_not_().nonzero(as_tuple=True)
    rows, cols, values = g_rows[at], g_idx[at] * GROUP + offset, values[at, offset]
    if w > groups * GROUP:
        tail = scores[:, groups * GROUP :]
        t_rows, t_cols = torch.le(tail, threshold).logical_not_().nonzero(as_tuple=True)
        rows, cols = torch.cat((rows, t_rows)), torch.cat((cols, t_cols + groups * GROUP))
        values = torch.cat((values, tail[t_rows, t_cols]))
        order = torch.argsort(rows, stable=True)
        rows, cols, values = rows[order], cols[order], values[order]
    return rows, cols, values


def _merge(kept_v, kept_i, rows, items, values, k1):
    """Per row, the k1 best of the kept entries and the new ones (``rows`` ascending, as ``nonzero`` gives)."""
    m = kept_v.shape[0]
    counts = torch.bincount(rows, minlength=m)
    starts = torch.cumsum(counts, 0) - counts
    slot = k1 + torch.arange(rows.numel(), device=rows.device) - starts[rows]
    width = k1 + int(counts.max())
    all_v = kept_v.new_full((m, width), float("-inf"))
    all_i = kept_i.new_zeros((m, width))
    all_v[:, :k1], all_i[:, :k1] = kept_v, kept_i
    all_v[rows, slot], all_i[rows, slot] = values, items
    top_v, pos = torch.topk(all_v, k1, dim=1)
    return top_v, torch.gather(all_i, 1, pos)


class RunningTopK:
    """The best k+1 entries of each row of ``user_rows @ item_table.T`` (item 0 and ``history`` (rows, items)
    at -inf), fed one item block of width ``block`` at a time, in order (:meth:`feed`). ``buffer``: an
    ``[m, block]`` scratch tensor for the block's scores, which may be shared by states of the same ``m``."""

    def __init__(self, user_rows, n_items, k, block, history=None, buffer=None):
        self.user_rows, self.k1 = user_rows, k + 1
        m = user_rows.shape[0]
        self.hist_u = self.hist_i = self.cuts = None
        if history is not None and history[1].numel():
            order = torch.argsort(history[1])
            self.hist_u = history[0].to(user_rows.device)[order]
            self.hist_i = history[1].to(user_rows.device)[order]
            edges = torch.arange(0, n_items + block, block, device=self.hist_i.device)
            self.cuts = torch.searchsorted(self.hist_i, edges).tolist()
        self.buf = buffer if buffer is not None else user_rows.new_empty((m, min(block, n_items)))
        self.kept_v = self.kept_i = None

    def feed(self, b, start, items, reference=None):
        """Block ``b`` (items ``start ..``, rows of ``items``); with ``reference`` (RecBole's masked score
        matrix of the batch) the block's scores must equal it bit for bit, else ``ValueError``."""
        k1 = self.k1
        scores = self.buf[:, : items.shape[0]]
        torch.mm(self.user_rows, items.t(), out=scores)
        if start == 0:
            scores[:, 0] = float("-inf")
        cuts = self.cuts
        if cuts is not None and cuts[b + 1] > cuts[b]:
            part = slice(cuts[b], cuts[b + 1])
            scores[self.hist_u[part], self.hist_i[part] - start] = float("-inf")
        if reference is not None and not torch.equal(scores, reference[:, start : start + items.shape[0]]):
            raise ValueError(f"block scores differ from full_sort_predict's (items {start}..)")
        if self.kept_v is None:
            if scores.shape[1] < k1:
                raise ValueError("the first item block holds fewer than k+1 items")
            self.kept_v, pos = torch.topk(scores, k1, dim=1)
            self.kept_i = pos + start
            return
        # every entry left out is <= the row's current (k+1)-th best, which only grows; NaN is kept
        rows, cols, values = _not_below(scores, self.kept_v[:, -1:])
        if rows.numel():
            self.kept_v, self.kept_i = _merge(self.kept_v, self.kept_i, rows, cols + start, values, k1)

    def result(self):
        """``(ids [m, k], exact [m])``: ``exact`` is False for rows whose best k+1 values are not strictly
        decreasing (a tie, a NaN, fewer than k+1 unmasked items); their ids are not to be used."""
        exact = (self.kept_v[:, :-1] > self.kept_v[:, 1:]).all(dim=1)
        return self.kept_i[:, : self.k1 - 1], exact


def fused_topk(user_rows, item_table, k, block, history=None, reference=None):
    """Top-k item ids of ``user_rows @ item_table.T`` with item 0 and ``history`` (rows, items) at -inf,
    computed ``block`` items at a time: ``(ids [B, k], exact [B])`` as :meth:`RunningTopK.result`. With
    ``reference`` (RecBole's masked score matrix of the batch), every block is compared with it bit for bit and
    a difference raises ``ValueError``."""
    n = item_table.shape[0]
    state = RunningTopK(user_rows, n, k, block, history)
    for b, start in enumerate(range(0, n, block)):
        state.feed(b, start, item_table[start : start + block], reference)
    return state.result()


def fused_topk_batches(batches, item_table, k, block):
    """:func:`fused_topk` of several batches ``[(user_rows, history), ...]`` with the loops turned around: each
    item block is fed to every batch before the next block, so it is read from memory once per evaluation
    instead of once per batch. Every batch's products have the shapes (hence the roundings) of its own
    :func:`fused_topk`, so the results are the same."""
    n = item_table.shape[0]
    buffers: dict[int, torch.Tensor] = {}  # one score scratch per batch size
    states = []
    for user_rows, history in batches:
        m = user_rows.shape[0]
        if m not in buffers:
            buffers[m] = user_rows.new_empty((m, min(block, n)))
        states.append(RunningTopK(user_rows, n, k, block, history, buffers[m]))
    for b, start in enumerate(range(0, n, block)):
        items = item_table[start : start + block]
        for state in states:
            state.feed(b, start, items)
    return [state.result() for state in states]


def rows_topk(user_rows, item_table, k, block, history, rows):
    """``torch.topk`` over the full masked score rows ``rows`` of the batch, the scores computed in blocks of
    ``block`` items over the whole batch (the shapes, hence the roundings, of :func:`fused_topk`)."""
    m, n = user_rows.shape[0], item_table.shape[0]
    full = user_rows.new_empty((len(rows), n))
    buf = user_rows.new_empty((m, min(block, n)))
    for start in range(0, n, block):
        items = item_table[start : start + block]
        scores = buf[:, : items.shape[0]]
        torch.mm(user_rows, items.t(), out=scores)
        full[:, start : start + items.shape[0]] = scores[rows]
    full[:, 0] = float("-inf")
    if history is not None and history[1].numel():
        hist_u, hist_i = history[0].to(full.device), history[1].to(full.device)
        keep = torch.isin(hist_u, rows)
        full[torch.searchsorted(rows, hist_u[keep]), hist_i[keep]] = float("-inf")
    return torch.topk(full, k, dim=-1)[1]


def block_widths(m: int, n: int, k: int):
    """Item block widths to try for batches of ``m`` users, preferred first: about ``BLOCK_ELEMENTS`` scores,
    then ``BLOCK_CHOICES``, then the whole row; blocks of equal width (no narrow last one)."""
    widths = []
    for width in (BLOCK_ELEMENTS // max(m, 1), *BLOCK_CHOICES, n):
        width = min(n, max(width, k + 1))
        width = -(-n // -(-n // width))
        if width not in widths:
            widths.append(width)
    return widths


def topk_result(topk_ids, positive_u, positive_i, n_items):
    """``Collector``'s ``rec.topk`` rows: per top-k position 1 if the item is a positive, then the number of
    positives (int32 hits, int64 counts, concatenated to int64 as RecBole's)."""
    m, device = topk_ids.shape[0], topk_ids.device
    keys = torch.unique(positive_u.to(device) * n_items + positive_i.to(device))
    pos_len = torch.bincount(torch.div(keys, n_items, rounding_mode="floor"), minlength=m).view(-1, 1)
    query = torch.arange(m, device=device).view(-1, 1) * n_items + topk_ids
    hits = torch.isin(query, keys).to(torch.int)
    return torch.cat((hits, pos_len), dim=1)


# ---------------------------------------------------------------------------------------------- trainer


def fast_full_sort_applies(trainer, eval_data) -> bool:
    """Whether :class:`FastFullSortMixin` evaluates ``eval_data`` itself (else RecBole's ``evaluate`` does)."""
    config = trainer.config
    if not config["fast_full_sort"] or config["eval_type"] != EvaluatorType.RANKING:
        return False
    if not isinstance(eval_data, FullSortEvalDataLoader) or eval_data.is_sequential:
        return False
    register = trainer.eval_collector.register
    if any(register.need(key) for key in _NOT_COVERED):
        return False
    return max(config["topk"]) + 1 < eval_data._dataset.item_num


class FastFullSortMixin:
    """Put before RecBole's ``Trainer`` in a trainer's bases: full-sort evaluation with RecBole's numbers
    (module docstring), switched by ``fast_full_sort`` (on by default in the plugin's ``overall.yaml``).
    ``self.fast_eval_stats`` counts the last evaluation's rows by route."""

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data or not fast_full_sort_applies(self, eval_data):
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if load_best_model:
            load_model_weights(self, model_file)
        self.model.eval()
        if self.item_tensor is None:
            self.item_tensor = eval_data._dataset.get_item_feature().to(self.device)
        self.tot_item_num = eval_data._dataset.item_num
        iter_data = (
            tqdm(eval_data, total=len(eval_data), ncols=100, desc=set_color("Evaluate   ", "pink"))
            if show_progress
            else eval_data
        )
        k = max(self.config["topk"])
        self._fast_factors = score_factors(self.model) if self.tot_item_num >= FUSED_MIN_ITEMS else None
        if not hasattr(
            self, "_fast_blocks"
        ):  # (batch size, table shape, dtype, device) -> checked block width
            self._fast_blocks: dict[tuple, int | None] = {}
        self.fast_eval_stats = {
            "fused": 0,
            "exact_route": 0,
            "tie_rows": 0,
            "blocks": self._fast_blocks,
        }
        collector = self.eval_collector
        num_sample = 0
        # first pass: RecBole's batches in order; a batch for the blocked route is deferred to the second
        entries, deferred = [], {}  # deferred: block width -> [(entry, user_rows, history, item_table)]
        for batched_data in iter_data:
            num_sample += len(
                batched_data
            )  # as RecBole's evaluate counts (its weight of a rank in _map_reduce)
            ids, plan = self._plan_batch(batched_data, k) if self._fast_factors is not None else (None, None)
            if plan is not None:
                width, user_rows, item_table = plan
                deferred.setdefault(width, []).append((len(entries), user_rows, batched_data[1], item_table))
            elif ids is None:
                ids = self._recbole_ids(batched_data, k)
            entries.append([ids, batched_data])
        # second pass: every deferred batch of a width, item block by item block (fused_topk_batches)
        for width, group in deferred.items():
            tables = {id(entry[3]) for entry in group}
            if len(tables) == 1:
                results = fused_topk_batches(
                    [(rows, hist) for _, rows, hist, _ in group], group[0][3], k, width
                )
            else:  # the model gave each batch its own item table: one batch at a time
                results = [fused_topk(rows, table, k, width, hist) for _, rows, hist, table in group]
            for (index, user_rows, _history, item_table), (ids, exact) in zip(group, results):
                entries[index][0] = self._settle_ties(
                    ids, exact, entries[index][1], user_rows, item_table, k, width
                )
        for ids, (_interaction, _history, positive_u, positive_i) in entries:
            if collector.register.need("rec.items"):
                collector.data_struct.update_tensor("rec.items", ids)
            if collector.register.need("rec.topk"):
                result = topk_result(ids, positive_u, positive_i, self.tot_item_num)
                collector.data_struct.update_tensor("rec.topk", result)
        collector.model_collect(self.model)
        struct = collector.get_data_struct()
        result = self.evaluator.evaluate(struct)
        if not self.config["single_spec"]:
            result = self._map_reduce(result, num_sample)
        self.wandblogger.log_eval_metrics(result, head="eval")
        return result

    def _recbole_ids(self, batched_data, k):
        """RecBole's calls on the whole batch: its scores, its ``torch.topk``."""
        self.fast_eval_stats["exact_route"] += len(batched_data[0])
        return torch.topk(self._full_sort_batch_eval(batched_data)[1], k, dim=-1)[1]

    def _plan_batch(self, batched_data, k):
        """``(ids, None)`` for a batch answered now (the first of its size: RecBole's ids, computed for the
        check of the block widths), ``(None, (width, user_rows, item_table))`` for a batch of the blocked route,
        ``(None, None)`` for RecBole's route (no block width equal to RecBole's scores for this size)."""
        interaction, history, _, _ = batched_data
        m, n = len(interaction), self.tot_item_num
        user_rows, item_table = self._fast_factors(self.model, interaction.to(self.device))
        if item_table.shape[0] != n:
            self._fast_factors = None
            return None, None
        key = (m, tuple(item_table.shape), str(item_table.dtype), str(item_table.device))
        # checked once per shape (kept across evaluations): BLAS picks its kernels by shape, not by values
        if key not in self._fast_blocks:
            self._fast_blocks[key] = None
            reference = self._full_sort_batch_eval(batched_data)[1]
            reference_ids = torch.topk(reference, k, dim=-1)[1]
            for width in block_widths(m, n, k):
                try:
                    ids, exact = fused_topk(user_rows, item_table, k, width, history, reference=reference)
                except ValueError:
                    continue
                if bool((ids[exact] == reference_ids[exact]).all()):
                    self._fast_blocks[key] = width
                    self.fast_eval_stats["exact_route"] += m  # RecBole's own ids, computed for the check
                    return reference_ids, None
            getLogger().warning(
                f"fast_full_sort: no block scores equal to {type(self.model).__name__}'s ({key})"
            )
        width = self._fast_blocks[key]
        if width is None:
            return None, None
        return None, (width, user_rows, item_table)

    def _settle_ties(self, ids, exact, batched_data, user_rows, item_table, k, width):
        """The batch's ids: rows with a tie among their best k+1 get ``torch.topk`` over their full, bit-equal
        score rows (CPU topk ranks each row alone: RecBole's tie-breaking); on another device such a batch
        takes RecBole's route (CUDA's topk may pick its algorithm by shape)."""
        if not bool(exact.all()):
            ties = (~exact).nonzero().flatten()
            self.fast_eval_stats["tie_rows"] += len(ties)
            if user_rows.device.type != "cpu":
                return self._recbole_ids(batched_data, k)
            ids[ties] = rows_topk(user_rows, item_table, k, width, batched_data[1], ties)
        self.fast_eval_stats["fused"] += len(ids)
        return ids


_WRAPPED: dict[type, type] = {}


def with_fast_full_sort(trainer_class: type) -> type:
    """``trainer_class`` with :class:`FastFullSortMixin` first in its bases, for a RecBole trainer that keeps
    ``Trainer.evaluate``, and :class:`~recbole_pmtrec.trainer.optim.BlockedAdamMixin` for one that keeps
    ``Trainer._build_optimizer``; any other class is returned as it is."""
    from recbole_pmtrec.trainer.optim import BlockedAdamMixin

    if not isinstance(trainer_class, type) or not issubclass(trainer_class, Trainer):
        return trainer_class
    bases = []
    if not issubclass(trainer_class, FastFullSortMixin) and trainer_class.evaluate is Trainer.evaluate:
        bases.append(FastFullSortMixin)
    if (
        not issubclass(trainer_class, BlockedAdamMixin)
        and trainer_class._build_optimizer is Trainer._build_optimizer
    ):
        bases.append(BlockedAdamMixin)
    if not bases:
        return trainer_class
    if trainer_class not in _WRAPPED:
        name = trainer_class.__name__
        _WRAPPED[trainer_class] = type(name, (*bases, trainer_class), {"__module__": __name__})
    return _WRAPPED[trainer_class]
