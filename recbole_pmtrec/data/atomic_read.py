"""The strict reader of RecBole atomic files (``.inter``, ``.user``, ``.item``, relation files, any
additional file): :func:`read_atomic`. What it checks, and why RecBole's own reader is not enough, is in
:mod:`recbole_pmtrec.data.atomic`, which routes a RecBole ``Dataset`` through it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from recbole.utils import FeatureType

#: values of ``fill_nan_float``
FILL_NAN_FLOAT = ("error", "mean", "zero")
#: cells pandas' ``read_csv`` (and so RecBole) reads as missing by default
MISSING_MARKERS = frozenset(pd._libs.parsers.STR_NA_VALUES)
_TYPES = tuple(t.value for t in FeatureType)


def line_spans(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end byte offsets of every line of ``data`` (the end excludes ``\\n`` and a ``\\r`` before it)."""
    arr = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(arr == ord("\n"))
    ends = newlines if (len(data) == 0 or data.endswith(b"\n")) else np.append(newlines, len(data))
    starts = np.concatenate(([0], newlines + 1))[: len(ends)]
    if len(ends):
        carriage = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == ord("\r"))
        ends = ends - carriage.astype(ends.dtype)
    return starts, ends


def fields_per_line(data: bytes, starts: np.ndarray, ends: np.ndarray, sep: str, encoding: str) -> np.ndarray:
    """How many fields each line has, split on ``sep`` with RecBole's (pandas') default quoting."""
    sep_bytes = sep.encode(encoding)
    if len(sep_bytes) == 1:
        arr = np.frombuffer(data, dtype=np.uint8)
        positions = np.flatnonzero(arr == sep_bytes[0])
        counts = np.searchsorted(positions, ends) - np.searchsorted(positions, starts) + 1
    else:  # a multi-byte separator: rare, counted line by line
        counts = np.array([data[s:e].count(sep_bytes) + 1 for s, e in zip(starts, ends)], dtype=np.int64)
    if b'"' in data:  # a quoted field may hold the separator: count those lines as csv (and pandas) does
        arr = np.frombuffer(data, dtype=np.uint8)
        quotes = np.flatnonzero(arr == ord('"'))
        quoted = np.flatnonzero(np.searchsorted(quotes, ends) > np.searchsorted(quotes, starts))
        for i in quoted:
            text = data[starts[i] : ends[i]].decode(encoding, errors="replace")
            if len(sep) == 1:
                rows = list(csv.reader([text], delimiter=sep, quotechar='"', doublequote=True))
                counts[i] = len(rows[0]) if rows else 1
    return counts


def _snippet(data: bytes, start: int, end: int, encoding: str) -> str:
    return repr(data[start:end].decode(encoding, errors="replace")[:80])


def parse_header(path, first_line: str, sep: str) -> list[tuple[str, FeatureType]]:
    """``[(name, FeatureType)]`` of a header line; a malformed cell raises a ``ValueError`` naming it."""
    header = []
    for cell in first_line.split(sep):
        name, colon, ftype = cell.partition(":")
        if not colon or not name:
            raise ValueError(f"{path}: line 1 (header): cell {cell!r} is not 'name:type'")
        if ftype not in _TYPES:
            raise ValueError(
                f"{path}: line 1 (header): field '{name}' has unknown type '{ftype}' (one of {', '.join(_TYPES)})"
            )
        if name in [n for n, _ in header]:
            raise ValueError(f"{path}: line 1 (header): field '{name}' appears twice")
        header.append((name, FeatureType(ftype)))
    return header


class AtomicFile:
    """A parsed atomic file: ``header`` (name, FeatureType) in file order, ``frame`` (the selected
    columns, RecBole's dtypes), ``lines`` (the 1-based file line of every row), ``blank_lines``."""

    def __init__(self, path, header, frame, lines, blank_lines):
        self.path = path
        self.header = header
        self.frame = frame
        self.lines = lines
        self.blank_lines = blank_lines


def _bad_cell(path, line: int, field: str, value, what: str) -> ValueError:
    return ValueError(f"{path}: line {line}: field '{field}' = {value!r} {what}")


def _parse_floats(values: np.ndarray) -> np.ndarray:
    """Float64 values of an object array of strings, parsed as RecBole's reader parses them (Python's
    ``float``); NaN where a cell does not parse."""
    try:
        return values.astype(np.float64)
    except ValueError:
        parsed = np.empty(len(values))
        for i, value in enumerate(values):
            try:
                parsed[i] = float(value)
            except ValueError:
                parsed[i] = np.nan
        return parsed


def read_atomic(
    path,
    *,
    sep: str = "\t",
    encoding: str = "utf-8",
    select: Iterable[str] | None = None,
    id_fields: Iterable[str] = (),
    fill_nan_float: str = "error",
) -> AtomicFile:
    """Read one atomic file strictly (see the module docstring).

    ``select``: the field names to return (None: all), in file order; ``id_fields``: token fields that must
    never be empty. Token and sequence cells are returned as RecBole's reader returns them before its own
    sequence processing: a token as ``str`` (NaN where missing, as pandas reads it), a sequence as ``str``
    ('' where missing), a float as ``float64``.
    """
    if fill_nan_float not in FILL_NAN_FLOAT:
        raise ValueError(f"fill_nan_float must be one of {', '.join(FILL_NAN_FLOAT)}, not {fill_nan_float!r}")
    encoding = encoding or "utf-8"
    data = Path(path).read_bytes()
    starts, ends = line_spans(data)
    if len(starts) == 0 or ends[0] == starts[0]:
        raise ValueError(
            f"{path}: line 1 (header): missing header (expected 'name:type' cells separated by {sep!r})"
        )
    first = data[starts[0] : ends[0]].decode(encoding).lstrip("\ufeff")
    header = parse_header(path, first, sep)
    names = [n for n, _ in header]
    types = dict(header)

    counts = fields_per_line(data, starts, ends, sep, encoding)
    is_row = ends > starts
    blank_lines = int((~is_row[1:]).sum())
    is_row[0] = False
    bad = is_row & (counts != len(header))
    if bad.any():
        i = int(np.argmax(bad))
        found = int(counts[i])
        cut = i == len(starts) - 1 and not data.endswith(b"\n") and found < len(header)
        what = f"{found} fields where the header has {len(header)} ({', '.join(names)}): "
        what += (
            f"field '{names[found]}' is missing (or an earlier one, shifting the rest left)"
            if found < len(header)
            else f"extra field after '{names[-1]}'"
        )
        hint = " (the file ends inside this line, without a newline: it looks cut)" if cut else ""
        raise ValueError(
            f"{path}: line {i + 1}: {what} in {_snippet(data, starts[i], ends[i], encoding)}{hint}"
        )
    lines = np.flatnonzero(is_row) + 1

    wanted = names if select is None else [n for n in names if n in set(select)]
    if not wanted:
        return AtomicFile(path, header, pd.DataFrame(index=range(len(lines))), lines, blank_lines)
    # RecBole's quoting (pandas' default); every cell as the literal string, missing markers judged below
    frame = pd.read_csv(
        io.BytesIO(data),
        sep=sep,
        header=None,
        names=names,
        skiprows=1,
        usecols=wanted,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        encoding=encoding,
        quoting=csv.QUOTE_MINIMAL,
        skip_blank_lines=True,
        engine="c" if len(sep) == 1 else "python",
    )
    if len(frame) != len(lines):
        raise ValueError(
            f'{path}: {len(frame)} rows parsed from {len(lines)} lines: a quote (") in a field joins lines; '
            "atomic files must not quote their fields"
        )
    frame = frame[wanted]
    id_fields = set(id_fields)
    out = {}
    for name in wanted:
        values = frame[name].to_numpy(dtype=object)
        missing = frame[name].isin(MISSING_MARKERS).to_numpy()
        ftype = types[name]
        if ftype == FeatureType.TOKEN:
            if name in id_fields and missing.any():
                i = int(np.argmax(missing))
                if values[i] == "":
                    raise ValueError(f"{path}: line {lines[i]}: field '{name}' is empty (an id cannot be)")
                raise _bad_cell(path, lines[i], name, values[i], "is a missing-value marker, not an id")
            column = values
            if missing.any():
                column = values.copy()
                column[missing] = np.nan
            out[name] = column
        elif ftype == FeatureType.FLOAT:
            parsed = np.full(len(values), np.nan)
            present = ~missing
            parsed[present] = _parse_floats(values[present])
            unparsable = present & ~np.isfinite(parsed)
            if unparsable.any():
                i = int(np.argmax(unparsable))
                raise _bad_cell(path, lines[i], name, values[i], "is not a finite number")
            if missing.any():
                if fill_nan_float == "error":
                    i = int(np.argmax(missing))
                    raise _bad_cell(
                        path,
                        lines[i],
                        name,
                        values[i],
                        f"is missing ({int(missing.sum())} missing cells in this float field): fill the file, "
                        "or set fill_nan_float: mean (RecBole's column mean) or zero",
                    )
                if fill_nan_float == "zero":
                    parsed[missing] = 0.0
            out[name] = parsed
        else:  # token_seq / float_seq: RecBole reads a missing cell as an empty sequence
            column = values
            if missing.any():
                column = values.copy()
                column[missing] = ""
            if ftype == FeatureType.FLOAT_SEQ:
                _check_float_seq(path, lines, name, column)
            out[name] = column
    frame = pd.DataFrame(out, columns=wanted)
    for name in wanted:
        if types[name] == FeatureType.TOKEN:
            frame[name] = frame[name].astype(object)
    return AtomicFile(path, header, frame, lines, blank_lines)


def _check_float_seq(path, lines, name, column, seq_separator: str = " "):
    for i, cell in enumerate(column):
        for element in filter(None, cell.split(seq_separator)):
            try:
                value = float(element)
            except ValueError:
                value = np.nan
            if not np.isfinite(value):
                raise _bad_cell(path, lines[i], name, cell, f"holds {element!r}, not a finite number")


def sequence_arrays(column, ftype: FeatureType, seq_separator: str) -> list[np.ndarray]:
    """RecBole's ``_load_feat`` sequence parsing: split on ``seq_separator``, empty pieces dropped."""
    if ftype == FeatureType.TOKEN_SEQ:
        return [np.array(list(filter(None, cell.split(seq_separator)))) for cell in column]
    return [np.array(list(map(float, filter(None, cell.split(seq_separator))))) for cell in column]
