"""SharedBottom, MMoE, CGC and PLE on Census-Income (income > 50K, never married), several seeds each.

Every run is the plugin's own pipeline (``run_recbole_pmtrec``: the model's trainer, ``mtl_method`` EW by
default, best epoch by ``valid_metric``, test with the best checkpoint). Each finished run is appended to
``--runs`` (JSON lines, so an interrupted benchmark keeps what it did and resumes after it); the table of
mean ± std of the test AUC per task is then written to ``--output`` as markdown.

    python -m recbole_pmtrec.data.convert.census_income --raw ../shared/data/census-income-kdd/raw --out dataset/
    OMP_NUM_THREADS=1 python benchmarks/census_multitask.py --seeds 2020 2021 2022 2023 2024 --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("SharedBottom", "MMoE", "CGC", "PLE")
TASKS = ("income", "marital")
#: what every run shares; model sizes are the defaults of properties/model/<Model>.yaml
TRAINING = {
    "epochs": 4,
    "train_batch_size": 1024,
    "eval_batch_size": 8192,
    "learning_rate": 0.001,
    "valid_metric": "auc",
    "show_progress": False,
    "state": "WARNING",
    "use_gpu": False,
}


def run_one(job: dict) -> dict:
    """One (model, seed) run in this process; returns its test and best-valid metrics and wall time."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line: not ours
    import torch

    torch.set_num_threads(1)
    from recbole_pmtrec import run_recbole_pmtrec

    with tempfile.TemporaryDirectory() as tmp:
        config = {**TRAINING, **job["config"], "seed": job["seed"], "checkpoint_dir": tmp}
        start = time.perf_counter()
        result = run_recbole_pmtrec(job["model"], "census-income", config_dict=config)
        seconds = time.perf_counter() - start
    return {
        "model": job["model"],
        "seed": job["seed"],
        "mtl_method": config.get("mtl_method", "ew"),
        "epochs": config["epochs"],
        "seconds": round(seconds, 1),
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "valid": {k: float(v) for k, v in result["best_valid_result"].items()},
    }


def mean_std(values: list[float], digits: int = 4) -> str:
    """``mean ± sample std`` (``< 1e-digits`` where the std rounds to zero)."""
    mean = f"{statistics.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    std = statistics.stdev(values)
    return f"{mean} ± {std:.{digits}f}" if round(std, digits) > 0 else f"{mean} ± <{10**-digits:.{digits}f}"


def _groups(runs: list[dict]) -> list[tuple[tuple[str, str], list[dict]]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["mtl_method"]), []).append(run)
    order = {m: i for i, m in enumerate(MODELS)}
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1]))


def table(runs: list[dict]) -> str:
    """Markdown: one row per model and combiner, mean ± std (sample std over seeds) of the test metrics."""
    lines = [
        "| model | mtl_method | seeds | epochs | AUC income | AUC marital | LogLoss income | LogLoss marital "
        "| wall time per run (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (model, method), group in _groups(runs):
        cells = [
            mean_std([r["test"][f"{metric}@{task}"] for r in group])
            for metric in ("auc", "logloss")
            for task in TASKS
        ]
        seconds = mean_std([r["seconds"] for r in group], digits=0)
        epochs = ", ".join(map(str, sorted({r["epochs"] for r in group})))
        lines.append(f"| {model} | {method} | {len(group)} | {epochs} | {' | '.join(cells)} | {seconds} |")
    return "\n".join(lines) + "\n"


def per_seed_table(runs: list[dict]) -> str:
    """Markdown: every run's test AUC (income / marital) and wall time, one column per seed."""
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "| model | mtl_method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "| --- | --- | " + " | ".join("---" for _ in seeds) + " |",
    ]
    for (model, method), group in _groups(runs):
        by_seed = {r["seed"]: r for r in group}
        cells = [
            f"{by_seed[s]['test']['auc@income']:.4f} / {by_seed[s]['test']['auc@marital']:.4f} "
            f"({by_seed[s]['seconds']:.0f} s)"
            if s in by_seed
            else ""
            for s in seeds
        ]
        lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022, 2023, 2024])
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    parser.add_argument("--mtl-method", default="ew", help="combiner of the multi-task trainer (mtl_method)")
    parser.add_argument(
        "--data-path", default="dataset/", help="folder holding census-income/ (converter output)"
    )
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel, one thread each")
    parser.add_argument("--runs", type=Path, default=Path("results/census_multitask.jsonl"))
    parser.add_argument("--output", type=Path, default=Path("results/census_multitask.md"))
    parser.add_argument("--table-only", action="store_true", help="only rewrite --output from --runs")
    args = parser.parse_args(argv)

    done = []
    if args.runs.is_file():
        done = [json.loads(line) for line in args.runs.read_text().splitlines() if line.strip()]
    if not args.table_only:
        train_file = Path(args.data_path) / "census-income" / "census-income.train.inter"
        if not train_file.is_file():
            raise SystemExit(
                f"{train_file} not found: convert the raw data first (python -m "
                "recbole_pmtrec.data.convert.census_income --raw ../shared/data/census-income-kdd/raw --out dataset/)"
            )
        finished = {(r["model"], r["seed"], r["mtl_method"], r["epochs"]) for r in done}
        config = {"epochs": args.epochs, "mtl_method": args.mtl_method, "data_path": args.data_path}
        jobs = [
            {"model": m, "seed": s, "config": config}
            for s in args.seeds
            for m in args.models
            if (m, s, args.mtl_method, args.epochs) not in finished
        ]
        args.runs.parent.mkdir(parents=True, exist_ok=True)
        with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            for run in pool.imap_unordered(run_one, jobs):
                done.append(run)
                with args.runs.open("a") as f:
                    f.write(json.dumps(run) + "\n")
                test = run["test"]
                print(
                    f"{run['model']:<12} seed {run['seed']}: AUC income {test['auc@income']:.4f} "
                    f"marital {test['auc@marital']:.4f} ({run['seconds']:.0f} s)",
                    flush=True,
                )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = table(done) + "\nPer seed, test AUC income / marital (wall time):\n\n" + per_seed_table(done)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
