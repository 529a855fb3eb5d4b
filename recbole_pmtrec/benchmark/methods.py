"""The benchmark's methods: an ``mtl_method`` of PMTRec (trains the PMTRec model with that combiner) or any
RecBole / plugin model name; which knobs a single-task model never receives; the paper's column names."""

from __future__ import annotations

from functools import lru_cache

import yaml

from recbole_pmtrec.config import properties_dir

MAIN_MODEL = "PMTRec"  # the model every mtl_method trains


def mtl_methods() -> list[str]:
    from recbole_pmtrec.trainer.combiners import COMBINERS

    return sorted(COMBINERS)


def is_mtl_method(method: str) -> bool:
    return method in mtl_methods()


def method_spec(method: str) -> tuple[str, dict]:
    """``(model, config)`` of a method: an mtl_method trains PMTRec with it; any other name is a model."""
    if is_mtl_method(method):
        return MAIN_MODEL, {"mtl_method": method}
    from recbole_pmtrec.utils import get_model

    get_model(method)  # raises with the list of models when unknown
    return method, {}


@lru_cache(maxsize=1)
def multitask_keys() -> frozenset[str]:
    """Knobs of PMTRec's model yaml and of the combiners: not passed to single-task models."""
    keys = set()
    for path in (properties_dir() / "model" / f"{MAIN_MODEL}.yaml", properties_dir() / "combiners.yaml"):
        with open(path, encoding="utf-8") as f:
            keys |= set((yaml.safe_load(f) or {}).keys())
    shared = {"embedding_size", "train_batch_size", "embedding_init"}
    return frozenset(keys - shared)


def display_name(method: str) -> str:
    """Column names in the paper's style: EW, PMTRec, Nash-MTL, ..."""
    names = {
        "pmtrec": "PMTRec",
        "ew": "EW",
        "rlw": "RLW",
        "uw": "UW",
        "dwa": "DWA",
        "gradnorm": "GradNorm",
        "graddrop": "GradDrop",
        "pcgrad": "PCGrad",
        "gradvac": "GradVac",
        "cagrad": "CAGrad",
        "aligned_mtl": "Aligned-MTL",
        "nash_mtl": "Nash-MTL",
        "mgda": "MGDA",
        "upgrad": "UPGrad",
        "imtl_g": "IMTL-G",
    }
    return names.get(method, method)
