"""Click + conversion CTR data (AliExpress, Ali-CCP) -> RecBole pre-split multi-label files.

Both are tabular multi-task sets (no negative sampling): sparse integer-coded fields become ``token`` fields,
dense ones ``float`` fields (already normalised by their preprocessing), and the two labels float fields.
Conversion is observed only after a click, so the dataset yaml counts the conversion task on clicked rows
(``task_masks: {<conversion>: click}``: PLE's sample-space handling; drop it for ESMM-style CTCVR).

- AliExpress (Tianchi 74690, MTReclib's processed CSVs, ``../shared/data/aliexpress-sample``): ``train.csv`` /
  ``test.csv`` of one country (or the ``aliexpress_{train,test}_sample.csv`` fixture); ``search_id`` is
  dropped; validation is a seeded random ``VALID_FRACTION`` of the train rows.
- Ali-CCP (Tianchi 408, ``../shared/data/ali-ccp-sample``): ``ali_ccp_{train,val,test}.csv`` (or the
  ``*_sample.csv`` fixture), already split; field ids are prefixed with ``f`` (``101`` -> ``f101``);
  ``f301`` is the scenario (position category).

``python -m recbole_pmtrec.data.convert.ali_mtl aliexpress --raw DIR --out dataset/`` (or ``ali-ccp``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ._common import Reporter, _flow, write_atomic, write_yaml
from ._read import check_last_line

VALID_FRACTION = 0.1
SPLIT_SEED = 2020

#: name -> (parts as {part: candidate file names}, label fields (click first), dropped columns, prefix)
DATASETS = {
    "aliexpress": {
        "parts": {
            "train": ("train.csv", "aliexpress_train_sample.csv"),
            "test": ("test.csv", "aliexpress_test_sample.csv"),
        },
        "labels": ("click", "conversion"),
        "drop": ("search_id",),
        "prefix": "",
    },
    "ali-ccp": {
        "parts": {
            "train": ("ali_ccp_train.csv", "ali_ccp_train_sample.csv"),
            "valid": ("ali_ccp_val.csv", "ali_ccp_val_sample.csv"),
            "test": ("ali_ccp_test.csv", "ali_ccp_test_sample.csv"),
        },
        "labels": ("click", "purchase"),
        "drop": (),
        "prefix": "f",
    },
}


def field_type(column: str) -> str:
    """``float`` for the dense columns (AliExpress ``numerical_*``, Ali-CCP ``D*``), else ``token``."""
    return "float" if column.startswith("numerical_") or re.fullmatch(r"D\d.*", column) else "token"


def _find(raw_dir: Path, candidates: tuple[str, ...], name: str) -> Path:
    for candidate in candidates:
        if (raw_dir / candidate).is_file():
            return raw_dir / candidate
    raise FileNotFoundError(
        f"{name}: none of {', '.join(candidates)} in {raw_dir}; pass --raw the folder holding them"
    )


def _read(path: Path, labels: tuple[str, ...], drop: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, na_filter=False)
    check_last_line(path, ",", len(frame.columns))
    missing = [c for c in (*labels, *drop) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: header lacks {missing} (columns: {', '.join(frame.columns)})")
    for label in labels:
        bad = ~frame[label].isin(["0", "1"])
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise ValueError(
                f"{path}: line {line}: label {label!r} is {frame[label].iloc[line - 2]!r}, not 0 or 1"
            )
    return frame.drop(columns=list(drop))


def convert_ali_mtl(
    dataset: str,
    raw_dir: str | Path,
    out_dir: str | Path,
    yaml_dir: str | Path | Literal[False] | None = None,
    *,
    name: str | None = None,
    verbose: bool = False,
) -> dict:
    """Convert ``dataset`` (``aliexpress`` or ``ali-ccp``); returns the counts written."""
    spec = DATASETS[dataset]
    name = name or dataset
    rep = Reporter(name, verbose)
    raw_dir = Path(raw_dir)
    click, conversion = spec["labels"]
    frames = {}
    for part, candidates in spec["parts"].items():
        path = _find(raw_dir, candidates, dataset)
        rep.log(f"reading {path.name}")
        frames[part] = _read(path, spec["labels"], spec["drop"])
    if "valid" not in frames:
        train = frames.pop("train")
        is_valid = np.zeros(len(train), dtype=bool)
        rows = np.random.default_rng(SPLIT_SEED).choice(
            len(train), round(VALID_FRACTION * len(train)), replace=False
        )
        is_valid[rows] = True
        frames = {"train": train[~is_valid], "valid": train[is_valid], **frames}

    columns = [c for c in frames["train"].columns if c not in spec["labels"]]
    fields = {c: spec["prefix"] + c for c in columns}
    schema = [(fields[c], field_type(c)) for c in columns] + [(label, "float") for label in spec["labels"]]
    out = Path(out_dir) / name
    rep.counts["splits"] = {}
    for part, frame in frames.items():
        data = {fields[c]: frame[c].to_numpy() for c in columns}
        data.update({label: frame[label].astype(np.int64).to_numpy() for label in spec["labels"]})
        path = out / f"{name}.{part}.inter"
        rep.counts["splits"][part] = write_atomic(path, schema, data)
        rep.counts["files"].append(str(path))
        rep.note(f"{part} {click} positives", int(data[click].sum()))
        rep.note(f"{part} {conversion} positives", int(data[conversion].sum()))
        rep.note(f"{part} {conversion} without {click}", int((data[conversion] > data[click]).sum()))
    rep.counts["interactions"] = sum(rep.counts["splits"].values())
    token_fields = [f for f, t in schema if t == "token"]
    float_fields = [f for f, t in schema if t == "float" and f not in spec["labels"]]
    rep.note("features", f"{len(token_fields)} token + {len(float_fields)} float")
    yaml = [
        f"# Generated by: python -m recbole_pmtrec.data.convert.ali_mtl {dataset} --raw <raw> --out dataset/",
        "# Do not edit: regenerate it (schema in recbole_pmtrec/data/convert/ali_mtl.py).",
        "USER_ID_FIELD: ~",
        "ITEM_ID_FIELD: ~",
        "RATING_FIELD: ~",
        "TIME_FIELD: ~",
        f"LABEL_FIELD: {click}",
        f"task_labels: {_flow(list(spec['labels']))}",
        f"task_masks: {{{conversion}: {click}}}   # conversion counted on clicked rows only",
        "load_col: ~",
        f"numerical_features: {_flow(float_fields)}",
        "normalize_all: False",
        "benchmark_filename: [train, valid, test]",
        "train_neg_sample_args: ~",
        "eval_args: {split: {RS: [0.8, 0.1, 0.1]}, order: RO, group_by: ~, mode: labeled}",
        "metrics: [AUC, LogLoss]",
        "valid_metric: AUC",
    ]
    write_yaml(yaml_dir, name, "\n".join(yaml) + "\n", rep, out)
    return rep.finish()


def convert_aliexpress(
    raw_dir, out_dir, yaml_dir=None, *, name: str = "aliexpress", verbose: bool = False
) -> dict:
    """AliExpress (one country's train.csv / test.csv, or the sample): see the module docstring."""
    return convert_ali_mtl("aliexpress", raw_dir, out_dir, yaml_dir, name=name, verbose=verbose)


def convert_ali_ccp(raw_dir, out_dir, yaml_dir=None, *, name: str = "ali-ccp", verbose: bool = False) -> dict:
    """Ali-CCP (ali_ccp_{train,val,test}.csv, or the samples): see the module docstring."""
    return convert_ali_mtl("ali-ccp", raw_dir, out_dir, yaml_dir, name=name, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_pmtrec.data.convert.ali_mtl", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--raw", required=True, type=Path, help="folder holding the CSV files")
    parser.add_argument("--out", required=True, type=Path, help="output root; files go to OUT/<name>/")
    parser.add_argument("--name", help="output dataset name (default: the dataset's)")
    parser.add_argument(
        "--yaml-dir",
        type=Path,
        help="also write <name>.yaml there (it is always written beside the files: OUT/<name>/<name>.yaml)",
    )
    parser.add_argument("--no-yaml", action="store_true", help="write no dataset yaml at all")
    args = parser.parse_args(argv)
    try:
        counts = convert_ali_mtl(
            args.dataset,
            args.raw,
            args.out,
            False if args.no_yaml else args.yaml_dir,
            name=args.name,
            verbose=True,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{counts['dataset']}: {counts['splits']}; "
        + ", ".join(f"{k}: {v}" for k, v in counts["notes"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
