"""Datasets with auxiliary relations, auxiliary-task samplers and raw-data converters."""

from recbole_pmtrec.data.dataset import AuxDataset, Relation
from recbole_pmtrec.data.sampler import AuxTaskSampler

__all__ = ["AuxDataset", "AuxTaskSampler", "Relation"]
