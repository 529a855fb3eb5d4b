"""Shared helpers of the raw -> RecBole atomic file converters.

Everything here is independent of the rest of ``recbole_pmtrec`` and of RecBole itself: the converters
need numpy, pandas (and scipy for Epinions' ``.mat`` files) only.

Conventions of the files written (RecBole 1.2.1 atomic files):

* tab separated, LF line endings, UTF-8, one header line whose cells are ``name:type`` with type in
  ``token | token_seq | float | float_seq``;
* no quoting: RecBole reads the files with pandas' default quote handling, so no written value
  contains a tab, a newline or a double quote (:func:`clean_text` removes them);
* ``token_seq`` values are space separated tokens (an empty cell is an empty sequence);
* ids are written as tokens (their decimal string for integer ids), the same strings in every file
  of a dataset;
* relation files (``.net`` user-user, ``.coview`` / ``.cobuy`` item-item) have the header
  ``source_id:token\\ttarget_id:token``; an undirected relation is written once per unordered pair
  (source < target) and the reader adds the reverse direction.
"""

from __future__ import annotations

import csv
import html
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

RELATION_HEADER = ("source_id:token", "target_id:token")

# --------------------------------------------------------------------------------------------------
# progress / logging


class Reporter:
    """Collects counts of one conversion and optionally shows progress on stderr."""

    def __init__(self, dataset: str, verbose: bool = False):
        self.dataset = dataset
        self.verbose = verbose
        self.start = time.perf_counter()
        self.counts: dict[str, Any] = {
            "dataset": dataset,
            "users": 0,
            "items": 0,
            "interactions": 0,
            "relations": {},
            "categories": None,
            "dropped": {},
            "notes": {},
            "files": [],
            "seconds": 0.0,
        }

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[{self.dataset}] {msg}", file=sys.stderr, flush=True)

    def progress(self, iterable: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterable:
        if not self.verbose:
            return iterable
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm ships with recbole
            self.log(desc)
            return iterable
        return tqdm(iterable, desc=f"[{self.dataset}] {desc}", total=total, unit=unit, leave=False)

    def drop(self, reason: str, n: int) -> None:
        self.counts["dropped"][reason] = self.counts["dropped"].get(reason, 0) + int(n)

    def note(self, what: str, value: Any) -> None:
        self.counts["notes"][what] = value

    def finish(self) -> dict[str, Any]:
        self.counts["seconds"] = round(time.perf_counter() - self.start, 2)
        return self.counts


# --------------------------------------------------------------------------------------------------
# values


_WS = re.compile(r"\s+")


def clean_text(value: Any) -> str:
    """A free-text value made safe for a ``token`` cell: HTML entities decoded, whitespace runs turned
    into one space, double quotes removed, stripped."""
    if value is None:
        return ""
    text = html.unescape(str(value)).replace('"', "")
    return _WS.sub(" ", text).strip()


def clean_token(value: Any) -> str:
    """A free-text value made into one token of a ``token_seq`` cell: :func:`clean_text`, then spaces
    replaced by ``_``."""
    return clean_text(value).replace(" ", "_")


def number_column(values: np.ndarray) -> np.ndarray:
    """Integral floats as int64 (written as ``5`` instead of ``5.0``), other values unchanged."""
    values = np.asarray(values)
    if values.dtype.kind == "f" and len(values) and np.all(values == np.round(values)):
        if np.abs(values).max() < 2**53:
            return values.astype(np.int64)
    return values


def id_strings(values: np.ndarray) -> np.ndarray:
    """Ids as written into every file: integer ids stay integers (pandas writes their decimal string,
    faster than converting them), anything else becomes ``str``."""
    values = np.asarray(values)
    return values if values.dtype.kind in "iu" else values.astype(str)


def undirected_pairs(src: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Canonical unordered pairs (source < target) of a link list.

    Returns ``(source, target, n_self_loops, n_repeats)``: self loops are removed, every unordered
    pair kept once (sorted), ``n_repeats`` counts the links that repeated a pair already kept (the
    reverse direction included). Works on integer ids (numeric order) or strings.
    """
    src = np.asarray(src)
    tgt = np.asarray(tgt)
    loop = src == tgt
    src, tgt = src[~loop], tgt[~loop]
    lo = np.where(src <= tgt, src, tgt)
    hi = np.where(src <= tgt, tgt, src)
    pairs = pd.DataFrame({"s": lo, "t": hi}).drop_duplicates().sort_values(["s", "t"], kind="stable")
    return pairs["s"].to_numpy(), pairs["t"].to_numpy(), int(loop.sum()), int(len(lo) - len(pairs))


def join_tokens(item_ids: np.ndarray, tokens: np.ndarray, all_items: np.ndarray) -> np.ndarray:
    """For each id of ``all_items``, the space separated, deduplicated tokens it has in the
    ``(item_ids, tokens)`` pairs (in the order of first appearance); '' for ids with none.

    Vectorised: only the ids with more than one token go through a string join.
    """
    pairs = pd.DataFrame({"i": np.asarray(item_ids), "t": np.asarray(tokens).astype(str)})
    pairs = pairs[pairs["t"] != ""].drop_duplicates()
    n_tokens = pairs["i"].map(pairs["i"].value_counts())
    single = pairs.loc[n_tokens == 1].set_index("i")["t"]
    multi = pairs.loc[n_tokens > 1].groupby("i", sort=False)["t"].agg(" ".join)
    mapping = pd.concat([single, multi])
    return mapping.reindex(np.asarray(all_items)).fillna("").to_numpy(dtype=object)


# --------------------------------------------------------------------------------------------------
# writing


def write_atomic(path: Path, columns: Sequence[tuple[str, str]], data: dict[str, np.ndarray]) -> int:
    """Write one RecBole atomic file: header ``name:type`` cells, then the rows, tab separated.

    ``columns``: ``(name, type)`` in file order; ``data``: name -> column values. Returns the rows written.
    String cells must not contain tabs, newlines or double quotes (checked).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({name: data[name] for name, _ in columns})
    for name, ftype in columns:
        if ftype not in ("token", "token_seq", "float", "float_seq"):
            raise ValueError(f"unsupported atomic field type {ftype!r} for {name}")
        col = frame[name]
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            text = "".join(col.astype(str))
            if any(ch in text for ch in '\t\n\r"'):
                bad = col.astype(str).str.contains(r'[\t\n\r"]', regex=True)
                raise ValueError(
                    f"{path}: field {name!r}: value {col[bad].iloc[0]!r} contains a tab, newline or quote"
                )
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(f"{name}:{ftype}" for name, ftype in columns) + "\n")
        frame.to_csv(f, sep="\t", header=False, index=False, lineterminator="\n", quoting=csv.QUOTE_NONE)
    return len(frame)


def write_relation(path: Path, source: np.ndarray, target: np.ndarray) -> int:
    """Write a relation file (``source_id:token  target_id:token``)."""
    return write_atomic(
        path,
        [("source_id", "token"), ("target_id", "token")],
        {"source_id": id_strings(source), "target_id": id_strings(target)},
    )


def _flow(value: Any) -> str:
    """YAML flow-style rendering of small scalars / lists / dicts."""
    if value is None:
        return "~"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", value) else json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as YAML")


def render_dataset_yaml(
    name: str,
    module: str,
    *,
    rating_field: str | None,
    time_field: str | None,
    load_col: dict[str, list[str]],
    aux_relations: dict[str, dict[str, Any]],
    category_field: str | None,
    aux_tasks: list[str],
    eval_args: dict[str, Any],
    benchmark_filename: list[str] | None = None,
    extra_command: str = "",
    tasks_comment: str = "the paper's tasks for this dataset",
) -> str:
    """The dataset yaml a converter writes (the schema lives in the converter, the yaml is generated)."""
    cmd = f"python -m recbole_pmtrec.data.convert {name if not extra_command else extra_command}"
    lines = [
        f"# Generated by: {cmd} --raw <raw> --out dataset/",
        f"# Do not edit: regenerate it (schema in recbole_pmtrec/data/convert/{module}.py).",
        "USER_ID_FIELD: user_id",
        "ITEM_ID_FIELD: item_id",
        f"RATING_FIELD: {_flow(rating_field)}",
        f"TIME_FIELD: {_flow(time_field)}",
        "load_col:",
    ]
    lines += [f"  {src}: {_flow(cols)}" for src, cols in load_col.items()]
    if benchmark_filename:
        lines.append(f"benchmark_filename: {_flow(benchmark_filename)}   # <name>.<part>.inter, pre-split")
    if aux_relations:
        lines.append("aux_relations:            # relation name -> atomic file suffix, id space, direction")
        lines += [f"  {rel}: {_flow(spec)}" for rel, spec in aux_relations.items()]
    else:
        lines.append("aux_relations: {}        # no relation files")
    lines.append(
        f"category_field: {_flow(category_field)}  # token_seq field of .item used by the same-category task"
    )
    lines.append(f"aux_tasks: {_flow(aux_tasks)}   # {tasks_comment}")
    lines.append(f"eval_args: {_flow(eval_args)}")
    return "\n".join(lines) + "\n"


def write_yaml(
    yaml_dir: Path | str | Literal[False] | None, name: str, text: str, rep: Reporter, folder: Path | str
) -> Path | None:
    """Write the dataset yaml beside the atomic files (``folder/<name>.yaml``, i.e. ``OUT/<name>/<name>.yaml``),
    where the plugin's ``Config`` finds it from any working directory (it reads
    ``<data_path>/<dataset>/<dataset>.yaml``); ``yaml_dir``: also a copy there (``properties/dataset`` to
    regenerate the shipped yamls); ``yaml_dir=False``: no yaml at all. Returns the yaml beside the files."""
    if yaml_dir is False:
        return None
    path = Path(folder) / f"{name}.yaml"
    targets = [path] + ([Path(yaml_dir) / f"{name}.yaml"] if yaml_dir is not None else [])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        rep.counts["files"].append(str(target))
    return path


RANDOM_SPLIT_EVAL = {"split": {"RS": [0.6, 0.2, 0.2]}, "order": "RO", "group_by": "user", "mode": "full"}

Converter = Callable[..., dict]
