"""PMTRec vs EW with each encoder (MF, NGCF, LightGCN): the layout of the paper's Fig. 3, as a budgeted run.

Every (encoder, method) pair trains with the same fixed hyperparameters (no grid search: the paper tunes lr,
weight decay, alpha and tau per method) for at most ``--epochs`` epochs with early stopping on the
validation metric, then reports the test metrics of the best validation epoch. One JSON line per run as it
finishes, then a table. Checkpoints go to a temporary folder.

    OMP_NUM_THREADS=1 python benchmarks/encoder_comparison.py --dataset office --epochs 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from recbole_pmtrec import run_recbole_pmtrec  # noqa: E402

ENCODERS = ("mf", "ngcf", "lightgcn")
METHODS = ("ew", "pmtrec")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="office")
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--stopping_step", type=int, default=10)
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--weight_decay", type=float, default=1e-6)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # RecBole's Config reads --key=value from sys.argv
    checkpoints = tempfile.mkdtemp(prefix="encoder_comparison_")
    rows = []
    for encoder in args.encoders:
        for method in METHODS:
            config = {
                "data_path": args.data_path,
                "encoder": encoder,
                "mtl_method": method,
                "epochs": args.epochs,
                "stopping_step": args.stopping_step,
                "learning_rate": args.learning_rate,
                "weight_decay": args.weight_decay,
                "seed": args.seed,
                "metrics": ["Recall", "NDCG"],
                "topk": [20, 40],
                "valid_metric": "Recall@20",
                "show_progress": False,
                "state": "WARNING",
                "use_gpu": torch.cuda.is_available(),
                "checkpoint_dir": checkpoints,  # the best validation epoch is reloaded for the test
            }
            start = time.perf_counter()
            result = run_recbole_pmtrec("PMTRec", args.dataset, config_dict=config, saved=True)
            row = {
                "dataset": args.dataset,
                "encoder": encoder,
                "method": method,
                "test": {k: round(float(v), 4) for k, v in result["test_result"].items()},
                "best_valid_recall@20": round(float(result["best_valid_score"]), 4),
                "minutes": round((time.perf_counter() - start) / 60, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| encoder | method | test Recall@20 | test NDCG@20 | test Recall@40 | best valid Recall@20 | minutes |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["test"]
        print(
            f"| {r['encoder']} | {r['method']} | {t['recall@20']} | {t['ndcg@20']} | {t['recall@40']} | "
            f"{r['best_valid_recall@20']} | {r['minutes']} |"
        )


if __name__ == "__main__":
    main()
