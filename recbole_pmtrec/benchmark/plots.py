"""The report's plots: Fig. 3 (methods per encoder), Fig. 4 (ablation bars), Fig. 5 (sensitivity) and
Fig. 6 (valid Recall@20 per epoch), each written as a PNG from finished cells."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recbole_pmtrec.benchmark.methods import display_name  # noqa: E402
from recbole_pmtrec.benchmark.suite import SHORT_NAMES, fmt, format_value, metric_label  # noqa: E402

VARIANT_NAMES = {
    "no_focusing": "w/o focusing (alpha=1)",
    "no_balancing": "w/o balancing (tau=1)",
    "full": "full",
}
CURVE_METRIC = "recall@20"
ENCODER_NAMES = {"mf": "MF", "lightgcn": "LightGCN", "ngcf": "NGCF"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_curves(dataset: str, results: dict, chosen: dict, path: Path) -> Path:
    """Fig. 6: valid Recall@20 per epoch of each method's chosen cell."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    if len(chosen) > 10:  # the default cycle repeats after 10 colours
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for method, cell_id in chosen.items():
        history = [h for h in results[cell_id]["history"] if "valid" in h]
        epochs = [h["epoch"] + 1 for h in history]
        values = [h["valid"].get(CURVE_METRIC) for h in history]
        style = {"linewidth": 2.2, "color": "black"} if method == "pmtrec" else {"linewidth": 1.2}
        ax.plot(epochs, values, marker="." if len(epochs) < 30 else None, label=display_name(method), **style)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric_label(CURVE_METRIC)}")
    ax.set_title(f"{dataset}: valid {metric_label(CURVE_METRIC)} per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_sensitivity(dataset: str, results: dict, sweeps: dict, path: Path) -> Path:
    """Fig. 5: test Recall@20 and NDCG@20 against alpha (at the best tau) and tau (at the best alpha)."""
    knobs = [k for k in ("pmtrec_alpha", "pmtrec_tau") if sweeps.get(k)]
    fig, axes = plt.subplots(1, len(knobs), figsize=(4.2 * len(knobs), 3.4), squeeze=False)
    for ax, knob in zip(axes[0], knobs):
        rows = sorted((results[i]["params"][knob], results[i]) for i in sweeps[knob])
        xs = [x for x, _ in rows]
        for metric in ("recall@20", "ndcg@20"):
            ax.plot(
                xs, [r["test_result"].get(metric) for _, r in rows], marker="o", label=metric_label(metric)
            )
        if knob == "pmtrec_tau":
            ax.set_xscale("log")
        ax.set_xlabel(SHORT_NAMES[knob])
        ax.set_ylabel("test")
        other = "pmtrec_tau" if knob == "pmtrec_alpha" else "pmtrec_alpha"
        fixed = rows[0][1]["params"].get(other) if rows else None
        ax.set_title(
            f"{dataset}: {SHORT_NAMES[knob]} sweep ({SHORT_NAMES[other]}={format_value(fixed)})", fontsize=9
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def grouped_bars(groups: list[str], series: dict, ylabel: str, title: str, path: Path, rotate=False) -> Path:
    """One bar per series in each group, its value written on it; ``series``: name -> one value per group."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / max(len(series), 1)
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        drawn = ax.bar(xs, values, width, label=name)
        ax.bar_label(
            drawn, labels=[fmt(v) for v in values], fontsize=6, padding=2, rotation=90 if rotate else 0
        )
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_encoders(dataset: str, results: dict, table: dict, path: Path) -> Path:
    """Fig. 3: test Recall@20 of each method (bars) for each encoder (groups)."""
    methods = []
    for row in table.values():
        methods += [m for m in row if m not in methods]
    series = {
        display_name(m): [
            results[row[m]]["test_result"].get("recall@20", 0.0) if m in row else 0.0
            for row in table.values()
        ]
        for m in methods
    }
    groups = [ENCODER_NAMES.get(e, e) for e in table]
    return grouped_bars(groups, series, "test Recall@20", f"{dataset}: methods per encoder", path)


def plot_ablation(dataset: str, results: dict, variants: dict, reference: dict, path: Path) -> Path:
    """Fig. 4: test metrics of PMTRec without focusing, without balancing, full (and EW for reference)."""
    bars = {VARIANT_NAMES[v]: results[i]["test_result"] for v, i in variants.items()}
    if reference:
        bars = {"EW": reference, **bars}
    metrics = ["recall@20", "ndcg@20", "recall@40"]
    series = {name: [result.get(m, 0.0) for m in metrics] for name, result in bars.items()}
    groups = [metric_label(m) for m in metrics]
    return grouped_bars(groups, series, "test", f"{dataset}: ablation of PMTRec", path, rotate=True)
