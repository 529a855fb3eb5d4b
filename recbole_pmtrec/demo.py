"""The README's main job: train models on ml-100k with one seed and split, print their test metrics side by side.

    python -m recbole_pmtrec.demo [--models BPR PMTRec] [--dataset ml-100k] [--config_files a.yaml ...]

Without --config_files it uses properties/demo_ml100k.yaml (the protocol and PMTRec's tuned knobs);
any --key=value is a RecBole parameter for every model.
"""

from __future__ import annotations

import argparse
import sys

from recbole_pmtrec.config import properties_dir
from recbole_pmtrec.quick_start import run_recbole_pmtrec

DEFAULT_MODELS = ["BPR", "PMTRec"]


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config_files", nargs="+", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    models = args.models or DEFAULT_MODELS
    config_files = args.config_files or [str(properties_dir() / "demo_ml100k.yaml")]
    results = {}
    for model in models:
        result = run_recbole_pmtrec(model=model, dataset=args.dataset, config_file_list=config_files)
        results[model] = result["test_result"]
    metrics = list(next(iter(results.values())).keys())
    print(f"\nTest metrics on {args.dataset} (same split and seed):")
    print("| model | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for model, result in results.items():
        print(f"| {model} | " + " | ".join(f"{float(result[m]):.4f}" for m in metrics) + " |")
    return results


if __name__ == "__main__":
    main()
