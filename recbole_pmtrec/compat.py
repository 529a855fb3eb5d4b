"""Every work-around RecBole 1.2.1 needs on today's numpy / scipy / torch / pandas, in one place.

Imported first by ``recbole_pmtrec/__init__.py``; :func:`apply` is idempotent. Each shim names the
upstream RecBole issue it answers. None of them switches a safety off for the whole process.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recbole_pmtrec.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["apply", "load_checkpoint", "save_checkpoint"]

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


# RecBole 1.2.1 code that pandas 2.2+ warns about, one entry per source line (recbole/data/dataset/dataset.py).
# Each warning names a pandas 3 change; under the pinned pandas<3 (_pandas_check) the code still does what it
# means, so the warning is noise: ~23 lines on every dataset load. Silenced for that module only.
_RECBOLE_PANDAS_WARNINGS = [
    # dataset.py:501 Dataset._load_feat, `df[field].fillna(value="", inplace=True)` (token_seq / float_seq);
    # dataset.py:648 and :650 Dataset._fill_nan, `feat[field].fillna(value=0 | feat[field].mean(),
    # inplace=True)` (token and float fields): chained inplace fillna, a no-op only under copy-on-write
    "A value is trying to be set on a copy of a DataFrame or Series through chained assignment using an "
    "inplace method",
    # dataset.py:1217 Dataset._remap, `np.cumsum(feat[field].agg(len))` (token_seq fields): pandas 2 still
    # applies len element-wise, as RecBole means
    "using <built-in function len> in Series.agg cannot aggregate",
]


def _recbole_pandas_warnings() -> None:
    """Silence the pandas FutureWarnings of ``_RECBOLE_PANDAS_WARNINGS``, raised from RecBole's
    ``recbole.data.dataset.dataset`` only (no upstream fix: RecBole 1.2.1 is the last release). The same
    warning from any other module, and every other warning of that module, still shows. Calling it again
    puts the filters back in front (``warnings.filterwarnings`` replaces an identical filter)."""
    import re
    import warnings

    for message in _RECBOLE_PANDAS_WARNINGS:
        warnings.filterwarnings(
            "ignore",
            message=re.escape(message),
            category=FutureWarning,
            module=r"recbole\.data\.dataset\.dataset$",
        )


# --------------------------------------------------------------------------------------------------
# Checkpoints: data only, loaded weights-only with no extra allow-list (torch >= 2.6, RUCAIBox/RecBole#2215)
# --------------------------------------------------------------------------------------------------


class _CheckpointTorch:
    """The ``torch`` name as ``recbole.trainer.trainer`` sees it: the real module, except that ``load`` is
    :func:`recbole_pmtrec.checkpoint.load_checkpoint` and ``save`` is
    :func:`recbole_pmtrec.checkpoint.save_checkpoint`. Scoped to that one module, so every RecBole trainer's
    ``_save_checkpoint`` writes data only (the Config as a plain dict) and its ``resume_checkpoint`` and
    ``evaluate(load_best_model=True)`` load through the one safe loader."""

    load = staticmethod(load_checkpoint)
    save = staticmethod(save_checkpoint)

    def __getattr__(self, name):
        return getattr(torch, name)


def _trainer_checkpoints() -> None:
    import recbole.trainer.trainer as trainer_module

    if not isinstance(trainer_module.torch, _CheckpointTorch):
        trainer_module.torch = _CheckpointTorch()


def _ensure_dir(dir_path) -> None:
    """RecBole's ``ensure_dir`` without its race: ``exists`` then ``makedirs`` fails in one of two processes
    that create the same folder at once (every rank of a multi-process run builds its ``Trainer``, which
    ensures ``checkpoint_dir``)."""
    os.makedirs(dir_path, exist_ok=True)


_recbole_ensure_dir = None


def _race_free_ensure_dir() -> None:
    import recbole.data.dataset.dataset as dataset_module
    import recbole.data.utils as data_utils
    import recbole.trainer.trainer as trainer_module
    import recbole.utils as utils_package
    import recbole.utils.logger as logger_module
    import recbole.utils.utils as utils_module

    global _recbole_ensure_dir
    if utils_module.ensure_dir is not _ensure_dir:
        _recbole_ensure_dir = utils_module.ensure_dir  # kept for the test that shows the race
    for module in (utils_module, utils_package, trainer_module, data_utils, dataset_module, logger_module):
        module.ensure_dir = _ensure_dir


def apply() -> None:
    """Install every shim (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _pandas_check()
    _numpy_aliases()
    _scipy_dok()
    _recbole_pandas_warnings()
    _trainer_checkpoints()
    _race_free_ensure_dir()
    _APPLIED = True
