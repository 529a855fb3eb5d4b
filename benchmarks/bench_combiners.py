"""Micro-benchmark of the task-level combiners: milliseconds per ``combine`` on a random Jacobian ``[T, P]``
(default T = 3, P = 2048 * 3 * 32: a batch of 2048 interactions gathering three rows of d = 32 each), one
CPU thread, best and median over interleaved repeats, and the cost relative to EW's column sum. Prints a
markdown table (docs/COMBINERS.md).

    OMP_NUM_THREADS=1 python benchmarks/bench_combiners.py [--tasks 3] [--params 196608] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from recbole_pmtrec.trainer.combiners import COMBINERS, build_combiner  # noqa: E402


class Knobs(dict):
    """The yaml defaults for every knob (a missing key reads as None, as in a RecBole Config)."""

    def __missing__(self, key):
        return None


def time_combiners(names, jacobian: torch.Tensor, losses: torch.Tensor, repeats: int) -> dict:
    """Milliseconds of one ``combine`` call per method, ``(best, median)`` over ``repeats`` rounds. The rounds
    interleave the methods, so that load from other processes spreads over all of them alike."""
    combiners = {name: build_combiner(Knobs(mtl_method=name), jacobian.shape[0]) for name in names}
    for combiner in combiners.values():  # warm-up (cvxpy builds its problems on the first call)
        for _ in range(2):
            combiner.combine(jacobian, losses, 1)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name, combiner in combiners.items():
            start = time.perf_counter()
            combiner.combine(jacobian, losses, 1)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: (min(values), statistics.median(values)) for name, values in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--params", type=int, default=2048 * 3 * 32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    # tasks that partly agree and partly conflict, of different sizes
    shared = torch.randn(args.params)
    jacobian = torch.stack(
        [(0.5 * shared * (-1) ** t + torch.randn(args.params)) * (t + 1) for t in range(args.tasks)]
    )
    losses = torch.rand(args.tasks) + 0.5
    names = ["ew"] + sorted(name for name, cls in COMBINERS.items() if not cls.per_row)
    timings = time_combiners(names, jacobian, losses, args.repeats)

    print(
        f"T = {args.tasks}, P = {args.params}, float32, {torch.get_num_threads()} thread, torch {torch.__version__}"
    )
    print("| mtl_method | ms per combine, best | median | best relative to EW |")
    print("| --- | ---: | ---: | ---: |")
    for name in names:
        best, median = timings[name]
        print(f"| {name} | {best:.2f} | {median:.2f} | {best / timings['ew'][0]:.1f} |")


if __name__ == "__main__":
    main()
