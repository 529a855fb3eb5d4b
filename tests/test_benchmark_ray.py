"""Benchmark cells on Ray (``--workers``): the smoke suite gives the sequential run's cell records (metrics
exactly) and report table; a failing cell is reported with its parameters and traceback while the others
finish; Ray runs on this machine, loopback only, and no process of it is left afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import psutil
from test_benchmark import ENCODER_SUITE, encoder_runner

from recbole_pmtrec.benchmark import ray_cells
from recbole_pmtrec.benchmark.__main__ import main
from recbole_pmtrec.benchmark.driver import Benchmark
from recbole_pmtrec.benchmark.ray_cells import RayBenchmark
from recbole_pmtrec.benchmark.suite import load_suite
from recbole_pmtrec.config import properties_dir

TIMING = {"started", "finished", "wall_s", "times", "log_file"}  # when, how long, where the log went
BROKEN = """  broken:                    # one cell that cannot be built: a negative embedding width
    dataset: ml-100k
    methods: [ew]
    config: {val_interval: {rating: "[5,5]"}}
    base_grid: {learning_rate: [0.01], embedding_size: [-3]}

ablation:"""


def _records(out: Path) -> dict[str, dict]:
    """Every cell record of ``out`` without its timing fields."""
    records = {}
    for path in sorted((out / "cells").glob("*.json")):
        record = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}
        if "history" in record:
            record["history"] = [
                {k: v for k, v in h.items() if not k.endswith("_s")} for h in record["history"]
            ]
        records[path.stem] = record
    return records


def _table(path: Path) -> list[str]:
    """``table.md`` without the command line and the wall times."""
    lines, timed = [], False
    for line in path.read_text().splitlines():
        if line.startswith("Command:"):
            continue
        timed = line.startswith("|") and (timed or line.endswith("| wall s |"))
        if timed:
            line = line.rsplit("|", 2)[0]
        lines.append(re.sub(r"[\d.]+ h of training wall time", "h of training wall time", line))
    return lines


def test_smoke_on_ray_gives_the_sequential_cells_and_table_and_reports_a_failed_cell(
    tmp_path, monkeypatch, capsys
):
    main(["--suite", "smoke", "--out", str(tmp_path / "seq"), "--no-progress"])

    ray_processes: list[psutil.Process] = []
    commands: list[str] = []
    session = ray_cells.ray_session

    @contextlib.contextmanager
    def watched(*args):
        with session(*args) as ray:
            yield ray
            for process in psutil.Process().children(recursive=True):  # node, workers, ...
                with contextlib.suppress(psutil.Error):  # one that has just ended
                    commands.append(" ".join(process.cmdline()))
                    ray_processes.append(process)

    monkeypatch.setattr(ray_cells, "ray_session", watched)
    suite = tmp_path / "with_broken" / "smoke.yaml"  # the smoke suite (same name) and a dataset that fails
    suite.parent.mkdir()
    suite.write_text(
        (properties_dir() / "benchmark" / "smoke.yaml").read_text().replace("\nablation:", BROKEN)
    )
    capsys.readouterr()
    bench = main(["--suite", str(suite), "--out", str(tmp_path / "par"), "--no-progress", "--workers", "2"])
    printed = capsys.readouterr().out

    broken = "broken__ew__embedding_size-3_lr0.01"
    assert bench.failures == [bench.results[broken]] and bench.results[broken]["status"] == "failed"
    assert "Traceback" in bench.results[broken]["traceback"]
    assert f"] {broken}: FAILED" in printed  # its progress line, then its parameters and traceback
    assert f"cell {broken} failed (parameters: embedding_size=-3, lr=0.01):\nTraceback" in printed
    assert printed.count(": best valid score") == 6  # one line per finished cell

    seq, par = _records(tmp_path / "seq"), _records(tmp_path / "par")
    assert sorted(par) == sorted([*seq, broken])
    for cell_id, record in seq.items():
        assert record["status"] == "ok" and par[cell_id] == record, cell_id

    # the shipped smoke suite's report from the Ray run's cells: nothing missing, the sequential table
    again = main(["--suite", "smoke", "--out", str(tmp_path / "par"), "--no-progress", "--report-only"])
    assert again.missing == [] and len(again.results) == len(seq)
    assert _table(tmp_path / "par" / "table.md") == _table(tmp_path / "seq" / "table.md")

    assert any("raylet" in command for command in commands)
    _, alive = psutil.wait_procs(ray_processes, timeout=20)
    assert not alive, [p.pid for p in alive]


class FakeRay:
    """The Ray calls the runner makes, in this process: a task runs when it is waited for, the last one
    started first (so cells finish out of the sequential order)."""

    def __init__(self):
        self.tasks: dict[object, tuple] = {}

    def remote(self, **_options):
        def task(fn):
            return SimpleNamespace(remote=lambda *args: self._start(fn, args))

        return task

    def _start(self, fn, args) -> object:
        ref = object()
        self.tasks[ref] = (fn, args)
        return ref

    def wait(self, refs, num_returns=1):
        return refs[-num_returns:], refs[:-num_returns]

    def get(self, ref):
        fn, args = self.tasks.pop(ref)
        return fn(*args)


def test_batches_give_the_sequential_records_picks_and_order(tmp_path, monkeypatch):
    """Two datasets side by side, encoder, seed, ablation and sensitivity cells (some planned twice) on a fake
    Ray that finishes cells in reverse: the sequential run's records, in its order, and its picks."""
    path = tmp_path / "enc.yaml"
    path.write_text(
        ENCODER_SUITE.replace(
            "ablation: [office]", "seeds: {datasets: [office], seeds: [1]}\nablation: [office]"
        )
    )
    suite = load_suite(str(path))
    seq = Benchmark(suite, tmp_path / "seq", runner=encoder_runner, progress=False)
    seq.run()
    monkeypatch.setattr(ray_cells, "ray_session", lambda *_: contextlib.nullcontext(FakeRay()))
    monkeypatch.setattr(ray_cells, "prepare_worker", lambda *_: None)
    par = RayBenchmark(suite, tmp_path / "par", runner=encoder_runner, progress=False, workers=2)
    par.run()

    def timeless(results):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in results.values()]

    assert timeless(par.results) == timeless(seq.results) and par.picks == seq.picks
    assert sorted(par.ran) == sorted(seq.ran) and len(set(par.ran)) == len(par.ran)
    assert {r["stage"] for r in par.results.values()} >= {"encoder", "seed", "ablation", "sensitivity"}
    # resumed on Ray from the sequential run's cells: nothing to train, the same records
    again = RayBenchmark(
        suite, tmp_path / "seq", resume=True, runner=encoder_runner, progress=False, workers=2
    )
    again.run()
    assert again.ran == [] and again.results == seq.results and again.picks == seq.picks

    # a cell another live worker claimed is left to it; a runner that raises fails its own cell only
    out = tmp_path / "mixed"
    (out / "cells").mkdir(parents=True)
    claim = out / "cells" / "office__rlw__lr0.01_wd0.claim"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))

    def raising(cell):
        if cell.id == "office__BPR__lr0.01_wd0":
            raise ValueError("boom")
        return encoder_runner(cell)

    mixed = RayBenchmark(suite, out, resume=True, runner=raising, progress=False, workers=2)
    mixed.run()
    assert mixed.elsewhere == ["office__rlw__lr0.01_wd0"] and list((out / "cells").glob("*.claim")) == [claim]
    assert [r["id"] for r in mixed.failures] == ["office__BPR__lr0.01_wd0"]
    assert "ValueError: boom" in mixed.failures[0]["traceback"]
    assert set(mixed.picks["office"]["methods"]) == {"ew", "pmtrec"}
    assert len(mixed.ran) == len(seq.ran) - 1 - 2  # not RLW, nor its seed cell and the BPR seed cell
