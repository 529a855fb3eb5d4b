"""The federated comparison: every method x seed on one scenario split, resumable, and its report.

    python -m recbole_pmtrec.federated.experiments run --config properties/federated/ml100k.yaml \
        --grid properties/federated/grid.yaml --out results/federated-grid [--runtime simulate|flower]
    python -m recbole_pmtrec.federated.experiments report --out results/federated-grid \
        --markdown docs/RESULTS_FEDERATED.md --figures docs/results/federated

A grid yaml names methods (each a dict of overrides of the federated config: a strategy and its knobs, or
``centralized: true`` for MMoE on the pooled scenarios) and seeds. Every (dataset, method, seed) run is one
JSON :class:`~recbole_pmtrec.federated.results.RunRecord` in ``<out>/<dataset>/<method>/seed<seed>.json``,
written when the run ends; a run whose file exists is skipped, so a stopped grid resumes where it was.
The report gives, per dataset, the test AUC / LogLoss per task averaged over scenarios (mean +- std over
seeds), the per-scenario table, the mean valid AUC per round (plot), the wall-time split and the command
of every run.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import yaml

from recbole_pmtrec.federated.config import load_config
from recbole_pmtrec.federated.results import RunRecord, mean_over_scenarios


def load_grid(path: str | Path) -> dict:
    """``{"methods": {name: overrides}, "seeds": [int]}`` from a grid yaml, checked."""
    grid = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    methods, seeds = grid.get("methods"), grid.get("seeds")
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"{path}: 'methods' must map method names to overrides")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"{path}: 'seeds' must be a non-empty list of integers")
    for name, overrides in methods.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"{path}: methods.{name} must be a mapping of config overrides")
    return {"methods": methods, "seeds": seeds}


def run_one(fed_config: dict, overrides: dict, runtime: str) -> RunRecord:
    """One run of one method: the in-process runtime, Flower's, or the centralized reference."""
    overrides = dict(overrides)
    if overrides.pop("centralized", False):
        from recbole_pmtrec.federated.centralized import run as run_centralized

        config = {**fed_config, **overrides}
        result = run_centralized(config)
        return result if isinstance(result, RunRecord) else RunRecord.from_dict(result)
    config = load_config(None, {**fed_config, **overrides}) if overrides else fed_config
    if runtime == "flower":
        from recbole_pmtrec.federated.launcher import run_flower

        return run_flower(config)
    from recbole_pmtrec.federated.simulate import run as run_simulated

    return run_simulated(config)


def record_path(out: Path, dataset: str, method: str, seed: int) -> Path:
    return out / dataset / method / f"seed{seed}.json"


def run_grid(config_file: str, grid_file: str, out: str, runtime: str, methods=None, overrides=None) -> None:
    grid = load_grid(grid_file)
    out_dir = Path(out)
    base = load_config(config_file, overrides or {})
    names = methods or list(grid["methods"])
    unknown = sorted(set(names) - set(grid["methods"]))
    if unknown:
        raise ValueError(f"{grid_file}: no method {unknown}; methods: {', '.join(grid['methods'])}")
    from recbole_pmtrec.federated import scenarios

    if not scenarios.is_prepared(base):
        scenarios.prepare(base)
    jobs = [(m, s) for s in grid["seeds"] for m in names]
    for i, (method, seed) in enumerate(jobs, 1):
        path = record_path(out_dir, base["dataset"], method, seed)
        if path.exists():
            print(f"[{i}/{len(jobs)}] {method} seed {seed}: done before ({path})", flush=True)
            continue
        fed_config = load_config(
            config_file,
            {
                **(overrides or {}),
                "seed": seed,
                "output_dir": str(out_dir / base["dataset"] / method / f"seed{seed}"),
            },
        )
        print(f"[{i}/{len(jobs)}] {method} seed {seed}: running ({runtime})", flush=True)
        start = time.perf_counter()
        record = run_one(fed_config, grid["methods"][method], runtime)
        record.config = {
            **record.config,
            "method": method,
            "command": _command(config_file, grid_file, out, runtime, method, overrides, seed),
        }
        record.save(path)
        print(
            f"[{i}/{len(jobs)}] {method} seed {seed}: {time.perf_counter() - start:.0f} s -> {path}",
            flush=True,
        )


def _command(config_file, grid_file, out, runtime, method, overrides, seed) -> str:
    parts = ["python -m recbole_pmtrec.federated.experiments run", f"--config {config_file}"]
    parts += [f"--grid {grid_file}", f"--out {out}", f"--runtime {runtime}", f"--methods {method}"]
    if overrides:
        parts.append("--set " + " ".join(shlex.quote(f"{k}={v}") for k, v in overrides.items()))
    return " ".join(parts) + f"  # seed {seed}"


# ------------------------------------------------------------------------------------------------ report


def _records(out: Path, order: list[str] | None = None) -> dict[str, dict[str, list[RunRecord]]]:
    """dataset -> method -> records (ordered by seed); methods in ``order`` first, in that order."""
    found: dict[str, dict[str, list[RunRecord]]] = {}
    for path in sorted(out.glob("*/*/seed*.json")):
        dataset, method = path.parent.parent.name, path.parent.name
        found.setdefault(dataset, {}).setdefault(method, []).append(RunRecord.load(path))
    rank = {name: i for i, name in enumerate(order or [])}
    for dataset, methods in found.items():
        for records in methods.values():
            records.sort(key=lambda r: r.seed)
        found[dataset] = dict(sorted(methods.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    return found


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _tasks(records: list[RunRecord]) -> list[str]:
    return records[0].tasks if records else []


def dataset_report(dataset: str, methods: dict[str, list[RunRecord]], figures: Path | None) -> list[str]:
    first = next(iter(methods.values()))
    tasks, scenarios = _tasks(first), first[0].scenarios
    lines = [f"## {dataset}", ""]
    header = ["method", "seeds"] + [f"AUC {t}" for t in tasks] + [f"LogLoss {t}" for t in tasks]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, records in methods.items():
        cells = [method, str(len(records))]
        for metric in ("auc", "logloss"):
            for t in tasks:
                cells.append(_mean_std([mean_over_scenarios(r.test, f"{metric}@{t}") for r in records]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Test metrics averaged over the scenarios (each scenario counts once), mean ± std over seeds.",
        "",
    ]
    lines += paired_lines(methods, tasks)
    lines += ["Per scenario (test AUC, mean over seeds):", ""]
    header = ["method"] + [f"{s} {t}" for s in scenarios for t in tasks]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, records in methods.items():
        cells = [method]
        for s in scenarios:
            for t in tasks:
                values = [r.test.get(s, {}).get(f"auc@{t}", math.nan) for r in records]
                cells.append(_mean_std([statistics.mean(values)] if values else []))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Wall time per round (mean over rounds and seeds): local training / evaluation / runtime overhead:",
        "",
    ]
    lines += [
        "| method | runtime | rounds | round wall s | training s | evaluation s | overhead s | overhead share |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for method, records in methods.items():
        rounds = [r for rec in records for r in rec.rounds]
        if not rounds:
            continue
        n = len(rounds)
        wall = sum(r.wall_seconds for r in rounds) / n
        train = sum(r.train_seconds for r in rounds) / n
        evaluation = sum(r.eval_seconds for r in rounds) / n
        overhead = sum(r.overhead_seconds for r in rounds) / n
        lines.append(
            f"| {method} | {records[0].runtime} | {len(records[0].rounds)} | {wall:.2f} | {train:.2f} | "
            f"{evaluation:.2f} | {overhead:.2f} | {overhead / wall if wall else 0:.1%} |"
        )
    if figures is not None:
        figure = _plot(dataset, methods, figures)
        if figure is not None:
            lines += ["", f"![mean valid AUC per round, {dataset}]({figure.as_posix()})"]
    lines += ["", "Commands:", "", "```"]
    lines += sorted({rec.config.get("command", "") for records in methods.values() for rec in records} - {""})
    lines += ["```", ""]
    return lines


def paired_lines(methods: dict[str, list[RunRecord]], tasks: list[str], lead: str = "pfmsmtrec") -> list[str]:
    """``lead`` against every other method on the seeds both ran: mean difference of the scenario-mean test
    AUC per task, and in how many seeds ``lead`` is higher."""
    if lead not in methods:
        return []
    mine = {r.seed: r for r in methods[lead]}
    lines = [
        f"Paired by seed, {lead} minus each method (scenario-mean test AUC; wins = seeds where {lead} is higher):",
        "",
    ]
    lines += ["| versus | seeds | " + " | ".join(f"Δ AUC {t} (wins)" for t in tasks) + " |"]
    lines += ["|---|---|" + "---|" * len(tasks)]
    for method, records in methods.items():
        if method == lead:
            continue
        shared = [(mine[r.seed], r) for r in records if r.seed in mine]
        if not shared:
            continue
        cells = []
        for t in tasks:
            diffs = [
                mean_over_scenarios(a.test, f"auc@{t}") - mean_over_scenarios(b.test, f"auc@{t}")
                for a, b in shared
            ]
            cells.append(f"{statistics.mean(diffs):+.4f} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
        lines.append(f"| {method} | {len(shared)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _plot(dataset: str, methods: dict[str, list[RunRecord]], figures: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for method, records in methods.items():
        curves = [dict(r.valid_curve("auc")) for r in records]
        rounds = sorted(set().union(*curves)) if curves else []
        if not rounds:
            continue
        means = [statistics.mean([c[x] for c in curves if x in c]) for x in rounds]
        ax.plot(rounds, means, marker=".", label=method)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("round")
    ax.set_ylabel("mean valid AUC (scenarios x tasks)")
    ax.set_title(f"{dataset}: mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"auc_per_round_{dataset}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: str, markdown: str | None, figures: str | None, grid: str | None = None) -> str:
    found = _records(Path(out), list(load_grid(grid)["methods"]) if grid else None)
    if not found:
        raise FileNotFoundError(f"{out}: no run records (<dataset>/<method>/seed<N>.json)")
    lines = []
    for dataset, methods in sorted(found.items()):
        lines += dataset_report(dataset, methods, Path(figures) if figures else None)
    text = "\n".join(lines)
    if markdown:
        Path(markdown).write_text(text + "\n", encoding="utf-8")
    return text


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--set {item!r}: expected key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_pmtrec.federated.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) every method x seed of a grid on one dataset")
    run.add_argument("--config", required=True, help="federated config yaml (properties/federated/*.yaml)")
    run.add_argument("--grid", required=True, help="methods and seeds (properties/federated/grid.yaml)")
    run.add_argument("--out", required=True, help="folder of the run records (resumable)")
    run.add_argument("--runtime", choices=("simulate", "flower"), default="simulate")
    run.add_argument("--methods", nargs="*", help="only these methods of the grid")
    run.add_argument(
        "--set", nargs="+", action="extend", default=[], help="key=value overrides of the federated config"
    )
    rep = sub.add_parser("report", help="tables, plot and commands from the run records")
    rep.add_argument("--out", required=True)
    rep.add_argument("--markdown", help="write the report here")
    rep.add_argument("--figures", help="folder for the per-round plots")
    rep.add_argument("--grid", help="a grid yaml: list its methods in its order")
    args = parser.parse_args(argv)
    if args.command == "run":
        run_grid(args.config, args.grid, args.out, args.runtime, args.methods, _parse_set(args.set))
    else:
        print(report(args.out, args.markdown, args.figures, args.grid))


if __name__ == "__main__":
    main(sys.argv[1:])
