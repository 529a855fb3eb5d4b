"""A multi-task training epoch before and after the large-table fast path, in one run, at identical results.

"before" is the training step as it was: ``torch.optim.Adam`` as RecBole builds it (``blocked_adam: False``)
and a fresh ``zeros_like(table)`` gradient for every table at every step (``_write_rows`` as it was, kept
below as :func:`_write_rows_before`). "after" is the default: ``BlockedAdam`` (same arithmetic, cache-sized
chunks; ``recbole_pmtrec/trainer/optim.py``) and one gradient buffer per table whose previously written rows
are zeroed. Both run RecBole's whole epoch (loader, negative and auxiliary sampling, forward, per-task
gradients, combination, optimizer) from the same seed and the same random state, alternating, and the
parameters and optimizer moments after each epoch are compared bit for bit (exit status 1 if they differ).

    OMP_NUM_THREADS=1 python benchmarks/bench_train_epoch.py --dataset epinions --data_path dataset/
    OMP_NUM_THREADS=1 python benchmarks/bench_train_epoch.py --dataset ml-100k --repeat 3
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

from recbole.utils import init_seed  # noqa: E402

from recbole_pmtrec import Config, create_dataset, data_preparation  # noqa: E402
from recbole_pmtrec.model import PMTRec  # noqa: E402
from recbole_pmtrec.trainer import MultiTaskTrainer, rng  # noqa: E402


def _write_rows_before(self, name, index, rows_grad):
    """``MultiTaskTrainer._write_rows`` before the fast path: a new zero table per step."""
    weight = self.tables[name]
    if index is None:
        weight.grad = rows_grad.detach()
    else:
        grad = torch.zeros_like(weight)
        grad[index] = rows_grad.detach()
        weight.grad = grad


def _load() -> str:
    return "load " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def _epoch(config, train, state, variant, limit):
    """One epoch of ``variant`` from the seed and random ``state``: (wall s, CPU s, steps, model, trainer)."""
    init_seed(config["seed"], config["reproducibility"])
    model = PMTRec(config, train._dataset).to(config["device"])
    config["blocked_adam"] = variant == "after"
    trainer = MultiTaskTrainer(config, model)
    if variant == "before":
        trainer._write_rows = _write_rows_before.__get__(trainer)
    rng.restore_global(state, model)
    rng.restore_loader(state, train)
    batches = []
    if limit:  # the first `limit` batches of the epoch, drawn before timing (the loader's draws included)
        for interaction in train:
            batches.append(interaction)
            if len(batches) == limit:
                break
    start, cpu = time.perf_counter(), time.process_time()
    trainer._train_epoch(batches or train, 0)
    seconds, used = time.perf_counter() - start, time.process_time() - cpu
    return seconds, used, len(batches) or len(train), model, trainer


def _identical(a, b) -> bool:
    (model_a, trainer_a), (model_b, trainer_b) = a, b
    for (key, x), y in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        if not torch.equal(x, y):
            print(f"parameter {key} differs")
            return False
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        sa, sb = trainer_a.optimizer.state.get(p, {}), trainer_b.optimizer.state.get(q, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in sa and not torch.equal(sa[key], sb[key]):
                print(f"optimizer {key} differs")
                return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument("--method", default="pmtrec", help="mtl_method (pmtrec, ew, nash_mtl, ...)")
    parser.add_argument("--repeat", type=int, default=1, help="before / after epochs, alternating")
    parser.add_argument("--steps", type=int, default=0, help="only the first N batches (0: the whole epoch)")
    parser.add_argument("--gpu", action="store_true", help="use_gpu: True (a CUDA device when there is one)")
    args = parser.parse_args(argv)
    config = Config(
        "PMTRec",
        args.dataset,
        config_dict={  # the benchmark suites' protocol (properties/benchmark/paper.yaml)
            "data_path": args.data_path,
            "mtl_method": args.method,
            "embedding_size": 32,
            "embedding_init": "xavier_normal",
            "train_batch_size": 2048,
            "learning_rate": 0.005,
            "weight_decay": 1e-5,
            "pmtrec_alpha": 1.1,
            "pmtrec_tau": 1e-4,
            "show_progress": False,
            "state": "ERROR",
            "use_gpu": args.gpu,
            "checkpoint_dir": os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_train_epoch"),
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    train, _valid, _test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    state = rng.capture(train)
    print(
        f"PMTRec ({args.method}, MF, tasks {config['aux_tasks']}) on {args.dataset}: "
        f"{train._dataset.user_num} x {train._dataset.item_num} table rows, batch 2048, "
        f"device {config['device']}, threads {torch.get_num_threads()}",
        flush=True,
    )
    times = {"before": [], "after": []}
    cpu = {"before": [], "after": []}
    equal = True
    for _ in range(args.repeat):
        runs = {}
        for variant in ("before", "after"):
            before_load = _load()
            seconds, used, steps, model, trainer = _epoch(config, train, state, variant, args.steps)
            times[variant].append(seconds)
            cpu[variant].append(used)
            runs[variant] = (model, trainer)
            print(
                f"{variant:6s}: {steps} steps {seconds:7.2f} s wall, {used:7.2f} s CPU, "
                f"{1000 * seconds / steps:6.1f} ms/step ({before_load} -> {_load()}) "
                f"optimizer {type(trainer.optimizer).__name__}",
                flush=True,
            )
        equal = equal and _identical(runs["before"], runs["after"])
    ratio = min(times["before"]) / min(times["after"])
    cpu_ratio = min(cpu["before"]) / min(cpu["after"])
    print(f"parameters and optimizer state after the epoch identical: {equal}")
    print(f"speed-up: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (best of {args.repeat})")
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "method": args.method,
                "steps": steps,
                "before_wall_s": round(min(times["before"]), 2),
                "after_wall_s": round(min(times["after"]), 2),
                "before_cpu_s": round(min(cpu["before"]), 2),
                "after_cpu_s": round(min(cpu["after"]), 2),
                "speedup_wall": round(ratio, 2),
                "speedup_cpu": round(cpu_ratio, 2),
                "identical": equal,
            }
        )
    )
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
