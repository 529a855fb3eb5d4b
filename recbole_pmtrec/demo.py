"""The README's main job (``make demo``): train BPR and PMTRec on ml-100k with one split, seed and protocol,
print their metrics side by side, and say where the logs, plots and checkpoints went.

    python -m recbole_pmtrec.demo [--models BPR PMTRec] [--dataset ml-100k] [--config_files a.yaml ...]
                                  [--out log] [--key=value ...]

Without --config_files it uses ``properties/demo_ml100k.yaml`` (the protocol and PMTRec's knobs, sized to
finish in under 3 minutes on a 2-core CPU); any --key=value is a RecBole parameter for every model (e.g.
``--epochs=150 --stopping_step=15`` for the long run). The table it prints is the README's.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

from recbole_pmtrec.config import Config, properties_dir
from recbole_pmtrec.quick_start import run_recbole_pmtrec

DEFAULT_MODELS = ["BPR", "PMTRec"]
DEMO_CONFIG = "demo_ml100k.yaml"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_VALID = re.compile(r"^epoch (\d+) evaluating \[.*valid_score: ([0-9.]+)\]")
_WEIGHTS = re.compile(r"^epoch (\d+) (\w+) row weights \(mean±std\): main=([0-9.]+)±")


def _epoch_numbers(log_file: str | None) -> tuple[dict[int, float], dict[str, dict[int, float]]]:
    """From a run's log file: the valid score per epoch, and the main task's mean row weight per table and
    epoch (MultiTaskTrainer's epoch log)."""
    valid: dict[int, float] = {}
    main_weight: dict[str, dict[int, float]] = {}
    if log_file is None or not Path(log_file).is_file():
        return valid, main_weight
    for line in Path(log_file).read_text(encoding="utf-8").splitlines():
        text = _ANSI.sub("", line.split("  ", 1)[-1].strip())
        if match := _VALID.match(text):
            valid[int(match[1])] = float(match[2])
        elif match := _WEIGHTS.match(text):
            main_weight.setdefault(match[2], {})[int(match[1])] = float(match[3])
    return valid, main_weight


def _reset_root_logger() -> None:
    """RecBole's ``init_logger`` adds its handlers only to a root logger without any (``basicConfig``): close
    the previous model's, so each model gets its own log file and TensorBoard folder."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()


def _log_file() -> str | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def _relative(path: str | Path | None) -> str:
    if path is None:
        return "-"
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _plot(runs: dict[str, dict], file: Path) -> bool:
    """Valid score per epoch of every model, and PMTRec's main-task row weight per epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    weights = {m: r["main_weight"] for m, r in runs.items() if r["main_weight"]}
    fig, axes = plt.subplots(1, 2 if weights else 1, figsize=(11 if weights else 5.5, 4), squeeze=False)
    for model, run in runs.items():
        epochs = sorted(run["valid"])
        axes[0][0].plot(epochs, [run["valid"][e] for e in epochs], marker="o", label=model)
    axes[0][0].set(
        xlabel="epoch (RecBole's, from 0)", ylabel=runs[next(iter(runs))]["metric"], title="validation"
    )
    axes[0][0].legend()
    for model, tables in weights.items():
        for table, series in tables.items():
            epochs = sorted(series)
            axes[0][1].plot(epochs, [series[e] for e in epochs], marker="o", label=f"{model} {table} rows")
        axes[0][1].set(
            xlabel="epoch (RecBole's, from 0)",
            ylabel="main task's row weight (mean)",
            title="PMTRec: the main task's share of each row",
            ylim=(0, 1.02),
        )
        axes[0][1].legend()
    for axis in axes[0]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)
    return True


def format_table(dataset: str, runs: dict[str, dict]) -> str:
    """The markdown table the README shows: best valid score and the test metrics of each model."""
    first = next(iter(runs.values()))
    metric = first["metric"]
    test_metrics = list(first["test"].keys())
    header = [f"valid {metric} (best)"] + [f"test {m}" for m in test_metrics]
    lines = [
        f"Test metrics on {dataset} (same split, seed and protocol; the model with the best valid {metric}):",
        "",
        "| model | " + " | ".join(header) + " |",
        "| --- |" + " --- |" * len(header),
    ]
    for model, run in runs.items():
        cells = [f"{run['best_valid']:.4f}"] + [f"{float(run['test'][m]):.4f}" for m in test_metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config_files", nargs="+", default=None)
    parser.add_argument("--out", default="log", help="folder for the plot (default log/, beside the logs)")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    models = args.models or DEFAULT_MODELS
    config_files = args.config_files or [str(properties_dir() / DEMO_CONFIG)]
    start = time.perf_counter()
    valid_metric = str(
        Config(model=models[0], dataset=args.dataset, config_file_list=config_files)["valid_metric"]
    ).lower()
    runs: dict[str, dict] = {}
    for model in models:
        _reset_root_logger()
        model_start = time.perf_counter()
        result = run_recbole_pmtrec(model=model, dataset=args.dataset, config_file_list=config_files)
        log_file = _log_file()
        for handler in logging.getLogger().handlers:
            handler.flush()
        valid, main_weight = _epoch_numbers(log_file)
        runs[model] = {
            "best_valid": float(result["best_valid_score"]),
            "metric": valid_metric,
            "test": dict(result["test_result"]),
            "valid": valid,
            "main_weight": main_weight,
            "log": log_file,
            "checkpoint": result["saved_model_file"],
            "seconds": time.perf_counter() - model_start,
        }
    _reset_root_logger()

    print("\n" + format_table(args.dataset, runs) + "\n")
    for model, run in runs.items():
        epochs = len(run["valid"])
        best = max(run["valid"], key=lambda e: (run["valid"][e], -e)) if run["valid"] else None
        line = f"{model}: {run['seconds']:.0f} s, {epochs} epochs evaluated, best valid at epoch {best}"
        for table, series in run["main_weight"].items():
            first, last = min(series), max(series)
            line += (
                f"; {table} rows' main-task weight {series[first]:.2f} (epoch {first}) -> "
                f"{series[last]:.2f} (epoch {last})"
            )
        print(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = out / f"demo_{args.dataset}.png"
    print("\nWhere things went:")
    for model, run in runs.items():
        print(f"  {model}: log {_relative(run['log'])}, checkpoint {_relative(run['checkpoint'])}")
    print("  TensorBoard curves (losses, row weights, valid metrics): tensorboard --logdir log_tensorboard")
    if _plot(runs, plot):
        print(f"  plot (valid score and PMTRec's main-task row weight per epoch): {_relative(plot)}")
    print(
        "  reload a model: recbole_pmtrec.load_data_and_model('<checkpoint>')"
        f"\nTotal {time.perf_counter() - start:.0f} s; config: {', '.join(_relative(f) for f in config_files)}"
    )
    return runs


if __name__ == "__main__":
    main()
