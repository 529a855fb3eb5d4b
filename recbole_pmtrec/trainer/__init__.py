"""Trainers: the multi-task trainer turns per-task losses into one update through a combiner."""

from recbole_pmtrec.trainer.multitask import MultiTaskTrainer

__all__ = ["MultiTaskTrainer"]
