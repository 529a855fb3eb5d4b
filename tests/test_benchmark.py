"""The benchmark command: the smoke suite end to end (cells, table, plots, commands, resume), a cell's
command reproducing its numbers, and the table / planning logic on fake cell results."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recbole_pmtrec.benchmark import runner as cell_runner
from recbole_pmtrec.benchmark.__main__ import main
from recbole_pmtrec.benchmark.driver import Benchmark, CellStore, _jsonable
from recbole_pmtrec.benchmark.methods import method_spec
from recbole_pmtrec.benchmark.report import cells_table, table2, write_report
from recbole_pmtrec.benchmark.suite import base_cells, load_suite, suites
from recbole_pmtrec.quick_start import run_recbole_pmtrec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMOKE_METHODS = {"ew", "BPR", "pmtrec"}


class CountingRunner:
    """Wraps the real (or a fake) cell runner and remembers which cells it trained."""

    def __init__(self, inner):
        self.inner = inner
        self.ids: list[str] = []

    def __call__(self, cell):
        self.ids.append(cell.id)
        return self.inner(cell)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke suite run once through the command (``main``), in a folder of its own."""
    work = tmp_path_factory.mktemp("smoke")
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(work)
    sys.argv = [argv[0]]
    counter = CountingRunner(cell_runner.run_cell_safely)
    cell_runner.run_cell_safely, original = counter, cell_runner.run_cell_safely
    try:
        main(["--suite", "smoke", "--out", str(work / "out"), "--no-progress"])
    finally:
        cell_runner.run_cell_safely = original
        os.chdir(cwd)
        sys.argv = argv
    return work, counter.ids


def _cells(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))}


def test_smoke_suite_writes_cells_table_plots_and_commands(smoke_run):
    work, ran = smoke_run
    out = work / "out"
    cells = _cells(out)
    assert sorted(cells) == sorted(ran) and len(set(ran)) == len(ran)  # each cell trained once
    # base (EW), BPR, PMTRec, two ablations, tau=0.001; alpha=1 and tau=1 are the ablation cells again
    assert len(cells) == 6
    assert {c["method"] for c in cells.values()} == SMOKE_METHODS
    for record in cells.values():
        assert record["status"] == "ok", record.get("error")
        assert record["wall_s"] > 0 and record["times"]["train_s"] > 0
        assert record["config"]["valid_metric"] == "recall@20"
        assert record["command"].startswith("python run_recbole_pmtrec.py")
        assert set(record["test_result"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20, 40)}
        assert [h["epoch"] for h in record["history"]] == [0, 1]  # 2 epochs, evaluated after each
        assert all("recall@20" in h["valid"] for h in record["history"])
        assert record["best_valid_score"] == max(h["valid_score"] for h in record["history"])

    table = (out / "table.md").read_text()
    assert "| dataset | metric | BPR | EW | PMTRec | PMTRec vs best MTL baseline |" in table
    for metric in ("Recall", "NDCG"):
        for k in (5, 10, 20, 40):
            assert f"| ml-100k | {metric}@{k} |" in table
    assert "## Ablation (Fig. 4)" in table and "## Sensitivity (Fig. 5)" in table
    for name in ("curve_ml-100k.png", "ablation_ml-100k.png", "sensitivity_ml-100k.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and 1000 < len(data) < 200_000
    commands = (out / "commands.md").read_text()
    assert all(f"## {cell_id}" in commands and cells[cell_id]["command"] in commands for cell_id in cells)


def test_resume_skips_finished_cells_and_reruns_missing_ones(smoke_run, monkeypatch):
    work, _ = smoke_run
    out = work / "out"
    monkeypatch.chdir(work)
    before = _cells(out)
    with pytest.raises(FileExistsError, match="--resume"):
        main(["--suite", "smoke", "--out", str(out), "--no-progress"])

    counter = CountingRunner(cell_runner.run_cell_safely)
    monkeypatch.setattr(cell_runner, "run_cell_safely", counter)
    main(["--suite", "smoke", "--out", str(out), "--no-progress", "--resume"])
    assert counter.ids == []
    assert _cells(out) == before

    lost = next(i for i, c in before.items() if c["method"] == "BPR")  # as if interrupted while running
    (out / "cells" / f"{lost}.json").unlink()
    main(["--suite", "smoke", "--out", str(out), "--no-progress", "--resume"])
    assert counter.ids == [lost]
    assert _cells(out)[lost]["test_result"] == before[lost]["test_result"]  # same seed, same numbers


def test_cell_command_reproduces_the_cell(smoke_run, monkeypatch):
    """The command written for a cell, run as RecBole's command line, gives the cell's test numbers."""
    work, _ = smoke_run
    monkeypatch.chdir(work)
    record = next(c for c in _cells(work / "out").values() if c["method"] == "BPR")
    args = shlex.split(record["command"])
    assert args[:2] == ["python", "run_recbole_pmtrec.py"]
    monkeypatch.setattr(sys, "argv", args[1:])
    result = run_recbole_pmtrec(saved=True)
    assert result["model"] == "BPR"
    assert dict(result["test_result"]) == record["test_result"]


# ---------------------------------------------------------------------------------------------- fake cells
FAKE_SUITE = """
config: {epochs: 3, valid_metric: recall@20}
methods: [BPR, ew, rlw, pmtrec]
tuning:
  base_method: ew
  base_grid: {learning_rate: [0.01, 0.001], weight_decay: [0.0]}
  method_grids:
    pmtrec: {pmtrec_alpha: [1.0, 1.1], pmtrec_tau: [0.1, 0.01]}
datasets:
  office: {}
ablation: [office]
sensitivity: {datasets: [office], pmtrec_alpha: [1.0, 1.1, 1.2], pmtrec_tau: [1.0, 0.1]}
paper:
  office:
    table2:
      recall@20: {ew: 0.0655, rlw: 0.0849, pmtrec: 0.0905}
    ablation:
      recall@40: {no_focusing: 0.1395, no_balancing: 0.1468, full: 0.1474}
"""


def fake_score(cell) -> float:
    """A deterministic score: lr 0.01 beats 0.001; PMTRec best at alpha 1.1, tau 0.01; BPR < EW < RLW."""
    p = cell.params
    score = {"BPR": 0.05, "ew": 0.06, "rlw": 0.07, "pmtrec": 0.08}[cell.method]
    score += 0.01 if p.get("learning_rate") == 0.01 else 0.0
    if cell.method == "pmtrec":
        score += 0.002 * (p["pmtrec_alpha"] == 1.1) + 0.001 * (p["pmtrec_tau"] == 0.01)
    return round(score, 4)


def fake_runner(cell) -> dict:
    score = fake_score(cell)
    result = {f"{m}@{k}": round(score * k / 20, 4) for m in ("recall", "ndcg") for k in (5, 10, 20, 40)}
    curve = [score * (e + 1) / 3 for e in range(3)]
    history = [
        {"epoch": e, "train_s": 0.1, "valid_score": v, "valid": {"recall@20": v}} for e, v in enumerate(curve)
    ]
    return {
        "status": "ok",
        "best_valid_score": score,
        "best_valid_result": result,
        "test_result": result,
        "best_epoch": 2,
        "epochs_run": 3,
        "history": history,
        "times": {"data_s": 0.0, "train_s": 0.3, "valid_s": 0.0, "test_s": 0.0},
        "wall_s": 1.0,
    }


@pytest.fixture
def fake_suite(tmp_path):
    path = tmp_path / "fake.yaml"
    path.write_text(FAKE_SUITE)
    return load_suite(str(path))


def test_stages_pick_by_valid_score_and_share_identical_cells(fake_suite, tmp_path):
    counter = CountingRunner(fake_runner)
    bench = Benchmark(fake_suite, tmp_path / "out", runner=counter, progress=False)
    bench.run()
    picks = bench.picks["office"]
    assert picks["base"] == {"learning_rate": 0.01, "weight_decay": 0.0}
    chosen = {m: bench.results[i]["params"] for m, i in picks["methods"].items()}
    assert chosen["pmtrec"] == {
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "pmtrec_alpha": 1.1,
        "pmtrec_tau": 0.01,
    }
    assert chosen["BPR"] == {"learning_rate": 0.01, "weight_decay": 0.0}  # PMTRec's knobs never reach BPR
    assert "mtl_method" not in bench.results[picks["methods"]["BPR"]]["config"]
    ablation = {v: bench.results[i]["params"] for v, i in picks["ablation"].items()}
    assert ablation["no_focusing"]["pmtrec_alpha"] == 1.0 and ablation["no_focusing"]["pmtrec_tau"] == 0.01
    assert ablation["no_balancing"]["pmtrec_tau"] == 1.0 and ablation["no_balancing"]["pmtrec_alpha"] == 1.1
    assert picks["ablation"]["full"] == picks["methods"]["pmtrec"]
    # 2 base + BPR + RLW + 4 PMTRec + no balancing + alpha 1.2: no focusing (alpha 1, tau .01) and the other
    # sweep points are cells already run, not run again
    assert len(counter.ids) == len(set(counter.ids)) == 10
    assert [bench.results[i]["params"]["pmtrec_alpha"] for i in picks["sensitivity"]["pmtrec_alpha"]] == [
        1.0,
        1.1,
        1.2,
    ]


def test_skip_base_trains_no_base_cell_and_reads_finished_ones(fake_suite, tmp_path):
    """--skip-base: the methods start from the first base point when no base cell has finished, and from the
    best finished one when some have; no base cell is trained either way."""
    suite = fake_suite.select(None, ["BPR"])
    out = tmp_path / "out"
    counter = CountingRunner(fake_runner)
    bench = Benchmark(suite, out, runner=counter, skip_base=True, progress=False)
    bench.run()
    assert counter.ids and all("__BPR__" in i for i in counter.ids)
    assert bench.picks["office"]["base"] == {"learning_rate": 0.01, "weight_decay": 0.0}  # the first point
    # a finished base cell (lr 0.001, made the better one) is read and its settings passed on
    base = next(c for c in base_cells(suite, suite.datasets["office"]) if c.params["learning_rate"] == 0.001)
    record = {**fake_runner(base), "id": base.id, "params": base.params, "config": _jsonable(base.config)}
    record["best_valid_score"] = 0.5
    CellStore(out).save({**record, "dataset": "office", "method": "ew", "stage": "base"})
    again = CountingRunner(fake_runner)
    bench = Benchmark(suite, out, resume=True, runner=again, skip_base=True, progress=False)
    bench.run()
    assert bench.picks["office"]["base"] == {"learning_rate": 0.001, "weight_decay": 0.0}
    assert len(again.ids) == 1 and bench.results[again.ids[0]]["params"]["learning_rate"] == 0.001  # BPR


def test_table2_layout(fake_suite, tmp_path):
    bench = Benchmark(fake_suite, tmp_path / "out", runner=fake_runner, progress=False)
    bench.run()
    table = table2(fake_suite, bench.results, bench.picks)
    lines = table.splitlines()
    assert lines[0] == "| dataset | metric | BPR | EW | RLW | PMTRec | PMTRec vs best MTL baseline |"
    rows = {line.split(" | ")[1]: line for line in lines[2:]}
    assert list(rows) == [f"{m}@{k}" for m in ("Recall", "NDCG") for k in (5, 10, 20, 40)]
    # R@20 = the valid score (fake): BPR .06, EW .07, RLW .08, PMTRec .093 (best, bold), paper in parentheses
    assert rows["Recall@20"] == (
        "| office | Recall@20 | .0600 | .0700 (.0655) | .0800 (.0849) | **.0930** (.0905) | +16.2% |"
    )
    assert rows["NDCG@40"].startswith("| office | NDCG@40 | .1200 | .1400 | .1600 | **.1860** |")
    written = write_report(fake_suite, bench.results, bench.picks, tmp_path / "out", "cmd")
    assert {p.name for p in written} == {
        "table.md",
        "commands.md",
        "curve_office.png",
        "ablation_office.png",
        "sensitivity_office.png",
    }
    text = (tmp_path / "out" / "table.md").read_text()
    assert "| office | w/o focusing (alpha=1) |" in text and "| .1395 |" in text


def test_failed_cell_is_recorded_and_retried_on_request(fake_suite, tmp_path):
    def failing_rlw(cell):
        if cell.method == "rlw":
            return {"status": "failed", "error": "ValueError: boom", "wall_s": 0.1}
        return fake_runner(cell)

    out = tmp_path / "out"
    bench = Benchmark(fake_suite, out, runner=failing_rlw, progress=False)
    bench.run()
    assert "rlw" not in bench.picks["office"]["methods"]
    assert (
        "failed: ValueError: boom"
        in write_report(fake_suite, bench.results, bench.picks, out, "c")[0].read_text()
    )
    again = CountingRunner(fake_runner)
    Benchmark(fake_suite, out, resume=True, runner=again, progress=False).run()
    assert again.ids == []
    Benchmark(fake_suite, out, resume=True, retry_failed=True, runner=again, progress=False).run()
    assert [i.split("__")[1] for i in again.ids] == ["rlw"]


def test_resume_reruns_a_cell_whose_config_changed(fake_suite, tmp_path):
    out = tmp_path / "out"
    Benchmark(fake_suite, out, runner=fake_runner, progress=False).run()
    fake_suite.datasets["office"].config["epochs"] = 4  # the suite changed since: no stale result is reused
    again = CountingRunner(fake_runner)
    Benchmark(fake_suite, out, resume=True, runner=again, progress=False).run()
    assert len(again.ids) == 10


def test_workers_sharing_out_leave_claimed_cells_and_take_over_dead_claims(fake_suite, tmp_path):
    out = tmp_path / "out"
    first = Benchmark(fake_suite, out, runner=fake_runner, progress=False)
    first.run()
    cells = out / "cells"
    rlw = next(p.stem for p in cells.glob("*__rlw__*.json"))
    (cells / f"{rlw}.json").unlink()  # RLW not finished: a live worker (this process) holds it
    (cells / f"{rlw}.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    again = CountingRunner(fake_runner)
    bench = Benchmark(fake_suite, out, resume=True, runner=again, progress=False)
    bench.run()
    assert again.ids == [] and bench.elsewhere == [rlw] and bench.missing == [rlw]
    assert "rlw" not in bench.picks["office"]["methods"]
    # the claim's process has ended (crashed, killed): the cell is taken over, and the claim removed after
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (cells / f"{rlw}.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": ended.pid}))
    Benchmark(fake_suite, out, resume=True, runner=again, progress=False).run()
    assert again.ids == [rlw] and not list(cells.glob("*.claim"))


def test_device_settings_reach_the_runner_but_not_the_cell(fake_suite, tmp_path):
    seen = []

    def runner(cell):
        seen.append(cell.config)
        return {**fake_runner(cell), "environment": {"device": "cuda:1"}}

    out = tmp_path / "out"
    Benchmark(fake_suite, out, runner=fake_runner, progress=False).run()
    cpu = {p.name: json.loads(p.read_text())["config"] for p in (out / "cells").glob("*.json")}
    gpu_out = tmp_path / "gpu"
    Benchmark(
        fake_suite, gpu_out, runner=runner, progress=False, device={"use_gpu": True, "gpu_id": "1"}
    ).run()
    assert seen and all(c["use_gpu"] is True and c["gpu_id"] == "1" for c in seen)
    gpu = {p.name: json.loads(p.read_text())["config"] for p in (gpu_out / "cells").glob("*.json")}
    assert gpu == cpu  # the same cells: a CPU run resumes from a GPU run's records and the other way round
    bench = Benchmark(fake_suite, gpu_out, resume=True, run_cells=False, progress=False)
    bench.run()
    table = cells_table(bench.results)  # GPU wall times are marked: they do not compare with CPU ones
    assert table.count(" | 1 (cuda) |") == len(seen) and "(0.00 h of it on cuda)" in table


def test_shipped_suites_load_with_known_methods_and_the_papers_numbers():
    assert {"smoke", "paper", "extra"} <= set(suites())
    for name in suites():
        suite = load_suite(name)
        for plan in suite.datasets.values():
            assert plan.config["valid_metric"] == "recall@20"
            # patience: 10 epochs without improvement, or more where evaluation is sparse (Epinions)
            assert plan.config["stopping_step"] * plan.config["eval_step"] >= 10
            for method in plan.methods:
                method_spec(method)
    office = load_suite("paper").datasets["office"]
    assert office.paper["recall@20"]["pmtrec"] == pytest.approx(0.0905)
    assert office.paper["ndcg@20"]["pmtrec"] == pytest.approx(0.0473)


def test_unknown_method_or_dataset_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(FAKE_SUITE).replace("methods: [BPR, ew, rlw, pmtrec]", "methods: [BPR, pcgrd]")
    )
    with pytest.raises(ValueError, match="pcgrd"):
        load_suite(str(path))
    with pytest.raises(ValueError, match="no dataset"):
        load_suite("smoke").select(datasets=["epinions"])


ENCODER_SUITE = FAKE_SUITE.replace(
    "ablation: [office]",
    """  office-core5:
    dataset: office
    config: {user_inter_num_interval: "[5,inf)"}
encoders:
  datasets: [office]
  encoders: [mf, lightgcn, ngcf]
  methods: [ew, pmtrec]
  grid: {learning_rate: [0.01, 0.005]}
ablation: [office]""",
)


def encoder_runner(cell) -> dict:
    """fake_runner, with LightGCN +0.02 and NGCF -0.01, and lr 0.005 best for the graph encoders."""
    record = fake_runner(cell)
    encoder = cell.config.get("encoder", "mf")
    bonus = {"mf": 0.0, "lightgcn": 0.02, "ngcf": -0.01}[encoder]
    if encoder != "mf" and cell.params.get("learning_rate") == 0.005:
        bonus += 0.03
    record["best_valid_score"] = round(record["best_valid_score"] + bonus, 4)
    record["test_result"] = {k: round(v + bonus, 4) for k, v in record["test_result"].items()}
    return record


def test_encoder_stage_reuses_tuned_knobs_and_searches_only_its_grid(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_text(ENCODER_SUITE)
    suite = load_suite(str(path))
    assert suite.datasets["office-core5"].source == "office"
    counter = CountingRunner(encoder_runner)
    bench = Benchmark(suite, tmp_path / "out", runner=counter, progress=False)
    bench.run()
    picks = bench.picks["office"]["encoders"]
    assert list(picks) == ["mf", "lightgcn", "ngcf"]
    assert picks["mf"] == {m: bench.picks["office"]["methods"][m] for m in ("ew", "pmtrec")}
    tuned = bench.results[bench.picks["office"]["methods"]["pmtrec"]]["params"]
    for encoder in ("lightgcn", "ngcf"):
        for method in ("ew", "pmtrec"):
            record = bench.results[picks[encoder][method]]
            assert record["stage"] == "encoder" and record["config"]["encoder"] == encoder
            assert record["params"]["learning_rate"] == 0.005  # the grid's winner for graph encoders
            if method == "pmtrec":  # alpha / tau: the MF-tuned ones, not searched again
                assert record["params"]["pmtrec_alpha"] == tuned["pmtrec_alpha"]
                assert record["params"]["pmtrec_tau"] == tuned["pmtrec_tau"]
    encoder_ids = [i for i in counter.ids if bench.results[i]["stage"] == "encoder"]
    assert len(encoder_ids) == 2 * 2 * 2  # 2 other encoders x 2 methods x 2 learning rates
    # the aliased entry loads office's files under its own name
    core = [r for r in bench.results.values() if r["dataset"] == "office-core5"]
    assert core and all(r["config"]["user_inter_num_interval"] == "[5,inf)" for r in core)
    assert all("--dataset=office " in r["command"] for r in core)
    written = write_report(suite, bench.results, bench.picks, tmp_path / "out", "cmd")
    assert "encoders_office.png" in {p.name for p in written}
    text = (tmp_path / "out" / "table.md").read_text()
    # lr 0.005 (no +.01 of lr 0.01): PMTRec .08 + .002 + .001 + .02 + .03 = .133 R@20, EW .06 + .05 = .11
    # -> +20.9 %; no single-task LightGCN in this suite
    row = next(line for line in text.splitlines() if line.startswith("| office | LightGCN |"))
    assert row.startswith("| office | LightGCN | - | .1100 / .1100 | .1330 / .1330 | +20.9% |")


def test_encoder_section_is_checked(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(ENCODER_SUITE.replace("encoders: [mf, lightgcn, ngcf]", "encoders: [mf, gcn]"))
    with pytest.raises(ValueError, match="gcn"):
        load_suite(str(path))
    path.write_text(ENCODER_SUITE.replace("methods: [ew, pmtrec]\n  grid", "methods: [BPR]\n  grid"))
    with pytest.raises(ValueError, match="BPR"):
        load_suite(str(path))


def test_seed_stage_reports_mean_std_and_a_paired_comparison(tmp_path):
    path = tmp_path / "seeds.yaml"
    path.write_text(
        FAKE_SUITE.replace("ablation: [office]", "seeds: {datasets: [office], seeds: [1, 2]}\nablation: []")
    )
    suite = load_suite(str(path))

    def seeded(cell):
        record = fake_runner(cell)
        # seed 1: PMTRec loses to RLW by .02; seed 2: everything +.01; the config's seed: fake_runner
        shift = {1: -0.02 if cell.method == "pmtrec" else 0.0, 2: 0.01}.get(cell.config.get("seed"), 0.0)
        record["test_result"] = {k: round(v + shift, 4) for k, v in record["test_result"].items()}
        return record

    counter = CountingRunner(seeded)
    bench = Benchmark(suite, tmp_path / "out", runner=counter, progress=False)
    bench.run()
    runs = bench.picks["office"]["seeds"]
    assert set(runs) == {"ew", "BPR", "rlw", "pmtrec"} and all(len(ids) == 3 for ids in runs.values())
    assert sum(bench.results[i]["stage"] == "seed" for i in counter.ids) == 4 * 2
    # the fake suite sets no seed: the chosen cell runs with RecBole's default, the others with 1 and 2
    assert {bench.results[i]["config"].get("seed") for i in runs["pmtrec"]} == {None, 1, 2}
    write_report(suite, bench.results, bench.picks, tmp_path / "out", "cmd")
    text = (tmp_path / "out" / "table.md").read_text()
    # R@20: RLW .08 / .08 / .09 -> mean .0833, std .0058; PMTRec .093 / .073 / .103 -> .0897, std .0153
    assert "| office | RLW | 3 | .0833 ± .0058 |" in text
    assert "| office | PMTRec | 3 | .0897 ± .0153 |" in text
    # paired: +.013, -.007, +.013 -> better in 2 of 3, mean +.0063, std .0115
    assert (
        "PMTRec vs RLW (the best baseline by mean R@20), paired over 3 seeds: better in 2, R@20 difference +0.0063 ± 0.0115"
        in text
    )


def test_seeds_section_is_checked(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(FAKE_SUITE + "seeds: {seeds: [1], datasets: [epinions]}\n")
    with pytest.raises(ValueError, match="seeds dataset 'epinions'"):
        load_suite(str(path))
    path.write_text(FAKE_SUITE + "seeds: {seeds: [1.5], datasets: [office]}\n")
    with pytest.raises(ValueError, match="list of integers"):
        load_suite(str(path))
    path.write_text(FAKE_SUITE + "seeds: {seeds: [1], datasets: {office: [ew, pcgrd]}}\n")
    with pytest.raises(ValueError, match="pcgrd"):
        load_suite(str(path))


# ---------------------------------------------------------------------------------------------- suite checks
def _refused(tmp_path, text: str) -> str:
    """load_suite's error for a suite file with ``text``; the message must name the file."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_suite(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_a_misspelt_method_names_the_file_the_key_and_the_mtl_methods(tmp_path):
    message = _refused(
        tmp_path, FAKE_SUITE.replace("methods: [BPR, ew, rlw, pmtrec]", "methods: [BPR, pcgrd]")
    )
    assert "methods: unknown method 'pcgrd'" in message
    assert "aligned_mtl, cagrad, dwa, ew" in message and "pcgrad" in message and "upgrad" in message
    # a dataset's own list, and a seeds list, name their key
    message = _refused(tmp_path, FAKE_SUITE.replace("office: {}", "office: {methods: [ew, Pmtrec]}"))
    assert "datasets.office.methods: unknown method 'Pmtrec'" in message
    message = _refused(tmp_path, FAKE_SUITE + "seeds: {seeds: [1], datasets: {office: [ew, pcgrd]}}\n")
    assert "seeds.datasets.office: unknown method 'pcgrd'" in message


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ("pmtrec_alpha: 1.1", "sensitivity.pmtrec_alpha must be a non-empty list of values, got 1.1"),
        ("pmtrec_alpha: []", "sensitivity.pmtrec_alpha must be a non-empty list of values, got []"),
        ("pmtrec_tau: 0.1", "sensitivity.pmtrec_tau must be a non-empty list of values, got 0.1"),
        ("pmtrec_tau: [0.1, 0.0]", "sensitivity.pmtrec_tau: config key 'pmtrec_tau' has the value 0.0"),
        ("pmtrec_alpha: [0.9, 1.1]", "sensitivity.pmtrec_alpha: config key 'pmtrec_alpha' has the value 0.9"),
        ("pmtrec_alhpa: [1.1]", "sensitivity.pmtrec_alhpa: unknown key"),
    ],
)
def test_a_scalar_empty_or_invalid_sensitivity_sweep_is_refused(tmp_path, sweep, expected):
    text = FAKE_SUITE.replace(
        "sensitivity: {datasets: [office], pmtrec_alpha: [1.0, 1.1, 1.2], pmtrec_tau: [1.0, 0.1]}",
        f"sensitivity: {{datasets: [office], {sweep}}}",
    )
    assert expected in _refused(tmp_path, text)


def test_a_grid_for_a_method_not_in_the_suite_is_refused(tmp_path):
    text = FAKE_SUITE.replace(
        "    pmtrec: {pmtrec_alpha: [1.0, 1.1], pmtrec_tau: [0.1, 0.01]}",
        "    pmtrec: {pmtrec_alpha: [1.0, 1.1], pmtrec_tau: [0.1, 0.01]}\n    pcgrad: {learning_rate: [0.01]}",
    )
    message = _refused(tmp_path, text)
    assert "tuning.method_grids.pcgrad: a grid for a method the suite does not run" in message
    assert "BPR, ew, pmtrec, rlw" in message
    # a dataset's grid for a method that dataset does not run
    text = FAKE_SUITE.replace(
        "office: {}", "office: {methods: [BPR, ew, rlw], method_grids: {pmtrec: {pmtrec_tau: [0.1]}}}"
    )
    message = _refused(tmp_path, text)
    assert "datasets.office.method_grids.pmtrec: a grid for a method the dataset does not run" in message
    # and a grid value the plugin refuses, with its key
    text = FAKE_SUITE.replace("pmtrec_tau: [0.1, 0.01]}", "pmtrec_tau: [0.1, -0.01]}")
    message = _refused(tmp_path, text)
    assert "tuning.method_grids.pmtrec.pmtrec_tau: config key 'pmtrec_tau' has the value -0.01" in message


def test_a_grid_may_be_a_list_of_sub_grids_run_in_order(tmp_path):
    """A staged search: the alpha x tau product at one point, then tau at another alpha; a point listed
    twice is one cell; a sub-grid that is not a mapping, or has a refused value, is named with its index."""
    text = FAKE_SUITE.replace(
        "    pmtrec: {pmtrec_alpha: [1.0, 1.1], pmtrec_tau: [0.1, 0.01]}",
        "    pmtrec:\n      - {pmtrec_alpha: [1.0, 1.1], pmtrec_tau: [0.1]}\n"
        "      - {pmtrec_alpha: [1.1], pmtrec_tau: [0.1, 0.01, 0.001]}",
    )
    path = tmp_path / "staged.yaml"
    path.write_text(text)
    suite = load_suite(str(path))
    counter = CountingRunner(fake_runner)
    bench = Benchmark(suite.select(None, ["pmtrec"]), tmp_path / "out", runner=counter, progress=False)
    bench.run()
    pmtrec = [bench.results[i]["params"] for i in counter.ids if "__pmtrec__" in i]
    assert [(p["pmtrec_alpha"], p["pmtrec_tau"]) for p in pmtrec[:4]] == [
        (1.0, 0.1),
        (1.1, 0.1),
        (1.1, 0.01),
        (1.1, 0.001),
    ]
    assert len(counter.ids) == len(set(counter.ids))
    bad = text.replace("      - {pmtrec_alpha: [1.1], pmtrec_tau", "      - [1.1]\n      - {pmtrec_tau")
    assert "tuning.method_grids.pmtrec[1] must be a mapping knob -> list of values" in _refused(tmp_path, bad)
    bad = text.replace("pmtrec_tau: [0.1, 0.01, 0.001]", "pmtrec_tau: [0.1, -1.0]")
    message = _refused(tmp_path, bad)
    assert "tuning.method_grids.pmtrec[1].pmtrec_tau: config key 'pmtrec_tau' has the value -1.0" in message


def test_cells_outside_the_plan_are_listed_apart_and_used_nowhere(fake_suite, tmp_path):
    out = tmp_path / "out"
    bench = Benchmark(fake_suite, out, runner=CountingRunner(fake_runner), progress=False)
    bench.run()
    assert bench.other_cells() == {}
    # a cell of an earlier grid (lr 0.5, not in the suite) with a valid score above every planned cell's,
    # and a cell of a dataset the suite does not have: only the first is the suite's
    ew_id = bench.picks["office"]["methods"]["ew"]
    stray = dict(bench.results[ew_id], id="office__ew__lr0.5_wd0.0", best_valid_score=0.99, wall_s=4321.0)
    stray["params"] = {"learning_rate": 0.5, "weight_decay": 0.0}
    stray["test_result"] = {k: 0.777 for k in stray["test_result"]}
    foreign = dict(stray, id="other__ew__lr0.5_wd0.0", dataset="other")
    bench.store.save(stray)
    bench.store.save(foreign)
    again = Benchmark(fake_suite, out, resume=True, run_cells=False, progress=False)
    again.run()
    assert again.picks == bench.picks  # the stray cell's higher valid score picks nothing
    others = again.other_cells()
    assert list(others) == ["office__ew__lr0.5_wd0.0"]
    write_report(fake_suite, again.results, again.picks, out, "cmd", others=others)
    text = (out / "table.md").read_text()
    head, tail = text.split("## Other cells in `cells/`")
    assert ".7770" not in head and "4321" not in head
    assert "| office | base | EW | lr=0.5, wd=0 | .9900 | .7770 | .7770 | 2 / 3 | 4321 |" in tail
    commands = (out / "commands.md").read_text()
    assert "## office__ew__lr0.5_wd0.0" in commands and "other__ew__lr0.5_wd0.0" not in commands
