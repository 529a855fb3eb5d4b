"""Reading the converters' raw files with precise error messages: the file, the line (or JSON record),
the field and the value in every error. Like the rest of ``convert/``, numpy and pandas only."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


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
