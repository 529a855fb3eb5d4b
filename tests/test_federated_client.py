"""The federated client side: scenario files per client (against an independent pandas computation), each
client reading only its folder, identical array layouts, the common vocabulary, what upload() may send,
FedProx's gradient, exact resume, the AliExpress sample as one scenario, and the federated config."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT_ROOT, shared_data_dir

from recbole_pmtrec.federated import client as client_module
from recbole_pmtrec.federated import scenarios
from recbole_pmtrec.federated.client import make_client
from recbole_pmtrec.federated.config import load_config

SENDABLE = {"embedding", "shared", "task", "expert", "gate", "tower", "norm"}
BANDS = {"age_lt25": (0, 25), "age_25_34": (25, 35), "age_35_44": (35, 45), "age_ge45": (45, 200)}
SMALL = {"embedding_size": 4, "num_experts": 2, "expert_mlp_sizes": [6], "tower_mlp_sizes": [3]}


def _raw_ml100k() -> dict[str, pd.DataFrame]:
    raw = scenarios.ml100k_raw_dir()
    names = {
        "inter": ["user", "item", "rating", "time"],
        "user": ["user", "age", "gender", "occupation", "zip"],
    }
    return {
        part: pd.read_csv(raw / f"ml-100k.{part}", sep="\t", header=0, names=cols, dtype={"user": str})
        for part, cols in names.items()
    }


def _tiny_ml100k(tmp_path, users_per_band: int = 3):
    """A few users of every age band with all their rows, in ml-100k's own file format."""
    raw = scenarios.ml100k_raw_dir()
    tiny = tmp_path / "raw"
    tiny.mkdir()
    users = pd.read_csv(raw / "ml-100k.user", sep="\t", dtype=str)
    ages = users["age:token"].astype(int)
    keep = pd.concat([users[(ages >= lo) & (ages < hi)].head(users_per_band) for lo, hi in BANDS.values()])
    inter = pd.read_csv(raw / "ml-100k.inter", sep="\t", dtype=str)
    keep.to_csv(tiny / "ml-100k.user", sep="\t", index=False)
    inter[inter["user_id:token"].isin(keep["user_id:token"])].to_csv(
        tiny / "ml-100k.inter", sep="\t", index=False
    )
    shutil.copy(raw / "ml-100k.item", tiny / "ml-100k.item")
    return tiny


@pytest.fixture
def tiny_config(tmp_path):
    def build(**overrides):
        config = load_config(
            None,
            {
                "dataset": "ml-100k",
                "scenarios": list(BANDS),
                "data_path": str(tmp_path / "data"),
                "raw_path": str(_tiny_ml100k(tmp_path)),
                "train_batch_size": 128,
                "recbole": {"use_gpu": False},
                **SMALL,
                **overrides,
            },
        )
        scenarios.prepare(config, verbose=False)
        client_module._DATA_CACHE.clear()
        return config

    return build


# ------------------------------------------------------------------------------------------- scenario data


def test_ml100k_scenarios_match_an_independent_count(tmp_path, capsys):
    config = load_config(
        PROJECT_ROOT / "properties/federated/ml100k.yaml", {"data_path": str(tmp_path / "data")}
    )
    counts = scenarios.prepare(config)
    printed = capsys.readouterr().out
    raw = _raw_ml100k()
    ages = raw["user"].set_index("user")["age"]
    inter = raw["inter"].assign(age=lambda f: f["user"].map(ages))
    seen_users = set()
    for scenario, (lo, hi) in BANDS.items():
        rows = inter[(inter["age"] >= lo) & (inter["age"] < hi)]
        expected = {
            "rows": len(rows),
            "users": rows["user"].nunique(),
            "items": rows["item"].nunique(),
            "rate:like": round(float((rows["rating"] >= 4).mean()), 4),
        }
        assert counts[scenario] == expected
        assert f"| {scenario} | {expected['rows']} | {expected['users']} |" in printed
        folder = scenarios.scenario_folder(config, scenario)
        written = pd.read_csv(folder / f"ml-100k-{scenario}.inter", sep="\t", dtype=str)
        users = set(written["user_id:token"])
        assert not users & seen_users  # disjoint users
        seen_users |= users
        assert len(written) == len(rows)
    assert sum(c["rows"] for c in counts.values()) == 100_000
    assert len(seen_users) == 943


def test_each_client_reads_only_its_own_folder(tiny_config):
    config = tiny_config()
    for other in config["scenarios"][1:]:
        shutil.rmtree(scenarios.scenario_folder(config, other))
    client = make_client(config, config["scenarios"][0], seed=1)
    assert client.config["dataset"] == "ml-100k-age_lt25"
    users = set(client.train_data._dataset.field2id_token["user_id"][1:])
    raw = _raw_ml100k()["user"]
    assert users <= set(raw[raw["age"] < 25]["user"])
    with pytest.raises(FileNotFoundError, match="age_25_34"):
        make_client(config, "age_25_34", seed=1)


# ------------------------------------------------------------------------------------------- client model


@pytest.mark.parametrize("template", ["additive", "partition", "none"])
def test_layout_is_identical_on_every_client(tiny_config, template):
    config = tiny_config(pfm_template=template)
    a, b = (make_client(config, s, seed=3) for s in ("age_lt25", "age_ge45"))
    assert a.roles() == b.roles() and a.groups() == b.groups()
    roles = a.roles()
    shared = a.upload(SENDABLE)
    other = b.upload(SENDABLE)
    assert shared.keys() == other.keys() and shared
    for name in shared:
        assert shared[name].shape == other[name].shape
        np.testing.assert_array_equal(shared[name], other[name])  # one global starting point from the seed
    expected_roles = {"additive": {"shared", "task"}, "partition": {"shared"}, "none": {"expert"}}[template]
    assert {r for n, r in roles.items() if n.startswith("experts.") and ".linears." in n} - {"private"} == (
        expected_roles
    )
    assert roles["private_table.weight"] == "private"
    assert all(roles[n] == "norm" for n in roles if ".norms." in n and "num_batches" not in n)
    assert set(a.groups()) == {n for n, r in roles.items() if r != "private"}


@pytest.mark.parametrize("template", ["additive", "partition", "none"])
def test_multitask_forward_gives_the_plain_forward_losses(tiny_config, template):
    """Each task's own copy of the rows, its own expert pass only: the same losses as one plain forward, and
    each task's loss reaches only its own copy of the gathered rows."""
    client = make_client(tiny_config(pfm_template=template), "age_lt25", seed=0)
    model = client.model.train()
    batch = next(iter(client.train_data))
    with torch.no_grad():  # the experts' task and private parts away from 0, so every term counts
        for name, param in model.named_parameters():
            if "task_" in name or "private_" in name:
                param.normal_(0.0, 0.1)
    out = model.multitask_forward(batch)
    torch.testing.assert_close(torch.stack(out.losses), torch.stack(model.calculate_loss(batch)))
    grads = torch.autograd.grad(out.losses[0], [g.rows for g in out.gathers], allow_unused=True)
    for grad, gather in zip(grads, out.gathers):
        reached = grad is not None and bool(grad.abs().sum() > 0)
        assert reached == (gather.task == 0), (gather.task, gather.table)


def test_common_vocabulary_maps_a_token_to_the_same_row_on_two_clients(tiny_config):
    config = tiny_config()
    a, b = (make_client(config, s, seed=0) for s in ("age_lt25", "age_25_34"))
    vocabulary = scenarios.read_vocabulary(config)
    tokens_a = list(a.train_data._dataset.field2id_token["item_id"])
    tokens_b = list(b.train_data._dataset.field2id_token["item_id"])
    common = sorted(set(tokens_a[1:]) & set(tokens_b[1:]))
    assert common
    for token in common[:20]:
        id_a, id_b = tokens_a.index(token), tokens_b.index(token)
        row_a = int(a.model.lookup("item_id", torch.tensor([id_a])))
        row_b = int(b.model.lookup("item_id", torch.tensor([id_b])))
        assert row_a == row_b == vocabulary["item_id"].index(token) + 1
    assert any(tokens_a.index(t) != tokens_b.index(t) for t in common)  # the remapping is needed
    genre = vocabulary["class"].index("Drama") + 1
    drama_a = list(a.train_data._dataset.field2id_token["class"]).index("Drama")
    assert int(a.model.lookup("class", torch.tensor([drama_a]))) == genre


def test_private_arrays_are_never_uploaded(tiny_config):
    config = tiny_config(pfm_template="additive")
    client = make_client(config, "age_35_44", seed=0)
    roles = client.roles()
    private = {n for n, r in roles.items() if r == "private"}
    assert {"private_table.weight"} <= private
    assert any("private_weight" in n for n in private) and any("num_batches_tracked" in n for n in private)
    uploaded = client.upload(SENDABLE)
    assert not private & set(uploaded)
    assert set(uploaded) == {n for n, r in roles.items() if r != "private"}
    with pytest.raises(ValueError, match="private"):
        client.upload({"private"})
    with pytest.raises(KeyError, match="private"):
        client.download({"private_table.weight": np.zeros((1, 1), dtype=np.float32)})


def test_fedprox_adds_mu_times_the_distance_to_the_received_weights(tiny_config):
    config = tiny_config(local_epochs=1)
    name = "towers.0.1.bias"  # the main task's logit bias: one number
    received = {name: np.array([0.25], dtype=np.float32)}
    mu = 0.3
    client = make_client(config, "age_ge45", seed=0)
    param = dict(client.model.named_parameters())[name]
    with torch.no_grad():
        param.fill_(1.0)
    client.trainer.proximal = (mu, [(param, torch.tensor([0.25]))])
    param.grad = torch.tensor([0.5])
    client.trainer._add_proximal_gradient(client.trainer.optimizer, (), {})
    torch.testing.assert_close(param.grad, torch.tensor([0.725]))  # by hand: 0.5 + 0.3 * (1.0 - 0.25)

    # inside fit: the first step's gradient with mu minus the one without is mu (w - w_g)
    first_step = {}
    for prox in (0.0, mu):
        client_module._DATA_CACHE.clear()
        c = make_client(config, "age_ge45", seed=0)
        c.download(received)
        p = dict(c.model.named_parameters())[name]
        with torch.no_grad():
            p.fill_(1.0)  # away from the received value, so the term is not zero
        steps = []

        def record(optimizer, args, kwargs, p=p, steps=steps):
            steps.append((p.grad.detach().clone(), p.detach().clone()))

        c.trainer.optimizer.register_step_pre_hook(record)  # runs after the client's proximal hook
        c.fit(1, {"local_epochs": 1, "prox_mu": prox})
        first_step[prox] = steps[0]
    (g0, w0), (g1, w1) = first_step[0.0], first_step[mu]
    torch.testing.assert_close(w0, w1)
    torch.testing.assert_close(g1 - g0, mu * (w1 - torch.tensor([0.25])))


# -------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "strategy, options", [("fedprox", {"prox_mu": 0.1}), ("ditto", {"ditto_lambda": 0.5})]
)
def test_state_resumes_bit_for_bit(tiny_config, strategy, options):
    config = tiny_config(strategy=strategy, local_mtl_method="pmtrec")
    options = {"local_epochs": 1, **options}
    scenario = "age_25_34"
    straight = make_client(config, scenario, seed=5)
    global0 = straight.upload(SENDABLE)
    straight.download(global0)
    straight.fit(1, options)
    global1 = {n: v + np.float32(0.01) for n, v in straight.upload(SENDABLE).items()}
    straight.download(global1)
    straight.fit(2, options)

    first = make_client(config, scenario, seed=5)
    first.download(global0)
    first.fit(1, options)
    saved = first.state()
    resumed = make_client(config, scenario, seed=5)
    resumed.load_state(saved)
    resumed.download(global1)
    resumed.fit(2, options)

    a, b = straight.state(), resumed.state()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert straight.evaluate("valid") == resumed.evaluate("valid")


# ------------------------------------------------------------------------------------------ aliexpress


def test_aliexpress_sample_loads_as_one_scenario(tmp_path):
    sample = shared_data_dir() / "aliexpress-sample" / "raw"
    if not sample.is_dir():
        pytest.skip(f"aliexpress-sample not found at {sample}")
    country = tmp_path / "raw" / "AliExpress_US"
    country.mkdir(parents=True)
    for part in ("train", "test"):
        shutil.copy(sample / f"aliexpress_{part}_sample.csv", country / f"{part}.csv")
    config = load_config(
        PROJECT_ROOT / "properties/federated/aliexpress.yaml",
        {
            "scenarios": ["US"],
            "data_path": str(tmp_path / "data"),
            "raw_path": str(tmp_path / "raw"),
            "recbole": {"use_gpu": False},
            **SMALL,
        },
    )
    counts = scenarios.prepare(config, verbose=False)
    assert counts["US"]["rows"] == 120 and counts["US"]["train/valid/test"] == "90/10/20"
    client = make_client(config, "US", seed=0)
    assert client.num_train == 90
    assert "categorical_2" in client.model.shared_fields and client.model.float_table is not None
    metrics = client.fit(1, {"local_epochs": 1})
    assert np.isfinite(metrics["train_loss"])
    result = client.evaluate("test")
    assert {"auc@click", "logloss@click", "auc@conversion", "logloss@conversion"} <= set(result)
    assert result["num_examples"] == 20


# ---------------------------------------------------------------------------------------------- config


def test_config_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: ml-100k\nscenarios: [age_lt25]\nround: 3\n")
    with pytest.raises(KeyError, match=r"bad.yaml: unknown key 'round'"):
        load_config(bad)
    bad.write_text("dataset: ml-100k\nscenarios: [age_lt25]\nrounds: many\n")
    with pytest.raises(ValueError, match=r"bad.yaml: rounds = 'many'"):
        load_config(bad)
    with pytest.raises(ValueError, match="pfm_template"):
        load_config(None, {"dataset": "ml-100k", "scenarios": ["a"], "pfm_template": "sum"})
    with pytest.raises(KeyError, match="pfm_role_rules has unknown entries"):
        load_config(None, {"dataset": "ml-100k", "scenarios": ["a"], "pfm_role_rules": {"towers": "mean"}})
    config = load_config(
        PROJECT_ROOT / "properties/federated/ml100k.yaml", {"rounds": 2, "pfm_role_rules": {"tower": "local"}}
    )
    assert config["rounds"] == 2 and config["pfm_role_rules"]["tower"] == "local"
    assert config["pfm_role_rules"]["shared"] == "coordinated_mean"  # a partial mapping keeps the others
    for name in ("ml100k", "epinions", "aliexpress"):
        assert load_config(PROJECT_ROOT / f"properties/federated/{name}.yaml")["dataset"]


# ------------------------------------------------------------------------------------------ centralized


def test_centralized_reference_scores_every_scenario_on_the_clients_splits(tiny_config):
    from recbole_pmtrec.federated import centralized

    config = tiny_config(rounds=2, test_from="best")
    record = centralized.run(config, log=lambda message: None)
    assert record.strategy == "centralized" and len(record.rounds) == 2
    assert set(record.test) == set(config["scenarios"]) and record.test_round in (1, 2)
    for scenario, metrics in record.test.items():
        assert {"auc@label", "auc@like", "logloss@label", "logloss@like"} <= set(metrics)
        client = make_client(config, scenario, seed=config["seed"])
        assert client.evaluate("test")["num_examples"] == metrics["num_examples"]
        assert client.num_train == record.rounds[0].fit[scenario]["num_examples"]
    assert "centralized" in record.summary_markdown() or record.summary_markdown()


def test_sampled_evaluation_rows(tiny_config):
    """uni9: every valid positive with 9 items its user never had, all labels 0 on them; drawn once."""
    from recbole_pmtrec.federated.client import evaluation_data

    config = tiny_config()
    client = make_client(config, "age_35_44", seed=4)
    rows = evaluation_data(config, "age_35_44", 4, "valid")
    assert rows is evaluation_data(config, "age_35_44", 4, "valid")
    data = [batch[0] for batch in rows]
    users = torch.cat([b["user_id"] for b in data])
    items = torch.cat([b["item_id"] for b in data])
    label = torch.cat([b["label"] for b in data])
    like = torch.cat([b["like"] for b in data])
    positives = client.valid_data._dataset.inter_feat
    n = len(positives)
    assert len(users) == 10 * n and int(label.sum()) == n and bool((label[:n] == 1).all())
    torch.testing.assert_close(like[:n], positives["like"].float())
    assert not bool(like[n:].any())
    splits = (client.train_data, client.valid_data, client.test_data)
    had = {
        (int(u), int(i))
        for d in splits
        for u, i in zip(d._dataset.inter_feat["user_id"], d._dataset.inter_feat["item_id"])
    }
    assert not any((int(u), int(i)) in had for u, i in zip(users[n:], items[n:]))
    torch.testing.assert_close(users[n:], positives["user_id"].repeat_interleave(9))
    genres = torch.cat([b["class"] for b in data])  # item features joined for the sampled items too
    item_genres = client.train_data._dataset.item_feat["class"]
    torch.testing.assert_close(genres, item_genres[items])
