"""One strict reader for RecBole atomic files (``.inter``, ``.user``, ``.item``, relation files, any
additional file), and a mixin that makes a RecBole ``Dataset`` class read through it.

RecBole 1.2.1's ``Dataset._load_feat`` reads with ``pandas.read_csv``: a row missing its last field gets
NaN there (a float field is then filled with the column mean by ``_fill_nan``: a missing timestamp moves
the row in a time-ordered split), a row missing a middle field shifts the fields left (item "1", rating
1006) and is then dropped or kept without a word. :func:`read_atomic` refuses such input instead: every
error is a ``ValueError`` naming the file, the line, the field and the value.

What is checked, vectorised over the raw bytes (a pass over Epinions' 922k rows adds well under a second):

* the header: ``name:type`` cells, type one of ``token | token_seq | float | float_seq``, no name twice;
* every non-blank line has as many fields as the header (separators counted per line with numpy; the few
  lines holding a double quote are re-counted with Python's ``csv`` rules, which pandas follows too);
  a short last line without a trailing newline is reported as a cut file;
* an id field (``USER_ID_FIELD``, ``ITEM_ID_FIELD``, the knowledge-graph id fields, ``source_id`` /
  ``target_id`` of relation files) is never empty nor a missing-value marker (``NA``, ``null``, ...);
* a ``float`` cell parses as a finite number, and so does every element of a ``float_seq`` cell;
* a missing ``float`` cell (empty, or a marker pandas reads as NaN) follows ``fill_nan_float``:
  ``error`` (the default: an error naming the cell), ``mean`` (RecBole's own behaviour: left NaN for
  ``Dataset._fill_nan``, which fills the column mean) or ``zero``.

Blank lines are skipped, as RecBole's reader skips them. A file that passes gives exactly the frame that
RecBole's ``_load_feat`` gives (same dtypes, same token strings, same ``token_seq`` arrays), so a built-in
model trains on the same data through the plugin (``tests/test_foundation.py`` compares BPR on ml-100k).

:class:`StrictAtomicMixin` routes a ``Dataset``'s ``_load_feat`` through the reader, counts the rows that
RecBole's filters drop, per reason, and warns about relation files in the dataset folder that no
``aux_relations`` entry declares. :func:`strict_dataset_class` puts it in front of any RecBole dataset
class (``SequentialDataset``, ``KnowledgeBasedDataset``, ...).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from recbole.utils import FeatureSource, FeatureType, set_color

#: values of ``fill_nan_float``
FILL_NAN_FLOAT = ("error", "mean", "zero")
#: relation-file suffixes the plugin's converters write (``aux_relations`` declares which to load)
RELATION_SUFFIXES = ("net", "coview", "cobuy")
#: cells pandas' ``read_csv`` (and so RecBole) reads as missing by default
MISSING_MARKERS = frozenset(pd._libs.parsers.STR_NA_VALUES)
_TYPES = tuple(t.value for t in FeatureType)
_ID_FIELD_KEYS = (
    "USER_ID_FIELD",
    "ITEM_ID_FIELD",
    "HEAD_ENTITY_ID_FIELD",
    "TAIL_ENTITY_ID_FIELD",
    "RELATION_ID_FIELD",
    "ENTITY_ID_FIELD",
)
RELATION_ID_FIELDS = ("source_id", "target_id")


# --------------------------------------------------------------------------------------------------
# the reader


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


# --------------------------------------------------------------------------------------------------
# the mixin for RecBole dataset classes


_FILTER_REASONS = {
    "_filter_nan_user_or_item": "missing user/item id",
    "_remove_duplication": "repeated (user, item) pair (rm_dup_inter)",
    "_filter_by_field_value": "outside val_interval",
    "_filter_inter_by_user_or_item": "user or item without a row in .user / .item (filter_inter_by_user_or_item)",
    "_filter_by_inter_num": "interaction-count filter / k-core (user_inter_num_interval, item_inter_num_interval)",
    # KnowledgeBasedDataset
    "_filter_kg_by_triple_num": "triple-count filter (entity_kg_num_interval, relation_kg_num_interval)",
    "_filter_link": "item without an entity in .link",
}
_WARN_REASONS = ("_filter_inter_by_user_or_item", "_filter_nan_user_or_item")


def fill_nan_float_policy(config) -> str:
    value = config["fill_nan_float"]
    value = "error" if value is None else str(value)
    if value not in FILL_NAN_FLOAT:
        raise ValueError(f"fill_nan_float must be one of {', '.join(FILL_NAN_FLOAT)}, not {value!r}")
    return value


def id_field_names(config) -> set[str]:
    """The token fields that are ids and must never be empty."""
    names = {config[key] for key in _ID_FIELD_KEYS if key in config and config[key]}
    return names | set(RELATION_ID_FIELDS)


def declared_relation_suffixes(config) -> set[str]:
    relations = config["aux_relations"] or {}
    suffixes = set()
    if isinstance(relations, dict):
        suffixes = {spec.get("suffix") for spec in relations.values() if isinstance(spec, dict)}
    return suffixes | set(config["additional_feat_suffix"] or [])


def undeclared_relation_files(config, dataset_path, dataset_name) -> list[str]:
    """Relation files (``.net``, ``.coview``, ``.cobuy``) of the dataset folder that no config loads."""
    declared = declared_relation_suffixes(config)
    return [
        os.path.join(dataset_path, f"{dataset_name}.{suffix}")
        for suffix in RELATION_SUFFIXES
        if suffix not in declared and os.path.isfile(os.path.join(dataset_path, f"{dataset_name}.{suffix}"))
    ]


class StrictAtomicMixin:
    """Put in front of a RecBole ``Dataset`` class: strict reading, filter counts, undeclared relations."""

    def _get_preset(self):
        super()._get_preset()
        self.filter_counts: dict[str, dict[str, int]] = {}  # file (source) -> reason -> rows dropped
        self._fill_nan_float = fill_nan_float_policy(self.config)
        undeclared = undeclared_relation_files(self.config, self.dataset_path, self.dataset_name)
        if undeclared:
            self.logger.warning(
                set_color("Relation files not loaded", "red")
                + f": {', '.join(undeclared)} (no aux_relations entry names their suffix). Declare them in "
                "the dataset yaml (the converter writes one beside the files: <data_path>/<dataset>/"
                "<dataset>.yaml), e.g. aux_relations: {social: {suffix: net, space: user, directed: false}}"
            )

    def _count(self, source: str, reason: str, rows: int) -> None:
        if rows:
            per_source = self.filter_counts.setdefault(source, {})
            per_source[reason] = per_source.get(reason, 0) + int(rows)

    def _load_feat(self, filepath, source):
        """RecBole's ``_load_feat`` (same columns, dtypes and field properties) through :func:`read_atomic`."""
        load_col, unload_col = self._get_load_and_unload_col(source)
        if load_col == set():
            return None
        parsed = read_atomic(
            filepath,
            sep=self.config["field_separator"],
            encoding=self.config["encoding"] or "utf-8",
            select=[
                name
                for name, _ in _header_of(filepath, self.config)
                if (load_col is None or name in load_col) and (unload_col is None or name not in unload_col)
            ],
            id_fields=id_field_names(self.config),
            fill_nan_float=self._fill_nan_float,
        )
        columns = list(parsed.frame.columns)
        types = dict(parsed.header)
        for field in columns:
            ftype = types[field]
            if isinstance(source, FeatureSource) or source != "link":
                self.field2source[field] = source
                self.field2type[field] = ftype
                if not ftype.value.endswith("seq"):
                    self.field2seqlen[field] = 1
                if "float" in ftype.value:
                    self.field2bucketnum[field] = 2
        if not columns:
            self.logger.warning(f"No columns has been loaded from [{source}]")
            return None
        df = parsed.frame
        seq_separator = self.config["seq_separator"]
        for field in columns:
            ftype = types[field]
            if not ftype.value.endswith("seq"):
                continue
            df[field] = sequence_arrays(df[field].values, ftype, seq_separator)
            max_seq_len = max(map(len, df[field].values)) if len(df) else 0
            if self.config["seq_len"] and field in self.config["seq_len"]:
                seq_len = self.config["seq_len"][field]
                df[field] = [seq[:seq_len] if len(seq) > seq_len else seq for seq in df[field].values]
                self.field2seqlen[field] = min(seq_len, max_seq_len)
            else:
                self.field2seqlen[field] = max_seq_len
        if source in (FeatureSource.USER, FeatureSource.ITEM):  # RecBole keeps the first row of each id
            id_field = self.uid_field if source == FeatureSource.USER else self.iid_field
            if id_field in df:
                self._count(
                    os.path.basename(filepath),
                    f"repeated {id_field} (first row kept)",
                    int(df.duplicated(subset=[id_field]).sum()),
                )
        if parsed.blank_lines:
            self.logger.debug(f"{filepath}: {parsed.blank_lines} blank lines skipped")
        return df

    # ---------------------------------------------------------------- filter counts

    def _feat_sizes(self) -> dict[str, int]:
        sizes = {}
        for feat_name in getattr(self, "feat_name_list", None) or ["inter_feat", "user_feat", "item_feat"]:
            feat = getattr(self, feat_name, None)
            if feat is not None and hasattr(feat, "index"):
                sizes[feat_name] = len(feat)
        return sizes

    def _counted(self, step: str, run):
        before = self._feat_sizes()
        result = run()
        after = self._feat_sizes()
        for feat_name, n in before.items():
            source = self._feat_file(feat_name)
            self._count(source, _FILTER_REASONS[step], n - after.get(feat_name, 0))
        return result

    def _feat_file(self, feat_name: str) -> str:
        suffix = feat_name[: -len("_feat")] if feat_name.endswith("_feat") else feat_name
        return f"{self.dataset_name}.{suffix}"

    def _filter_nan_user_or_item(self):
        return self._counted("_filter_nan_user_or_item", super()._filter_nan_user_or_item)

    def _remove_duplication(self):
        return self._counted("_remove_duplication", super()._remove_duplication)

    def _filter_by_field_value(self):
        return self._counted("_filter_by_field_value", super()._filter_by_field_value)

    def _filter_inter_by_user_or_item(self):
        return self._counted("_filter_inter_by_user_or_item", super()._filter_inter_by_user_or_item)

    def _filter_by_inter_num(self):
        return self._counted("_filter_by_inter_num", super()._filter_by_inter_num)

    def _filter_kg_by_triple_num(self):  # called by KnowledgeBasedDataset only
        return self._counted("_filter_kg_by_triple_num", super()._filter_kg_by_triple_num)

    def _filter_link(self):  # called by KnowledgeBasedDataset only
        return self._counted("_filter_link", super()._filter_link)

    def _data_processing(self):
        super()._data_processing()
        self.log_filter_counts()

    def log_filter_counts(self) -> None:
        """One log line per file that lost rows: how many, and why (a data inconsistency is a warning)."""
        warn_reasons = {_FILTER_REASONS[step] for step in _WARN_REASONS}
        for source, reasons in self.filter_counts.items():
            parts = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
            line = set_color(f"Rows dropped from {source}", "yellow") + f": {sum(reasons.values())} ({parts})"
            if warn_reasons & set(reasons):
                self.logger.warning(line)
            else:
                self.logger.info(line)


def _header_of(filepath, config) -> list[tuple[str, FeatureType]]:
    """The header of an atomic file (parsed strictly, for the load_col selection)."""
    encoding = config["encoding"] or "utf-8"
    with open(filepath, "rb") as f:
        first = f.readline().decode(encoding).rstrip("\r\n").lstrip("\ufeff")
    return parse_header(filepath, first, config["field_separator"])


_STRICT_CLASSES: dict[type, type] = {}


def __getattr__(name: str):
    """``Strict<Name>`` for any dataset class of ``recbole.data.dataset``, built on first use (so a pickled
    strict dataset, ``save_dataset: True``, unpickles in a fresh process)."""
    if name.startswith("Strict"):
        import recbole.data.dataset

        base = getattr(recbole.data.dataset, name[len("Strict") :], None)
        if isinstance(base, type):
            return strict_dataset_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def strict_dataset_class(dataset_class: type) -> type:
    """``dataset_class`` with :class:`StrictAtomicMixin` in front (a module-level class, so it pickles)."""
    if issubclass(dataset_class, StrictAtomicMixin):
        return dataset_class
    if dataset_class not in _STRICT_CLASSES:
        name = f"Strict{dataset_class.__name__}"
        strict = type(
            name, (StrictAtomicMixin, dataset_class), {"__module__": __name__, "__qualname__": name}
        )
        globals()[name] = strict
        _STRICT_CLASSES[dataset_class] = strict
    return _STRICT_CLASSES[dataset_class]
