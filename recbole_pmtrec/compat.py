"""Every work-around RecBole 1.2.1 needs on today's numpy / scipy / torch / pandas, in one place.

Imported first by ``recbole_pmtrec/__init__.py``; :func:`apply` is idempotent. Each shim names the
upstream RecBole issue it answers. None of them switches a safety off for the whole process.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

_APPLIED = False


def _numpy_aliases() -> None:
    """numpy 2 removed ``np.float_``, ``np.bool8``, ... that RecBole's ``Config.compatibility_settings``,
    ``Dataset._load_feat`` and ray 2.6.3 still use (RUCAIBox/RecBole#2215, #1604)."""
    aliases = {
        "float_": np.float64,
        "complex_": np.complex128,
        "unicode_": np.str_,
        "bool8": np.bool_,
        "int0": np.intp,
        "uint0": np.uintp,
        "object0": np.object_,
        "string_": np.bytes_,
    }
    for name, target in aliases.items():
        if name not in np.__dict__:
            setattr(np, name, target)


def _pandas_check() -> None:
    """pandas 3's copy-on-write makes RecBole's chained ``fillna(inplace=True)`` a no-op and breaks
    ``token_seq`` fields in ``Dataset._load_feat`` / ``_fill_nan`` / ``_remap`` (no upstream fix; RecBole
    1.2.1 is the last release). The remedy is the ``pandas<3`` pin; refuse to run rather than load
    corrupted features silently."""
    major = int(pd.__version__.split(".")[0])
    if major >= 3:
        raise ImportError(
            f"recbole_pmtrec needs pandas<3 (found {pd.__version__}): RecBole 1.2.1 silently corrupts "
            "token_seq and missing values under pandas 3 copy-on-write. Run: pip install 'pandas<3'"
        )


def _dok_update(self: sp.dok_matrix, data: dict) -> None:
    """Stand-in for ``dok_matrix._update``, removed in scipy 1.13 and used by RecBole's LightGCN, NGCF,
    GCMC, SpectralCF, NCL adjacency builders (RUCAIBox/RecBole#2034). Same semantics: a bulk dict update
    of the stored entries without per-item checks."""
    self._dict.update(data)


def _scipy_dok() -> None:
    for cls in (sp.dok_matrix, getattr(sp, "dok_array", None)):
        if cls is not None and not hasattr(cls, "_update"):
            cls._update = _dok_update


# --------------------------------------------------------------------------------------------------
# Checkpoints: weights-only loading with an allow-list (torch >= 2.6, RUCAIBox/RecBole#2215)
# --------------------------------------------------------------------------------------------------

_CHECKPOINT_PROTOCOL = 2  # torch's weights-only unpickler rejects protocol 4 frames (RecBole saves with 4)


def _model_classes() -> list[type]:
    """Every recommender class a checkpoint's Config may name: RecBole's and this plugin's."""
    from recbole.model.abstract_recommender import AbstractRecommender

    for module in ("recbole.model.general_recommender", "recbole.model.context_aware_recommender"):
        importlib.import_module(module)
    importlib.import_module("recbole_pmtrec.model")
    seen: list[type] = []
    stack = [AbstractRecommender]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen


def checkpoint_allowlist() -> list[Any]:
    """What a RecBole checkpoint holds beyond tensors: the Config object (and its enums, the yaml loader
    class, the model class), numpy scalars for scores. Nothing callable beyond these classes."""
    import yaml
    from recbole.config import Config as RecBoleConfig
    from recbole.utils import enum_type

    from recbole_pmtrec.config import Config

    enums = [getattr(enum_type, n) for n in dir(enum_type) if isinstance(getattr(enum_type, n), type)]
    enums = [e for e in enums if e.__module__ == enum_type.__name__]
    numpy_types = [np.dtype, np._core.multiarray.scalar]
    numpy_types += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [RecBoleConfig, Config, yaml.FullLoader, *enums, *numpy_types, *_model_classes()]


def load_checkpoint(file, map_location=None, **kwargs):
    """``torch.load`` with ``weights_only=True`` and the checkpoint allow-list, scoped to this call."""
    kwargs.pop("weights_only", None)
    with torch.serialization.safe_globals(checkpoint_allowlist()):
        return torch.load(file, map_location=map_location, weights_only=True, **kwargs)


def save_checkpoint(obj, file, **kwargs):
    """``torch.save`` with a pickle protocol the weights-only loader can read."""
    kwargs["pickle_protocol"] = _CHECKPOINT_PROTOCOL
    return torch.save(obj, file, **kwargs)


class _CheckpointTorch:
    """The ``torch`` name as ``recbole.trainer.trainer`` sees it: the real module, except that ``load`` is
    :func:`load_checkpoint` and ``save`` is :func:`save_checkpoint`. Scoped to that one module, so
    ``Trainer.resume_checkpoint`` and ``Trainer.evaluate(load_best_model=True)`` load with weights only."""

    load = staticmethod(load_checkpoint)
    save = staticmethod(save_checkpoint)

    def __getattr__(self, name):
        return getattr(torch, name)


def _trainer_checkpoints() -> None:
    import recbole.trainer.trainer as trainer_module

    if not isinstance(trainer_module.torch, _CheckpointTorch):
        trainer_module.torch = _CheckpointTorch()


def apply() -> None:
    """Install every shim (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _pandas_check()
    _numpy_aliases()
    _scipy_dok()
    _trainer_checkpoints()
    _APPLIED = True


UnpicklingError = pickle.UnpicklingError
