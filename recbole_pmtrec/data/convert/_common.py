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
import gzip
import html
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
# reading raw files with precise error messages


def require_file(raw_dir: Path, name: str, dataset: str, hint: str) -> Path:
    """Return ``raw_dir / name``; raise ``FileNotFoundError`` naming the file and what to pass if absent."""
    path = Path(raw_dir) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: raw file {path} not found. Pass --raw (raw_dir=) the folder that holds {hint}."
        )
    return path


def _line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without the line break) byte offsets of every line of ``data``."""
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    ends = nl if (len(data) == 0 or data[-1:] == b"\n") else np.append(nl, len(data))
    starts = np.concatenate(([0], nl + 1))[: len(ends)]
    # a CR before the LF belongs to the line break
    if len(ends):
        cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
        ends = ends - cr.astype(ends.dtype)
    return starts, ends


def read_table(
    path: Path,
    fields: Sequence[str],
    sep: str,
    header: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a delimited text file whose every line has exactly ``len(fields)`` fields.

    Returns the table (all cells as ``str``) and, for each of its rows, the 1-based line number in the
    file. ``header``: the expected first line's cells (the line is checked and skipped), or None if the
    file has no header. Blank lines are skipped. A line with a wrong number of fields raises a
    ``ValueError`` naming the file, the line and the missing / extra field.
    """
    path = Path(path)
    data = path.read_bytes()
    starts, ends = _line_spans(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    sep_pos = np.flatnonzero(arr == ord(sep))
    n_sep = np.searchsorted(sep_pos, ends) - np.searchsorted(sep_pos, starts)
    line_no = np.arange(1, len(starts) + 1)
    skip = 0
    sep_name = {"\t": "tab", ",": "comma", " ": "space"}.get(sep, repr(sep))
    if header is not None:
        if len(starts) == 0:
            raise ValueError(f"{path}: line 1: missing header line {sep.join(header)!r}")
        first = data[starts[0] : ends[0]].decode(encoding, errors="replace").lstrip("\ufeff")
        if first.split(sep) != list(header):
            raise ValueError(
                f"{path}: line 1: header {first!r} is not the expected {sep_name}-separated "
                f"{sep.join(header)!r}"
            )
        skip = 1
    blank = ends == starts
    bad = (n_sep != len(fields) - 1) & ~blank
    bad[:skip] = False
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        found = int(n_sep[i]) + 1
        if found < len(fields):
            what = f"field {fields[found]!r} is missing"
        else:
            what = f"unexpected extra field after {fields[-1]!r}"
        text = data[starts[i] : ends[i]].decode(encoding, errors="replace")
        cut = i == len(starts) - 1 and found < len(fields) and not data.endswith(b"\n")
        raise ValueError(
            f"{path}: line {line_no[i]}: malformed row {text[:80]!r}: {what} (expected {len(fields)} "
            f"{sep_name}-separated fields: {', '.join(fields)}; found {found})"
            + ("; the file ends inside this line, without a newline: it looks cut" if cut else "")
        )
    keep = ~blank
    keep[:skip] = False
    rows_line_no = line_no[keep]
    if len(rows_line_no) == 0:
        return pd.DataFrame({f: pd.Series([], dtype=str) for f in fields}), rows_line_no
    df = pd.read_csv(
        path,
        sep=sep,
        header=None,
        names=list(fields),
        skiprows=skip,
        dtype=str,
        quoting=csv.QUOTE_NONE,
        na_filter=False,
        skip_blank_lines=True,
        encoding=encoding,
        engine="c",
    )
    if len(df) != len(rows_line_no):  # pragma: no cover - defensive, the scan above mirrors pandas
        raise ValueError(f"{path}: read {len(df)} rows but the file has {len(rows_line_no)} data lines")
    return df, rows_line_no


def check_last_line(path: Path, sep: str, n_fields: int, encoding: str = "utf-8") -> None:
    """A file whose last line has no newline and fewer than ``n_fields`` fields (csv quoting rules) was cut
    (an interrupted download or copy): raise a ``ValueError`` naming the file and the line. For readers
    that do not go through :func:`read_table` (pandas' own reader pads a short row with empty cells)."""
    path = Path(path)
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size == 0:
            return
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
    if tail.endswith(b"\n"):
        return
    last = tail[tail.rfind(b"\n") + 1 :].decode(encoding, errors="replace").rstrip("\r")
    found = len(next(csv.reader([last], delimiter=sep), [""]))
    if found < n_fields:
        line = path.read_bytes().count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line}: the last line has {found} of {n_fields} fields and no newline: the file "
            f"looks cut ({last[:80]!r})"
        )


def _bad_value(path: Path, where: str, field: str, value: Any, what: str) -> ValueError:
    return ValueError(f"{path}: {where}: field {field!r}: cannot parse {value!r} as {what}")


def parse_int(
    df: pd.DataFrame, field: str, path: Path, line_no: np.ndarray, min_value: int | None = 0
) -> np.ndarray:
    """Column ``field`` as int64; a non-integer (or < ``min_value``) cell raises a ``ValueError``."""
    s = df[field].str.strip()
    num = pd.to_numeric(s, errors="coerce")
    vals = num.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(vals) & (vals == np.round(vals)) & s.str.fullmatch(r"[+-]?\d+(\.0*)?").to_numpy()
    what = "an integer"
    if min_value is not None:
        ok &= vals >= min_value
        what = f"an integer >= {min_value}"
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _bad_value(path, f"line {line_no[i]}", field, df[field].iloc[i], what)
    return vals.astype(np.int64)


def parse_float(df: pd.DataFrame, field: str, path: Path, line_no: np.ndarray) -> np.ndarray:
    """Column ``field`` as float64; an unparsable or non-finite cell raises a ``ValueError``."""
    num = pd.to_numeric(df[field].str.strip(), errors="coerce")
    vals = num.to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(vals)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _bad_value(path, f"line {line_no[i]}", field, df[field].iloc[i], "a finite number")
    return vals


def check_matrix_column(
    values: np.ndarray, path: Path, field: str, integer: bool, min_value: float | None
) -> np.ndarray:
    """Validate one column of a numeric matrix (``.mat`` file); errors name the 1-based row."""
    vals = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(vals)
    what = "a finite number"
    if integer:
        ok &= vals == np.round(vals)
        what = "an integer"
    if min_value is not None:
        ok &= vals >= min_value
        what += f" >= {min_value:g}"
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _bad_value(path, f"row {i + 1}", field, values[i], what)
    return vals.astype(np.int64) if integer else vals


def open_text(path: Path):
    """Open a text file, gunzipping it if its name ends with ``.gz``."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file (gzip or plain)."""
    with open_text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}: line {n}: malformed JSON record ({e.msg} at column {e.colno})"
                ) from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


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
