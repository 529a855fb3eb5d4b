"""Checkpoints are data: every loading path refuses a file whose pickle would call code, without running it.

Each gadget's payload would create a marker file; every test checks that the marker is absent afterwards,
so a refusal that happens *after* the payload ran fails the test.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from recbole.config import Config as RecBoleConfig
from recbole.model.general_recommender import BPR
from recbole.trainer import Trainer

from recbole_pmtrec import load_data_and_model, run_recbole_pmtrec
from recbole_pmtrec.checkpoint import (
    CheckpointError,
    config_from_data,
    config_to_data,
    convert_trusted_checkpoint,
    load_checkpoint,
    main,
)
from recbole_pmtrec.config import Config
from recbole_pmtrec.trainer.multilabel import MultiLabelTrainer
from recbole_pmtrec.trainer.multitask import MultiTaskTrainer


def _payload(marker) -> str:
    """A Python expression that creates ``marker``: what RecBole's Config would eval()."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or 1"


class _CallWith:
    """Pickles as "call ``target`` with ``args``": the REDUCE opcode an attacker writes by hand."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return (self.target, self.args)


def _gadgets(marker) -> dict[str, _CallWith]:
    """Pickles that call classes the previous allow-list held (or that run code outright)."""
    return {
        "recbole Config eval": _CallWith(RecBoleConfig, "BPR", "ml-100k", None, {"epochs": _payload(marker)}),
        "plugin Config eval": _CallWith(Config, "BPR", "ml-100k", None, {"seed": _payload(marker)}),
        "recommender class": _CallWith(BPR, {"epochs": _payload(marker)}, None),
        "yaml loader": _CallWith(yaml.FullLoader, "!!python/object/apply:os.system ['touch x']"),
        "eval": _CallWith(eval, _payload(marker)),
        "os.system": _CallWith(os.system, f"touch {marker}"),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real BPR checkpoint (1 epoch on ml-100k) saved by the plugin's run."""
    folder = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        config = {"epochs": 1, "show_progress": False, "state": "WARNING", "checkpoint_dir": str(folder)}
        result = run_recbole_pmtrec("BPR", "ml-100k", config_dict=config)
    finally:
        os.chdir(cwd)
    return result


def _poisoned(trained, tmp_path, gadget) -> str:
    """The trained checkpoint with ``gadget`` planted as its best_valid_score (protocol 2, as we save)."""
    checkpoint = load_checkpoint(trained["saved_model_file"])
    checkpoint["best_valid_score"] = gadget
    path = tmp_path / "poisoned.pth"
    torch.save(checkpoint, path, pickle_protocol=2)
    return str(path)


def _loading_paths(path, trained_config):
    """Every way the plugin loads a checkpoint, as callables."""
    config = config_from_data(trained_config)
    config["checkpoint_dir"] = os.path.dirname(path)
    from recbole_pmtrec.utils import create_dataset, data_preparation

    dataset = create_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    model = BPR(config, dataset)

    def recbole_trainer_evaluate():
        Trainer(config, model).evaluate(test_data, load_best_model=True, model_file=path)

    def plugin_trainer_evaluate():  # the trainer the plugin resolves (fast full-ranking evaluation)
        from recbole_pmtrec.utils import get_trainer

        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        trainer.evaluate(test_data, load_best_model=True, model_file=path)

    def recbole_trainer_resume():
        Trainer(config, model).resume_checkpoint(path)

    def multitask_resume():
        MultiTaskTrainer.resume_checkpoint(_bare(MultiTaskTrainer, config, model), path)

    def multilabel_evaluate():
        trainer = _bare(MultiLabelTrainer, config, model)
        trainer.per_task = True
        MultiLabelTrainer.evaluate(trainer, test_data, load_best_model=True, model_file=path)

    return {
        "load_checkpoint": lambda: load_checkpoint(path),
        "load_data_and_model": lambda: load_data_and_model(path),
        "Trainer.evaluate(load_best_model)": recbole_trainer_evaluate,
        "plugin trainer evaluate(load_best_model)": plugin_trainer_evaluate,
        "Trainer.resume_checkpoint": recbole_trainer_resume,
        "MultiTaskTrainer.resume_checkpoint": multitask_resume,
        "MultiLabelTrainer.evaluate(load_best_model)": multilabel_evaluate,
    }


def _bare(cls, config, model):
    """A plugin trainer with only what its loading code touches (BPR is not a multi-task model)."""
    trainer = cls.__new__(cls)
    Trainer.__init__(trainer, config, model)
    return trainer


@pytest.mark.parametrize("gadget_name", list(_gadgets("x")))
def test_every_loading_path_refuses_gadget_without_running_it(trained, tmp_path, gadget_name):
    marker = tmp_path / "pwned"
    path = _poisoned(trained, tmp_path, _gadgets(marker)[gadget_name])
    paths = _loading_paths(path, load_checkpoint(trained["saved_model_file"])["config"])
    for name, load in paths.items():
        with pytest.raises(CheckpointError) as err:
            load()
        assert path in str(err.value), name
        assert "refused" in str(err.value), name
        assert not marker.exists(), f"{name} ran the payload of {gadget_name}"


def test_stored_strings_are_never_evaluated(trained, tmp_path):
    """A data-only file whose config values are expressions: rebuilding the Config keeps them as strings."""
    marker = tmp_path / "pwned"
    checkpoint = load_checkpoint(trained["saved_model_file"])
    checkpoint["config"]["planted_key"] = _payload(marker)
    path = tmp_path / "strings.pth"
    torch.save(checkpoint, path, pickle_protocol=2)
    config = config_from_data(load_checkpoint(path)["config"])
    assert config["planted_key"] == _payload(marker)
    assert not marker.exists()
    # the plain RecBole Config would have run it: the test above can fail
    RecBoleConfig("BPR", "ml-100k", config_dict={"planted_key": _payload(marker)})
    assert marker.exists()


def test_checkpoint_is_data_and_round_trips(trained):
    checkpoint = load_checkpoint(trained["saved_model_file"])
    assert checkpoint["format"] == "recbole_pmtrec-checkpoint/1"
    assert isinstance(checkpoint["config"], dict) and checkpoint["config"]["model"] == "BPR"
    assert isinstance(checkpoint["best_valid_score"], float)
    config, model, *_ = load_data_and_model(trained["saved_model_file"])
    assert config["model"] == "BPR" and str(config["device"]) == "cpu"
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[name], tensor)


@pytest.mark.parametrize(
    "model, files",
    [("BPR", []), ("PMTRec", []), ("LightGCN", []), ("MMoE", ["properties/multitask_ml100k.yaml"])],
)
def test_config_round_trip_is_exact(model, files):
    root = Path(__file__).resolve().parents[1]
    config = Config(model=model, dataset="ml-100k", config_file_list=[str(root / f) for f in files])
    rebuilt = config_from_data(config_to_data(config))
    assert rebuilt.final_config_dict == config.final_config_dict
    assert type(rebuilt) is Config


def test_config_round_trip_of_a_dataset_in_another_folder():
    """RecBole appends the dataset's name to data_path: the rebuilt config must read the same folder."""
    data = Path(__file__).resolve().parent / "data"
    config = Config(model="BPR", dataset="auxtoy", config_dict={"data_path": str(data)})
    rebuilt = config_from_data(config_to_data(config))
    assert rebuilt["data_path"] == config["data_path"] == os.path.join(str(data), "auxtoy")
    assert rebuilt.final_config_dict == config.final_config_dict


def test_recbole_native_checkpoint_is_refused_then_converted_on_request(trained, tmp_path):
    checkpoint = load_checkpoint(trained["saved_model_file"])
    native = dict(checkpoint, config=config_from_data(checkpoint["config"]))
    native.pop("format")
    path = tmp_path / "native.pth"
    torch.save(native, path, pickle_protocol=4)  # as RecBole 1.2.1 writes it
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "RecBole-native" in message and "--trust-checkpoint" in message

    with pytest.raises(PermissionError):
        convert_trusted_checkpoint(path, tmp_path / "out.pth")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(path), str(tmp_path / "out.pth")])
    assert exit_info.value.code == 2 and not (tmp_path / "out.pth").exists()

    main(["convert", "--trust-checkpoint", str(path), str(tmp_path / "out.pth")])
    converted = load_checkpoint(tmp_path / "out.pth")
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(converted["state_dict"][name], tensor)


def test_broken_files_fail_naming_the_file(trained, tmp_path):
    good = open(trained["saved_model_file"], "rb").read()
    cases = {
        "missing.pth": None,
        "empty.pth": b"",
        "truncated.pth": good[: len(good) // 2],
        "text.pth": b"user_id:token\titem_id:token\n1\t2\n",
        "pickle.pth": pickle.dumps({"state_dict": {}}, protocol=2),
        "tensor.pth": None,
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not a checkpoint")
    (tmp_path / "zip.pth").write_bytes(buffer.getvalue())
    for name in [*cases, "zip.pth"]:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(err.value), name


def test_saving_anything_but_data_is_refused(tmp_path):
    from recbole_pmtrec.checkpoint import save_checkpoint

    with pytest.raises(TypeError, match=r"checkpoint\['other_parameter'\]\['fn'\]"):
        save_checkpoint(
            {"config": {}, "state_dict": {}, "other_parameter": {"fn": print}}, tmp_path / "x.pth"
        )
