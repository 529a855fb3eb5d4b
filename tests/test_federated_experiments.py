"""The federated grid runner and its report: resume, and the report's figures against hand computation."""

from __future__ import annotations

from pathlib import Path

import pytest

from recbole_pmtrec.federated import experiments
from recbole_pmtrec.federated.results import RoundRecord, RunRecord

PROPERTIES = Path(__file__).resolve().parents[1] / "properties" / "federated"


def _record(strategy: str, seed: int, label_aucs: list[float]) -> RunRecord:
    scenarios = ["a", "b"]
    record = RunRecord(strategy=strategy, seed=seed, runtime="simulate", scenarios=scenarios)
    record.add_round(
        RoundRecord(
            server_round=1,
            valid={s: {"auc@label": 0.5, "auc@like": 0.5} for s in scenarios},
            wall_seconds=10.0,
            train_seconds=6.0,
            eval_seconds=2.0,
        )
    )
    record.test = {
        s: {"auc@label": auc, "auc@like": 0.9, "logloss@label": 0.3, "logloss@like": 0.2}
        for s, auc in zip(scenarios, label_aucs)
    }
    return record


def test_report_means_over_scenarios_then_seeds(tmp_path):
    # seed 1: scenarios .6 / .8 -> .7 ; seed 2: .8 / 1.0 -> .9 ; over seeds: mean .8, sample std .141421
    _record("fedavg", 1, [0.6, 0.8]).save(experiments.record_path(tmp_path, "toy", "fedavg", 1))
    _record("fedavg", 2, [0.8, 1.0]).save(experiments.record_path(tmp_path, "toy", "fedavg", 2))
    _record("local", 1, [0.5, 0.5]).save(experiments.record_path(tmp_path, "toy", "local", 1))
    text = experiments.report(str(tmp_path), str(tmp_path / "r.md"), None)
    assert "| fedavg | 2 | 0.8000 ± 0.1414 | 0.9000 ± 0.0000 | 0.3000 ± 0.0000 | 0.2000 ± 0.0000 |" in text
    assert "| local | 1 | 0.5000 | 0.9000 | 0.3000 | 0.2000 |" in text
    # per scenario, mean over seeds: a = (.6 + .8) / 2, b = (.8 + 1) / 2
    assert "| fedavg | 0.7000 | 0.9000 | 0.9000 | 0.9000 |" in text
    # time split: 10 s wall, 6 s training, 2 s evaluation -> 2 s overhead, 20 %
    assert "| fedavg | simulate | 1 | 10.00 | 6.00 | 2.00 | 2.00 | 20.0% |" in text
    assert (tmp_path / "r.md").read_text().startswith("## toy")


def test_paired_differences_by_seed(tmp_path):
    # pfmsmtrec .7 / .9 (seeds 1, 2) vs fedavg .6 / .95: differences +.1 and -.05 -> mean +.025, 1 win of 2
    _record("pfmsmtrec", 1, [0.7, 0.7]).save(experiments.record_path(tmp_path, "toy", "pfmsmtrec", 1))
    _record("pfmsmtrec", 2, [0.9, 0.9]).save(experiments.record_path(tmp_path, "toy", "pfmsmtrec", 2))
    _record("fedavg", 1, [0.6, 0.6]).save(experiments.record_path(tmp_path, "toy", "fedavg", 1))
    _record("fedavg", 2, [0.95, 0.95]).save(experiments.record_path(tmp_path, "toy", "fedavg", 2))
    _record("fedavg", 3, [0.1, 0.1]).save(experiments.record_path(tmp_path, "toy", "fedavg", 3))  # unpaired
    text = experiments.report(str(tmp_path), None, None)
    assert "| fedavg | 2 | +0.0250 (1/2) | +0.0000 (0/2) |" in text


def test_grid_resumes_and_checks_its_file(tmp_path, monkeypatch):
    grid = tmp_path / "grid.yaml"
    grid.write_text("methods:\n  local: {strategy: local}\n  fedavg: {strategy: fedavg}\nseeds: [1, 2]\n")
    calls = []

    def fake_run(fed_config, overrides, runtime):
        calls.append((overrides["strategy"], fed_config["seed"]))
        return _record(overrides["strategy"], fed_config["seed"], [0.5, 0.5])

    monkeypatch.setattr(experiments, "run_one", fake_run)
    monkeypatch.setattr("recbole_pmtrec.federated.scenarios.is_prepared", lambda config: True)
    out = tmp_path / "out"
    args = (str(PROPERTIES / "ml100k.yaml"), str(grid), str(out), "simulate")
    experiments.run_grid(*args, methods=["local"])
    assert calls == [("local", 1), ("local", 2)]
    experiments.run_grid(*args)  # local is done: only fedavg runs
    assert calls[2:] == [("fedavg", 1), ("fedavg", 2)]
    record = RunRecord.load(experiments.record_path(out, "ml-100k", "fedavg", 2))
    assert "--methods fedavg" in record.config["command"]

    grid.write_text("methods: {}\nseeds: [1]\n")
    with pytest.raises(ValueError, match="methods"):
        experiments.run_grid(*args)


def test_shipped_grid_is_valid():
    grid = experiments.load_grid(PROPERTIES / "grid.yaml")
    assert {"local", "fedavg", "pfmsmtrec", "centralized"} <= set(grid["methods"])
    assert len(grid["seeds"]) == 3
