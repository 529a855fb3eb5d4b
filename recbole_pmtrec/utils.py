"""Resolvers that try the plugin first and fall back to RecBole (the RecBole-GNN plugin pattern)."""

from __future__ import annotations

import importlib
import os
import pkgutil
from logging import getLogger

import recbole.data
import recbole.model
import recbole.utils
from recbole.utils import ModelType

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def plugin_models() -> dict[str, type]:
    """The plugin's models by name (``recbole_pmtrec.model.MODELS``)."""
    from recbole_pmtrec.model import MODELS

    return dict(MODELS)


def _recbole_model_dir(sub: str) -> str:
    return os.path.join(os.path.dirname(recbole.model.__file__), sub)


def recbole_model_names() -> list[str]:
    """Names of RecBole's own model modules, read from disk: importing ``exlib_recommender`` needs
    lightgbm and xgboost, which a machine may lack."""
    names = []
    for sub in _RECBOLE_SUBMODULES:
        modules = pkgutil.iter_modules([_recbole_model_dir(sub)])
        names += [m.name for m in modules if not m.name.startswith("_")]
    return sorted(names)


def get_model(model_name: str) -> type:
    """The model class for ``model_name``: the plugin's first, then RecBole's.

    Unlike RecBole's resolver, an unknown name raises a ``ValueError`` that lists what exists
    (RecBole's says ``No module named 'lightgbm'`` for any unknown name on a machine without it).
    """
    models = plugin_models()
    if model_name in models:
        return models[model_name]
    lower = model_name.lower()
    for sub in _RECBOLE_SUBMODULES:
        if not os.path.isfile(os.path.join(_recbole_model_dir(sub), f"{lower}.py")):
            continue
        module = importlib.import_module(f"recbole.model.{sub}.{lower}")
        if hasattr(module, model_name):
            return getattr(module, model_name)
    raise ValueError(
        f"Unknown model '{model_name}'. Plugin models: {', '.join(sorted(models))}. "
        f"RecBole models (module names, use the class spelling, e.g. BPR, LightGCN): "
        f"{', '.join(recbole_model_names())}."
    )


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """The trainer for a model: ``recbole_pmtrec.trainer.<Model>Trainer``; else the multi-task trainer for
    a plugin model that returns one loss per task; else RecBole's choice, with the plugin's full-sort
    evaluation (``trainer/fast_eval.py``) where it keeps RecBole's ``evaluate``."""
    trainer_module = importlib.import_module("recbole_pmtrec.trainer")
    if hasattr(trainer_module, model_name + "Trainer"):
        return getattr(trainer_module, model_name + "Trainer")
    model_class = plugin_models().get(model_name)
    if model_class is not None and getattr(model_class, "multi_task", False):
        return trainer_module.MultiTaskTrainer
    return trainer_module.with_fast_full_sort(recbole.utils.get_trainer(model_type, model_name))


def _dataset_class(config) -> type | None:
    """The plugin dataset class this config needs, or None for RecBole's own choice."""
    data_module = importlib.import_module("recbole_pmtrec.data")
    if hasattr(data_module, config["model"] + "Dataset"):
        return getattr(data_module, config["model"] + "Dataset")
    model_class = plugin_models().get(config["model"])
    dataset_class = getattr(model_class, "dataset_class", None)
    if dataset_class is not None:
        return dataset_class
    if getattr(model_class, "needs_aux_data", False):
        return data_module.AuxDataset
    if config["MODEL_TYPE"] == ModelType.GENERAL and config["aux_relations"]:
        return data_module.AuxDataset
    return None


def recbole_dataset_class(config) -> type:
    """The dataset class RecBole's own ``create_dataset`` would build for this config."""
    dataset_module = importlib.import_module("recbole.data.dataset")
    if hasattr(dataset_module, config["model"] + "Dataset"):
        return getattr(dataset_module, config["model"] + "Dataset")
    type2class = {
        ModelType.GENERAL: "Dataset",
        ModelType.SEQUENTIAL: "SequentialDataset",
        ModelType.CONTEXT: "Dataset",
        ModelType.KNOWLEDGE: "KnowledgeBasedDataset",
        ModelType.TRADITIONAL: "Dataset",
        ModelType.DECISIONTREE: "Dataset",
    }
    return getattr(dataset_module, type2class[config["MODEL_TYPE"]])


def create_dataset(config):
    """Create the dataset: the plugin's class when the model or the data needs it, else RecBole's choice;
    either way its atomic files are read strictly (``recbole_pmtrec.data.atomic``: a malformed row is an
    error naming file, line, field and value; rows dropped by RecBole's filters are counted in the log).

    Unlike RecBole's ``create_dataset``, a pickled dataset (``dataset_save_path`` or the default file in
    ``checkpoint_dir``) is never loaded: unpickling can run code, and it would bypass the strict reader.
    """
    from recbole_pmtrec.data.atomic import strict_dataset_class

    if config["dataset_save_path"]:
        getLogger().warning(
            f"dataset_save_path ({config['dataset_save_path']}) is not loaded: recbole_pmtrec builds the dataset "
            "from its atomic files (a pickled dataset can run code when loaded)"
        )
    dataset_class = _dataset_class(config) or recbole_dataset_class(config)
    dataset = strict_dataset_class(dataset_class)(config)
    if config["save_dataset"]:
        dataset.save()
    return dataset


def data_preparation(config, dataset):
    """Split into train / valid / test loaders. RecBole's own splitting and loaders are used for every
    dataset, so a plugin dataset and a built-in one give the same split for the same seed."""
    return recbole.data.data_preparation(config, dataset)


def get_flops_or_none(model, dataset, device, transform):
    """RecBole's FLOPs count, or None where a model's forward does not fit its tracer."""
    logger = getLogger()
    try:
        return recbole.utils.get_flops(model, dataset, device, logger, transform)
    except Exception as err:  # thop traces arbitrary forwards; a failure must not stop training
        logger.warning(f"FLOPs not counted for {type(model).__name__}: {err}")
        return None


def close_tensorboard(trainer) -> None:
    """Flush and close the trainer's TensorBoard writer (RecBole never does): one process that trains many
    runs (tuning, the benchmark) would otherwise keep a writer thread and an open file per run, and a
    writer flushing after the working directory changed fails on its relative ``log_tensorboard`` path."""
    writer = getattr(trainer, "tensorboard", None)
    if writer is not None:
        writer.close()
