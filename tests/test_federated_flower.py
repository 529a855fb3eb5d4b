"""PF-MSMTrec on Flower's deployment engine: a real SuperLink and SuperNodes on loopback, started and stopped
by the launcher. Checks the results (against the in-process runtime), what the ServerApp received (nothing
private), a crashing client (its scenario named, no process left), the checks before anything starts,
and resuming.

A small numpy client (:class:`FakeClient`, a linear model per task over a shared embedding, with a private
running mean) and FedAvg (:class:`FakeFedAvg`) exercise the runtime on their own; the integration test
uses the real client and strategies on tiny ml-100k scenarios.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

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


class FakeFedAvg:
    """FedAvg over every sent role, weighted by training rows; everyone starts from the first client's model."""

    name = "fake-fedavg"

    def __init__(self, fed_config, roles, groups):
        self.global_model: dict = {}

    def sent_roles(self):
        return {"embedding", "tower"}

    def client_options(self, server_round):
        return {"local_epochs": 1}

    def initial(self, uploads):
        first = uploads[sorted(uploads)[0]]
        self.global_model = {n: v.copy() for n, v in first.items()}
        return {c: self.global_model for c in uploads}

    def aggregate(self, server_round, uploads, num_examples):
        total = sum(num_examples.values())
        names = next(iter(uploads.values())).keys()
        self.global_model = {n: sum(uploads[c][n] * num_examples[c] for c in uploads) / total for n in names}
        return {c: self.global_model for c in uploads}

    def state(self):
        return dict(self.global_model)

    def load_state(self, state):
        self.global_model = dict(state)


# ------------------------------------------------------------------------------------------------ helpers
FAKES = [
    "--client-factory",
    "test_federated_flower:FakeClient",
    "--strategy-factory",
    "test_federated_flower:FakeFedAvg",
    "--pythonpath",
    str(HERE),
]
FAKE_CONFIG = ["--set", "dataset=ml-100k", "scenarios=[north, south]", "rounds=2"]


def own_descendants() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def flower_processes_of(out: Path) -> list:
    """Processes anywhere on the machine whose command line or folder is this test's run (none may be left)."""
    import psutil

    left = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        except (psutil.Error, TypeError):
            continue
        if str(out) in text and proc.pid != os.getpid():
            left.append(proc)
    return left


def launch(argv: list[str]) -> int:
    from recbole_pmtrec.federated.launcher import main

    return main(argv)


# -------------------------------------------------------------------------------------------------- tests
def test_fake_run_on_loopback_matches_and_stops_everything(tmp_path):
    out = tmp_path / "run"
    code = launch([*FAKE_CONFIG, *FAKES, "--output-dir", str(out), "--timeout", "80"])
    assert code == 0
    record = json.loads((out / "record.json").read_text())
    assert [r["server_round"] for r in record["rounds"]] == [1, 2]
    assert set(record["test"]) == {"north", "south"}
    for metrics in record["test"].values():
        assert {f"auc@{t}" for t in TASKS} <= set(metrics)
    received = json.loads((out / "received_arrays.json").read_text())
    names = {n.split("/", 1)[1] for v in received.values() for n in v}
    assert names == {"embedding.weight", "tower.label.weight", "tower.like.weight"}
    assert not own_descendants() and not flower_processes_of(out)
