"""The fast full-ranking evaluation (``recbole_pmtrec/trainer/fast_eval.py``) gives RecBole's evaluator's
numbers: every top-k metric, on ml-100k, for a trained BPR, PMTRec (MF), a model with ties forced (all-zero
embeddings: every score ties) and one with some ties (coarsely rounded embeddings), with one and many item
blocks per batch."""

from __future__ import annotations

import pytest
import torch
from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_pmtrec import Config, create_dataset, data_preparation, get_model, get_trainer
from recbole_pmtrec.trainer import FastFullSortMixin, fast_eval

METRICS = ["Recall", "NDCG", "MRR", "Hit", "Precision", "MAP"]
# RecBole 1.2.1's Collector.get_data_struct calls .cpu() on the ints / Counter that ItemCoverage, GiniIndex,
# AveragePopularity and TailPercentage need (data.num_items, data.count_items): those fail in RecBole itself.
ITEM_METRICS = ["ShannonEntropy"]


@pytest.fixture(autouse=True)
def _fused_on_ml100k(monkeypatch):
    monkeypatch.setattr(fast_eval, "FUSED_MIN_ITEMS", 0)  # ml-100k's 1,682 items take the blocked route too


def _trainer(model_name, fast_config, **extra):
    config = Config(
        model=model_name,
        dataset="ml-100k",
        config_dict={
            **fast_config,
            "metrics": METRICS + ITEM_METRICS,
            "topk": [5, 10, 20, 40],
            "valid_metric": "recall@20",
            **extra,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(model_name)(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    return trainer, train, valid, test


def _assert_same(trainer, data, route=None):
    """RecBole's ``Trainer.evaluate`` and the fast one on the same trainer: every metric to 1e-6."""
    stock = Trainer.evaluate(trainer, data, load_best_model=False)
    fast = trainer.evaluate(data, load_best_model=False)
    assert list(fast) == list(stock)
    for key in stock:
        assert fast[key] == pytest.approx(stock[key], abs=1e-6), key
    stats = trainer.fast_eval_stats
    assert stats["fused"] + stats["exact_route"] == len(data.uid_list)
    assert all(
        width in fast_eval.block_widths(key[0], data._dataset.item_num, 40)
        for key, width in stats["blocks"].items()
    )
    if route == "fused":  # all but the first batch of each size (checked against RecBole's own route)
        assert stats["fused"] >= 0.8 * len(data.uid_list)
    return stock, stats


@pytest.mark.parametrize("block_elements", [fast_eval.BLOCK_ELEMENTS, 2000])
@pytest.mark.parametrize("eval_batch_size", [4096, 100_000])
def test_bpr_one_epoch_equals_recbole(fast_config, monkeypatch, block_elements, eval_batch_size):
    monkeypatch.setattr(fast_eval, "BLOCK_ELEMENTS", block_elements)
    trainer, train, valid, test = _trainer("BPR", fast_config, eval_batch_size=eval_batch_size)
    assert isinstance(trainer, FastFullSortMixin)
    trainer._train_epoch(train, 0)
    stock, _ = _assert_same(trainer, valid, route="fused")
    assert stock["recall@20"] > 0
    _assert_same(trainer, test, route="fused")


def test_pmtrec_mf_equals_recbole(fast_config, monkeypatch):
    monkeypatch.setattr(fast_eval, "BLOCK_ELEMENTS", 5000)
    trainer, train, valid, _ = _trainer("PMTRec", fast_config, eval_batch_size=20_000, train_batch_size=4096)
    assert isinstance(trainer, FastFullSortMixin)
    trainer._train_epoch(train, 0)
    _assert_same(trainer, valid, route="fused")


def test_all_zero_model_every_score_ties(fast_config):
    trainer, _, valid, _ = _trainer("BPR", fast_config)
    with torch.no_grad():
        trainer.model.user_embedding.weight.zero_()
        trainer.model.item_embedding.weight.zero_()
    stock, stats = _assert_same(trainer, valid, route="fused")
    assert stats["tie_rows"] == stats["fused"]  # every fused row tied: torch.topk over its full row
    assert stock["hit@40"] > 0  # the tie-break RecBole's torch.topk makes still hits some positives


def test_some_ties_mixed_routes(fast_config, monkeypatch):
    monkeypatch.setattr(fast_eval, "BLOCK_ELEMENTS", 3000)
    trainer, train, valid, _ = _trainer("BPR", fast_config, eval_batch_size=20_000)
    trainer._train_epoch(train, 0)
    with torch.no_grad():  # ten pairs of equal items: every row that ranks one of them high has a tie
        item = trainer.model.item_embedding.weight
        item[2:21:2] = item[1:20:2]
    _, stats = _assert_same(trainer, valid, route="fused")
    assert 0 < stats["tie_rows"] < stats["fused"]


def test_fused_topk_against_torch_topk():
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(7, 8, generator=gen), torch.randn(3000, 8, generator=gen)
    items[100:110] = items[5]  # ties
    history = (torch.tensor([0, 0, 3, 6]), torch.tensor([17, 2999, 1, 5]))
    for block in (21, 50, 700, 3000):
        ids, exact = fused_topk = fast_eval.fused_topk(users, items, 20, block, history)
        scores = users @ items.T
        scores[:, 0] = float("-inf")
        scores[history] = float("-inf")
        reference = torch.topk(scores, 20)[1]
        assert exact.any() and fused_topk[0].shape == (7, 20)
        assert torch.equal(ids[exact], reference[exact])
        if not exact.all():  # a non-exact row has a tie among its best 21 values
            top = torch.topk(scores[~exact], 21)[0]
            assert bool(((top[:, :-1] == top[:, 1:]).any(dim=1)).all())


def test_batches_fed_block_by_block_equal_one_batch_at_a_time():
    """fused_topk_batches (item block outer, batches inner) against fused_topk per batch and torch.topk."""
    gen = torch.Generator().manual_seed(1)
    items = torch.randn(2500, 8, generator=gen)
    items[300:305] = items[7]  # ties
    batches = []
    for m in (9, 9, 4):
        users = torch.randn(m, 8, generator=gen)
        history = (torch.randint(0, m, (30,), generator=gen), torch.randint(0, 2500, (30,), generator=gen))
        batches.append((users, history))
    for block in (50, 700):
        together = fast_eval.fused_topk_batches(batches, items, 10, block)
        for (users, history), (ids, exact) in zip(batches, together):
            alone_ids, alone_exact = fast_eval.fused_topk(users, items, 10, block, history)
            assert torch.equal(ids, alone_ids) and torch.equal(exact, alone_exact)
            scores = users @ items.T
            scores[:, 0] = float("-inf")
            scores[history] = float("-inf")
            assert exact.any()
            assert torch.equal(ids[exact], torch.topk(scores, 10)[1][exact])


def test_small_catalog_takes_recbole_scores(fast_config, monkeypatch):
    monkeypatch.setattr(fast_eval, "FUSED_MIN_ITEMS", 16384)
    trainer, train, valid, _ = _trainer("BPR", fast_config)
    trainer._train_epoch(train, 0)
    _, stats = _assert_same(trainer, valid)
    assert stats["exact_route"] == len(valid.uid_list)


def test_switch_and_factors(fast_config):
    trainer, train, valid, _ = _trainer("BPR", fast_config, fast_full_sort=False)
    trainer.evaluate(valid, load_best_model=False)
    assert not hasattr(trainer, "fast_eval_stats")  # RecBole's evaluate ran

    class Shifted(type(trainer.model)):
        def full_sort_predict(self, interaction):
            return super().full_sort_predict(interaction) + 1

    assert fast_eval.score_factors(trainer.model) is not None
    trainer.model.__class__ = Shifted
    assert fast_eval.score_factors(trainer.model) is None  # an overridden full_sort_predict is not assumed


def test_trainer_resolution_keeps_recbole_trainers():
    from recbole.utils import ModelType

    bpr_trainer = get_trainer(ModelType.GENERAL, "BPR")
    assert issubclass(bpr_trainer, FastFullSortMixin) and issubclass(bpr_trainer, Trainer)
    assert get_trainer(ModelType.GENERAL, "BPR") is bpr_trainer
    from recbole.trainer import DecisionTreeTrainer

    assert fast_eval.with_fast_full_sort(DecisionTreeTrainer) is DecisionTreeTrainer
