"""PF-MSMTrec on Flower's deployment engine: a real SuperLink and SuperNodes on loopback, started and stopped
by the launcher. Checks the results (against the in-process runtime), what the ServerApp received (nothing
private), a crashing client (its scenario named, no process left), the checks before anything starts,
and resuming.

The integration test runs the real client and strategy on two tiny ml-100k scenarios; a small numpy client
(:class:`FakeClient`: a linear model per task over a shared embedding, a private running mean) with the real
strategies exercises failures, privacy under FedPer and resuming at less cost.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_pmtrec.federated import scenarios, simulate
from recbole_pmtrec.federated.client import make_client
from recbole_pmtrec.federated.config import load_config
from recbole_pmtrec.federated.flower_app import checkpoint, wire
from recbole_pmtrec.federated.launcher import main as launch
from recbole_pmtrec.federated.results import RunRecord

HERE = Path(__file__).resolve().parent
TASKS = ("label", "like")


class FakeClient:
    """The contract's client over synthetic data: ``logit_t = x @ (embedding + tower_t)``; SGD; a private
    running mean of x. Crashes in round 2 when ``$FAKE_CRASH_SCENARIO`` names its scenario."""

    def __init__(self, fed_config: dict, scenario: str, seed: int):
        self.scenario, self.seed = scenario, seed
        rng = np.random.default_rng([seed, zlib.crc32(scenario.encode())])
        self.x = rng.normal(size=(60, 4))
        truth = rng.normal(size=(len(TASKS), 4))
        self.y = {t: (self.x @ truth[i] + rng.normal(size=60) > 0).astype(float) for i, t in enumerate(TASKS)}
        self.num_train = 40
        init = np.random.default_rng(seed)
        self.arrays = {"embedding.weight": init.normal(size=4), "bn.running_mean": np.zeros(4)}
        self.arrays.update({f"tower.{t}.weight": init.normal(size=4) for t in TASKS})
        self.step = np.zeros(1)

    def roles(self):
        return {n: "private" if n.startswith("bn.") else n.split(".")[0] for n in self.arrays}

    def groups(self):
        return {n: "/".join(n.split(".")[:-1]) for n, r in self.roles().items() if r != "private"}

    def upload(self, roles):
        return {n: self.arrays[n].copy() for n, r in self.roles().items() if r in roles and r != "private"}

    def download(self, arrays):
        self.arrays.update({n: np.array(v, dtype=np.float64) for n, v in arrays.items()})

    def fit(self, server_round, options):
        if os.environ.get("FAKE_CRASH_SCENARIO") == self.scenario and server_round == 2:
            raise RuntimeError(f"fake crash of {self.scenario}")
        rng = np.random.default_rng([self.seed, zlib.crc32(self.scenario.encode()), int(self.step[0])])
        loss = 0.0
        for _ in range(int(options.get("local_epochs", 1)) * 5):
            rows = rng.choice(self.num_train, size=16, replace=False)
            x = self.x[rows]
            for t in TASKS:
                w = self.arrays["embedding.weight"] + self.arrays[f"tower.{t}.weight"]
                p = 1 / (1 + np.exp(-x @ w))
                grad = x.T @ (p - self.y[t][rows]) / len(rows)
                self.arrays["embedding.weight"] -= 0.1 * grad
                self.arrays[f"tower.{t}.weight"] -= 0.1 * grad
                loss += float(np.mean(-np.log(np.where(self.y[t][rows] > 0, p, 1 - p) + 1e-12)))
            self.arrays["bn.running_mean"] = 0.9 * self.arrays["bn.running_mean"] + 0.1 * x.mean(axis=0)
        self.step += 1
        return {"num_examples": self.num_train, "train_loss": loss, "train_seconds": 0.01}

    def evaluate(self, split):
        rows = slice(40, 50) if split == "valid" else slice(50, 60)
        out = {"num_examples": 10.0}
        for t in TASKS:
            score = self.x[rows] @ (self.arrays["embedding.weight"] + self.arrays[f"tower.{t}.weight"])
            y = self.y[t][rows]
            pos, neg = score[y > 0], score[y == 0]
            out[f"auc@{t}"] = float((pos[:, None] > neg[None, :]).mean()) if len(pos) and len(neg) else 0.5
            p = np.clip(1 / (1 + np.exp(-score)), 1e-7, 1 - 1e-7)
            out[f"logloss@{t}"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        return out

    def state(self):
        return {**{n: v.copy() for n, v in self.arrays.items()}, "_step": self.step.copy()}

    def load_state(self, state):
        self.step = np.array(state["_step"])
        self.arrays = {n: np.array(v) for n, v in state.items() if n != "_step"}


# ------------------------------------------------------------------------------------------------ helpers
FAKE = ["--client-factory", "test_federated_flower:FakeClient", "--pythonpath", str(HERE)]
FAKE_CONFIG = {"dataset": "ml-100k", "scenarios": ["north", "south"], "rounds": 2, "strategy": "fedavg"}
BANDS = {"age_lt25": (0, 25), "age_ge45": (45, 200)}
SMALL = {"embedding_size": 4, "num_experts": 2, "expert_mlp_sizes": [6], "tower_mlp_sizes": [3]}


def set_args(overrides: dict) -> list[str]:
    return ["--set", *[f"{key}={json.dumps(value)}" for key, value in overrides.items()]]


def tiny_ml100k(tmp_path: Path) -> dict:
    """Config overrides for two age bands of three users each (ml-100k's own file format), a small MMoE."""
    raw = scenarios.ml100k_raw_dir()
    tiny = tmp_path / "raw"
    tiny.mkdir()
    users = pd.read_csv(raw / "ml-100k.user", sep="\t", dtype=str)
    ages = users["age:token"].astype(int)
    keep = pd.concat([users[(ages >= lo) & (ages < hi)].head(3) for lo, hi in BANDS.values()])
    inter = pd.read_csv(raw / "ml-100k.inter", sep="\t", dtype=str)
    keep.to_csv(tiny / "ml-100k.user", sep="\t", index=False)
    inter[inter["user_id:token"].isin(keep["user_id:token"])].to_csv(
        tiny / "ml-100k.inter", sep="\t", index=False
    )
    shutil.copy(raw / "ml-100k.item", tiny / "ml-100k.item")
    return {
        "dataset": "ml-100k",
        "scenarios": list(BANDS),
        "data_path": str(tmp_path / "data"),
        "raw_path": str(tiny),
        "train_batch_size": 128,
        "recbole": {"use_gpu": False},
        "rounds": 2,
        **SMALL,
    }


_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before_the_test():
    """Descendants this process already had (e.g. the multiprocessing resource tracker an earlier test
    module's ``torch.multiprocessing.spawn`` leaves for the life of the process) are not the run's."""
    import psutil

    _BEFORE.clear()
    _BEFORE.update(p.pid for p in psutil.Process().children(recursive=True))
    yield


def processes_left(out: Path) -> list:
    """This process's live descendants started by the test, and any process anywhere whose command line or
    folder is the run's."""
    import psutil

    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE and p.pid not in _BEFORE
    ]
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        if str(out) in text and proc.pid != os.getpid():
            left.append(proc)
    return left


def received_names(out: Path) -> set[str]:
    received = json.loads((out / "received_arrays.json").read_text())
    return {name.split("/", 1)[1] for names in received.values() for name in names}


def assert_same_metrics(flower: RunRecord, reference: RunRecord) -> None:
    assert [r.server_round for r in flower.rounds] == [r.server_round for r in reference.rounds]
    pairs = [(a.valid, b.valid) for a, b in zip(flower.rounds, reference.rounds)] + [
        (flower.test, reference.test)
    ]
    for got, want in pairs:
        assert set(got) == set(want)
        for scenario, metrics in want.items():
            for key, value in metrics.items():
                assert got[scenario][key] == pytest.approx(value, abs=1e-6), (scenario, key)


# -------------------------------------------------------------------------------------------------- tests
def test_two_rounds_on_loopback_match_simulate_and_leave_no_process(tmp_path):
    """A real SuperLink and two SuperNodes (one per scenario) on loopback, the real client and PF-MSMTrec."""
    overrides = tiny_ml100k(tmp_path)
    out = tmp_path / "run"
    assert launch([*set_args(overrides), "--output-dir", str(out), "--timeout", "240"]) == 0
    assert not processes_left(out)

    flower = RunRecord.load(out / "record.json")
    assert flower.runtime == "flower" and flower.scenarios == list(BANDS)
    for metrics in [*flower.rounds[-1].valid.values(), *flower.test.values()]:
        assert {f"{m}@{t}" for m in ("auc", "logloss") for t in TASKS} <= set(metrics)
    clients = {}

    def keep(fed_config, scenario, seed):
        clients[scenario] = make_client(fed_config, scenario, seed)
        return clients[scenario]

    reference = simulate.run(load_config(None, overrides), client_factory=keep, log=lambda _: None)
    assert_same_metrics(flower, reference)

    roles = clients["age_lt25"].roles()
    names = received_names(out)
    assert names and names <= set(roles)
    kept = {"private", "norm"}  # PF-MSMTrec: private template parts, user ids, BatchNorm stay on the client
    assert not [n for n in names if roles[n] in kept]
    assert any(r == "private" for r in roles.values()) and any(r == "norm" for r in roles.values())


def test_a_crashing_client_ends_the_run_naming_its_scenario_and_fedper_keeps_towers(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_CRASH_SCENARIO", "south")
    out = tmp_path / "run"
    config = {**FAKE_CONFIG, "strategy": "fedper"}
    assert launch([*set_args(config), *FAKE, "--output-dir", str(out), "--timeout", "150"]) == 1
    error = capsys.readouterr().err
    assert "south" in error and "fake crash" in error and "round 2" in error
    assert not processes_left(out)
    assert received_names(out) == {"embedding.weight"}  # FedPer: towers and the private mean never arrive


@pytest.mark.slow
def test_a_crashing_client_sits_out_when_min_clients_allows(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CRASH_SCENARIO", "south")
    out = tmp_path / "run"
    config = {**FAKE_CONFIG, "scenarios": ["north", "south", "west"], "min_clients": 2}
    assert launch([*set_args(config), *FAKE, "--output-dir", str(out), "--timeout", "150"]) == 0
    assert not processes_left(out)
    record = RunRecord.load(out / "record.json")
    assert set(record.rounds[0].valid) == {"north", "south", "west"}
    assert set(record.rounds[1].valid) == set(record.test) == {"north", "west"}
    assert "going on without ['south']" in (out / "progress.log").read_text()


@pytest.mark.slow
def test_resume_continues_from_the_last_finished_round(tmp_path):
    out = tmp_path / "run"
    assert launch([*set_args(FAKE_CONFIG), *FAKE, "--output-dir", str(out), "--timeout", "150"]) == 0
    assert json.loads((out / "rounds" / "last").read_text()) == 2
    more = {**FAKE_CONFIG, "rounds": 3}
    assert launch([*set_args(more), *FAKE, "--output-dir", str(out), "--resume", "--timeout", "150"]) == 0
    assert not processes_left(out)
    resumed = RunRecord.load(out / "record.json")
    reference = simulate.run(load_config(None, more), client_factory=FakeClient, log=lambda _: None)
    assert_same_metrics(resumed, reference)


def test_errors_before_anything_starts(tmp_path, capsys):
    assert launch([*set_args({**FAKE_CONFIG, "strategy": "fedsgd"}), "--output-dir", str(tmp_path)]) == 2
    assert "unknown strategy 'fedsgd'" in capsys.readouterr().err

    empty = {**tiny_ml100k(tmp_path), "raw_path": None}
    config = load_config(None, empty)
    for scenario in config["scenarios"]:  # prepared folders, one of them without rows
        folder = scenarios.scenario_folder(config, scenario)
        folder.mkdir(parents=True)
        rows = "user_id:token\titem_id:token\n" + ("1\t1\n" if scenario == "age_lt25" else "")
        (folder / f"{scenarios.scenario_name(config, scenario)}.inter").write_text(rows)
    scenarios.vocabulary_file(config).parent.mkdir(parents=True)
    scenarios.vocabulary_file(config).write_text("{}")
    assert launch([*set_args(empty), "--output-dir", str(tmp_path / "run")]) == 2
    assert "scenario 'age_ge45' has no rows" in capsys.readouterr().err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [*set_args(FAKE_CONFIG), *FAKE, "--output-dir", str(tmp_path / "run"), "--port", str(port)]
        assert launch(args) == 1
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert not processes_left(tmp_path)


def test_records_and_round_files_keep_every_array_exactly(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)}
    back = wire.from_array_record(wire.to_array_record(arrays))
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
    record = RunRecord(strategy="fedavg", seed=1, runtime="flower", scenarios=["x", "y"])
    checkpoint.save_round(tmp_path, 3, {"global/a": arrays["b"]}, {"x": arrays, "y": {}}, record)
    resumed = checkpoint.load_last(tmp_path)
    assert resumed.last_round == 3 and np.array_equal(resumed.strategy_state["global/a"], arrays["b"])
    assert (
        np.array_equal(resumed.downloads["x"]["a.weight"], arrays["a.weight"])
        and "y" not in resumed.downloads
    )
