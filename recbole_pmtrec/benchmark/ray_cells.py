"""Benchmark cells as Ray tasks: ``python -m recbole_pmtrec.benchmark --suite ... --workers N`` (Ray on this
machine, loopback) or ``--ray_address HOST:PORT`` (an existing cluster).

The cells are planned exactly as the sequential run plans them (``Benchmark._stages``): per dataset the base
grid, then every other method's grid (from the base pick), then the encoder, seed, ablation and sensitivity
cells (from the methods' picks). A batch's cells do not depend on each other: they run as Ray tasks at once,
and the datasets run side by side; a dataset's next batch is planned when its batch is done. Each task runs
the cell as the sequential run does (``runner.run_cell_safely`` on ``threads`` threads, the driver's working
directory and command line), and the cell seeds itself, so its record is the one of a run on its own. Only
the driver writes ``<out>/cells/`` (claiming each cell first, as the file-claim workers do), in the order of
the sequential run, so ``--resume``, ``--report-only`` and file-claim workers on the same ``--out`` mix with
it. A failed cell is recorded as in the sequential run and printed with its parameters and traceback; the
other cells go on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from tqdm import tqdm

from recbole_pmtrec.benchmark import runner as cell_runner
from recbole_pmtrec.benchmark.driver import Benchmark
from recbole_pmtrec.benchmark.report import knobs_text
from recbole_pmtrec.benchmark.suite import Cell
from recbole_pmtrec.parallel import prepare_worker, ray_session


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def run_cell_task(cell: Cell, runner, cwd: str, argv: list[str], threads: int) -> dict:
    """One cell in a Ray worker, as ``Benchmark._train`` runs it; never raises (a runner's exception becomes
    the cell's failure)."""
    prepare_worker(cwd, argv, threads)
    started, start = _now(), time.perf_counter()
    try:
        outcome = (runner or cell_runner.run_cell_safely)(cell)
    except Exception as err:
        outcome = cell_runner.failure(err, time.perf_counter() - start)
    return {"outcome": outcome, "started": started, "finished": _now()}


@dataclass
class _Batch:
    """A dataset's batch of cells on Ray: its stages (to plan the next batch), the ids it adds to ``results``
    (in planning order), the cells planned twice in it and how many of its tasks still run."""

    stages: Iterator[list[Cell]]
    new: list[str] = field(default_factory=list)
    again: list[Cell] = field(default_factory=list)
    running: int = 0


class RayBenchmark(Benchmark):
    """``Benchmark`` with each batch of independent cells trained as Ray tasks, ``workers`` at once on this
    machine (loopback) or on the cluster at ``ray_address``; ``threads`` CPU threads per cell."""

    def __init__(self, *args, workers: int | None = None, ray_address: str | None = None, threads=1, **kw):
        super().__init__(*args, **kw)
        if not workers and not ray_address:
            raise ValueError("RayBenchmark needs workers (a local Ray) or ray_address (a cluster)")
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.workers, self.ray_address, self.threads = workers, ray_address, max(1, int(threads))
        self.failures: list[dict] = []  # the records of the cells that failed in this run

    def _run_plans(self, plans: list[Iterator[list[Cell]]]) -> None:
        if not self.run_cells:
            super()._run_plans(plans)
            return
        self._since, self._queued = time.time(), 0
        where = self.ray_address or f"{self.workers} local workers"
        running: dict = {}  # task -> (cell, batch)
        cpus = self.workers * self.threads if self.workers else None
        with ray_session(cpus, self.ray_address) as ray:
            task = ray.remote(num_cpus=self.threads)(run_cell_task)
            tqdm.write(f"benchmark cells on Ray ({where}, {self.threads} thread(s) per cell)")
            try:
                for stages in plans:  # the datasets side by side
                    self._next_batch(stages, task, running)
                while running:
                    done, _ = ray.wait(list(running), num_returns=1)
                    cell, batch = running.pop(done[0])
                    self._finish(cell, self._result(ray, done[0]), len(running))
                    batch.running -= 1
                    if not batch.running:
                        self._close(batch)
                        self._next_batch(batch.stages, task, running)
            finally:
                for cell, _ in running.values():  # interrupted: the cells still running are not done
                    self.store.release(cell.id)
        # the sequential run's order: dataset by dataset (each dataset's already is, see ``_close``)
        order = {name: i for i, name in enumerate(self.suite.datasets)}
        self.results = dict(sorted(self.results.items(), key=lambda item: order[item[1]["dataset"]]))
        for record in self.failures:
            tqdm.write(
                f"cell {record['id']} failed (parameters: {knobs_text(record['params'])}):\n"
                f"{record.get('traceback') or record.get('error')}"
            )

    def _next_batch(self, stages: Iterator[list[Cell]], task, running: dict) -> None:
        """Plan the dataset's next batch and start the cells this process claims; a batch with none to train
        (all reused, missing or claimed elsewhere) is closed at once and the one after it planned."""
        for cells in stages:
            batch = _Batch(stages)
            first: dict[str, Cell] = {}
            for cell in cells:
                if cell.id in first:
                    batch.again.append(cell)
                else:
                    first[cell.id] = cell
            for cell in first.values():
                known = cell.id in self.results
                if self._settle(cell):
                    args = (self.run_config(cell), self.runner, os.getcwd(), list(sys.argv), self.threads)
                    running[task.remote(*args)] = (cell, batch)
                    batch.running += 1
                if not known:
                    batch.new.append(cell.id)
            self._queued += batch.running
            if batch.running:
                return
            self._close(batch)

    def _close(self, batch: _Batch) -> None:
        """A batch done: its records in the sequential run's order, its repeated cells counted once."""
        for cell_id in batch.new:
            if cell_id in self.results:
                self.results[cell_id] = self.results.pop(cell_id)
        for cell in batch.again:
            self.ensure(cell)

    @staticmethod
    def _result(ray, task) -> dict:
        """The task's result; a task that did not return (its worker died, ...) is the cell's failure."""
        try:
            return ray.get(task)
        except Exception as err:
            return {"outcome": cell_runner.failure(err, 0.0), "started": _now(), "finished": _now()}

    def _finish(self, cell: Cell, result: dict, still_running: int) -> None:
        self.bar.set_postfix_str(cell.id)
        record = self.record(cell, result["outcome"], result["started"], result["finished"])
        self.store.release(cell.id)
        if record.get("status") == "ok":
            status = f"best valid score {record['best_valid_score']:.4f}"
        else:
            status = f"FAILED: {record.get('error')}"
            self.failures.append(record)
        done = self._queued - still_running
        tqdm.write(
            f"[{done}/{self._queued}] {cell.id}: {status} ({record.get('wall_s', 0.0):.1f} s; "
            f"{time.time() - self._since:.1f} s since start)"
        )
