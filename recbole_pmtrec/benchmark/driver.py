"""Run a suite cell by cell, resumably: every finished cell is written to ``<out>/cells/<id>.json`` at once."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
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
        skip_base: bool = False,
    ):
        self.suite = suite
        self.skip_base = skip_base  # the base grid's finished cells are read, its missing ones not trained
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

    def other_cells(self) -> dict[str, dict]:
        """Finished cells of the output folder, of this suite's datasets and methods, that the current plan
        does not name (a grid point or seed of an earlier pick): the report lists them apart."""
        others = {}
        for cell_id in self.store.ids():
            if cell_id in self.results:
                continue
            record = self.store.load(cell_id)
            plan = self.suite.datasets.get(record.get("dataset"))
            if plan is not None and record.get("method") in {*plan.methods, self.suite.base_method}:
                others[cell_id] = record
        return others

    # ------------------------------------------------------------------------------------------ running
    def run(self) -> dict[str, dict]:
        total = sum(self._nominal_cells(plan) for plan in self.suite.datasets.values())
        self.bar = tqdm(total=total, desc=f"{self.suite.name}", unit="cell", disable=not self.progress)
        try:
            self._run_plans([self._stages(plan) for plan in self.suite.datasets.values()])
        finally:
            self.bar.close()
        return self.results

    def _run_plans(self, plans: list[Iterator[list[Cell]]]) -> None:
        """Each dataset's batches (``_stages``) one after the other, each cell in order (the Ray runner,
        ``ray_cells``, trains a batch's cells at once and the datasets side by side)."""
        for stages in plans:
            for cells in stages:
                for cell in cells:
                    self.ensure(cell)

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
        if not self._settle(cell):
            return self.results.get(cell.id)
        try:
            return self._train(cell)
        finally:
            self.store.release(cell.id)

    def _settle(self, cell: Cell) -> bool:
        """True when this process must train the cell now (it holds the claim); else the cell's record is in
        ``results`` (run before, or reused from ``out``) or it is counted missing."""
        if cell.id in self.results:
            self.bar.total = max(self.bar.n, self.bar.total - 1)  # planned twice: one cell
            self.bar.refresh()
            return False
        stored = self.store.load(cell.id)
        reuse = (
            self.resume
            and _same_cell(cell, stored)
            and (stored.get("status") == "ok" or not self.retry_failed)
        )
        if reuse or not self.run_cells:
            if stored is None or not reuse:
                self.missing.append(cell.id)
            else:
                self.results[cell.id] = stored
                self.skipped.append(cell.id)
            self.bar.update(1)
            return False
        if not self.store.claim(cell.id):
            self.missing.append(cell.id)
            self.elsewhere.append(cell.id)
            self.bar.update(1)
            return False
        return True

    def run_config(self, cell: Cell) -> Cell:
        """The cell as this process trains it: with ``device`` (which is not part of the cell)."""
        return dataclasses.replace(cell, config={**cell.config, **self.device}) if self.device else cell

    def _train(self, cell: Cell) -> dict:
        self.bar.set_postfix_str(cell.id)
        started = datetime.now().isoformat(timespec="seconds")
        outcome = (self.runner or cell_runner.run_cell_safely)(self.run_config(cell))
        return self.record(cell, outcome, started, datetime.now().isoformat(timespec="seconds"))

    def record(self, cell: Cell, outcome: dict, started: str, finished: str) -> dict:
        """The cell's record from the runner's ``outcome``: saved to ``out`` at once and kept in ``results``."""
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
            "finished": finished,
            **outcome,
        }
        self.store.save(record)
        self.results[cell.id] = record
        self.ran.append(cell.id)
        self.bar.update(1)
        return record

    def _records(self, cells: list[Cell]) -> list[dict | None]:
        return [self.results.get(c.id) for c in cells]

    def _stages(self, plan: DatasetPlan) -> Iterator[list[Cell]]:
        """A dataset's cells in batches of cells that do not depend on each other; each batch is planned from
        the picks of the ones before, so the caller runs a batch before asking for the next. Batches: the base
        grid; every other method's grid (from the base pick); the encoder, seed, ablation and sensitivity
        cells (from the methods' picks). Cells are listed in the order the stages pick from them."""
        picks = self.picks.setdefault(plan.name, {"methods": {}})
        base_plan = base_cells(self.suite, plan)
        if self.skip_base:  # the stored ones only: the methods start from their best, or the first point
            for cell in base_plan:
                stored = self.store.load(cell.id)
                if _same_cell(cell, stored):
                    self.results[cell.id] = stored
        else:
            yield base_plan
        base = best_record(self._records(base_plan))
        base_params = dict(base["params"]) if base else dict(base_plan[0].params)
        picks["base"] = base_params
        if base:
            picks["methods"][self.suite.base_method] = base["id"]
        grids = {m: method_cells(plan, m, base_params) for m in plan.methods if m != self.suite.base_method}
        yield [c for cells in grids.values() for c in cells]
        for method, cells in grids.items():
            best = best_record(self._records(cells))
            if best:
                picks["methods"][method] = best["id"]

        encoders = self._encoder_cells(plan, picks)
        seeds = self._seed_cells(plan, picks)
        ablation, sensitivity = {}, {}
        if "pmtrec" in plan.methods and "pmtrec" in picks["methods"]:
            best_pmtrec = dict(self.results[picks["methods"]["pmtrec"]]["params"])
            if plan.name in self.suite.ablation:
                ablation = ablation_cells(plan, best_pmtrec)
            if plan.name in self.suite.sensitivity.get("datasets", []):
                sensitivity = sensitivity_cells(self.suite, plan, best_pmtrec)
        yield [
            *(c for cells in encoders.values() for c in cells),
            *(c for cells in seeds.values() for c in cells),
            *ablation.values(),
            *(c for cells in sensitivity.values() for c in cells),
        ]
        self._pick_encoders(plan, picks, encoders)
        self._pick_seeds(plan, picks, seeds)
        if ablation:
            picks["ablation"] = {variant: c.id for variant, c in ablation.items() if c.id in self.results}
        if sensitivity:
            picks["sensitivity"] = {
                knob: [c.id for c in cells if c.id in self.results] for knob, cells in sensitivity.items()
            }

    def _seed_cells(self, plan: DatasetPlan, picks: dict) -> dict[str, list[Cell]]:
        """``{method: its chosen cell with the other seeds}`` for the methods the ``seeds`` section reruns."""
        methods = seed_methods(self.suite, plan)
        return {
            method: seed_cells(self.suite, plan, method, dict(self.results[cell_id]["params"]))
            for method, cell_id in picks["methods"].items()
            if method in methods
        }

    def _pick_seeds(self, plan: DatasetPlan, picks: dict, seeds: dict[str, list[Cell]]) -> None:
        """``picks["seeds"][method]`` = the chosen cell's id and those of its finished other-seed runs."""
        if not seed_methods(self.suite, plan):
            return
        picks["seeds"] = {}
        for method, cells in seeds.items():
            runs = [picks["methods"][method]] + [c.id for c in cells if c.id in self.results]
            picks["seeds"][method] = [i for i in runs if self.results[i].get("status") == "ok"]

    def _encoder_cells(self, plan: DatasetPlan, picks: dict) -> dict[tuple[str, str], list[Cell]]:
        """Fig. 3: ``{(encoder, method): cells}``, each method at its tuned knobs with each other encoder."""
        spec = self.suite.encoders
        if plan.name not in spec.get("datasets", []):
            return {}
        own = plan.config.get("encoder", "mf")
        return {
            (encoder, method): encoder_cells(
                self.suite, plan, method, dict(self.results[picks["methods"][method]]["params"]), encoder
            )
            for encoder in spec["encoders"]
            if encoder != own
            for method in spec["methods"]
            if method in picks["methods"]  # not in this run's methods, or its cells are missing
        }

    def _pick_encoders(
        self, plan: DatasetPlan, picks: dict, cells: dict[tuple[str, str], list[Cell]]
    ) -> None:
        """``picks["encoders"][encoder][method]`` = the best cell of the method with that encoder."""
        spec = self.suite.encoders
        if plan.name not in spec.get("datasets", []):
            return
        own = plan.config.get("encoder", "mf")
        chosen = {}
        for encoder in spec["encoders"]:
            row = chosen.setdefault(encoder, {})
            for method in spec["methods"]:
                if method not in picks["methods"]:
                    continue
                if encoder == own:
                    row[method] = picks["methods"][method]
                    continue
                best = best_record(self._records(cells[encoder, method]))
                if best:
                    row[method] = best["id"]
        chosen = {e: row for e, row in chosen.items() if row}
        if chosen:
            picks["encoders"] = chosen


def _same_cell(cell: Cell, stored: dict | None) -> bool:
    """Whether ``stored`` is a record of ``cell`` (the same config), whatever its status."""
    return stored is not None and stored.get("config") == _jsonable(cell.config)


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
