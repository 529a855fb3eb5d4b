"""One strict reader for RecBole atomic files (``.inter``, ``.user``, ``.item``, relation files, any
additional file), and a mixin that makes a RecBole ``Dataset`` class read through it.

RecBole 1.2.1's ``Dataset._load_feat`` reads with ``pandas.read_csv``: a row missing its last field gets
NaN there (a float field is then filled with the column mean by ``_fill_nan``: a missing timestamp moves
the row in a time-ordered split), a row missing a middle field shifts the fields left (item "1", rating
1006) and is then dropped or kept without a word. :func:`read_atomic` (in ``atomic_read.py``) refuses such
input instead: every error is a ``ValueError`` naming the file, the line, the field and the value.

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

import os

from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_pmtrec.data.atomic_read import FILL_NAN_FLOAT, parse_header, read_atomic, sequence_arrays

__all__ = ["StrictAtomicMixin", "parse_header", "read_atomic", "strict_dataset_class"]

#: relation-file suffixes the plugin's converters write (``aux_relations`` declares which to load)
RELATION_SUFFIXES = ("net", "coview", "cobuy")
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
