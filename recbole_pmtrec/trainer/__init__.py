"""Trainers: the multi-task trainer turns per-task losses into one update through a combiner; the
multi-label trainers add per-task AUC / LogLoss for SharedBottom, MMoE, CGC and PLE."""

from recbole_pmtrec.trainer.fast_eval import FastFullSortMixin, with_fast_full_sort
from recbole_pmtrec.trainer.multilabel import (
    CGCTrainer,
    MMoETrainer,
    MultiLabelTrainer,
    PLETrainer,
    SharedBottomTrainer,
)
from recbole_pmtrec.trainer.multitask import MultiTaskTrainer

__all__ = [
    "CGCTrainer",
    "FastFullSortMixin",
    "MMoETrainer",
    "MultiLabelTrainer",
    "MultiTaskTrainer",
    "PLETrainer",
    "SharedBottomTrainer",
    "with_fast_full_sort",
]
