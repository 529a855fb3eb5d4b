"""One scenario = one client (:class:`recbole_pmtrec.federated.contracts.FederatedClient`).

The client reads only its own scenario folder (and the run's public vocabulary) through the plugin's
``Config`` / ``create_dataset`` / ``data_preparation``, builds :class:`~recbole_pmtrec.federated.model.
FederatedMMoE`, and trains it with the project's multi-task trainer (``local_mtl_method``: ``ew`` = the plain
sum of the per-task BCE losses, ``pmtrec`` = PMTRec's per-row rule on the embedding tables, or any other
combiner), evaluating with RecBole's evaluator per task like :class:`~recbole_pmtrec.trainer.multilabel.
MultiLabelTrainer`. Local objectives the strategies ask for through ``fit(options)``:

- FedProx: ``+ mu/2 ||w - w_g||^2`` over the arrays received last (``prox_mu``): gradient ``mu (w - w_g)``;
- Ditto (``strategy: ditto``): a personal model ``v`` beside the global copy ``w``, trained each round with
  ``+ lambda/2 ||v - w_g||^2`` (``ditto_lambda``) while ``w`` trains plainly; ``evaluate`` scores ``v``.

The proximal gradient is added to ``.grad`` right before every optimizer step (an optimizer pre-step hook),
after the combiner wrote the task gradients. Each client owns its random state (restored before and captured
after every ``fit``; evaluation draws its negatives from a fixed per-(seed, scenario, split) state), so an
in-process run of several clients is deterministic and ``state()`` / ``load_state()`` resume bit for bit.
Loaded data is cached per process by (scenario folder, RecBole settings): Flower rebuilds the ClientApp
per message.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from recbole.data.interaction import Interaction, cat_interactions
from recbole.utils import init_seed

from recbole_pmtrec.config import Config
from recbole_pmtrec.federated import scenarios
from recbole_pmtrec.federated.model import FederatedMMoE
from recbole_pmtrec.trainer import rng
from recbole_pmtrec.trainer.multilabel import MultiLabelTrainer
from recbole_pmtrec.utils import close_tensorboard, create_dataset, data_preparation

_DATA_CACHE: dict[tuple, tuple] = {}
_EVAL_CACHE: dict[tuple, list] = {}


def recbole_config_dict(fed_config: dict, scenario: str, seed: int) -> tuple[dict, list[str]]:
    """Everything a scenario's RecBole Config gets: the data settings of ``scenarios.recbole_settings`` plus
    model sizes and local training settings from the federated config."""
    settings, files = scenarios.recbole_settings(fed_config, scenario)
    keys = ("embedding_size", "num_experts", "expert_mlp_sizes", "tower_mlp_sizes", "dropout_prob",
            "train_batch_size", "eval_batch_size", "learning_rate", "weight_decay")  # fmt: skip
    settings.update({k: fed_config[k] for k in keys})
    settings.update(
        seed=int(seed),
        reproducibility=True,
        epochs=fed_config["local_epochs"],
        mtl_method=fed_config["local_mtl_method"],
        show_progress=False,
        checkpoint_dir=str(Path(tempfile.gettempdir()) / "recbole_pmtrec_federated"),
        **fed_config["local_mtl_options"],
        **fed_config["recbole"],
    )
    return settings, files


def load_scenario(fed_config: dict, scenario: str, seed: int):
    """``(config, train, valid, test)`` of one scenario, read from its own folder once per process."""
    settings, files = recbole_config_dict(fed_config, scenario, seed)
    folder = scenarios.scenario_folder(fed_config, scenario)
    key = (str(folder), json.dumps(settings, sort_keys=True, default=str), tuple(files))
    if key not in _DATA_CACHE:
        if not folder.is_dir():
            raise FileNotFoundError(
                f"scenario {scenario!r}: {folder} is missing; prepare the scenarios first "
                "(python -m recbole_pmtrec.federated.scenarios --config <yaml>)"
            )
        argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config parses --key=value from the command line
        try:
            config = Config("MMoE", settings["dataset"], config_file_list=files or None, config_dict=settings)
        finally:
            sys.argv = argv
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        if len(dataset.inter_feat) == 0:
            raise ValueError(f"scenario {scenario!r} has no interaction rows in {folder}")
        train, valid, test = data_preparation(config, dataset)
        _DATA_CACHE[key] = (config, train, valid, test)
    return _DATA_CACHE[key]


class _NullWriter:
    """Stands in for RecBole's TensorBoard writer: a client writes no event files."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class LocalTrainer(MultiLabelTrainer):
    """The multi-label trainer plus a proximal term ``coeff (w - anchor)`` added to ``.grad`` before each step."""

    def __init__(self, config, model):
        super().__init__(config, model)
        close_tensorboard(self)
        self.tensorboard = _NullWriter()
        self.proximal: tuple[float, list[tuple[torch.nn.Parameter, torch.Tensor]]] | None = None
        self.optimizer.register_step_pre_hook(self._add_proximal_gradient)

    def _add_proximal_gradient(self, optimizer, args, kwargs) -> None:
        if not self.proximal:
            return
        coeff, pairs = self.proximal
        for param, anchor in pairs:
            extra = coeff * (param.detach() - anchor)
            param.grad = extra if param.grad is None else param.grad + extra

    def train_epochs(self, train_data, first_epoch: int, epochs: int) -> list[float]:
        """``epochs`` local epochs (PMTRec's epoch counter continues across rounds); mean loss per task."""
        means = [self._train_epoch(train_data, first_epoch + e) for e in range(epochs)]  # mean per batch
        return [sum(m[i] for m in means) / epochs for i in range(len(means[0]))]


class ScenarioClient:
    """See the module docstring; built by :func:`make_client`."""

    def __init__(self, fed_config: dict, scenario: str, seed: int):
        self.fed_config, self.scenario, self.seed = fed_config, scenario, int(seed)
        self.config, self.train_data, self.valid_data, self.test_data = load_scenario(
            fed_config, scenario, seed
        )
        self.tasks = list(self.config["task_labels"])
        self.num_train = len(self.train_data._dataset)
        vocabulary = scenarios.read_vocabulary(fed_config)
        self.model, self.trainer = self._build(vocabulary)
        self.personal = self.personal_trainer = None
        if fed_config["strategy"] == "ditto":
            self.personal, self.personal_trainer = self._build(vocabulary)
        self._roles = self.model.array_roles()
        self._received: dict[str, torch.Tensor] = {}  # w_g: the arrays of the last download
        self.epochs_done = 0
        client_seed = (self.seed * 1_000_003 + zlib.crc32(scenario.encode())) % (2**31)
        init_seed(client_seed, True)
        self.train_data.generator.manual_seed(client_seed)
        self._rng = rng.capture(self.train_data)

    def _build(self, vocabulary):
        model = FederatedMMoE(
            self.config,
            self.train_data._dataset,
            vocabulary,
            template=self.fed_config["pfm_template"],
            shared_fraction=self.fed_config["pfm_partition_shared"],
            private_fields=self.fed_config["private_fields"],
        ).to(self.config["device"])
        return model, LocalTrainer(self.config, model)

    # ----------------------------------------------------------------------------------------- contract
    def roles(self) -> dict[str, str]:
        return {name: role for name, (role, _) in self._roles.items()}

    def groups(self) -> dict[str, str]:
        return {name: group for name, (_, group) in self._roles.items() if group is not None}

    def upload(self, roles: set[str]) -> dict[str, np.ndarray]:
        if "private" in roles:
            raise ValueError(
                f"client {self.scenario}: private arrays never leave the client (asked for {roles})"
            )
        state = self.model.state_dict()
        return {
            n: state[n].detach().cpu().numpy().copy() for n, (role, _) in self._roles.items() if role in roles
        }

    def download(self, arrays: dict[str, np.ndarray]) -> None:
        state = self.model.state_dict()
        for name, value in arrays.items():
            if name not in self._roles or self._roles[name][0] == "private":
                raise KeyError(f"client {self.scenario}: cannot load {name!r} (unknown or private array)")
            if tuple(value.shape) != tuple(state[name].shape):
                raise ValueError(
                    f"client {self.scenario}: {name} has shape {value.shape}, expected {tuple(state[name].shape)}"
                )
            state[name].copy_(torch.as_tensor(np.asarray(value)))
        device = self.config["device"]
        self._received = {
            n: torch.as_tensor(np.array(v), device=device).to(state[n].dtype) for n, v in arrays.items()
        }

    def fit(self, server_round: int, options: dict) -> dict[str, float]:
        epochs = int(options.get("local_epochs", self.fed_config["local_epochs"]))
        start = time.perf_counter()
        with self._own_rng():
            params = dict(self.model.named_parameters())
            anchor = {n: v for n, v in sorted(self._received.items()) if n in params}
            if self.personal is not None:
                lam = float(options.get("ditto_lambda", self.fed_config["ditto_lambda"]))
                personal_losses = self._train(self.personal, self.personal_trainer, epochs, lam, anchor)
            losses = self._train(self.model, self.trainer, epochs, float(options.get("prox_mu", 0.0)), anchor)
        self.epochs_done += epochs
        metrics = {"num_examples": float(self.num_train), "train_loss": float(sum(losses))}
        metrics.update({f"train_loss@{t}": float(v) for t, v in zip(self.tasks, losses)})
        if self.personal is not None:
            metrics["personal_train_loss"] = float(sum(personal_losses))
        metrics["train_seconds"] = time.perf_counter() - start
        return metrics

    def evaluate(self, split: str) -> dict[str, float]:
        data = evaluation_data(self.fed_config, self.scenario, self.seed, split)
        return evaluate_split(self.personal_trainer or self.trainer, data)

    def state(self) -> dict[str, np.ndarray]:
        out = {}
        for prefix, model, trainer in self._models():
            out.update(
                {
                    f"{prefix}/model/{n}": t.detach().cpu().numpy().copy()
                    for n, t in model.state_dict().items()
                }
            )
            for i, entry in trainer.optimizer.state_dict()["state"].items():
                out.update({f"{prefix}/optim/{i}/{k}": _array(v) for k, v in entry.items()})
            out.update(
                {f"{prefix}/combiner/{n}": _array(v) for n, v in trainer.combiner.state_dict().items()}
            )
        out.update(_rng_arrays(self._rng))
        out["meta/epochs_done"] = np.array([self.epochs_done], dtype=np.int64)
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for prefix, model, trainer in self._models():
            model.load_state_dict(
                {n: torch.from_numpy(np.array(state[f"{prefix}/model/{n}"])) for n in model.state_dict()}
            )
            opt = trainer.optimizer.state_dict()
            entries: dict[int, dict] = {}
            for key, value in state.items():
                if key.startswith(f"{prefix}/optim/"):
                    i, name = key[len(prefix) + 7 :].split("/", 1)
                    entries.setdefault(int(i), {})[name] = torch.from_numpy(np.array(value))
            trainer.optimizer.load_state_dict({"state": entries, "param_groups": opt["param_groups"]})
            combiner = {n[len(prefix) + 10 :]: torch.from_numpy(np.array(v)) for n, v in state.items()
                        if n.startswith(f"{prefix}/combiner/")}  # fmt: skip
            trainer.combiner.load_state_dict(combiner)
        self._rng = _rng_from_arrays(state)
        self.epochs_done = int(state["meta/epochs_done"][0])
        self._received = {}

    # ------------------------------------------------------------------------------------------ helpers
    def _models(self):
        yield "global", self.model, self.trainer
        if self.personal is not None:
            yield "personal", self.personal, self.personal_trainer

    @contextlib.contextmanager
    def _own_rng(self):
        rng.restore_global(self._rng)
        rng.restore_loader(self._rng, self.train_data)
        yield
        self._rng = rng.capture(self.train_data)

    def _train(self, model, trainer, epochs: int, coeff: float, anchor: dict) -> list[float]:
        params = dict(model.named_parameters())
        pairs = [(params[n], a) for n, a in anchor.items()]
        trainer.proximal = (coeff, pairs) if coeff > 0 and pairs else None
        try:
            return trainer.train_epochs(self.train_data, self.epochs_done, epochs)
        finally:
            trainer.proximal = None


class SampledEvalRows(list):
    """A split's positives and ``N`` sampled items per positive, drawn once, as the batches
    ``MultiLabelTrainer.evaluate`` reads (``(interaction, None, None, None)``)."""

    def __init__(self, batches: list, dataset):
        super().__init__(batches)
        self._dataset = dataset  # the split's positives (num_examples)


def sampled_eval_rows(fed_config: dict, scenario: str, seed: int, split: str) -> SampledEvalRows:
    """``uniN`` evaluation rows of ``split``, drawn once per process from a random state fixed by (seed, scenario,
    split): every round, strategy and the centralized reference score the same rows. Each positive gets N items
    drawn uniformly among the scenario's items that its user has no interaction with (in any split); a sampled
    row has every label 0. RecBole's own ``uniN`` loader draws per user in a Python loop (minutes per evaluation
    on an Epinions category); this draws all at once, vectorized."""
    config, *loaders = load_scenario(fed_config, scenario, seed)
    key = (id(loaders[0]), split)
    if key in _EVAL_CACHE:
        return _EVAL_CACHE[key]
    train, valid, test = (loader._dataset for loader in loaders)
    dataset = {"valid": valid, "test": test}[split]
    uid, iid, items = dataset.uid_field, dataset.iid_field, dataset.item_num
    num_neg = int(str(fed_config["eval_mode"])[3:])
    generator = np.random.default_rng(zlib.crc32(f"{seed}/{scenario}/{split}".encode()))
    used = np.unique(
        np.concatenate(
            [(d.inter_feat[uid] * items + d.inter_feat[iid]).numpy() for d in (train, valid, test)]
        )
    )
    users = dataset.inter_feat[uid].numpy()
    negatives = generator.integers(1, items, size=(len(users), num_neg))
    for _ in range(100):  # redraw items the user has; a user holding almost every item keeps the last draw
        taken = np.isin(users[:, None] * items + negatives, used)
        if not taken.any():
            break
        negatives[taken] = generator.integers(1, items, size=int(taken.sum()))
    positives = dataset.inter_feat
    sampled = positives[torch.arange(len(users)).repeat_interleave(num_neg)]
    sampled.update(Interaction({iid: torch.from_numpy(negatives.reshape(-1))}))
    for label in config["task_labels"]:
        if label in sampled:
            sampled.update(Interaction({label: torch.zeros(len(sampled))}))
    rows = cat_interactions([positives[torch.arange(len(users))], sampled])
    rows.update(
        Interaction({config["LABEL_FIELD"]: torch.cat([torch.ones(len(users)), torch.zeros(len(sampled))])})
    )
    rows = dataset.join(rows)
    size = int(config["eval_batch_size"])
    batches = [
        (rows[torch.arange(i, min(i + size, len(rows)))], None, None, None) for i in range(0, len(rows), size)
    ]
    _EVAL_CACHE[key] = SampledEvalRows(batches, dataset)
    return _EVAL_CACHE[key]


def evaluation_data(fed_config: dict, scenario: str, seed: int, split: str):
    """What a split is scored on: :func:`sampled_eval_rows` for ``uniN``, RecBole's loader for ``labeled``."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, not {split!r}")
    if str(fed_config["eval_mode"]).startswith("uni"):
        return sampled_eval_rows(fed_config, scenario, seed, split)
    _, _, valid, test = load_scenario(fed_config, scenario, seed)
    return valid if split == "valid" else test


def evaluate_split(trainer, data) -> dict[str, float]:
    """``auc@<task>``, ``logloss@<task>`` (RecBole's evaluator, per task) and ``num_examples`` (positives)."""
    result = trainer.evaluate(data, load_best_model=False)
    out = {k: float(v) for k, v in result.items() if "@" in k}
    out["num_examples"] = float(len(data._dataset))
    return out


def make_client(fed_config: dict, scenario: str, seed: int) -> ScenarioClient:
    """The contract's factory: the client of ``scenario`` (see :class:`ScenarioClient`)."""
    if scenario not in fed_config["scenarios"]:
        raise ValueError(f"unknown scenario {scenario!r}; this run's scenarios: {fed_config['scenarios']}")
    return ScenarioClient(fed_config, scenario, seed)


# ---------------------------------------------------------------------------------- random state as arrays


def _array(value) -> np.ndarray:
    return value.detach().cpu().numpy().copy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _rng_arrays(state: dict) -> dict[str, np.ndarray]:
    n = state["numpy"]
    version, internal, gauss = state["python"]
    out = {
        "rng/torch": state["torch"].numpy().copy(),
        "rng/numpy_keys": n["keys"].numpy().astype(np.uint32),
        "rng/numpy_meta": np.array([n["pos"], n["has_gauss"], n["gauss"]], dtype=np.float64),
        "rng/python": np.array([version, *internal], dtype=np.int64),
        "rng/python_gauss": np.array([np.nan if gauss is None else gauss], dtype=np.float64),
    }
    if "loader" in state:
        out["rng/loader"] = state["loader"].numpy().copy()
    return out


def _rng_from_arrays(arrays: dict[str, np.ndarray]) -> dict:
    meta, python, gauss = arrays["rng/numpy_meta"], arrays["rng/python"], float(arrays["rng/python_gauss"][0])
    state = {
        "torch": torch.from_numpy(np.array(arrays["rng/torch"], dtype=np.uint8)),
        "numpy": {
            "kind": "MT19937",
            "keys": torch.from_numpy(np.array(arrays["rng/numpy_keys"]).astype(np.int64)),
            "pos": int(meta[0]),
            "has_gauss": int(meta[1]),
            "gauss": float(meta[2]),
        },
        "python": (int(python[0]), tuple(int(x) for x in python[1:]), None if np.isnan(gauss) else gauss),
    }
    if "rng/loader" in arrays:
        state["loader"] = torch.from_numpy(np.array(arrays["rng/loader"], dtype=np.uint8))
    return state
