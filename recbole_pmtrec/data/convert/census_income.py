"""UCI Census-Income (KDD), the MMoE / PLE multi-task benchmark -> RecBole pre-split multi-label files.

Raw layout (``../shared/data/census-income-kdd/SOURCE.md``): ``census_income_1994_1995_train.csv.gz``
(199,523 rows) and ``census-income.test.gz`` (99,762 rows), no header, 42 fields separated by ``", "``.

Written: ``census-income.{train,valid,test}.inter`` (``benchmark_filename: [train, valid, test]``); the
official test file is the test part, and a seeded random ``VALID_FRACTION`` of the official train rows is
the validation part. Two float labels per row (Ma et al. KDD 2018 Sec. 5.3; Tang et al. RecSys 2020):

- ``income``: 1 where column 41 is ``50000+.`` (income > 50K; the main task);
- ``marital``: 1 where column 7 (marital status) is ``Never married``.

Features: the 32 categorical columns as ``token`` fields (``?`` kept as its own value) and the 7 continuous
ones as ``float`` fields listed in ``numerical_features``. The continuous values are ``log1p``-compressed
where heavy-tailed (money amounts) and standardised with the mean and standard deviation of the *train
part only*, so nothing of the validation or test rows shapes the inputs. Not features: the two label source
columns (7 and 41) and ``instance weight`` (column 24: a survey weight, which the ``.names`` file says not
to use). Every row is kept (duplicates included), as in the official splits.

``python -m recbole_pmtrec.data.convert.census_income --raw ../shared/data/census-income-kdd/raw --out dataset/``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ._common import Reporter, _flow, write_atomic, write_yaml
from ._read import require_file

NAME = "census-income"
TRAIN_FILE = "census_income_1994_1995_train.csv.gz"
TEST_FILE = "census-income.test.gz"
VALID_FRACTION = 0.1
SPLIT_SEED = 2020

#: the 42 raw columns in file order (census-income.names.txt): (field name, role)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("age", "float"),
    ("class_of_worker", "token"),
    ("detailed_industry_recode", "token"),
    ("detailed_occupation_recode", "token"),
    ("education", "token"),
    ("wage_per_hour", "money"),
    ("enroll_in_edu_inst_last_wk", "token"),
    ("marital_stat", "label"),
    ("major_industry_code", "token"),
    ("major_occupation_code", "token"),
    ("race", "token"),
    ("hispanic_origin", "token"),
    ("sex", "token"),
    ("member_of_a_labor_union", "token"),
    ("reason_for_unemployment", "token"),
    ("full_or_part_time_employment_stat", "token"),
    ("capital_gains", "money"),
    ("capital_losses", "money"),
    ("dividends_from_stocks", "money"),
    ("tax_filer_stat", "token"),
    ("region_of_previous_residence", "token"),
    ("state_of_previous_residence", "token"),
    ("detailed_household_and_family_stat", "token"),
    ("detailed_household_summary_in_household", "token"),
    ("instance_weight", "drop"),
    ("migration_code_change_in_msa", "token"),
    ("migration_code_change_in_reg", "token"),
    ("migration_code_move_within_reg", "token"),
    ("live_in_this_house_1_year_ago", "token"),
    ("migration_prev_res_in_sunbelt", "token"),
    ("num_persons_worked_for_employer", "float"),
    ("family_members_under_18", "token"),
    ("country_of_birth_father", "token"),
    ("country_of_birth_mother", "token"),
    ("country_of_birth_self", "token"),
    ("citizenship", "token"),
    ("own_business_or_self_employed", "token"),
    ("fill_inc_questionnaire_for_veterans_admin", "token"),
    ("veterans_benefits", "token"),
    ("weeks_worked_in_year", "float"),
    ("year", "token"),
    ("income_class", "label"),
)
TOKEN_FIELDS = [name for name, role in COLUMNS if role == "token"]
FLOAT_FIELDS = [name for name, role in COLUMNS if role in ("float", "money")]
LABELS = ("income", "marital")
INCOME_VALUES = {"- 50000.": 0.0, "50000+.": 1.0}


def read_raw(path: Path) -> pd.DataFrame:
    """One raw split as strings, every cell stripped; a row without 42 fields raises a ``ValueError``."""
    names = [name for name, _ in COLUMNS]
    try:
        frame = pd.read_csv(
            path, header=None, names=names, sep=",", skipinitialspace=True, dtype=str, na_filter=False
        )
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: not 42 comma separated fields per row ({err})") from err
    short = frame[names[-1]] == ""
    if short.any():
        line = int(np.flatnonzero(short.to_numpy())[0]) + 1
        raise ValueError(f"{path}: line {line}: fewer than 42 fields (the income column is empty)")
    return frame.apply(lambda column: column.str.strip())


def labels(frame: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    """The two task labels; an unknown income value raises a ``ValueError`` naming the line."""
    income = frame["income_class"].map(INCOME_VALUES)
    if income.isna().any():
        line = int(np.flatnonzero(income.isna().to_numpy())[0]) + 1
        raise ValueError(
            f"{path}: line {line}: income column {frame['income_class'].iloc[line - 1]!r} is neither "
            f"of {sorted(INCOME_VALUES)}"
        )
    marital = (frame["marital_stat"] == "Never married").astype(float)
    return {"income": income.to_numpy(dtype=float), "marital": marital.to_numpy()}


def continuous(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The continuous columns as float64, money amounts ``log1p``-compressed (not yet standardised)."""
    out = {}
    for name, role in COLUMNS:
        if role not in ("float", "money"):
            continue
        values = pd.to_numeric(frame[name], errors="coerce")
        if values.isna().any():
            line = int(np.flatnonzero(values.isna().to_numpy())[0]) + 1
            raise ValueError(
                f"{path}: line {line}: field {name!r}: {frame[name].iloc[line - 1]!r} is no number"
            )
        values = values.to_numpy(dtype=np.float64)
        out[name] = np.log1p(np.maximum(values, 0.0)) if role == "money" else values
    return pd.DataFrame(out)


def dataset_yaml() -> str:
    """The dataset yaml (schema from ``COLUMNS``)."""
    fields = TOKEN_FIELDS + FLOAT_FIELDS + list(LABELS)
    lines = [
        "# Generated by: python -m recbole_pmtrec.data.convert.census_income --raw <raw> --out dataset/",
        "# Do not edit: regenerate it (schema in recbole_pmtrec/data/convert/census_income.py).",
        "# Tabular multi-task data: no users or items, two labels per row, no negative sampling.",
        "USER_ID_FIELD: ~",
        "ITEM_ID_FIELD: ~",
        "RATING_FIELD: ~",
        "TIME_FIELD: ~",
        "LABEL_FIELD: income",
        f"task_labels: {_flow(list(LABELS))}   # main task first",
        "load_col:",
        f"  inter: {_flow(fields)}",
        f"numerical_features: {_flow(FLOAT_FIELDS)}",
        "normalize_all: False           # the converter standardised the floats with train statistics",
        "benchmark_filename: [train, valid, test]   # <name>.<part>.inter, pre-split",
        "train_neg_sample_args: ~",
        "eval_args: {split: {RS: [0.8, 0.1, 0.1]}, order: RO, group_by: ~, mode: labeled}",
        "metrics: [AUC, LogLoss]",
        "valid_metric: AUC               # the main task's; any of auc@income, auc@marital, logloss@...",
    ]
    return "\n".join(lines) + "\n"


def convert_census_income(
    raw_dir: str | Path,
    out_dir: str | Path,
    yaml_dir: str | Path | Literal[False] | None = None,
    *,
    name: str = NAME,
    verbose: bool = False,
) -> dict:
    """Convert the official train / test files; returns the counts written (rows and positives per part)."""
    rep = Reporter(name, verbose)
    raw_dir = Path(raw_dir)
    hint = f"{TRAIN_FILE} and {TEST_FILE} (e.g. ../shared/data/census-income-kdd/raw)"
    paths = {
        "train": require_file(raw_dir, TRAIN_FILE, NAME, hint),
        "test": require_file(raw_dir, TEST_FILE, NAME, hint),
    }
    raw = {}
    for part, path in paths.items():
        rep.log(f"reading {path.name}")
        frame = read_raw(path)
        raw[part] = (frame, labels(frame, path), continuous(frame, path))

    train_rows = len(raw["train"][0])
    is_valid = np.zeros(train_rows, dtype=bool)
    valid_rows = np.random.default_rng(SPLIT_SEED).choice(
        train_rows, round(VALID_FRACTION * train_rows), replace=False
    )
    is_valid[valid_rows] = True
    selections = {"train": ("train", ~is_valid), "valid": ("train", is_valid), "test": ("test", slice(None))}
    train_floats = raw["train"][2][~is_valid]
    mean, std = train_floats.mean(), train_floats.std().replace(0.0, 1.0)

    columns = [(f, "token") for f in TOKEN_FIELDS] + [(f, "float") for f in FLOAT_FIELDS]
    columns += [(label, "float") for label in LABELS]
    out = Path(out_dir) / name
    rep.counts["splits"] = {}
    for part, (source, rows) in selections.items():
        frame, task_labels, floats = raw[source]
        data = {f: frame[f].to_numpy()[rows] for f in TOKEN_FIELDS}
        data.update({f: np.round(((floats[f] - mean[f]) / std[f]).to_numpy()[rows], 6) for f in FLOAT_FIELDS})
        data.update({label: task_labels[label][rows].astype(np.int64) for label in LABELS})
        path = out / f"{name}.{part}.inter"
        written = write_atomic(path, columns, data)
        rep.counts["files"].append(str(path))
        rep.counts["splits"][part] = written
        for label in LABELS:
            rep.note(f"{part} {label} positives", int(data[label].sum()))
    rep.counts["interactions"] = sum(rep.counts["splits"].values())
    rep.note("features", f"{len(TOKEN_FIELDS)} token + {len(FLOAT_FIELDS)} float")
    write_yaml(yaml_dir, name, dataset_yaml(), rep, out)
    return rep.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_pmtrec.data.convert.census_income", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--raw", required=True, type=Path, help="folder holding the two raw files")
    parser.add_argument("--out", required=True, type=Path, help="output root; files go to OUT/census-income/")
    parser.add_argument(
        "--yaml-dir",
        type=Path,
        help="also write census-income.yaml there (always written beside the files: OUT/census-income/)",
    )
    parser.add_argument("--no-yaml", action="store_true", help="write no dataset yaml at all")
    args = parser.parse_args(argv)
    try:
        counts = convert_census_income(
            args.raw, args.out, False if args.no_yaml else args.yaml_dir, verbose=True
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{counts['dataset']}: converted in {counts['seconds']:.1f} s")
    for part, n in counts["splits"].items():
        print(f"  {part:<6}{n:>10,} rows")
    for what, value in counts["notes"].items():
        print(f"  {what}: {value:,}" if isinstance(value, int) else f"  {what}: {value}")
    print("  wrote:\n" + "\n".join(f"    {f}" for f in counts["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
