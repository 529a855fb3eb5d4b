"""A RecBole ``Config`` that also reads the plugin's ``properties/`` yamls and resolves plugin models."""

from __future__ import annotations

import os
from pathlib import Path

import recbole
from recbole.config import Config as RecBoleConfig

from recbole_pmtrec.validation import validate


def properties_dir() -> Path:
    """The plugin's ``properties/`` folder, from an installed package or from a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "properties", here.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"recbole_pmtrec: no properties/overall.yaml next to {here}; reinstall the package (pip install .)"
    )


class Config(RecBoleConfig):
    """RecBole's ``Config`` with the plugin's yamls layered in RecBole's own order.

    Precedence, lowest first: RecBole overall < plugin overall (and combiners.yaml) < RecBole model < plugin model <
    RecBole sample < RecBole dataset < plugin dataset < the dataset folder's ``<data_path>/<dataset>/<dataset>.yaml``
    (written there by the converters) < (model-type presets) < config files < config dict < command line.
    Model names resolve in the plugin first, then in RecBole.
    """

    def _get_model_and_dataset(self, model, dataset):
        from recbole_pmtrec.utils import get_model

        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("model must be given: as model=..., in a config file, config dict or --model=")
        if isinstance(model, str):
            model_class = get_model(model)
        else:
            model_class, model = model, model.__name__
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError(
                    "dataset must be given: as dataset=..., in a config file, config dict or --dataset="
                )
        return model, model_class, dataset

    def _update_internal_config_dict(self, file):
        self._recbole_files.append(os.path.realpath(file))
        return super()._update_internal_config_dict(file)

    def _dataset_folder_yaml(self, dataset) -> str:
        """``<data_path>/<dataset>/<dataset>.yaml``: the folder RecBole will read the atomic files from
        (``data_path`` from the config files / dict / command line, else RecBole's ``dataset/``; ml-100k is
        always read from RecBole's own copy), relative paths taken from the current directory as RecBole does."""
        if dataset == "ml-100k":
            folder = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", dataset)
        else:
            data_path = (
                self.external_config_dict.get("data_path")
                or self.internal_config_dict.get("data_path")  # RecBole's overall.yaml: dataset/
                or "dataset/"
            )
            folder = os.path.join(data_path, dataset)
        return os.path.realpath(os.path.join(folder, f"{dataset}.yaml"))

    def _load_internal_config_dict(self, model, model_class, dataset):
        self._recbole_files: list[str] = []
        super()._load_internal_config_dict(model, model_class, dataset)
        recbole_props = os.path.realpath(os.path.join(os.path.dirname(recbole.__file__), "properties"))
        ours = properties_dir()
        rb = {
            "overall": os.path.join(recbole_props, "overall.yaml"),
            "sample": os.path.join(recbole_props, "dataset", "sample.yaml"),
            "dataset": os.path.join(recbole_props, "dataset", f"{dataset}.yaml"),
        }
        plugin = {
            "overall": ours / "overall.yaml",
            "combiners": ours / "combiners.yaml",
            "model": ours / "model" / f"{model}.yaml",
            "dataset": ours / "dataset" / f"{dataset}.yaml",
        }
        order: list = []
        for file in self._recbole_files:
            if file == rb["sample"]:
                order.append(plugin["model"])
            order.append(file)
            if file == rb["overall"]:
                order += [plugin["overall"], plugin["combiners"]]
            if file == rb["dataset"] or (file == rb["sample"] and rb["dataset"] not in self._recbole_files):
                order.append(plugin["dataset"])

        # the dataset folder's own yaml (a converter writes it beside the atomic files), above the shipped one
        beside = self._dataset_folder_yaml(dataset)
        at = order.index(plugin["dataset"]) + 1 if plugin["dataset"] in order else len(order)
        order.insert(at, beside)
        self.internal_config_dict = {}
        for file in order:
            if not os.path.isfile(file):
                continue
            loaded = RecBoleConfig._update_internal_config_dict(self, file)
            if file in (plugin["dataset"], beside) and loaded:
                self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]
        self.internal_config_dict["MODEL_TYPE"] = model_class.type
        del self._recbole_files
        validate({**self.internal_config_dict, **self.external_config_dict}, model_class)  # before any data

    def _init_device(self):
        """RecBole's for one process; for a process of a group (``local_rank`` set, as the launcher does),
        gloo on CPUs and NCCL on GPUs, ``dist_backend`` overriding (:func:`recbole_pmtrec.launch.init_device`)."""
        from recbole_pmtrec.launch import init_device

        init_device(self)
