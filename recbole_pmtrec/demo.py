"""The README's main job: train models on ml-100k with one seed and split, print their test metrics side by side.

python -m recbole_pmtrec.demo [--models BPR PMTRec] [--dataset ml-100k] [--key=value ...]
"""

from __future__ import annotations

import argparse
import sys

from recbole_pmtrec.quick_start import run_recbole_pmtrec
from recbole_pmtrec.utils import plugin_models

DEFAULT_MODELS = ["BPR", "PMTRec"]


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--dataset", default="ml-100k")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    models = args.models or [m for m in DEFAULT_MODELS if m == "BPR" or m in plugin_models()]
    results = {}
    for model in models:
        results[model] = run_recbole_pmtrec(model=model, dataset=args.dataset)["test_result"]
    metrics = list(next(iter(results.values())).keys())
    print(f"\nTest metrics on {args.dataset} (same split and seed):")
    print("| model | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for model, result in results.items():
        print(f"| {model} | " + " | ".join(f"{float(result[m]):.4f}" for m in metrics) + " |")
    return results


if __name__ == "__main__":
    main()
