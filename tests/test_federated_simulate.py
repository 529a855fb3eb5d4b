"""The in-process runtime (simulate.py) and the run record (results.py), on a fake client: a numpy
two-task logistic model implementing contracts.FederatedClient (no RecBole, no torch), so these tests pin
the runtime's protocol, not the real client's training."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from recbole_pmtrec.federated import simulate
from recbole_pmtrec.federated.aggregation import proximal_gradient
from recbole_pmtrec.federated.config import defaults_file
from recbole_pmtrec.federated.results import RunRecord, mean_metric

DEFAULTS = yaml.safe_load(defaults_file().read_text())  # every knob's default, as load_config merges them

TASKS = ("label", "like")
ROLES = {
    "emb.scale": "embedding",
    "expert.0.shared": "shared",
    "tower.label": "tower",
    "tower.like": "tower",
    "bn.running_mean": "norm",
    "scenario.bias": "private",
}
GROUPS = {
    n: n.rsplit(".", 1)[0] if n.startswith("tower") else n.split(".")[0]
    for n in ROLES
    if ROLES[n] != "private"
}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney: the share of (positive, negative) pairs ranked right (ties half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


class LinearClient:
    """logit_t = ((x - bn.running_mean) * emb.scale) . (expert.0.shared + tower.t) + scenario.bias[t]."""

    uploads_seen: list[dict]  # every upload of every client of the test (to check what left them)

    def __init__(self, fed_config: dict, scenario: str, seed: int):
        index = fed_config["scenarios"].index(scenario)
        rng = np.random.default_rng([seed, index])
        self.scenario, self.fail_in_round = scenario, fed_config.get("fake_fail", {}).get(scenario)
        dim, rows = 4, 120 + 40 * index
        truth = np.array([1.0, -1.0, 0.5, 0.0]) + 0.8 * rng.normal(size=dim)
        x = rng.normal(size=(rows, dim)) + 0.3 * index
        labels = {
            t: (x @ (truth + k * rng.normal(size=dim)) + rng.normal(size=rows) > 0).astype(float)
            for k, t in enumerate(TASKS)
        }
        cut = [int(0.6 * rows), int(0.8 * rows)]
        self.data = {
            split: (x[s], {t: y[s] for t, y in labels.items()})
            for split, s in zip(
                ("train", "valid", "test"), (slice(0, cut[0]), slice(cut[0], cut[1]), slice(cut[1], None))
            )
        }
        self.num_train = cut[0]
        self.params = {
            "emb.scale": 1.0 + 0.1 * rng.normal(size=dim),
            "expert.0.shared": 0.1 * rng.normal(size=dim),
            "tower.label": 0.1 * rng.normal(size=dim),
            "tower.like": 0.1 * rng.normal(size=dim),
            "bn.running_mean": np.zeros(dim),
            "scenario.bias": np.zeros(2),
        }
        self.anchor: dict[str, np.ndarray] = {}

    # ---- contracts.FederatedClient --------------------------------------------------------------------
    def roles(self):
        return dict(ROLES)

    def groups(self):
        return dict(GROUPS)

    def upload(self, roles):
        out = {n: a.copy() for n, a in self.params.items() if ROLES[n] in roles}
        LinearClient.uploads_seen.append(out)
        return out

    def download(self, arrays):
        for name, array in arrays.items():
            self.params[name] = np.array(array, dtype=np.float64, copy=True)
        self.anchor = {n: a.copy() for n, a in arrays.items()}

    def logits(self, x):
        h = (x - self.params["bn.running_mean"]) * self.params["emb.scale"]
        return {
            t: h @ (self.params["expert.0.shared"] + self.params[f"tower.{t}"])
            + self.params["scenario.bias"][k]
            for k, t in enumerate(TASKS)
        }

    def fit(self, server_round, options):
        if self.fail_in_round == server_round:
            raise RuntimeError("simulated crash")
        start = time.perf_counter()
        x, labels = self.data["train"]
        p = self.params
        p["bn.running_mean"] = 0.9 * p["bn.running_mean"] + 0.1 * x.mean(axis=0)
        z = x - p["bn.running_mean"]
        for _ in range(5 * options["local_epochs"]):
            logits = self.logits(x)
            grads = {n: np.zeros_like(a) for n, a in p.items()}
            loss = 0.0
            for k, t in enumerate(TASKS):
                prob = 1 / (1 + np.exp(-logits[t]))
                err = (prob - labels[t]) / len(x)
                loss -= np.mean(labels[t] * np.log(prob + 1e-12) + (1 - labels[t]) * np.log(1 - prob + 1e-12))
                weight = p["expert.0.shared"] + p[f"tower.{t}"]
                grad_w = (z * p["emb.scale"]).T @ err
                grads["expert.0.shared"] += grad_w
                grads[f"tower.{t}"] += grad_w
                grads["emb.scale"] += (z * weight).T @ err
                grads["scenario.bias"][k] += err.sum()
            for name in grads:
                if name == "bn.running_mean":
                    continue
                if options["prox_mu"] and name in self.anchor:
                    grads[name] += proximal_gradient(p[name], self.anchor[name], options["prox_mu"])
                p[name] = p[name] - 0.5 * grads[name]
        return {
            "num_examples": self.num_train,
            "train_loss": float(loss),
            "train_seconds": time.perf_counter() - start,
        }

    def evaluate(self, split):
        x, labels = self.data[split]
        out = {"num_examples": len(x)}
        for t, logit in self.logits(x).items():
            prob = np.clip(1 / (1 + np.exp(-logit)), 1e-7, 1 - 1e-7)
            out[f"auc@{t}"] = auc(logit, labels[t])
            out[f"logloss@{t}"] = float(
                -np.mean(labels[t] * np.log(prob) + (1 - labels[t]) * np.log(1 - prob))
            )
        return out

    def state(self):
        return {n: a.copy() for n, a in self.params.items()}

    def load_state(self, state):
        self.params = {n: np.array(a, copy=True) for n, a in state.items()}


BASE = {
    **DEFAULTS,
    "scenarios": ["s0", "s1", "s2"],
    "seed": 7,
    "rounds": 4,
    "local_epochs": 1,
    "min_clients": None,
    "strategy": "fedavg",
    "prox_mu": 0.1,
    "pfm_prox_mu": 0.1,
    "ditto_lambda": 0.1,
    "pfm_temperature": 0.5,
    "pfm_conflict": "pcgrad",
    "test_from": "last",
}


def run(**overrides):
    built: dict[str, LinearClient] = {}
    LinearClient.uploads_seen = []

    def factory(fed_config, scenario, seed):
        built[scenario] = LinearClient(fed_config, scenario, seed)
        return built[scenario]

    return simulate.run({**BASE, **overrides}, client_factory=factory, log=lambda line: None), built


def test_fedavg_round_trip_and_record(tmp_path):
    record, clients = run()
    assert [r.server_round for r in record.rounds] == [1, 2, 3, 4]
    assert record.tasks == ["label", "like"] and set(record.test) == {"s0", "s1", "s2"}
    assert record.test_round == 4 and record.runtime == "simulate" and record.strategy == "fedavg"
    first = record.rounds[0]
    assert set(first.fit) == {"s0", "s1", "s2"} and first.fit["s1"]["num_examples"] == 96
    assert first.train_seconds == pytest.approx(sum(m["train_seconds"] for m in first.fit.values()))
    assert 0 <= first.overhead_seconds <= first.wall_seconds
    # FedAvg: after the last aggregation every client holds the same global arrays, its own private ones
    for name in ("emb.scale", "expert.0.shared", "tower.like", "bn.running_mean"):
        np.testing.assert_allclose(clients["s0"].params[name], clients["s2"].params[name])
    assert not np.allclose(clients["s0"].params["scenario.bias"], clients["s2"].params["scenario.bias"])
    assert mean_metric(record.test, "auc") > 0.6
    loaded = RunRecord.load(record.save(tmp_path / "record.json"))
    assert loaded == record
    summary = loaded.summary_markdown()
    assert "| s1 |" in summary and "**mean**" in summary and "AUC like" in summary


def test_same_seed_same_numbers_other_seed_others():
    a, _ = run(strategy="pfmsmtrec")
    b, _ = run(strategy="pfmsmtrec")
    c, _ = run(strategy="pfmsmtrec", seed=8)
    assert [r.valid for r in a.rounds] == [r.valid for r in b.rounds] and a.test == b.test
    assert a.test != c.test


def test_local_only_equals_clients_trained_alone():
    record, _ = run(strategy="local")
    assert all(not upload for upload in LinearClient.uploads_seen)
    for scenario in BASE["scenarios"]:
        alone = LinearClient(BASE, scenario, BASE["seed"])
        for server_round in range(1, BASE["rounds"] + 1):
            alone.fit(server_round, {"local_epochs": 1, "prox_mu": 0.0})
        assert record.test[scenario] == alone.evaluate("test")


@pytest.mark.parametrize(
    "strategy,kept", [("fedbn", {"norm"}), ("fedper", {"tower"}), ("pfmsmtrec", {"norm"})]
)
def test_kept_roles_never_uploaded(strategy, kept):
    run(strategy=strategy)
    assert LinearClient.uploads_seen
    for upload in LinearClient.uploads_seen:
        assert not {ROLES[n] for n in upload} & (kept | {"private"})


@pytest.mark.parametrize("valid_after", ["fit", "aggregate"])
def test_test_from_best_restores_the_best_round(valid_after):
    record, _ = run(strategy="pfmsmtrec", test_from="best", rounds=5, valid_after=valid_after)
    assert record.test_round == record.best_round("auc") < 5
    last, _ = run(strategy="pfmsmtrec", test_from="last", rounds=record.test_round, valid_after=valid_after)
    assert record.test == last.test  # the best round's state tested = a run stopped at that round


def test_valid_after_aggregate_measures_what_the_server_sent():
    after_fit, _ = run(strategy="fedavg", rounds=2)
    after_aggregate, clients = run(strategy="fedavg", rounds=2, valid_after="aggregate")
    assert after_fit.test == after_aggregate.test  # the same training, only valid moves
    assert after_fit.rounds[-1].valid != after_aggregate.rounds[-1].valid
    # the last valid after aggregation is the model test measures: evaluate it again on valid
    assert after_aggregate.rounds[-1].valid == {s: c.evaluate("valid") for s, c in clients.items()}


def test_a_crashed_client_stops_the_run_or_is_left_out():
    with pytest.raises(RuntimeError, match="client 's1' failed in fit of round 2"):
        run(fake_fail={"s1": 2})
    record, _ = run(fake_fail={"s1": 2}, min_clients=2)
    assert set(record.rounds[1].fit) == {"s0", "s2"} and set(record.test) == {"s0", "s2"}


def test_clients_of_different_layout_are_refused():
    class Odd(LinearClient):
        def roles(self):
            return {**ROLES, "extra": "shared"}

    def factory(fed_config, scenario, seed):
        return (Odd if scenario == "s2" else LinearClient)(fed_config, scenario, seed)

    with pytest.raises(ValueError, match="client 's2' holds other arrays"):
        simulate.run(BASE, client_factory=factory, log=lambda line: None)


def test_real_clients_on_tiny_ml100k_deterministic_and_nothing_kept_uploaded(tmp_path):
    """simulate.run with the real client (RecBole data, FederatedMMoE) on a few ml-100k users per age band:
    PF-MSMTrec with the additive template, twice, gives the same numbers; no upload holds a norm or private
    array; BatchNorm stays personal and the towers personalized, the embeddings global."""
    from test_federated_client import BANDS, SMALL, _tiny_ml100k

    from recbole_pmtrec.federated import client as client_module
    from recbole_pmtrec.federated import scenarios
    from recbole_pmtrec.federated.config import load_config

    (tmp_path / "raw").mkdir()
    config = load_config(
        None,
        {
            "dataset": "ml-100k",
            "scenarios": list(BANDS),
            "data_path": str(tmp_path / "data"),
            "raw_path": str(_tiny_ml100k(tmp_path / "raw")),
            "output_dir": str(tmp_path / "out"),
            "train_batch_size": 128,
            "recbole": {"use_gpu": False},
            **SMALL,
            "rounds": 2,
            "strategy": "pfmsmtrec",
            "pfm_template": "additive",
        },
    )
    scenarios.prepare(config, verbose=False)
    records, uploads, built = [], [], {}

    def factory(fed_config, scenario, seed):
        client = built[scenario] = client_module.make_client(fed_config, scenario, seed)
        upload = client.upload
        client.upload = lambda roles: uploads.append(upload(roles)) or uploads[-1]
        return client

    client_module._DATA_CACHE.clear()
    for _ in range(2):
        records.append(simulate.run(config, client_factory=factory, log=lambda line: None))
    assert records[0].test == records[1].test and set(records[0].test) == set(BANDS)
    assert [r.valid for r in records[0].rounds] == [r.valid for r in records[1].rounds]
    roles = built["age_lt25"].roles()
    assert uploads and all(roles[n] not in ("norm", "private") for upload in uploads for n in upload)
    final = {s: c.upload({"embedding", "tower", "task"}) for s, c in built.items()}
    names = {role: next(n for n, r in roles.items() if r == role) for role in ("embedding", "tower", "norm")}
    assert all(
        np.array_equal(final["age_lt25"][names["embedding"]], final[s][names["embedding"]]) for s in BANDS
    )
    assert not np.array_equal(final["age_lt25"][names["tower"]], final["age_ge45"][names["tower"]])
    norms = {s: c.upload({"norm"})[names["norm"]] for s, c in built.items()}
    assert not np.array_equal(norms["age_lt25"], norms["age_ge45"])
