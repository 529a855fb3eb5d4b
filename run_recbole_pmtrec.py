"""Train, evaluate or tune any plugin or RecBole model, RecBole style.

    python run_recbole_pmtrec.py --model=PMTRec --dataset=ml-100k [--config_files="a.yaml b.yaml"] [--key=value ...]
    python run_recbole_pmtrec.py --model=BPR --dataset=ml-100k --hyper=properties/hyper/bpr_grid.hyper \
        --algo=exhaustive --epochs=2

Every ``--key=value`` that is not one of the options below is a RecBole config parameter.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", "-m", default="PMTRec", help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--hyper", default=None, help="hyperparameter file: tune instead of a single run")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"])
    parser.add_argument("--max_evals", type=int, default=100, help="trials for random / bayes search")
    parser.add_argument("--output", default=None, help="tuning result table (default hyper_results/...)")
    parser.add_argument(
        "--save_trials",
        action="store_true",
        help="tuning: keep each trial's checkpoint, log file and TensorBoard folder (default: none are kept)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="tuning: run trials as Ray tasks, N at once"
    )
    parser.add_argument("--ray_address", default=None, help="tuning: run trials on this Ray cluster")
    dist = parser.add_argument_group("multi-process training (RecBole's keys; docs/DISTRIBUTED.md)")
    dist.add_argument("--nproc", type=int, default=1, help="processes to start on this machine")
    dist.add_argument("--world_size", type=int, default=-1, help="processes in all (default: nproc)")
    dist.add_argument("--ip", default=None, help="where the group meets (default: loopback)")
    dist.add_argument("--port", type=int, default=None, help="its port (default: a free one)")
    dist.add_argument("--offset", type=int, default=0, help="rank of this machine's first process")
    args, _unknown = parser.parse_known_args(argv)
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    if args.hyper:
        from recbole_pmtrec.tuning import tune

        return tune(
            model=args.model,
            dataset=args.dataset,
            params_file=args.hyper,
            config_file_list=config_files,
            algo=args.algo,
            max_evals=args.max_evals,
            output=args.output,
            save_trials=args.save_trials,
            workers=args.workers,
            ray_address=args.ray_address,
        )
    if args.nproc > 1 or args.world_size > 0:
        from recbole_pmtrec.launch import spawn

        result = spawn(
            args.model,
            args.dataset,
            config_files,
            None,
            args.nproc,
            args.world_size,
            args.ip,
            args.port,
            args.offset,
        )
        if result is None:  # rank 0 ran on another machine
            return {}
    else:
        from recbole_pmtrec.quick_start import run_recbole_pmtrec

        result = run_recbole_pmtrec(model=args.model, dataset=args.dataset, config_file_list=config_files)
    metrics = ", ".join(f"{k}={float(v):.4f}" for k, v in result["test_result"].items())
    print(f"test result ({args.model} on {args.dataset}): {metrics}")
    return result


if __name__ == "__main__":
    main()
