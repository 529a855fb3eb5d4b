"""What a suite run writes besides its cells: ``table.md`` (the paper's Table 2 layout and every cell),
``commands.md`` (the command of every cell) and the PNG plots of ``plots.py`` (Fig. 3 encoders, Fig. 4
ablation bars, Fig. 5 sensitivity, Fig. 6 Recall@20 per epoch)."""

from __future__ import annotations

import math
from pathlib import Path

from recbole_pmtrec.benchmark.methods import display_name, is_mtl_method
from recbole_pmtrec.benchmark.plots import (
    ENCODER_NAMES,
    VARIANT_NAMES,
    plot_ablation,
    plot_curves,
    plot_encoders,
    plot_sensitivity,
)
from recbole_pmtrec.benchmark.suite import SHORT_NAMES, Suite, fmt, format_value, metric_label

SINGLE_TASK = {"mf": "BPR", "lightgcn": "LightGCN", "ngcf": "NGCF"}  # RecBole's model of each encoder


def knobs_text(params: dict) -> str:
    return ", ".join(f"{SHORT_NAMES.get(k, k)}={format_value(v)}" for k, v in sorted(params.items())) or "-"


def metrics_of(results: dict, picks: dict) -> list[str]:
    """The test metrics the chosen cells report, recall before ndcg, by K (the paper's row order)."""
    keys = set()
    for ids in picks.values():
        for cell_id in ids.get("methods", {}).values():
            keys |= set(results[cell_id]["test_result"])
    by_name = {}
    for key in keys:
        name, k = key.split("@")
        by_name.setdefault(name, []).append(int(k))
    order = sorted(by_name, key=lambda n: ({"recall": 0, "ndcg": 1}.get(n, 2), n))
    return [f"{n}@{k}" for n in order for k in sorted(by_name[n])]


def table2(suite: Suite, results: dict, picks: dict) -> str:
    """Methods as columns, rows = dataset x metric@K: ours (the paper's Table 2 value in parentheses)."""
    methods = []  # the suite's order; the base method (which always runs) first where a suite leaves it out
    for plan in suite.datasets.values():
        listed = plan.methods if suite.base_method in plan.methods else [suite.base_method, *plan.methods]
        for m in listed:
            if m not in methods:
                methods.append(m)
    ordered = [m for m in methods if m != "pmtrec"] + (["pmtrec"] if "pmtrec" in methods else [])
    metrics = metrics_of(results, picks)
    header = ["dataset", "metric", *[display_name(m) for m in ordered]]
    baselines = [m for m in ordered if m != "pmtrec" and is_mtl_method(m)]  # same model, other combiner
    if "pmtrec" in ordered and baselines:
        header.append("PMTRec vs best MTL baseline")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    notes = []
    for plan in suite.datasets.values():
        chosen = picks.get(plan.name, {}).get("methods", {})
        if not chosen:
            continue
        label = plan.name
        if plan.paper and plan.paper_label:
            label += " †"
            notes.append(f"† {plan.name}: the numbers in parentheses are the paper's for {plan.paper_label}.")
        for metric in metrics:
            ours = {m: results[chosen[m]]["test_result"].get(metric) for m in ordered if m in chosen}
            best = max((v for v in ours.values() if v is not None), default=None)
            row = [label, metric_label(metric)]
            for m in ordered:
                value = ours.get(m)
                text = fmt(value)
                if value is not None and value == best:
                    text = f"**{text}**"
                paper = (plan.paper.get(metric) or {}).get(m)
                if paper is not None:
                    text += f" ({fmt(paper)})"
                row.append(text)
            if len(header) > len(row):
                row.append(_lead(ours.get("pmtrec"), [v for m, v in ours.items() if m in baselines]))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _lead(mine: float | None, others: list) -> str:
    """PMTRec's value relative to the best of ``others`` (``-`` when either side is missing)."""
    others = [v for v in others if v]
    return f"{100 * (mine / max(others) - 1):+.1f}%" if mine is not None and others else "-"


def selected_table(suite: Suite, results: dict, picks: dict) -> str:
    lines = [
        "| dataset | method | knobs | best epoch / epochs run | valid R@20 | test R@20 | test N@20 | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for dataset, chosen in picks.items():
        for method, cell_id in chosen.get("methods", {}).items():
            r = results[cell_id]
            lines.append(
                f"| {dataset} | {display_name(method)} | {knobs_text(r['params'])} | {r['best_epoch']} / "
                f"{r['epochs_run']} | {fmt(r['best_valid_score'])} | {fmt(r['test_result'].get('recall@20'))} | "
                f"{fmt(r['test_result'].get('ndcg@20'))} | {r['wall_s']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def cells_table(results: dict) -> str:
    """Every cell, by dataset, each dataset's in ``results``' order: the order the run planned them, the same
    whether the cells were trained one after the other, on Ray, resumed or only read back (not their start
    times, which differ between such runs)."""
    lines = [
        "| dataset | stage | method | knobs | valid R@20 | test R@20 | test N@20 | best epoch / run | wall s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results.values(), key=lambda r: r["dataset"]):
        if r.get("status") != "ok":
            lines.append(
                f"| {r['dataset']} | {r['stage']} | {display_name(r['method'])} | {knobs_text(r['params'])} | "
                f"failed: {r.get('error', '?')} | | | | {r.get('wall_s', 0):.0f} |"
            )
            continue
        lines.append(
            f"| {r['dataset']} | {r['stage']} | {display_name(r['method'])} | {knobs_text(r['params'])} | "
            f"{fmt(r['best_valid_score'])} | {fmt(r['test_result'].get('recall@20'))} | "
            f"{fmt(r['test_result'].get('ndcg@20'))} | {r['best_epoch']} / {r['epochs_run']} | "
            f"{r['wall_s']:.0f}{'' if _device(r) == 'cpu' else f' ({_device(r)})'} |"
        )
    total = sum(r.get("wall_s", 0.0) for r in results.values())
    text = f"\n\n{len(results)} cells, {total / 3600:.2f} h of training wall time in all"
    elsewhere = {}
    for r in results.values():
        if _device(r) != "cpu":
            elsewhere[_device(r)] = elsewhere.get(_device(r), 0.0) + r.get("wall_s", 0.0)
    if elsewhere:  # wall times of cells that ran on a GPU are not comparable with the others
        text += " (" + ", ".join(f"{s / 3600:.2f} h of it on {d}" for d, s in sorted(elsewhere.items())) + ")"
    return "\n".join(lines) + text + ".\n"


def _device(record: dict) -> str:
    """Where the cell ran (``cpu``, ``cuda``, ...; records without an environment: ``cpu``)."""
    device = str((record.get("environment") or {}).get("device", "cpu"))
    return device.split(":")[0]


def ablation_table(suite: Suite, results: dict, picks: dict) -> str:
    lines = [
        "| dataset | variant | knobs | test R@20 | test N@20 | test R@40 | paper R@40 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for dataset, chosen in picks.items():
        paper = suite.datasets[dataset].paper_ablation.get("recall@40", {})
        for variant, cell_id in chosen.get("ablation", {}).items():
            r = results[cell_id]
            t = r["test_result"]
            lines.append(
                f"| {dataset} | {VARIANT_NAMES[variant]} | {knobs_text(r['params'])} | {fmt(t.get('recall@20'))} | "
                f"{fmt(t.get('ndcg@20'))} | {fmt(t.get('recall@40'))} | {fmt(paper.get(variant))} |"
            )
    return "\n".join(lines) + "\n"


def sensitivity_table(results: dict, picks: dict) -> str:
    lines = [
        "| dataset | knob | value | valid R@20 | test R@20 | test N@20 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for dataset, chosen in picks.items():
        for knob, ids in chosen.get("sensitivity", {}).items():
            for cell_id in ids:
                r = results[cell_id]
                lines.append(
                    f"| {dataset} | {SHORT_NAMES[knob]} | {format_value(r['params'][knob])} | "
                    f"{fmt(r['best_valid_score'])} | {fmt(r['test_result'].get('recall@20'))} | "
                    f"{fmt(r['test_result'].get('ndcg@20'))} |"
                )
    return "\n".join(lines) + "\n"


def encoder_table(results: dict, picks: dict) -> str:
    """Fig. 3 as a table: per dataset and encoder, each method's test Recall@20 / NDCG@20, the single-task
    RecBole model of that encoder where the suite ran it, and PMTRec against the best other combiner."""
    lines = []
    for dataset, chosen in picks.items():
        table = chosen.get("encoders") or {}
        if not table:
            continue
        methods = []
        for row in table.values():
            methods += [m for m in row if m not in methods]
        methods = [m for m in methods if m != "pmtrec"] + (["pmtrec"] if "pmtrec" in methods else [])
        header = ["dataset", "encoder", "single-task (RecBole)", *[display_name(m) for m in methods]]
        if "pmtrec" in methods and len(methods) > 1:
            header.append("PMTRec vs best other")
        header.append("knobs of the encoder cells")
        lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 3) + "---|"]
        for encoder, row in table.items():
            single = chosen.get("methods", {}).get(SINGLE_TASK.get(encoder))
            cells = [dataset, ENCODER_NAMES.get(encoder, encoder)]
            cells.append(_r20_n20(results, single, SINGLE_TASK.get(encoder)) if single else "-")
            values = {m: results[row[m]]["test_result"].get("recall@20") for m in methods if m in row}
            cells += [_r20_n20(results, row.get(m)) for m in methods]
            if len(header) > len(cells) + 1:
                cells.append(_lead(values.get("pmtrec"), [v for m, v in values.items() if m != "pmtrec"]))
            cells.append(
                "; ".join(
                    f"{display_name(m)}: {knobs_text(results[row[m]]['params'])}" for m in methods if m in row
                )
            )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def seeds_table(suite: Suite, results: dict, picks: dict) -> str:
    """Mean +- sample std over seeds of each method's chosen settings; PMTRec against the MTL baseline with
    the best mean, seed by seed (the same seeds: a paired comparison)."""
    lines = [
        "| dataset | method | seeds | test R@20 mean ± std | test N@20 mean ± std | test R@40 mean ± std |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    for dataset, chosen in picks.items():
        runs = chosen.get("seeds") or {}
        means = {}
        for method, ids in runs.items():
            cols = []
            for metric in ("recall@20", "ndcg@20", "recall@40"):
                values = [results[i]["test_result"].get(metric) for i in ids if i in results]
                values = [v for v in values if v is not None]
                mean, std = _mean_std(values)
                if metric == "recall@20":
                    means[method] = mean
                cols.append(f"{fmt(mean)} ± {fmt(std)}" if values else "-")
            lines.append(f"| {dataset} | {display_name(method)} | {len(ids)} | " + " | ".join(cols) + " |")
        baselines = {m: v for m, v in means.items() if m != "pmtrec" and is_mtl_method(m) and v is not None}
        if "pmtrec" in runs and baselines:
            best = max(baselines, key=baselines.get)
            by_seed = {
                results[i]["config"].get("seed"): results[i]["test_result"]["recall@20"] for i in runs[best]
            }
            mine = {
                results[i]["config"].get("seed"): results[i]["test_result"]["recall@20"]
                for i in runs["pmtrec"]
            }
            common = [x for x in mine if x in by_seed]
            wins = sum(mine[x] > by_seed[x] for x in common)
            diffs = [mine[x] - by_seed[x] for x in common]
            mean, std = _mean_std(diffs)
            notes.append(
                f"{dataset}: PMTRec vs {display_name(best)} (the best baseline by mean R@20), paired over "
                f"{len(common)} seeds: better in {wins}, R@20 difference {mean:+.4f}"
                + (f" ± {std:.4f} " if len(common) > 1 else " (one seed: no spread) ")
                + f"({100 * (means['pmtrec'] / baselines[best] - 1):+.1f}% of the means)."
            )
    return "\n".join(lines) + "\n" + ("\n" + "\n\n".join(notes) + "\n" if notes else "")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _r20_n20(results: dict, cell_id: str | None, label: str | None = None) -> str:
    if not cell_id or cell_id not in results:
        return "-"
    t = results[cell_id]["test_result"]
    text = f"{fmt(t.get('recall@20'))} / {fmt(t.get('ndcg@20'))}"
    return f"{label} {text}" if label else text


# ---------------------------------------------------------------------------------------------- files
def write_report(
    suite: Suite, results: dict, picks: dict, out: Path, command: str, others: dict | None = None
) -> list[Path]:
    """``table.md``, ``commands.md`` and the plots; returns the paths written. ``others``: finished cells of
    the output folder that the current plan does not name (``Benchmark.other_cells``), listed on their own
    and used in no table above them."""
    out = Path(out)
    written = []
    plot_names = []
    for dataset, chosen in picks.items():
        methods = chosen.get("methods", {})
        if methods:
            plot_names.append(plot_curves(dataset, results, methods, out / f"curve_{dataset}.png"))
        if chosen.get("ablation"):
            reference = (
                results[methods[suite.base_method]]["test_result"] if suite.base_method in methods else {}
            )
            plot_names.append(
                plot_ablation(
                    dataset, results, chosen["ablation"], reference, out / f"ablation_{dataset}.png"
                )
            )
        if chosen.get("encoders"):
            plot_names.append(
                plot_encoders(dataset, results, chosen["encoders"], out / f"encoders_{dataset}.png")
            )
        if any(chosen.get("sensitivity", {}).values()):
            plot_names.append(
                plot_sensitivity(dataset, results, chosen["sensitivity"], out / f"sensitivity_{dataset}.png")
            )
    ok = {i: r for i, r in results.items() if r.get("status") == "ok"}
    parts = [
        f"# Benchmark suite `{suite.name}`\n",
        f"{suite.description}\n" if suite.description else "",
        f"Command: `{command}`. Suite definition: `{suite.path.name}`. Every cell: `commands.md`, `cells/`.\n",
        "## Test metrics (the paper's Table 2 layout)\n",
        "Each method's cell is the one with the best valid Recall@20 among its grid; bold = best of ours in the "
        "row; in parentheses the paper's Table 2 value where it reports one. The last column compares PMTRec "
        "with the best of the other combiners (the same model and tasks; single-task models left out).\n",
        table2(suite, ok, picks),
        "## Chosen settings\n",
        selected_table(suite, ok, picks),
    ]
    if any(c.get("ablation") for c in picks.values()):
        parts += ["## Ablation (Fig. 4)\n", ablation_table(suite, ok, picks)]
    if any(c.get("sensitivity") for c in picks.values()):
        parts += ["## Sensitivity (Fig. 5)\n", sensitivity_table(ok, picks)]
    if any(c.get("encoders") for c in picks.values()):
        parts += [
            "## Encoders (Fig. 3)\n",
            "Test Recall@20 / NDCG@20 of each method with each encoder. MF is the method's tuned cell above; "
            "the other encoders reuse its tuned knobs and search only the suite's `encoders.grid`.\n",
            encoder_table(ok, picks),
        ]
    if any(c.get("seeds") for c in picks.values()):
        parts += [
            "## Seeds\n",
            "Each method's chosen settings (above) trained again with other seeds (the random split where the "
            "dataset has one, initialisation and sampling follow the seed); test metrics over all seeds.\n",
            seeds_table(suite, ok, picks),
        ]
    parts += ["## Every cell\n", cells_table(results)]
    if others:
        parts += [
            "## Other cells in `cells/`\n",
            "Finished cells of the output folder that the suite's current plan does not name (a grid point or "
            "a seed of a setting that was a pick when it ran, before the picks moved): listed here, used in "
            "no table above.\n",
            cells_table(others),
        ]
    if plot_names:
        parts += ["## Plots\n", "\n".join(f"![{p.stem}]({p.name})" for p in plot_names) + "\n"]
    table = out / "table.md"
    table.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    written += [table, *plot_names]

    lines = [
        f"# Commands of suite `{suite.name}`\n",
        f"The whole suite: `{command}`. Each cell below runs alone from the project root (RecBole's command "
        "line; every config entry of the cell is on it) and gives the cell's numbers.\n",
    ]
    for r in [
        *sorted(results.values(), key=lambda r: r["dataset"]),
        *sorted((others or {}).values(), key=lambda r: r["id"]),
    ]:
        status = f"{r['wall_s']:.0f} s" if r.get("status") == "ok" else f"failed: {r.get('error')}"
        lines += [f"## {r['id']}\n", f"stage {r['stage']}, {status}\n", f"```bash\n{r['command']}\n```\n"]
    commands = out / "commands.md"
    commands.write_text("\n".join(lines), encoding="utf-8")
    written.append(commands)
    return written
