"""``python -m recbole_pmtrec.data.convert NAME --raw RAW_DIR --out OUT_DIR [--yaml-dir DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CONVERTERS


def build_parser() -> argparse.ArgumentParser:
    datasets = "\n".join(f"  {name:<12} {desc}" for name, (_, desc) in CONVERTERS.items())
    parser = argparse.ArgumentParser(
        prog="python -m recbole_pmtrec.data.convert",
        description="Convert a raw dataset into RecBole atomic files and write its dataset yaml beside them "
        "(OUT/<name>/<name>.yaml, read by every run whose data_path is OUT, from any working directory).",
        epilog=f"datasets:\n{datasets}\n\nexample:\n  python -m recbole_pmtrec.data.convert epinions "
        "--raw ../shared/data/epinions/raw --out dataset/\n\nConventions and counts: docs/DATASETS.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset", choices=list(CONVERTERS), metavar="NAME", help="one of: " + ", ".join(CONVERTERS)
    )
    parser.add_argument("--raw", required=True, type=Path, help="folder holding the raw files")
    parser.add_argument(
        "--out", required=True, type=Path, help="output root; files go to OUT/<name>/<name>.<suffix>"
    )
    parser.add_argument(
        "--yaml-dir",
        type=Path,
        help="also write <name>.yaml into DIR (e.g. properties/dataset to regenerate the shipped yamls); the "
        "yaml is always written beside the atomic files, OUT/<name>/<name>.yaml, where runs find it",
    )
    parser.add_argument("--no-yaml", action="store_true", help="write no dataset yaml at all")
    parser.add_argument(
        "--name", help="output dataset name (default: the dataset's own; amazon-2018: from --category)"
    )
    parser.add_argument(
        "--category",
        help="amazon-2018 only: the category of <Category>_5.json.gz, e.g. Magazine_Subscriptions or "
        "Video_Games (default: the only one in --raw)",
    )
    parser.add_argument(
        "--dedupe",
        choices=("none", "exact", "first"),
        default="none",
        help="epinions / amazon-2018: none (default) keeps every rating row, exact drops rows repeating an "
        "earlier row, first keeps the first row of each (user, item) pair",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return parser


def format_counts(counts: dict) -> str:
    lines = [f"{counts['dataset']}: converted in {counts['seconds']:.1f} s"]
    for key in ("users", "items", "interactions"):
        lines.append(f"  {key:<14}{counts[key]:>12,}")
    for part, n in counts.get("splits", {}).items():
        lines.append(f"  {'  ' + part:<14}{n:>12,}")
    for rel, n in counts["relations"].items():
        lines.append(f"  {'relation ' + rel:<14}{n:>12,} rows")
    if counts["categories"] is not None:
        lines.append(f"  {'categories':<14}{counts['categories']:>12,}")
    if counts["dropped"]:
        lines.append("  dropped:")
        lines += [f"    {n:>10,}  {reason}" for reason, n in counts["dropped"].items()]
    if counts["notes"]:
        lines.append("  notes:")
        for what, value in counts["notes"].items():
            value = f"{value:,}" if isinstance(value, int) else value
            lines.append(f"    {what}: {value}")
    lines.append("  wrote:")
    lines += [f"    {f}" for f in counts["files"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    convert, _ = CONVERTERS[args.dataset]
    kwargs = {"verbose": not args.quiet}
    if args.name:
        kwargs["name"] = args.name
    if args.dataset == "amazon-2018":
        kwargs["category"] = args.category
    elif args.category:
        raise SystemExit("--category applies to amazon-2018 only")
    if args.dataset in ("epinions", "amazon-2018"):
        kwargs["dedupe"] = args.dedupe
    elif args.dedupe != "none":
        raise SystemExit("--dedupe applies to epinions and amazon-2018 only")
    try:
        counts = convert(args.raw, args.out, False if args.no_yaml else args.yaml_dir, **kwargs)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_counts(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
