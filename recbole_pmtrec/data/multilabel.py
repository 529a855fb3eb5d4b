"""Several binary labels per interaction row (multi-task CTR: MMoE, PLE), on RecBole's own data pipeline.

Config keys (defaults in ``properties/overall.yaml``):

- ``task_labels: [main, other, ...]``: float fields of ``.inter`` holding one 0/1 label per task, the main
  task first; ``LABEL_FIELD`` must be the main one (with negative sampling it is the sampler's ``label``).
- ``task_masks: {task: field}``: a task counts only on rows where ``field`` is 1 (PLE's sample space, e.g.
  ``{conversion: click}``), both in the loss and in its metrics.
- ``label_thresholds: {new_label: [source_field, t]}``: derive ``new_label = (source >= t)`` at load time;
  the source field is then dropped, as RecBole's ``threshold`` drops its own, so it cannot leak into the
  features (ml-100k: ``{like: [rating, 4]}``).

Negative sampling: RecBole's point-wise sampler copies a positive row, swaps in a sampled item and sets only
``LABEL_FIELD`` to 0, so every other label of a negative row is a copy of the positive's. A sampled row is
no observed interaction and has no observed outcome: :meth:`MultiLabelDataset.join` (which the sampler
calls on every sampled batch) sets the secondary labels of rows whose (user, item) pair is not an
interaction of that split to 0.
"""

from __future__ import annotations

import torch
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource, FeatureType

from recbole_pmtrec.data.atomic import StrictAtomicMixin


def task_labels(config) -> list[str]:
    """The task label fields, main first, checked against ``LABEL_FIELD``."""
    labels = config["task_labels"]
    if not labels:
        raise ValueError(
            "task_labels is not set: list the label field of every task, main first, e.g. "
            "task_labels: [income, marital] (in the dataset yaml or a config file)"
        )
    labels = [labels] if isinstance(labels, str) else list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"task_labels {labels} names a field twice")
    if labels[0] != config["LABEL_FIELD"]:
        raise ValueError(
            f"task_labels[0] = {labels[0]!r} must be LABEL_FIELD ({config['LABEL_FIELD']!r}): the main task's "
            "label is the one RecBole's samplers and metrics use"
        )
    return labels


def task_masks(config) -> dict[str, str]:
    """``{task label: mask field}`` from ``task_masks``, checked against ``task_labels``."""
    masks = dict(config["task_masks"] or {})
    unknown = sorted(set(masks) - set(task_labels(config)))
    if unknown:
        raise ValueError(f"task_masks names {unknown}, which are not in task_labels {task_labels(config)}")
    return masks


def uses_negative_sampling(config) -> bool:
    """True when any phase's loader samples negative rows (train, or uniN / popN evaluation)."""
    phases = ("train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args")
    return any(
        config[p]
        and config[p].get("distribution", "none") != "none"
        and config[p].get("sample_num") != "none"
        for p in phases
    )


class MultiLabelDataset(StrictAtomicMixin, Dataset):
    """A RecBole ``Dataset`` whose rows carry one label per task (see the module docstring); its atomic
    files are read strictly (:mod:`recbole_pmtrec.data.atomic`)."""

    def __init__(self, config):
        self.task_labels = task_labels(config)
        self.task_masks = task_masks(config)
        self.label_thresholds = dict(config["label_thresholds"] or {})
        self._observed_keys: torch.Tensor | None = None
        super().__init__(config)
        self._check_label_fields()

    def _set_label_by_threshold(self):
        super()._set_label_by_threshold()
        for label, rule in self.label_thresholds.items():
            if not (isinstance(rule, list | tuple) and len(rule) == 2):
                raise ValueError(f"label_thresholds.{label} = {rule!r}: expected [source_field, threshold]")
            source, threshold = rule
            if source not in self.inter_feat:
                raise ValueError(
                    f"label_thresholds.{label}: field {source!r} is not loaded from .inter "
                    f"(load_col.inter is {self.config['load_col'] and self.config['load_col'].get('inter')})"
                )
            self.set_field_property(label, FeatureType.FLOAT, FeatureSource.INTERACTION, 1)
            self.inter_feat[label] = (self.inter_feat[source] >= threshold).astype(float)
            if source not in self.task_labels and source != self.label_field:
                self._del_col(self.inter_feat, source)

    def _normalize(self):
        normalized = self.config["normalize_field"] or []
        if self.config["normalize_all"]:
            normalized = self.float_like_fields
        rescaled = sorted(set(normalized) & (set(self.task_labels) | set(self.task_masks.values())))
        if rescaled:
            raise ValueError(
                f"normalization would rescale the label / mask fields {rescaled}: set normalize_all: False "
                "and list the features to normalize in normalize_field"
            )
        super()._normalize()

    def _check_label_fields(self):
        """Every label and mask field is a float column of ``.inter`` (the sampler adds ``LABEL_FIELD``)."""
        sampled = {self.label_field} if uses_negative_sampling(self.config) else set()
        for field in [*self.task_labels, *self.task_masks.values()]:
            if field in sampled:
                continue
            if field not in self.field2type:
                raise ValueError(
                    f"task field {field!r} is not in the dataset: add it to load_col.inter "
                    f"(loaded: {sorted(self.field2type)})"
                )
            if (
                self.field2type[field] != FeatureType.FLOAT
                or self.field2source[field] != FeatureSource.INTERACTION
            ):
                raise ValueError(
                    f"task field {field!r} must be a float field of .inter (it is {self.field2type[field].value} "
                    f"from {self.field2source[field].value})"
                )

    def copy(self, new_inter_feat):
        nxt = super().copy(new_inter_feat)
        nxt._observed_keys = None
        return nxt

    def _pair_keys(self, interaction) -> torch.Tensor:
        return interaction[self.uid_field].long() * self.item_num + interaction[self.iid_field].long()

    def observed(self, interaction) -> torch.Tensor:
        """For each row of ``interaction``, whether its (user, item) pair is an interaction of this split."""
        if self._observed_keys is None:
            self._observed_keys = torch.unique(self._pair_keys(self.inter_feat))
        return torch.isin(self._pair_keys(interaction), self._observed_keys)

    def join(self, df):
        df = super().join(df)
        secondary = [f for f in self.task_labels[1:] if f in df]
        if (
            secondary
            and self.uid_field in df
            and self.iid_field in df
            and uses_negative_sampling(self.config)
        ):
            observed = self.observed(df)
            if not bool(observed.all()):
                for field in secondary:
                    df[field] = df[field] * observed.to(df[field].dtype)
        return df
