"""The federated run's configuration: ``properties/federated/defaults.yaml``, then a run's yaml, then overrides.

    from recbole_pmtrec.federated.config import load_config
    fed_config = load_config("properties/federated/ml100k.yaml", {"rounds": 2})

A key that defaults.yaml does not define, or a value of the wrong kind, fails with the file (or
``overrides``) and the key named. ``data_path``, ``raw_path`` and ``output_dir`` are made absolute against
the working directory at load time, so the processes a launcher starts elsewhere read the same folders.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from recbole_pmtrec.config import properties_dir

TEMPLATES = ("additive", "partition", "none")
DATASETS = ("ml-100k", "epinions", "aliexpress")
PATH_KEYS = ("data_path", "raw_path", "output_dir")


def defaults_file() -> Path:
    return properties_dir() / "federated" / "defaults.yaml"


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"federated config {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid yaml ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping of key: value at the top level, got {type(data).__name__}"
        )
    return data


def _kind_ok(default, value) -> bool:
    """A value may replace a default of the same kind; ints may stand for floats; ~ defaults take anything."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _merge(config: dict, layer: dict, source: str, defaults: dict) -> None:
    for key, value in layer.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise KeyError(f"{source}: unknown key {key!r} (known keys: {known})")
        if not _kind_ok(defaults[key], value):
            want = type(defaults[key]).__name__
            raise ValueError(
                f"{source}: {key} = {value!r} should be a {want} (like the default {defaults[key]!r})"
            )
        if isinstance(defaults[key], dict) and defaults[key] and value is not None:
            unknown = sorted(set(value) - set(defaults[key]))
            if unknown:
                raise KeyError(
                    f"{source}: {key} has unknown entries {unknown} (known: {', '.join(defaults[key])})"
                )
            value = {**config[key], **value}  # a partial mapping overrides only the entries it names
        config[key] = float(value) if isinstance(defaults[key], float) and value is not None else value


def _check(config: dict, source: str) -> None:
    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{source}: {key} = {config[key]!r}: {why}")

    if config["dataset"] not in DATASETS:
        raise bad("dataset", f"must be one of {', '.join(DATASETS)}")
    if not config["scenarios"] or not isinstance(config["scenarios"], list):
        raise bad("scenarios", "list the scenario names (one client each)")
    if len(set(config["scenarios"])) != len(config["scenarios"]):
        raise bad("scenarios", "a scenario is listed twice")
    if not config["tasks"] or len(set(config["tasks"])) != len(config["tasks"]):
        raise bad("tasks", "list each task label once, main task first")
    if config["pfm_template"] not in TEMPLATES:
        raise bad("pfm_template", f"must be one of {', '.join(TEMPLATES)}")
    if not 0.0 < config["pfm_partition_shared"] < 1.0:
        raise bad("pfm_partition_shared", "must lie strictly between 0 and 1")
    for key in (
        "rounds",
        "local_epochs",
        "train_batch_size",
        "eval_batch_size",
        "embedding_size",
        "num_experts",
    ):
        if config[key] < 1:
            raise bad(key, "must be at least 1")
    for key in ("learning_rate", "pfm_temperature"):
        if config[key] <= 0:
            raise bad(key, "must be positive")
    for key in ("prox_mu", "ditto_lambda", "weight_decay", "dropout_prob"):
        if config[key] < 0:
            raise bad(key, "must not be negative")
    if not config["expert_mlp_sizes"] or any(
        not isinstance(s, int) or s < 1 for s in config["expert_mlp_sizes"]
    ):
        raise bad("expert_mlp_sizes", "list one or more positive layer sizes")
    if any(not isinstance(s, int) or s < 1 for s in config["tower_mlp_sizes"]):
        raise bad("tower_mlp_sizes", "list positive layer sizes (or [])")
    if len(config["split"]) != 3 or abs(sum(config["split"]) - 1.0) > 1e-6:
        raise bad("split", "three ratios (train, valid, test) summing to 1")
    mode = str(config["eval_mode"])
    if not (mode == "labeled" or (mode.startswith("uni") and mode[3:].isdigit())):
        raise bad("eval_mode", "uniN (N sampled items per positive) or labeled")
    if config["test_from"] not in ("best", "last"):
        raise bad("test_from", "must be best or last")
    if config["valid_after"] not in ("fit", "aggregate"):
        raise bad("valid_after", "must be fit or aggregate")
    if config["select_metric"] not in ("auc", "logloss"):
        raise bad("select_metric", "must be auc or logloss")
    min_clients = config["min_clients"]
    if min_clients is not None and not 1 <= min_clients <= len(config["scenarios"]):
        raise bad(
            "min_clients", f"must lie between 1 and the number of scenarios ({len(config['scenarios'])})"
        )
    import recbole_pmtrec.trainer.combiners  # noqa: F401  (importing the package registers every combiner)
    from recbole_pmtrec.trainer.combiners.base import COMBINERS

    if config["local_mtl_method"].lower() not in COMBINERS:
        raise bad("local_mtl_method", f"unknown combiner; available: {', '.join(sorted(COMBINERS))}")


def load_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    """defaults.yaml < the yaml at ``path`` (``None``: defaults only) < ``overrides``; checked (see module)."""
    defaults = _read_yaml(defaults_file())
    config = dict(defaults)
    source = "defaults"
    if path is not None:
        source = str(path)
        _merge(config, _read_yaml(Path(path)), source, defaults)
    if overrides:
        _merge(config, dict(overrides), "overrides", defaults)
        source = f"{source} + overrides"
    _check(config, source)
    for key in PATH_KEYS:
        if config[key] is not None:
            config[key] = str(Path(config[key]).expanduser().resolve())
    return config
