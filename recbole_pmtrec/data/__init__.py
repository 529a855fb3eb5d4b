"""Datasets with auxiliary relations, auxiliary-task samplers and raw-data converters."""

from recbole_pmtrec.data.dataset import AuxDataset
from recbole_pmtrec.data.relations import Relation
from recbole_pmtrec.data.sampler import AuxTaskSampler

__all__ = ["AuxDataset", "AuxTaskSampler", "Relation"]
