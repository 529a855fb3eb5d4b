"""Auxiliary-task sampling speed against a BPR epoch on the same data, in one run, one thread.

Prints aux batches per second for every task of the dataset (plus ``cointeraction``) and the ratio
(time to sample one BPR epoch's worth of aux batches for the dataset's first two sampled tasks) /
(one BPR training epoch with RecBole's ``Trainer``); the target is < 10 %.

    OMP_NUM_THREADS=1 python benchmarks/bench_sampler.py [--dataset epinions] [--data_path dataset/]

Needs the converted dataset (``python -m recbole_pmtrec.data.convert epinions --raw ... --out dataset/``);
without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from recbole.model.general_recommender import BPR  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_pmtrec import Config, create_dataset, data_preparation  # noqa: E402
from recbole_pmtrec.data import AuxTaskSampler  # noqa: E402
from recbole_pmtrec.data.dataset import BATCH_TASKS, COINTERACTION  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def batches_per_second(sampler: AuxTaskSampler, task: str, seconds: float) -> float:
    """Batches drawn per second over at least ``seconds`` (after one warm-up batch)."""
    sampler.sample(task)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 10:
        sampler.sample(task)
        count += 1
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="epinions")
    parser.add_argument("--data_path", default=str(PROJECT_ROOT / "dataset"))
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per task")
    parser.add_argument(
        "--bare_bpr",
        action="store_true",
        help="time the BPR epoch on RecBole's plain Dataset with the .inter columns only (no item features "
        "joined into each batch: a faster epoch, so a stricter ratio)",
    )
    args = parser.parse_args(argv)

    inter = Path(args.data_path) / args.dataset / f"{args.dataset}.inter"
    if not inter.is_file():
        print(
            f"SKIPPED: {inter} not found. Convert it first: python -m recbole_pmtrec.data.convert "
            f"{args.dataset} --raw ../shared/data/{args.dataset}/raw --out {args.data_path}"
        )
        return 0

    settings = {"data_path": args.data_path, "show_progress": False, "state": "ERROR", "use_gpu": False}
    config = Config("BPR", args.dataset, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    start = time.perf_counter()
    dataset = create_dataset(config)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    train_data, _, _ = data_preparation(config, dataset)
    split_s = time.perf_counter() - start
    train = train_data.dataset
    tasks = [t for t in config["aux_tasks"] or [] if t not in BATCH_TASKS]
    all_tasks = tasks + ([COINTERACTION] if COINTERACTION not in tasks else [])
    start = time.perf_counter()
    sampler = AuxTaskSampler(train, all_tasks)
    setup_s = time.perf_counter() - start

    print(
        f"{args.dataset}: {type(dataset).__name__} loaded in {load_s:.1f} s, split + derived structures {split_s:.1f} s"
    )
    print(f"sampler set-up {setup_s:.2f} s; batch {sampler.batch_size}, neg_num {sampler.neg_num}, "
          f"reject positives {sampler.reject_positives}; threads {torch.get_num_threads()}")  # fmt: skip
    rates = {}
    for task in all_tasks:
        rates[task] = batches_per_second(sampler, task, args.seconds)
        print(f"  {task:14s} {rates[task]:8.1f} aux batches/s ({1000 / rates[task]:.2f} ms per batch)")

    if args.bare_bpr:
        bare = {
            "load_col": {"inter": config["load_col"]["inter"]},
            "aux_relations": None,
            "category_field": None,
        }
        config = Config("BPR", args.dataset, config_dict={**settings, **bare, "aux_tasks": None})
        init_seed(config["seed"], config["reproducibility"])
        train_data, _, _ = data_preparation(config, create_dataset(config))
        print(f"BPR on {type(train_data.dataset).__name__} with load_col {config['load_col']}")
    init_seed(config["seed"], config["reproducibility"])
    trainer = Trainer(config, BPR(config, train_data.dataset))
    start = time.perf_counter()
    trainer._train_epoch(train_data, epoch_idx=0, show_progress=False)
    epoch_s = time.perf_counter() - start
    steps = len(train_data)
    pair = tasks[:2]
    sampling_s = sum(steps / rates[t] for t in pair)
    print(f"BPR epoch (RecBole Trainer, {steps} batches of {config['train_batch_size']}): {epoch_s:.1f} s")
    print(
        f"sampling {steps} aux batches for {' + '.join(pair)}: {sampling_s:.2f} s = "
        f"{100 * sampling_s / epoch_s:.1f} % of the BPR epoch (target < 10 %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
