"""Multi-task CTR models (SharedBottom, MMoE, CGC, PLE): PLE's routing against a hand computation, multi-label
negative sampling, per-task gradients of the gathered rows, per-task evaluation, one-epoch runs of every
model, and the Census-Income / AliExpress / Ali-CCP converters."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import TEST_DATA, shared_data_dir
from sklearn.metrics import roc_auc_score

from recbole_pmtrec import (
    Config,
    create_dataset,
    data_preparation,
    get_model,
    get_trainer,
    run_recbole_pmtrec,
)
from recbole_pmtrec.config import properties_dir
from recbole_pmtrec.data.convert.ali_mtl import convert_ali_ccp, convert_aliexpress
from recbole_pmtrec.data.convert.census_income import convert_census_income
from recbole_pmtrec.data.multilabel import MultiLabelDataset
from recbole_pmtrec.trainer.multilabel import MultiLabelTrainer

MODELS = ("SharedBottom", "MMoE", "CGC", "PLE")

#: the tiny tabular set: 3 token + 2 float features, click and purchase (purchase only where click = 1)
TABULAR = {
    "data_path": str(TEST_DATA),
    "USER_ID_FIELD": None,
    "ITEM_ID_FIELD": None,
    "LABEL_FIELD": "click",
    "task_labels": ["click", "purchase"],
    "task_masks": {"purchase": "click"},
    "load_col": None,
    "numerical_features": ["num_x", "num_y"],
    "benchmark_filename": ["train", "valid", "test"],
    "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": None, "mode": "labeled"},
    "train_neg_sample_args": None,
    "metrics": ["AUC", "LogLoss"],
    "valid_metric": "auc@purchase",
    "train_batch_size": 64,
}

#: the tiny recommender set: task 1 interaction vs sampled item, task 2 rating >= 4
RECOMMENDER = {
    "data_path": str(TEST_DATA),
    "LABEL_FIELD": "label",
    "task_labels": ["label", "like"],
    "label_thresholds": {"like": ["rating", 4]},
    "load_col": {
        "inter": ["user_id", "item_id", "rating"],
        "user": ["user_id", "gender"],
        "item": ["item_id", "genre"],
    },
    "normalize_all": False,
    "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
    "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "uni9"},
    "metrics": ["AUC", "LogLoss"],
    "valid_metric": "auc@like",
    "train_batch_size": 64,
}


def build(model_name, dataset, config_dict):
    config = Config(model_name, dataset, config_dict=config_dict)
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    torch.manual_seed(0)
    model = get_model(model_name)(config, train._dataset)
    return config, model, train, valid, test


# ---------------------------------------------------------------------------------------------- PLE routing

PLE_TINY = {"embedding_size": 2, "specific_experts_per_task": 1, "shared_experts": 1, "expert_mlp_sizes": [3]}


def _expert(module, x):
    """An expert of ``expert_mlp_sizes: [h]``: relu(W x + b), from its own Linear layer."""
    linear = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1
    return torch.relu(x @ linear[0].weight.T + linear[0].bias)


def _gate(linear, x):
    assert linear.bias is None
    return torch.softmax(x @ linear.weight.T, dim=-1)


def _tower(tower, x):
    for m in tower.modules():
        if isinstance(m, torch.nn.Linear):
            x = x @ m.weight.T + m.bias
        elif isinstance(m, torch.nn.ReLU):
            x = torch.relu(x)
    return x


def test_ple_routing_matches_hand_computation(fast_config):
    """Two levels, one specific expert per task and one shared expert, written out as in Tang et al. (2020):
    level 1 task gate k mixes [E_k(x), E_s(x)] selected by x; the level-1 shared gate mixes [E_1, E_2, E_s];
    level 2 feeds task k's expert and gate with task k's level-1 output and the shared expert with the
    shared level-1 output; level 2 has no shared gate."""
    config = {**fast_config, **TABULAR, **PLE_TINY, "num_levels": 2, "tower_mlp_sizes": [4]}
    _, model, train, _, _ = build("PLE", "mtl-tiny", config)
    model.eval()
    level1, level2 = model.levels
    assert level1.shared_gate.out_features == 3 and level2.shared_gate is None
    assert (
        [g.out_features for g in level1.task_gates] == [2, 2] == [g.out_features for g in level2.task_gates]
    )

    batch = next(iter(train))
    x, _ = model.embed(batch)
    e1 = [_expert(level1.task_experts[k][0], x) for k in range(2)]
    es = _expert(level1.shared_experts[0], x)
    w1 = [_gate(level1.task_gates[k], x) for k in range(2)]
    g1 = [w1[k][:, :1] * e1[k] + w1[k][:, 1:2] * es for k in range(2)]
    w1s = _gate(level1.shared_gate, x)
    g1s = w1s[:, :1] * e1[0] + w1s[:, 1:2] * e1[1] + w1s[:, 2:3] * es
    e2 = [_expert(level2.task_experts[k][0], g1[k]) for k in range(2)]
    e2s = _expert(level2.shared_experts[0], g1s)
    w2 = [_gate(level2.task_gates[k], g1[k]) for k in range(2)]
    g2 = [w2[k][:, :1] * e2[k] + w2[k][:, 1:2] * e2s for k in range(2)]
    expected = torch.sigmoid(torch.cat([_tower(model.towers[k], g2[k]) for k in range(2)], dim=1))

    with torch.no_grad():
        torch.testing.assert_close(model.predict_tasks(batch), expected)
        gates = model.gate_weights(batch)
    assert sorted(gates) == sorted(
        ["level1/click", "level1/purchase", "level1/shared", "level2/click", "level2/purchase"]
    )
    torch.testing.assert_close(gates["level1/shared"], w1s)
    torch.testing.assert_close(gates["level2/purchase"], w2[1])


def _perturbed_prediction(model, batch, parameter):
    with torch.no_grad():
        before = model.predict_tasks(batch).clone()
        parameter.add_(1.0)
        after = model.predict_tasks(batch)
        parameter.sub_(1.0)
    return before, after


@pytest.mark.parametrize(
    "model_name, levels, level, changes_click",
    [("PLE", 2, 1, True), ("PLE", 2, 2, False), ("CGC", 1, 1, False)],
)
def test_task_expert_reaches_other_task_only_through_a_shared_gate(
    fast_config, model_name, levels, level, changes_click
):
    """Changing the purchase task's own expert at some level changes the click prediction only when a shared
    gate of that level passes it on (PLE's level 1), never at the last level (PLE's level 2, CGC)."""
    config = {**fast_config, **TABULAR, **PLE_TINY, "num_levels": levels}
    _, model, train, _, _ = build(model_name, "mtl-tiny", config)
    model.eval()
    batch = next(iter(train))
    expert = model.levels[level - 1].task_experts[1][0]
    weight = next(p for n, p in expert.named_parameters() if n.endswith("weight"))
    before, after = _perturbed_prediction(model, batch, weight)
    assert not torch.allclose(before[:, 1], after[:, 1])
    assert (not torch.allclose(before[:, 0], after[:, 0])) == changes_click


def test_experts_start_random_and_distinct(fast_config):
    _, model, train, _, _ = build("MMoE", "mtl-tiny", {**fast_config, **TABULAR})
    experts = model.experts.shared_experts
    weights = [next(p for n, p in e.named_parameters() if n.endswith("weight")) for e in experts]
    assert all(w.std() > 0 for w in weights)
    assert not torch.allclose(weights[0], weights[1])
    with torch.no_grad():
        gates = model.gate_weights(next(iter(train)))
    assert sorted(gates) == ["gate/click", "gate/purchase"]
    assert gates["gate/click"].shape[1] == len(experts) == 8
    assert not torch.allclose(gates["gate/click"], gates["gate/purchase"])


def test_cgc_refuses_more_than_one_level(fast_config):
    with pytest.raises(ValueError, match="single-level"):
        build("CGC", "mtl-tiny", {**fast_config, **TABULAR, "num_levels": 2})


# -------------------------------------------------------------------------------- labels and negatives


def _ratings_from_file():
    ratings = {}
    with open(TEST_DATA / "ml-mtl-tiny" / "ml-mtl-tiny.inter", encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, rating = line.rstrip("\n").split("\t")
            ratings[(user, item)] = float(rating)
    return ratings


def test_negative_rows_get_secondary_label_zero(fast_config):
    """Sampled rows carry like = 0 (RecBole's sampler would copy the positive's like); positive rows carry
    rating >= 4 as read independently from the file."""
    config, model, train, valid, _ = build("MMoE", "ml-mtl-tiny", {**fast_config, **RECOMMENDER})
    assert isinstance(train._dataset, MultiLabelDataset)
    dataset = train._dataset
    ratings = _ratings_from_file()
    copied_positive_like = 0
    for batch in train:
        n = len(batch) // 2  # point-wise sampling, one negative per positive: [positives; negatives]
        label, like = batch["label"], batch["like"]
        assert torch.equal(label[:n], torch.ones(n)) and torch.equal(label[n:], torch.zeros(n))
        users = dataset.id2token("user_id", batch["user_id"].numpy())
        items = dataset.id2token("item_id", batch["item_id"].numpy())
        expected = [float(ratings[(u, i)] >= 4) for u, i in zip(users[:n], items[:n])]
        assert like[:n].tolist() == expected
        assert torch.equal(like[n:], torch.zeros(n))
        copied_positive_like += int(like[:n].sum())
    assert copied_positive_like > 0  # without the fix, these negatives would have had like = 1
    assert "rating" not in dataset.field2type  # the source of `like` is no feature

    for batch, *_ in valid:  # uni9 evaluation: sampled rows of the valid part too
        negatives = batch["label"] == 0
        assert negatives.any() and not batch["like"][negatives].any()


def test_label_fields_are_never_features(fast_config):
    with pytest.raises(ValueError, match="also input features"):
        build("MMoE", "mtl-tiny", {**fast_config, **TABULAR, "numerical_features": ["num_x", "purchase"]})
    with pytest.raises(ValueError, match="task_labels\\[0\\]"):
        build("MMoE", "mtl-tiny", {**fast_config, **TABULAR, "task_labels": ["purchase", "click"]})


def test_masked_task_loss_counts_only_masked_rows(fast_config):
    _, model, train, _, _ = build("SharedBottom", "mtl-tiny", {**fast_config, **TABULAR})
    batch = next(iter(train))
    click, purchase = model.calculate_loss(batch)
    logits = model.task_logits(model.embed(batch)[0])
    rows = batch["click"] > 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[rows, 1], batch["purchase"][rows])
    torch.testing.assert_close(purchase, expected)
    torch.testing.assert_close(
        click, torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], batch["click"])
    )


@pytest.mark.parametrize("model_name", ["MMoE", "PLE"])
def test_multitask_forward_gives_each_task_its_own_row_gradients(fast_config, model_name):
    """One backward of the summed losses of ``multitask_forward`` leaves on task t's gathered rows exactly the
    gradient of task t's loss (computed alone, by autograd on the embedding tables) ."""
    _, model, train, _, _ = build(model_name, "ml-mtl-tiny", {**fast_config, **RECOMMENDER})
    batch = next(iter(train))
    tables = model.row_tables()
    assert set(tables) == {"token", "token_seq:genre"}
    out = model.multitask_forward(batch)
    grads = torch.autograd.grad(sum(out.losses), [g.rows for g in out.gathers])
    for t, loss in enumerate(model.calculate_loss(batch)):
        expected = torch.autograd.grad(loss, list(tables.values()), retain_graph=True)
        for name, dense in zip(tables, expected):
            got = torch.zeros_like(dense)
            for gather, grad in zip(out.gathers, grads):
                if gather.task == t and gather.table == name:
                    got.index_add_(0, gather.index, grad)
            torch.testing.assert_close(got, dense, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------- per-task evaluation


def test_per_task_metrics_equal_an_independent_computation(fast_config):
    config_dict = {**fast_config, **TABULAR, "epochs": 2}
    config, model, train, valid, test = build("PLE", "mtl-tiny", config_dict)
    trainer = get_trainer(config["MODEL_TYPE"], "PLE")(config, model)
    assert isinstance(trainer, MultiLabelTrainer)
    trainer.fit(train, valid, saved=False, show_progress=False)
    result = trainer.evaluate(test, load_best_model=False)
    assert list(result) == [
        "auc",
        "logloss",
        "auc@click",
        "logloss@click",
        "auc@purchase",
        "logloss@purchase",
    ]
    with torch.no_grad():
        batches = [b for b, *_ in test]
        scores = torch.cat([model.predict_tasks(b) for b in batches]).numpy()
    click = torch.cat([b["click"] for b in batches]).numpy()
    purchase = torch.cat([b["purchase"] for b in batches]).numpy()
    assert result["auc@click"] == pytest.approx(roc_auc_score(click, scores[:, 0]), abs=1e-4)
    clicked = click > 0
    assert result["auc@purchase"] == pytest.approx(
        roc_auc_score(purchase[clicked], scores[clicked, 1]), abs=1e-4
    )
    p = np.clip(scores[clicked, 1], 1e-15, 1 - 1e-15)
    logloss = -np.mean(purchase[clicked] * np.log(p) + (1 - purchase[clicked]) * np.log(1 - p))
    assert result["logloss@purchase"] == pytest.approx(logloss, abs=1e-4)
    assert result["auc"] == result["auc@click"]


def test_unknown_valid_metric_names_the_available_keys(fast_config):
    config, model, *_ = build("MMoE", "mtl-tiny", {**fast_config, **TABULAR, "valid_metric": "auc@nothing"})
    with pytest.raises(ValueError, match="auc@purchase"):
        MultiLabelTrainer(config, model)


# ---------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("model_name", MODELS)
def test_one_epoch_tabular(fast_config, model_name):
    result = run_recbole_pmtrec(model_name, "mtl-tiny", config_dict={**fast_config, **TABULAR})
    for task in ("click", "purchase"):
        assert 0.0 <= result["test_result"][f"auc@{task}"] <= 1.0
        assert result["test_result"][f"logloss@{task}"] > 0
    assert result["best_valid_score"] == result["best_valid_result"]["auc@purchase"]


@pytest.mark.parametrize("model_name", ["PLE", "SharedBottom"])
def test_one_epoch_recommender(fast_config, model_name):
    result = run_recbole_pmtrec(model_name, "ml-mtl-tiny", config_dict={**fast_config, **RECOMMENDER})
    assert {"auc", "auc@label", "auc@like", "logloss@like"} <= set(result["test_result"])


def test_full_ranking_of_the_main_task(fast_config):
    config = {
        **fast_config,
        **RECOMMENDER,
        "eval_args": {**RECOMMENDER["eval_args"], "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [5],
        "valid_metric": "ndcg@5",
    }
    result = run_recbole_pmtrec("MMoE", "ml-mtl-tiny", config_dict=config)
    assert set(result["test_result"]) == {"recall@5", "ndcg@5"}


# ------------------------------------------------------------------------------------------ converter


def test_census_income_converter_matches_source_counts(tmp_path):
    raw = shared_data_dir() / "census-income-kdd" / "raw"
    if not raw.is_dir():
        pytest.skip(f"Census-Income raw files not found at {raw}")
    counts = convert_census_income(raw, tmp_path / "out", tmp_path / "yaml")
    splits = counts["splits"]
    assert splits["train"] + splits["valid"] == 199_523 and splits["test"] == 99_762
    assert splits["valid"] == 19_952
    notes = counts["notes"]  # SOURCE.md: income > 50K 12,382 / 6,186, never married 86,485 / 43,143
    assert notes["train income positives"] + notes["valid income positives"] == 12_382
    assert notes["train marital positives"] + notes["valid marital positives"] == 86_485
    assert notes["test income positives"] == 6_186 and notes["test marital positives"] == 43_143
    first = gzip.open(raw / "census-income.test.gz", "rt").readline().split(", ")
    with open(tmp_path / "out" / "census-income" / "census-income.test.inter", encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        row = dict(zip(header, f.readline().rstrip("\n").split("\t")))
    assert row["education"] == first[4] and row["income"] == str(int(first[41].strip() == "50000+."))
    assert row["marital"] == str(int(first[7] == "Never married"))
    assert "marital_stat" not in header and "instance_weight" not in header
    committed = properties_dir() / "dataset" / "census-income.yaml"
    assert (tmp_path / "yaml" / "census-income.yaml").read_text() == committed.read_text()


def _synthetic_census_rows(ages, income, never_married):
    """Raw rows in the census format (", " separated, 42 fields): education ``r<age>`` (to trace a row), every
    other token 'x', numbers 1, given age and labels."""
    from recbole_pmtrec.data.convert.census_income import COLUMNS

    rows = []
    for age, rich, single in zip(ages, income, never_married):
        cells = {"token": "x", "float": "1", "money": "0", "drop": "1000.5"}
        row = [cells.get(role, "") for _, role in COLUMNS]
        row[0], row[4], row[7] = str(age), f"r{age}", "Never married" if single else "Divorced"
        row[41] = "50000+." if rich else "- 50000."
        rows.append(", ".join(row))
    return "\n".join(rows) + "\n"


def _write_raw(folder, train_text, test_text):
    folder.mkdir()
    from recbole_pmtrec.data.convert.census_income import TEST_FILE, TRAIN_FILE

    for name, text in ((TRAIN_FILE, train_text), (TEST_FILE, test_text)):
        with gzip.open(folder / name, "wt") as f:
            f.write(text)


def _read_part(out, part):
    import pandas as pd

    frame = pd.read_csv(out / "census-income" / f"census-income.{part}.inter", sep="\t")
    return frame.rename(columns=lambda c: c.split(":")[0])


def test_census_converter_standardises_with_train_statistics_only(tmp_path):
    ages = list(range(20))
    train = _synthetic_census_rows(ages, [a % 3 == 0 for a in ages], [a < 8 for a in ages])
    test = _synthetic_census_rows([90, 5], [True, False], [False, True])
    _write_raw(tmp_path / "raw", train, test)
    counts = convert_census_income(tmp_path / "raw", tmp_path / "out")
    assert counts["splits"] == {"train": 18, "valid": 2, "test": 2}
    parts = {p: _read_part(tmp_path / "out", p) for p in ("train", "valid", "test")}
    assert parts["train"]["age"].mean() == pytest.approx(0, abs=1e-5)
    assert parts["train"]["age"].std() == pytest.approx(1, abs=1e-4)  # the 90-year-old of test counts nowhere
    train_ages = [int(tag[1:]) for tag in parts["train"]["education"]]
    assert sorted(train_ages + [int(tag[1:]) for tag in parts["valid"]["education"]]) == ages
    mean, std = np.mean(train_ages), np.std(train_ages, ddof=1)
    assert parts["test"]["age"].tolist() == pytest.approx([(90 - mean) / std, (5 - mean) / std], abs=1e-5)
    assert parts["test"]["income"].tolist() == [1, 0] and parts["test"]["marital"].tolist() == [0, 1]


def test_census_converter_names_the_bad_line(tmp_path):
    rows = _synthetic_census_rows([30, 40], [True, False], [True, True]).replace("- 50000.", "maybe")
    _write_raw(tmp_path / "raw", rows, rows)
    with pytest.raises(ValueError, match="line 2: income column 'maybe'"):
        convert_census_income(tmp_path / "raw", tmp_path / "out")


@pytest.mark.parametrize(
    "converter, folder, parts, clicks, conversion",
    [
        (convert_aliexpress, "aliexpress-sample", {"train": 90, "valid": 10, "test": 20}, 70, "conversion"),
        (convert_ali_ccp, "ali-ccp-sample", {"train": 100, "valid": 50, "test": 50}, 16, "purchase"),
    ],
)
def test_click_conversion_samples_load_and_train(
    tmp_path, fast_config, converter, folder, parts, clicks, conversion
):
    """The AliExpress / Ali-CCP fixtures (SOURCE.md counts) load through their generated yaml, with the
    conversion task counted on clicked rows, and train one epoch."""
    raw = shared_data_dir() / folder / "raw"
    if not raw.is_dir():
        pytest.skip(f"{folder} raw files not found at {raw}")
    counts = converter(raw, tmp_path / "out", tmp_path / "yaml", name=folder)
    assert counts["splits"] == parts
    assert sum(counts["notes"][f"{p} click positives"] for p in parts) == clicks
    assert all(counts["notes"][f"{p} {conversion} without click"] == 0 for p in parts)
    config = {**fast_config, "data_path": str(tmp_path / "out")}
    yaml_file = [str(tmp_path / "yaml" / f"{folder}.yaml")]
    result = run_recbole_pmtrec("MMoE", folder, config_file_list=yaml_file, config_dict=config)
    assert {"auc@click", f"auc@{conversion}", f"logloss@{conversion}"} <= set(result["test_result"])
    built = Config("MMoE", folder, config_file_list=yaml_file, config_dict=config)
    assert built["task_masks"] == {conversion: "click"}
