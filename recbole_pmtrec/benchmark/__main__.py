"""python -m recbole_pmtrec.benchmark --suite smoke|paper|extra [--datasets ...] [--methods ...]
[--out results/<suite>] [--resume] [--report-only]

Trains every cell of a suite (one process, one thread by default), writing each finished cell to
``<out>/cells/<id>.json`` at once, then ``<out>/table.md``, ``<out>/commands.md`` and PNG plots.
Several processes may share one ``--out`` with ``--resume`` (say one per GPU, ``--gpu 0``, ``--gpu 1``):
each trains the cells no other live process has claimed. With ``--workers N`` (Ray on this machine, loopback
only) or ``--ray_address HOST:PORT`` (a Ray cluster) the cells of a stage that do not depend on each other
run as Ray tasks at once, each as it runs alone, into the same ``<out>/cells/``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from recbole_pmtrec.benchmark.driver import Benchmark, summary_line
from recbole_pmtrec.benchmark.report import write_report
from recbole_pmtrec.benchmark.suite import load_suite, suites


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_pmtrec.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--suite", required=True, help=f"a suite name ({', '.join(suites())}) or a yaml path")
    parser.add_argument("--datasets", nargs="+", help="only these datasets of the suite")
    parser.add_argument(
        "--methods", nargs="+", help="only these methods (the tuning base method always runs)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default results/<suite>)")
    parser.add_argument("--resume", action="store_true", help="keep finished cells of --out, run the rest")
    parser.add_argument("--overwrite", action="store_true", help="run every cell again, replacing --out's")
    parser.add_argument("--retry-failed", action="store_true", help="with --resume: run failed cells again")
    parser.add_argument("--report-only", action="store_true", help="write the report from --out's cells only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--gpu",
        nargs="?",
        const="0",
        metavar="ID",
        help="train on this CUDA device (default 0); the cells stay the suite's (their records say where they ran)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--skip-base",
        action="store_true",
        help="do not train the base grid's missing cells: the other methods start from its best finished cell "
        "(or its first point); for a method whose own grid sets every base knob (BPR's lr x wd) it is the same",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="train N cells at once as Ray tasks on this machine (loopback only; --threads threads each)",
    )
    parser.add_argument(
        "--ray_address",
        "--ray-address",
        dest="ray_address",
        metavar="HOST:PORT",
        help="train the cells as tasks of this running Ray cluster",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def main(argv: list[str] | None = None) -> Benchmark:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for category in (FutureWarning, DeprecationWarning, UserWarning):  # RecBole 1.2.1 on pandas 2 / torch 2
        warnings.filterwarnings("ignore", category=category)
    suite = load_suite(args.suite).select(args.datasets, args.methods)
    out = args.out or Path("results") / suite.name
    start = time.perf_counter()
    options = dict(
        resume=args.resume,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        run_cells=not args.report_only,
        skip_base=args.skip_base,
        device={"use_gpu": True, "gpu_id": args.gpu} if args.gpu is not None else None,
    )
    if (args.workers or args.ray_address) and not args.report_only:
        from recbole_pmtrec.benchmark.ray_cells import RayBenchmark

        ray = {"workers": args.workers, "ray_address": args.ray_address, "threads": args.threads}
        bench = RayBenchmark(suite, out, **options, **ray)
    else:
        bench = Benchmark(suite, out, **options)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv: keep ours away from it
    bench.run()
    command = " ".join(["python -m recbole_pmtrec.benchmark", *(shlex.quote(a) for a in argv)])
    written = write_report(suite, bench.results, bench.picks, out, command, others=bench.other_cells())
    print(summary_line(bench, time.perf_counter() - start))
    print("wrote " + ", ".join(str(p) for p in written))
    return bench


if __name__ == "__main__":
    main()
