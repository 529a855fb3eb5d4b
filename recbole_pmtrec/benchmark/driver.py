"""Run a suite cell by cell, resumably: every finished cell is written to ``<out>/cells/<id>.json`` at once."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from recbole_pmtrec.benchmark import runner as cell_runner
from recbole_pmtrec.benchmark.runner import cell_command
from recbole_pmtrec.benchmark.suite import (
    Cell,
    DatasetPlan,
    Suite,
    ablation_cells,
    base_cells,
    encoder_cells,
    grid_points,
    method_cells,
    seed_cells,
    seed_methods,
    sensitivity_cells,
)


class CellStore:
    """``<out>/cells/<id>.json``: one record per finished (or failed) cell, written atomically."""

    def __init__(self, out: Path):
        self.dir = Path(out) / "cells"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, cell_id: str) -> Path:
        return self.dir / f"{cell_id}.json"

    def load(self, cell_id: str) -> dict | None:
        path = self.path(cell_id)
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def save(self, record: dict) -> None:
        path = self.path(record["id"])
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, allow_nan=True)
        os.replace(tmp, path)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json"))

    # Several processes may share one ``out`` (one per GPU, or a few per machine): each claims a cell before
    # training it, and a worker that finds a cell claimed by another live process leaves it to that one.
    def claim(self, cell_id: str) -> bool:
        """True when this process now owns the cell (``<id>.claim`` created); False when a live process does."""
        path = self.dir / f"{cell_id}.claim"
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale(path):
                    return False
                path.unlink(missing_ok=True)  # its process is gone (killed, crashed): take the cell over
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(owner, f)
            return True
        return False

    def release(self, cell_id: str) -> None:
        (self.dir / f"{cell_id}.claim").unlink(missing_ok=True)

    @staticmethod
    def _stale(path: Path) -> bool:
        """A claim of a process of this machine that no longer runs (another machine's claim is trusted)."""
        try:
            with open(path, encoding="utf-8") as f:
                owner = json.load(f)
        except (OSError, ValueError):
            return False  # being written right now
        if owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def best_record(records: list[dict]) -> dict | None:
    """The record with the highest valid score among those that finished (the first of ties)."""
    ok = [r for r in records if r and r.get("status") == "ok"]
    return max(ok, key=lambda r: r["best_valid_score"]) if ok else None


class Benchmark:
    """Plans and runs a suite's cells into ``out``; ``results`` holds every record of this run by id.

    ``runner(cell) -> record`` trains one cell (default ``runner.run_cell_safely``, looked up at each call). With ``resume``,
    a cell whose record exists with the same config is not run again (nor is a failed one unless
    ``retry_failed``); without it an ``out`` that already holds cells is refused. ``device`` (config entries
    such as ``use_gpu``) applies to every cell this process trains without being part of the cell: a cell
    run on a GPU is the same cell as on a CPU (its record's ``environment`` says where it ran). A cell that
    another live process has claimed (another worker on the same ``out``) is left to it and counted missing.
    """

    def __init__(
        self,
        suite: Suite,
        out: Path,
        resume: bool = False,
        overwrite: bool = False,
        retry_failed: bool = False,
        runner: Callable[[Cell], dict] | None = None,
        progress: bool = True,
        run_cells: bool = True,
        device: dict | None = None,
    ):
        self.suite = suite
        self.device = dict(device or {})
        self.out = Path(out)
        self.store = CellStore(self.out)
        if self.store.ids() and not (resume or overwrite) and run_cells:
            raise FileExistsError(
                f"{self.out} already holds {len(self.store.ids())} finished cells: pass --resume to keep them "
                "and run only the missing ones, or --overwrite to run every cell again"
            )
        self.resume = resume or not run_cells
        self.retry_failed = retry_failed
        self.runner = runner
        self.run_cells = run_cells
        self.results: dict[str, dict] = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.missing: list[str] = []
        self.elsewhere: list[str] = []  # claimed by another worker
        self.picks: dict[str, dict] = {}  # dataset -> {base, methods: {method: id}, ablation, sensitivity}
        self.bar = None
        self.progress = progress

    # ------------------------------------------------------------------------------------------ running
    def run(self) -> dict[str, dict]:
        total = sum(self._nominal_cells(plan) for plan in self.suite.datasets.values())
        self.bar = tqdm(total=total, desc=f"{self.suite.name}", unit="cell", disable=not self.progress)
        try:
            for plan in self.suite.datasets.values():
                self._run_dataset(plan)
        finally:
            self.bar.close()
        return self.results

    def _nominal_cells(self, plan: DatasetPlan) -> int:
        count = len(grid_points(plan.base_grid))
        count += sum(
            len(grid_points(plan.method_grids.get(m) or {}))
            for m in plan.methods
            if m != self.suite.base_method
        )
        if "pmtrec" in plan.methods and plan.name in self.suite.ablation:
            count += 2
        if "pmtrec" in plan.methods and plan.name in self.suite.sensitivity.get("datasets", []):
            count += len(self.suite.sensitivity.get("pmtrec_alpha") or [])
            count += len(self.suite.sensitivity.get("pmtrec_tau") or [])
        if plan.name in self.suite.encoders.get("datasets", []):
            others = [e for e in self.suite.encoders["encoders"] if e != plan.config.get("encoder", "mf")]
            methods = [m for m in self.suite.encoders["methods"] if m in plan.methods]
            count += len(others) * len(methods) * len(grid_points(self.suite.encoders.get("grid") or {}))
        extra = [x for x in self.suite.seeds.get("seeds", []) if x != plan.config.get("seed")]
        count += len(extra) * len(seed_methods(self.suite, plan))
        return count

    def ensure(self, cell: Cell) -> dict | None:
        """The cell's record: from ``out`` when resuming and it is there, else trained now (and saved)."""
        if cell.id in self.results:
            self.bar.total = max(self.bar.n, self.bar.total - 1)  # planned twice: one cell
            self.bar.refresh()
            return self.results[cell.id]
        stored = self.store.load(cell.id)
        reuse = (
            stored is not None
            and self.resume
            and stored.get("config") == _jsonable(cell.config)
            and (stored.get("status") == "ok" or not self.retry_failed)
        )
        if reuse or not self.run_cells:
            if stored is None or not reuse:
                self.missing.append(cell.id)
                self.bar.update(1)
                return None
            self.results[cell.id] = stored
            self.skipped.append(cell.id)
            self.bar.update(1)
            return stored
        if not self.store.claim(cell.id):
            self.missing.append(cell.id)
            self.elsewhere.append(cell.id)
            self.bar.update(1)
            return None
        try:
            return self._train(cell)
        finally:
            self.store.release(cell.id)

    def _train(self, cell: Cell) -> dict:
        self.bar.set_postfix_str(cell.id)
        started = datetime.now().isoformat(timespec="seconds")
        run = dataclasses.replace(cell, config={**cell.config, **self.device}) if self.device else cell
        outcome = (self.runner or cell_runner.run_cell_safely)(run)
        record = {
            "id": cell.id,
            "suite": self.suite.name,
            "stage": cell.stage,
            "dataset": cell.dataset,
            "method": cell.method,
            "model": cell.model,
            "params": _jsonable(cell.params),
            "config": _jsonable(cell.config),
            "command": cell_command(cell),
            "started": started,
            "finished": datetime.now().isoformat(timespec="seconds"),
            **outcome,
        }
        self.store.save(record)
        self.results[cell.id] = record
        self.ran.append(cell.id)
        self.bar.update(1)
        return record

    def _run_dataset(self, plan: DatasetPlan) -> None:
        picks = self.picks.setdefault(plan.name, {"methods": {}})
        base_plan = base_cells(self.suite, plan)
        base = best_record([self.ensure(c) for c in base_plan])
        base_params = dict(base["params"]) if base else dict(base_plan[0].params)
        picks["base"] = base_params
        if base:
            picks["methods"][self.suite.base_method] = base["id"]
        for method in plan.methods:
            if method == self.suite.base_method:
                continue
            cells = method_cells(plan, method, base_params)
            best = best_record([self.ensure(c) for c in cells])
            if best:
                picks["methods"][method] = best["id"]
        self._run_encoders(plan, picks)
        self._run_seeds(plan, picks)
        if "pmtrec" not in plan.methods or "pmtrec" not in picks["methods"]:
            return
        best_pmtrec = dict(self.results[picks["methods"]["pmtrec"]]["params"])
        if plan.name in self.suite.ablation:
            picks["ablation"] = {}
            for variant, cell in ablation_cells(plan, best_pmtrec).items():
                if self.ensure(cell):
                    picks["ablation"][variant] = cell.id
        if plan.name in self.suite.sensitivity.get("datasets", []):
            picks["sensitivity"] = {}
            for knob, cells in sensitivity_cells(self.suite, plan, best_pmtrec).items():
                picks["sensitivity"][knob] = [c.id for c in cells if self.ensure(c)]

    def _run_seeds(self, plan: DatasetPlan, picks: dict) -> None:
        """``picks["seeds"][method]`` = the chosen cell's id and those of its finished other-seed runs."""
        methods = seed_methods(self.suite, plan)
        if not methods:
            return
        picks["seeds"] = {}
        for method, cell_id in list(picks["methods"].items()):
            if method not in methods:
                continue
            chosen = dict(self.results[cell_id]["params"])
            runs = [cell_id] + [c.id for c in seed_cells(self.suite, plan, method, chosen) if self.ensure(c)]
            picks["seeds"][method] = [i for i in runs if self.results[i].get("status") == "ok"]

    def _run_encoders(self, plan: DatasetPlan, picks: dict) -> None:
        """Fig. 3: ``picks["encoders"][encoder][method]`` = the best cell of the method with that encoder."""
        spec = self.suite.encoders
        if plan.name not in spec.get("datasets", []):
            return
        own = plan.config.get("encoder", "mf")
        picks["encoders"] = {}
        for encoder in spec["encoders"]:
            chosen = picks["encoders"].setdefault(encoder, {})
            for method in spec["methods"]:
                if method not in picks["methods"]:
                    continue  # not in this run's methods, or its cells are missing
                if encoder == own:
                    chosen[method] = picks["methods"][method]
                    continue
                tuned = dict(self.results[picks["methods"][method]]["params"])
                best = best_record(
                    [self.ensure(c) for c in encoder_cells(self.suite, plan, method, tuned, encoder)]
                )
                if best:
                    chosen[method] = best["id"]
        picks["encoders"] = {e: row for e, row in picks["encoders"].items() if row}
        if not picks["encoders"]:
            del picks["encoders"]


def _jsonable(value):
    """The value as it reads back from JSON (tuples become lists), so stored configs compare equal."""
    return json.loads(json.dumps(value))


def summary_line(bench: Benchmark, seconds: float) -> str:
    text = f"{len(bench.ran)} cells run, {len(bench.skipped)} reused from {bench.store.dir}"
    if bench.missing:
        text += f", {len(bench.missing)} not run yet"
    if bench.elsewhere:
        text += f" ({len(bench.elsewhere)} of them being run by another worker)"
    failed = [i for i, r in bench.results.items() if r.get("status") != "ok"]
    if failed:
        text += f", {len(failed)} failed ({', '.join(failed)})"
    return text + f"; {time.strftime('%H:%M:%S', time.gmtime(seconds))} wall"
