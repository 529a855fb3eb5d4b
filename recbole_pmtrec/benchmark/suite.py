"""Benchmark suites (``properties/benchmark/<suite>.yaml``) and the cells they expand into.

A suite names datasets, methods and a tuning budget. It expands, per dataset, into stages whose later
cells depend on the results of earlier ones:

1. ``base``: the base method (EW) over ``base_grid`` (learning rate x weight decay, plus e.g.
   ``directau_gamma`` where DirectAU is a task); the best valid score picks the dataset's base settings;
2. ``method``: every method with the base settings, over its own ``method_grids`` knobs (one cell when
   it has none); the best valid score picks the method's reported cell;
3. ``ablation``: PMTRec without task focusing (alpha = 1) and without balancing (tau = 1), at the best
   tuned knobs otherwise;
4. ``sensitivity``: PMTRec over an alpha sweep at the best tau and a tau sweep at the best alpha;
5. ``encoder``: the paper's Fig. 3: chosen methods (EW, PMTRec) with each other encoder (LightGCN, NGCF)
   at their tuned settings, over the ``encoders`` section's small grid (e.g. the learning rate);
6. ``seed``: each method's chosen cell again with other seeds (the ``seeds`` section), for mean / std.

A dataset entry may train on another dataset's files (``dataset: epinions`` with a k-core filter in its
``config``): its cells carry the entry's name, RecBole loads the files of ``dataset``.

A cell's id names its dataset, method and tuned knobs; the same configuration planned twice (e.g. the
alpha = 1 sensitivity point and the no-focusing ablation) is one cell.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from recbole_pmtrec.benchmark.methods import (
    MAIN_MODEL,
    is_mtl_method,
    method_spec,
    mtl_methods,
    multitask_keys,
)
from recbole_pmtrec.benchmark.suite_checks import (
    check_config,
    check_grid,
    check_method,
    check_methods,
    check_sensitivity,
)
from recbole_pmtrec.config import properties_dir

ABLATIONS = {"no_focusing": {"pmtrec_alpha": 1.0}, "no_balancing": {"pmtrec_tau": 1.0}}
SHORT_NAMES = {
    "learning_rate": "lr",
    "weight_decay": "wd",
    "directau_gamma": "gamma",
    "pmtrec_alpha": "alpha",
    "pmtrec_tau": "tau",
    "encoder": "enc",
    "seed": "seed",
}


@dataclass(frozen=True)
class Cell:
    """One training run: a dataset, a method and its full RecBole config."""

    id: str
    stage: str  # base | method | ablation | sensitivity
    dataset: str
    method: str  # BPR, LightGCN (RecBole models) or an mtl_method of PMTRec
    model: str
    params: dict  # the tuned knobs of this cell (base settings and the method's own)
    config: dict  # everything passed to RecBole as config_dict
    source: str | None = None  # the RecBole dataset whose files it loads, when not ``dataset``

    @property
    def recbole_dataset(self) -> str:
        return self.source or self.dataset


@dataclass
class DatasetPlan:
    """A suite's settings for one dataset (suite-wide values with the dataset's overrides applied)."""

    name: str
    config: dict
    methods: list[str]
    base_grid: dict | list  # a grid or a list of sub-grids (grid_points)
    method_grids: dict
    paper: dict = field(default_factory=dict)  # metric -> method -> the paper's Table 2 value
    paper_ablation: dict = field(default_factory=dict)  # metric -> variant -> the paper's value
    paper_label: str | None = None  # when the paper's numbers are for another dataset
    source: str | None = None  # RecBole dataset whose files are loaded, when not ``name``


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    base_method: str
    datasets: dict[str, DatasetPlan]
    ablation: list[str]
    sensitivity: dict  # datasets, pmtrec_alpha, pmtrec_tau
    encoders: dict = field(default_factory=dict)  # datasets, encoders, methods, grid (Fig. 3)
    seeds: dict = field(default_factory=dict)  # seeds (besides the config's), datasets: {name: methods}

    def select(self, datasets: list[str] | None = None, methods: list[str] | None = None) -> Suite:
        """The suite restricted to some datasets and methods (the base method always runs: it tunes)."""
        chosen = copy.deepcopy(self)
        if datasets:
            unknown = [d for d in datasets if d not in self.datasets]
            if unknown:
                raise ValueError(
                    f"suite '{self.name}' has no dataset(s) {unknown}; it has {list(self.datasets)}"
                )
            chosen.datasets = {d: chosen.datasets[d] for d in datasets}
        if methods:
            known = {m for plan in self.datasets.values() for m in plan.methods}
            unknown = [m for m in methods if m not in known]
            if unknown:
                raise ValueError(f"suite '{self.name}' has no method(s) {unknown}; it has {sorted(known)}")
            for plan in chosen.datasets.values():
                plan.methods = [m for m in plan.methods if m in methods]
        return chosen


def suite_file(name_or_path: str) -> Path:
    """``properties/benchmark/<name>.yaml``, or the path itself when it is a yaml file."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise FileNotFoundError(f"suite file {path} does not exist")
        return path
    path = properties_dir() / "benchmark" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no suite '{name_or_path}': {path} does not exist; suites: {', '.join(suites())}"
        )
    return path


def suites() -> list[str]:
    return sorted(p.stem for p in (properties_dir() / "benchmark").glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    path = suite_file(name_or_path)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    where = str(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a suite is a mapping with config, methods, tuning and datasets sections")
    for key in ("config", "methods", "tuning", "datasets"):
        if key not in raw:
            raise ValueError(f"{where}: the suite has no '{key}' section")
    check_config(where, "config", raw["config"])
    check_methods(where, "methods", raw["methods"])
    tuning = raw["tuning"]
    base_method = tuning.get("base_method", "ew")
    if not is_mtl_method(base_method):
        raise ValueError(
            f"{where}: tuning.base_method '{base_method}' is not an mtl_method ({mtl_methods()})"
        )
    paper = raw.get("paper") or {}
    datasets = {}
    all_methods = set(raw["methods"])
    for name, spec in raw["datasets"].items():
        spec = spec or {}
        if "methods" in spec:
            all_methods |= set(check_methods(where, f"datasets.{name}.methods", spec["methods"]))
        check_config(where, f"datasets.{name}.config", spec.get("config") or {})
    for method, grid in (tuning.get("method_grids") or {}).items():
        check_grid(where, f"tuning.method_grids.{method}", grid)
        if method not in all_methods:
            raise ValueError(
                f"{where}: tuning.method_grids.{method}: a grid for a method the suite does not run; "
                f"its methods: {', '.join(sorted(all_methods))}"
            )
    check_grid(where, "tuning.base_grid", tuning.get("base_grid") or {})
    for name, spec in raw["datasets"].items():
        spec = spec or {}
        methods = list(spec.get("methods") or raw["methods"])
        for method, grid in (spec.get("method_grids") or {}).items():
            check_grid(where, f"datasets.{name}.method_grids.{method}", grid)
            if method not in methods:
                raise ValueError(
                    f"{where}: datasets.{name}.method_grids.{method}: a grid for a method the dataset does "
                    f"not run; its methods: {', '.join(methods)}"
                )
        check_grid(where, f"datasets.{name}.base_grid", spec.get("base_grid") or {})
        method_grids = {**(tuning.get("method_grids") or {}), **(spec.get("method_grids") or {})}
        plan = DatasetPlan(
            name=name,
            config={**raw["config"], **(spec.get("config") or {})},
            methods=list(spec.get("methods") or raw["methods"]),
            base_grid=copy.deepcopy(spec.get("base_grid") or tuning["base_grid"]),
            method_grids=method_grids,
            paper=(paper.get(name) or {}).get("table2") or {},
            paper_ablation=(paper.get(name) or {}).get("ablation") or {},
            paper_label=(paper.get(name) or {}).get("label"),
            source=spec.get("dataset"),
        )
        datasets[name] = plan  # its methods and grids were checked above, each with its key
    ablation = list(raw.get("ablation") or [])
    sensitivity = dict(raw.get("sensitivity") or {})
    check_sensitivity(where, sensitivity)
    for listed in [*ablation, *sensitivity.get("datasets", [])]:
        if listed not in datasets:
            raise ValueError(f"{where}: ablation / sensitivity dataset '{listed}' is not in datasets")
    encoders = dict(raw.get("encoders") or {})
    if encoders:
        for key in ("datasets", "encoders", "methods"):
            if not isinstance(encoders.get(key), list) or not encoders[key]:
                raise ValueError(f"{where}: encoders.{key} must be a non-empty list")
        for listed in encoders["datasets"]:
            if listed not in datasets:
                raise ValueError(f"{where}: encoders dataset '{listed}' is not in datasets")
        for method in encoders["methods"]:
            if not is_mtl_method(method):
                raise ValueError(
                    f"{where}: encoders method '{method}' is not an mtl_method ({mtl_methods()})"
                )
        import recbole_pmtrec.model  # noqa: F401  (registers the graph encoders)
        from recbole_pmtrec.model.encoders import ENCODERS

        unknown = [e for e in encoders["encoders"] if e not in ENCODERS]
        if unknown:
            raise ValueError(f"{where}: encoders {unknown} unknown; PMTRec's encoders are {sorted(ENCODERS)}")
        for knob, values in (encoders.get("grid") or {}).items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: grid encoders.grid.{knob} must be a non-empty list")
    seeds = dict(raw.get("seeds") or {})
    if seeds:
        if not isinstance(seeds.get("seeds"), list) or not all(isinstance(x, int) for x in seeds["seeds"]):
            raise ValueError(f"{where}: seeds.seeds must be a list of integers")
        listed = seeds.get("datasets") or []
        if isinstance(listed, list):  # a list: every method; a mapping: dataset -> its methods (null: all)
            listed = {name: None for name in listed}
        seeds["datasets"] = listed
        for name, methods in listed.items():
            if name not in datasets:
                raise ValueError(f"{where}: seeds dataset '{name}' is not in datasets")
            for method in methods or []:
                check_method(where, f"seeds.datasets.{name}", method)
    return Suite(
        name=path.stem,
        path=path,
        description=str(raw.get("description", "")).strip(),
        base_method=base_method,
        datasets=datasets,
        ablation=ablation,
        sensitivity=sensitivity,
        encoders=encoders,
        seeds=seeds,
    )


# ---------------------------------------------------------------------------------------------- cells
def grid_points(grid: dict | list) -> list[dict]:
    """Every combination of a ``{knob: [values]}`` grid, in the yaml's order (first knob slowest).

    A list of sub-grids is their points one sub-grid after the other, each point once (a staged search:
    say the whole alpha x skip grid at one tau, then tau at one alpha)."""
    if isinstance(grid, list):
        points = []
        for part in grid:
            points += [p for p in grid_points(part) if p not in points]
        return points or [{}]
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def metric_label(metric: str) -> str:
    name, k = metric.split("@")
    return {"recall": "Recall", "ndcg": "NDCG"}.get(name, name) + "@" + k


def fmt(value) -> str:
    """The paper's style: .0905 (no leading zero), four decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.4f}"
    return text[1:] if text.startswith("0.") else text


def cell_id(dataset: str, method: str, params: dict) -> str:
    """``<dataset>__<method>__<knob><value>_...`` (knobs sorted), safe as a file name."""
    parts = [f"{SHORT_NAMES.get(k, k)}{format_value(v)}" for k, v in sorted(params.items())]
    text = f"{dataset}__{method}__" + ("_".join(parts) or "default")
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", text)


def make_cell(plan: DatasetPlan, stage: str, method: str, params: dict) -> Cell:
    model, method_config = method_spec(method)
    if model != MAIN_MODEL:
        params = {k: v for k, v in params.items() if k not in multitask_keys()}
    config = {**plan.config, **method_config, **params}
    if model != MAIN_MODEL:
        config = {k: v for k, v in config.items() if k not in multitask_keys()}
    return Cell(
        id=cell_id(plan.name, method, params),
        stage=stage,
        dataset=plan.name,
        method=method,
        model=model,
        params=params,
        config=config,
        source=plan.source,
    )


def base_cells(suite: Suite, plan: DatasetPlan) -> list[Cell]:
    return [make_cell(plan, "base", suite.base_method, p) for p in grid_points(plan.base_grid)]


def method_cells(plan: DatasetPlan, method: str, base: dict) -> list[Cell]:
    grid = plan.method_grids.get(method) or {}
    return [make_cell(plan, "method", method, {**base, **p}) for p in grid_points(grid)]


def ablation_cells(plan: DatasetPlan, best: dict) -> dict[str, Cell]:
    """``{variant: cell}`` for no_focusing, no_balancing and full (the best tuned PMTRec)."""
    cells = {v: make_cell(plan, "ablation", "pmtrec", {**best, **change}) for v, change in ABLATIONS.items()}
    cells["full"] = make_cell(plan, "ablation", "pmtrec", best)
    return cells


def sensitivity_cells(suite: Suite, plan: DatasetPlan, best: dict) -> dict[str, list[Cell]]:
    """``{knob: [cells]}``: each sweep varies one knob of the best tuned PMTRec."""
    sweeps = {}
    for knob in ("pmtrec_alpha", "pmtrec_tau"):
        values = suite.sensitivity.get(knob) or []
        sweeps[knob] = [make_cell(plan, "sensitivity", "pmtrec", {**best, knob: v}) for v in values]
    return sweeps


def encoder_cells(suite: Suite, plan: DatasetPlan, method: str, best: dict, encoder: str) -> list[Cell]:
    """The method at its tuned knobs ``best`` with another encoder, over the ``encoders`` grid."""
    grid = suite.encoders.get("grid") or {}
    return [make_cell(plan, "encoder", method, {**best, "encoder": encoder, **p}) for p in grid_points(grid)]


def seed_methods(suite: Suite, plan: DatasetPlan) -> list[str]:
    """The dataset's methods that the ``seeds`` section runs again (none when it does not list the dataset)."""
    listed = suite.seeds.get("datasets") or {}
    if plan.name not in listed:
        return []
    return [m for m in plan.methods if not listed[plan.name] or m in listed[plan.name]]


def seed_cells(suite: Suite, plan: DatasetPlan, method: str, chosen: dict) -> list[Cell]:
    """The method's chosen cell (knobs ``chosen``) with each of the ``seeds`` section's other seeds."""
    own = plan.config.get("seed")
    return [
        make_cell(plan, "seed", method, {**chosen, "seed": seed})
        for seed in suite.seeds.get("seeds", [])
        if seed != own
    ]
