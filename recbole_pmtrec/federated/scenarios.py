"""Scenario data: one folder of RecBole atomic files per scenario (= client), cut from real logs.

``prepare(fed_config)`` writes ``<data_path>/<dataset>-<scenario>/`` for every scenario of the run, plus the
run's public vocabulary ``<data_path>/<dataset>-public/vocabulary.json`` (the token values of every shared
feature field: the item catalog, occupations, genres, ...), and prints the counts per client. A client then
reads its own folder and the vocabulary, nothing else (``client.py``). Scenarios:

- **ml-100k** (RecBole's wheel): users by age band, disjoint users: ``age_lt25`` (< 25), ``age_25_34``,
  ``age_35_44``, ``age_ge45`` (>= 45). Each folder holds its users' ``.inter`` rows, their ``.user`` rows and
  the ``.item`` rows of the items they rated. Tasks ``label`` (interaction vs sampled item) and ``like``
  (rating >= 4); features user id (private), age, gender, occupation, item id, release year, genres.
- **epinions** (``../shared/data/epinions/raw``, through the project's converter, repeated (user, item)
  pairs reduced to their first row): one item category per client (slug of ``catalog_epinion.txt``:
  ``movies``, ``books``, ``music``, ``kids_family``, ...); an item listed under several categories belongs to
  the lowest-numbered one among the run's scenarios. Users are shared across clients. Tasks ``label``,
  ``like`` (rating >= 4); features user id (private) and item id.
- **aliexpress** (MTReclib's processed CSVs): one country per client, ``<raw_path>/AliExpress_<XX>/``
  ``{train,test}.csv``, through the project's converter (validation = a seeded 10 % of the train rows);
  tasks ``click``, ``conversion`` (counted on clicked rows); 16 categorical + 63 numerical features.

``python -m recbole_pmtrec.federated.scenarios --config properties/federated/ml100k.yaml`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

#: ml-100k age bands: scenario -> [low, high)
ML100K_AGE_BANDS = {"age_lt25": (0, 25), "age_25_34": (25, 35), "age_35_44": (35, 45), "age_ge45": (45, 1000)}
LIKE_THRESHOLD = 4


def scenario_name(fed_config: dict, scenario: str) -> str:
    """The RecBole dataset name of one scenario (its folder and file stem)."""
    return f"{fed_config['dataset']}-{scenario}"


def scenario_folder(fed_config: dict, scenario: str) -> Path:
    return Path(fed_config["data_path"]) / scenario_name(fed_config, scenario)


def vocabulary_file(fed_config: dict) -> Path:
    return Path(fed_config["data_path"]) / f"{fed_config['dataset']}-public" / "vocabulary.json"


def read_vocabulary(fed_config: dict) -> dict[str, list[str]]:
    """``{field: [token, ...]}``: row ``i + 1`` of a shared table is ``tokens[i]``; row 0 = padding / unknown."""
    path = vocabulary_file(fed_config)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: prepare the scenarios first "
            f"(python -m recbole_pmtrec.federated.scenarios --config <yaml>)"
        )
    return json.loads(path.read_text(encoding="utf-8"))["fields"]


# ------------------------------------------------------------------------------------------ RecBole config


def recbole_settings(fed_config: dict, scenario: str) -> tuple[dict, list[str]]:
    """The RecBole config dict and config files of one scenario's client (data part only)."""
    name = scenario_name(fed_config, scenario)
    folder = scenario_folder(fed_config, scenario)
    settings = {"data_path": str(folder.parent), "dataset": name, "metrics": ["AUC", "LogLoss"]}
    if fed_config["dataset"] == "aliexpress":
        settings["valid_metric"] = f"auc@{fed_config['tasks'][0]}"
        return settings, [str(folder / f"{name}.yaml")]
    main, *others = fed_config["tasks"]
    load_col = {"inter": ["user_id", "item_id", "rating"]}
    if fed_config["dataset"] == "ml-100k":
        load_col.update(
            user=["user_id", "age", "gender", "occupation"], item=["item_id", "release_year", "class"]
        )
    settings.update(
        load_col=load_col,
        USER_ID_FIELD="user_id",
        ITEM_ID_FIELD="item_id",
        RATING_FIELD="rating",
        TIME_FIELD=None,
        LABEL_FIELD=main,
        task_labels=[main, *others],
        label_thresholds={task: ["rating", LIKE_THRESHOLD] for task in others},
        threshold=None,
        normalize_all=False,
        train_neg_sample_args={"distribution": "uniform", "sample_num": 1},
        eval_args={
            "split": {"RS": list(fed_config["split"])},
            "order": "RO",
            "group_by": "user",
            "mode": fed_config["eval_mode"],
        },
        valid_metric=f"auc@{main}",
    )
    return settings, []


# ----------------------------------------------------------------------------------------------- helpers


def _read_atomic(path: Path) -> pd.DataFrame:
    """An atomic file as strings, header cells kept as column names (``user_id:token``)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8")


def _write_atomic(frame: pd.DataFrame, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, quoting=3, lineterminator="\n", encoding="utf-8")
    return len(frame)


def _tokens(series: pd.Series, seq: bool) -> list[str]:
    values = series.str.split(" ").explode() if seq else series
    return sorted(set(values.dropna()) - {""}, key=lambda t: (len(t), t) if t.isdigit() else (1 << 30, t))


def _counts(inter: pd.DataFrame, labels: dict[str, pd.Series]) -> dict:
    out = {"rows": len(inter)}
    for field in ("user_id:token", "item_id:token"):
        if field in inter:
            out[field.split("_")[0] + "s"] = int(inter[field].nunique())
    out.update({f"rate:{task}": round(float(values.mean()), 4) for task, values in labels.items()})
    return out


def _check_scenarios(fed_config: dict, known: list[str], what: str) -> None:
    unknown = [s for s in fed_config["scenarios"] if s not in known]
    if unknown:
        raise ValueError(
            f"{fed_config['dataset']}: unknown scenario(s) {unknown}; {what}: {', '.join(known)}"
        )


def ml100k_raw_dir() -> Path:
    import recbole

    return Path(recbole.__file__).parent / "dataset_example" / "ml-100k"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower().replace("&", "")).strip("_")


# ---------------------------------------------------------------------------------------------- datasets


def _prepare_ml100k(fed_config: dict) -> tuple[dict, dict]:
    _check_scenarios(fed_config, list(ML100K_AGE_BANDS), "the age bands are")
    raw = Path(fed_config["raw_path"] or ml100k_raw_dir())
    inter, users, items = (_read_atomic(raw / f"ml-100k.{s}") for s in ("inter", "user", "item"))
    age = users["age:token"].astype(int)
    counts = {}
    for scenario in fed_config["scenarios"]:
        low, high = ML100K_AGE_BANDS[scenario]
        own_users = users[(age >= low) & (age < high)]
        rows = inter[inter["user_id:token"].isin(own_users["user_id:token"])]
        if rows.empty:
            raise ValueError(f"ml-100k: scenario {scenario!r} has no rows (no user aged {low} to {high - 1})")
        own_items = items[items["item_id:token"].isin(rows["item_id:token"])]
        name, folder = scenario_name(fed_config, scenario), scenario_folder(fed_config, scenario)
        _write_atomic(rows, folder / f"{name}.inter")
        _write_atomic(own_users, folder / f"{name}.user")
        _write_atomic(own_items, folder / f"{name}.item")
        counts[scenario] = _counts(rows, {"like": rows["rating:float"].astype(float) >= LIKE_THRESHOLD})
    vocabulary = {
        "item_id": _tokens(items["item_id:token"], False),
        "release_year": _tokens(items["release_year:token"], False),
        "class": _tokens(items["class:token_seq"], True),
        **{f: _tokens(users[f"{f}:token"], False) for f in ("age", "gender", "occupation")},
    }
    return counts, vocabulary


def _prepare_epinions(fed_config: dict) -> tuple[dict, dict]:
    from recbole_pmtrec.data.convert.epinions import convert_epinions

    raw = Path(fed_config["raw_path"] or "../shared/data/epinions/raw")
    catalog = (raw / "catalog_epinion.txt").read_text(encoding="utf-8").splitlines()
    category_of = {slug(line.split(" ", 1)[1]): line.split(" ", 1)[0] for line in catalog if line.strip()}
    _check_scenarios(fed_config, list(category_of), "the categories (catalog_epinion.txt) are")
    with tempfile.TemporaryDirectory() as tmp:
        convert_epinions(raw, tmp, None, dedupe="first")
        inter = _read_atomic(Path(tmp) / "epinions" / "epinions.inter")
        items = _read_atomic(Path(tmp) / "epinions" / "epinions.item")
    wanted = [category_of[s] for s in fed_config["scenarios"]]
    rank = {c: r for r, c in enumerate(sorted(wanted, key=int))}
    chosen = (
        items["category:token_seq"]
        .str.split(" ")
        .map(lambda cs: min((c for c in cs if c in rank), key=lambda c: rank[c], default=None))
    )
    item_category = dict(zip(items["item_id:token"], chosen))
    row_category = inter["item_id:token"].map(item_category)
    counts, catalog_items = {}, []
    for scenario in fed_config["scenarios"]:
        rows = inter[row_category == category_of[scenario]]
        if rows.empty:
            raise ValueError(f"epinions: scenario {scenario!r} has no rows")
        name, folder = scenario_name(fed_config, scenario), scenario_folder(fed_config, scenario)
        _write_atomic(rows, folder / f"{name}.inter")
        catalog_items.append(rows["item_id:token"])
        counts[scenario] = _counts(rows, {"like": rows["rating:float"].astype(float) >= LIKE_THRESHOLD})
    return counts, {"item_id": _tokens(pd.concat(catalog_items), False)}


def _prepare_aliexpress(fed_config: dict) -> tuple[dict, dict]:
    from recbole_pmtrec.data.convert.ali_mtl import convert_aliexpress

    if not fed_config["raw_path"]:
        raise ValueError("aliexpress: set raw_path to the folder holding AliExpress_<XX>/{train,test}.csv")
    raw = Path(fed_config["raw_path"])
    counts, frames = {}, []
    click, conversion = fed_config["tasks"]
    for scenario in fed_config["scenarios"]:
        name, folder = scenario_name(fed_config, scenario), scenario_folder(fed_config, scenario)
        convert_aliexpress(raw / f"AliExpress_{scenario}", folder.parent, folder, name=name)
        parts = [_read_atomic(folder / f"{name}.{p}.inter") for p in ("train", "valid", "test")]
        rows = pd.concat(parts)
        if rows.empty:
            raise ValueError(f"aliexpress: scenario {scenario!r} has no rows")
        frames.append(rows)
        labels = {t: rows[f"{t}:float"].astype(float) for t in (click, conversion)}
        counts[scenario] = {**_counts(rows, labels), "train/valid/test": "/".join(str(len(p)) for p in parts)}
    pooled = pd.concat(frames)
    fields = [c for c in pooled.columns if c.endswith(":token")]
    return counts, {f.split(":")[0]: _tokens(pooled[f], False) for f in fields}


PREPARE = {"ml-100k": _prepare_ml100k, "epinions": _prepare_epinions, "aliexpress": _prepare_aliexpress}


def prepare(fed_config: dict, verbose: bool = True) -> dict[str, dict]:
    """Write every scenario's folder and the public vocabulary; return (and print) the counts per client."""
    for scenario in fed_config["scenarios"]:
        folder = scenario_folder(fed_config, scenario)
        if folder.is_dir():
            shutil.rmtree(folder)
    counts, vocabulary = PREPARE[fed_config["dataset"]](fed_config)
    path = vocabulary_file(fed_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = {f: len(tokens) for f, tokens in vocabulary.items()}
    path.write_text(
        json.dumps({"dataset": fed_config["dataset"], "sizes": sizes, "fields": vocabulary}), "utf-8"
    )
    if verbose:
        print(format_counts(fed_config["dataset"], counts))
        print(f"public vocabulary ({path.name}): " + ", ".join(f"{f} {n}" for f, n in sizes.items()))
    return counts


def format_counts(dataset: str, counts: dict[str, dict]) -> str:
    """A markdown table of the counts per client."""
    columns = list(dict.fromkeys(k for c in counts.values() for k in c))
    lines = [f"| {dataset} scenario | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    for scenario, c in counts.items():
        lines.append(f"| {scenario} | " + " | ".join(f"{c.get(k, '')}" for k in columns) + " |")
    return "\n".join(lines)


def inter_files(fed_config: dict, scenario: str) -> list[Path]:
    """The scenario's interaction files: ``<name>.inter``, or the pre-split ``<name>.{train,valid,test}.inter``."""
    name, folder = scenario_name(fed_config, scenario), scenario_folder(fed_config, scenario)
    return sorted(folder.glob(f"{name}.inter")) + sorted(folder.glob(f"{name}.*.inter"))


def has_rows(fed_config: dict, scenario: str) -> bool:
    """Whether any interaction file of the scenario holds a row below its header."""
    for path in inter_files(fed_config, scenario):
        with open(path, "rb") as handle:
            if sum(1 for _ in zip(range(2), handle)) > 1:
                return True
    return False


def is_prepared(fed_config: dict) -> bool:
    return vocabulary_file(fed_config).is_file() and all(
        scenario_folder(fed_config, s).is_dir() for s in fed_config["scenarios"]
    )


def main(argv: list[str] | None = None) -> int:
    from recbole_pmtrec.federated.config import load_config

    parser = argparse.ArgumentParser(prog="python -m recbole_pmtrec.federated.scenarios", description=__doc__)
    parser.add_argument("--config", required=True, help="a federated yaml (properties/federated/*.yaml)")
    parser.add_argument("--data_path", help="override the yaml's data_path")
    parser.add_argument("--raw_path", help="override the yaml's raw_path")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("data_path", args.data_path), ("raw_path", args.raw_path)) if v}
    try:
        prepare(load_config(args.config, overrides))
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
