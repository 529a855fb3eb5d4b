"""RecBole's full-ranking evaluation against the plugin's (``recbole_pmtrec/trainer/fast_eval.py``), in one run.

Trains a model for ``--train_epochs`` epochs, then evaluates the same trainer on the same split with RecBole's
own ``Trainer.evaluate`` and with the fast one (alternating, ``--repeat`` times), prints both wall times, their
ratio and the largest difference over every metric, and exits with status 1 if any metric differs by more
than 1e-6. The machine's load average is printed with each timing (the figures are wall times).

    OMP_NUM_THREADS=1 python benchmarks/bench_full_sort.py --dataset ml-100k
    OMP_NUM_THREADS=1 python benchmarks/bench_full_sort.py --dataset epinions --data_path dataset/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_pmtrec import Config, create_dataset, data_preparation, get_model, get_trainer  # noqa: E402

METRICS = ["Recall", "NDCG", "MRR", "Hit", "Precision", "MAP"]


def _load() -> str:
    return "load " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def _timed(evaluate):
    """(wall seconds, this process's CPU seconds, result): on a shared machine the CPU time is the steadier."""
    start, cpu = time.perf_counter(), time.process_time()
    result = evaluate()
    return time.perf_counter() - start, time.process_time() - cpu, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument(
        "--model", default="BPR", help="BPR, LightGCN, PMTRec, ... (any full_sort_predict model)"
    )
    parser.add_argument("--train_epochs", type=int, default=1)
    parser.add_argument("--eval_batch_size", type=int, default=20_000_000, help="the suites' Epinions value")
    parser.add_argument("--split", choices=["valid", "test"], default="valid")
    parser.add_argument("--repeat", type=int, default=1, help="stock / fast evaluations, alternating")
    parser.add_argument("--gpu", action="store_true", help="use_gpu: True (a CUDA device when there is one)")
    args = parser.parse_args(argv)

    config = Config(
        model=args.model,
        dataset=args.dataset,
        config_dict={
            "data_path": args.data_path,
            "metrics": METRICS,
            "topk": [5, 10, 20, 40],
            "valid_metric": "recall@20",
            "eval_batch_size": args.eval_batch_size,
            "show_progress": False,
            "state": "ERROR",
            "use_gpu": args.gpu,
            "checkpoint_dir": os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_full_sort"),
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    data = valid if args.split == "valid" else test
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(args.model)(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], args.model)(config, model)
    start = time.perf_counter()
    for epoch in range(args.train_epochs):
        trainer._train_epoch(train, epoch)
    print(
        f"{args.model} on {args.dataset}: {dataset.user_num - 1} users x {dataset.item_num - 1} items, "
        f"{len(data.uid_list)} users evaluated ({args.split}), {data.step} per batch "
        f"(eval_batch_size {args.eval_batch_size}), device {config['device']}, "
        f"threads {torch.get_num_threads()}; trained {args.train_epochs} epoch(s) in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )

    wall, cpu = {"stock": [], "fast": []}, {"stock": [], "fast": []}
    for _ in range(args.repeat):
        before = _load()
        seconds, used, stock = _timed(lambda: Trainer.evaluate(trainer, data, load_best_model=False))
        wall["stock"].append(seconds)
        cpu["stock"].append(used)
        print(
            f"RecBole evaluate: {seconds:8.2f} s wall, {used:8.2f} s CPU ({before} -> {_load()})", flush=True
        )
        before = _load()
        seconds, used, fast = _timed(lambda: trainer.evaluate(data, load_best_model=False))
        wall["fast"].append(seconds)
        cpu["fast"].append(used)
        stats = {key: value for key, value in trainer.fast_eval_stats.items() if key != "blocks"}
        print(
            f"fast evaluate   : {seconds:8.2f} s wall, {used:8.2f} s CPU ({before} -> {_load()}) {stats}",
            flush=True,
        )
        if list(stock) != list(fast):
            print(f"metric keys differ: {list(stock)} vs {list(fast)}")
            return 1
    diff = max(abs(float(fast[key]) - float(stock[key])) for key in stock)
    best = {
        f"{route}_{kind}_s": round(min(times[route]), 3)
        for kind, times in (("wall", wall), ("cpu", cpu))
        for route in times
    }
    ratio, cpu_ratio = min(wall["stock"]) / min(wall["fast"]), min(cpu["stock"]) / min(cpu["fast"])
    print("metrics (RecBole = fast): " + ", ".join(f"{key} {float(stock[key]):.4f}" for key in stock))
    print(f"largest metric difference: {diff:.3g} over {len(stock)} metrics")
    print(f"speed-up: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (best of {args.repeat}: {best})")
    summary = {
        "dataset": args.dataset,
        "model": args.model,
        "users": len(data.uid_list),
        "items": dataset.item_num - 1,
        **best,
        "speedup_wall": round(ratio, 2),
        "speedup_cpu": round(cpu_ratio, 2),
        "max_metric_diff": diff,
        "equal": diff <= 1e-6,
        "stats": {key: value for key, value in trainer.fast_eval_stats.items() if key != "blocks"},
    }
    print(json.dumps(summary))
    return 0 if diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
