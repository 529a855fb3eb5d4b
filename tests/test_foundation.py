"""The plugin runs RecBole's built-in models unchanged, loads ml-100k's genres, keeps checkpoint loading
safe and tunes with RecBole's HyperTuning."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_pmtrec import Config, get_model, load_data_and_model, run_recbole_pmtrec
from recbole_pmtrec.checkpoint import CheckpointError, load_checkpoint

ML100K = Path(__import__("recbole").__file__).parent / "dataset_example" / "ml-100k"


def _recbole_own_pipeline(model, dataset, config_dict):
    """RecBole's ``run_recbole``, step for step, using only RecBole's own functions (it cannot be imported
    itself: ``recbole.quick_start`` imports ray, which needs ``pkg_resources``)."""
    import recbole.config
    import recbole.data
    import recbole.utils
    from recbole.data.transform import construct_transform

    config = recbole.config.Config(model=model, dataset=dataset, config_dict=config_dict)
    recbole.utils.init_seed(config["seed"], config["reproducibility"])
    recbole.utils.init_logger(config)
    data = recbole.data.create_dataset(config)
    train_data, valid_data, test_data = recbole.data.data_preparation(config, data)
    recbole.utils.init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    net = recbole.utils.get_model(config["model"])(config, train_data._dataset)
    import logging

    recbole.utils.get_flops(net, data, config["device"], logging.getLogger(), construct_transform(config))
    trainer = recbole.utils.get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    best_valid_score, best_valid = trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return best_valid, test


def test_bpr_through_plugin_equals_recbole_pipeline(fast_config):
    config = {**fast_config, "epochs": 2}
    ours = run_recbole_pmtrec("BPR", "ml-100k", config_dict=config, saved=False)
    valid, test = _recbole_own_pipeline("BPR", "ml-100k", config)
    assert dict(ours["best_valid_result"]) == dict(valid)
    assert dict(ours["test_result"]) == dict(test)
    assert ours["test_result"]["recall@10"] > 0


def test_lightgcn_runs_with_scipy_shim(fast_config):
    import threading

    def writers():  # TensorBoard's background writer threads
        return [t for t in threading.enumerate() if type(t).__name__ == "_AsyncWriterThread" and t.is_alive()]

    before = len(writers())
    result = run_recbole_pmtrec("LightGCN", "ml-100k", config_dict=fast_config, saved=False)
    assert result["test_result"]["recall@10"] > 0
    assert len(writers()) == before  # the run closed its TensorBoard writer (RecBole leaves it open)


def test_ml100k_genres_load_as_token_seq(fast_config):
    """Each item's genres, read back through RecBole's id maps, equal an independent parse of the file."""
    from recbole.data.dataset import Dataset

    config = Config(
        "BPR",
        "ml-100k",
        config_dict={
            **fast_config,
            "load_col": {"inter": ["user_id", "item_id"], "item": ["item_id", "class"]},
        },
    )
    dataset = Dataset(config)
    dataset._change_feat_format()  # pandas -> RecBole Interaction, as data_preparation does
    expected = {}
    with open(ML100K / "ml-100k.item", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        col = [h.split(":")[0] for h in header].index("class")
        for line in f:
            cells = line.rstrip("\n").split("\t")
            expected[cells[0]] = cells[col].split(" ")
    item_tokens = dataset.field2id_token["item_id"]
    genre_tokens = dataset.field2id_token["class"]
    genres = dataset.item_feat["class"]
    ids = dataset.item_feat["item_id"].tolist()
    assert genres.dim() == 2 and genres.shape[0] == dataset.item_num
    checked = 0
    for row, internal_id in zip(genres, ids):
        if internal_id == 0:  # padding row
            continue
        got = sorted(genre_tokens[i] for i in row.tolist() if i != 0)
        assert got == sorted(expected[item_tokens[internal_id]]), item_tokens[internal_id]
        checked += 1
    assert checked == 1682
    # multi-genre items exist, so the token_seq path (not a single token) is exercised
    assert max(len(v) for v in expected.values()) > 1


def test_checkpoint_reload_weights_only(fast_config):
    result = run_recbole_pmtrec("BPR", "ml-100k", config_dict=fast_config, saved=True)
    model_file = result["saved_model_file"]
    assert os.path.isfile(model_file)
    # the file loads with weights_only=True (an unrestricted pickle is never used)
    checkpoint = load_checkpoint(model_file)
    assert set(checkpoint) >= {"config", "state_dict", "optimizer", "epoch"}
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(model_file)
    for name, tensor in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[name], tensor)

    from recbole_pmtrec import get_trainer

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.saved_model_file = model_file
    reloaded = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    assert dict(reloaded) == dict(result["test_result"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_arbitrary_callable_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Evil()}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    # a torch zip whose pickle names a callable (or a numpy scalar) is refused too
    buffer = io.BytesIO()
    torch.save({"x": np.float64(1.0), "f": print}, buffer, pickle_protocol=2)
    (tmp_path / "print.pth").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "print.pth")


def test_unknown_model_error_lists_models():
    with pytest.raises(ValueError) as err:
        get_model("NoSuchModel")
    message = str(err.value)
    assert "NoSuchModel" in message and "bpr" in message and "lightgcn" in message
    assert "lightgbm" not in message.split("RecBole models")[0]


def test_plugin_yaml_layers(tmp_path, monkeypatch):
    """RecBole overall < plugin overall < model yaml < dataset yaml < config file < dict < command line."""
    config = Config("BPR", "ml-100k", config_dict={"state": "WARNING"})
    assert "aux_relations" in config.final_config_dict  # plugin overall.yaml was read
    assert config["learning_rate"] == 0.001  # RecBole default kept
    assert config["USER_ID_FIELD"] == "user_id"  # RecBole's ml-100k dataset yaml kept
    file = tmp_path / "x.yaml"
    file.write_text("learning_rate: 0.5\nembedding_size: 8\n")
    monkeypatch.setattr("sys.argv", ["prog", "--embedding_size=16"])
    config = Config("BPR", "ml-100k", config_file_list=[str(file)], config_dict={"learning_rate": 0.25})
    assert config["learning_rate"] == 0.25 and config["embedding_size"] == 16


def test_tuning_grid_writes_table(fast_config, tmp_path):
    from recbole_pmtrec.tuning import tune

    cfg = tmp_path / "fixed.yaml"
    cfg.write_text(
        "epochs: 1\nshow_progress: False\nstate: ERROR\nsaved: False\n"
        f"checkpoint_dir: {tmp_path / 'saved'}\nuse_gpu: False\n"
    )
    params = tmp_path / "grid.hyper"
    params.write_text("learning_rate choice [0.01,0.005]\nembedding_size choice [16,32]\n")
    out = tmp_path / "table.md"
    result = tune(
        "BPR", "ml-100k", str(params), config_file_list=[str(cfg)], algo="exhaustive", output=str(out)
    )
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ") and "params" not in line]
    assert len(lines) == 4
    combos = {tuple(sorted(p.strip() for p in line.split("|")[1].split(","))) for line in lines}
    assert len(combos) == 4
    assert result["best_params"] is not None


def test_properties_ship_in_the_wheel(tmp_path):
    """``pip install .`` (not only -e) must carry the yamls: build the wheel and look inside."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(root),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("recbole_pmtrec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "recbole_pmtrec/properties/overall.yaml" in names
    shipped = {n for n in names if n.startswith("recbole_pmtrec/properties/")}
    in_tree = {
        "recbole_pmtrec/properties/" + str(p.relative_to(root / "properties")).replace(os.sep, "/")
        for p in (root / "properties").rglob("*")
        if p.is_file() and p.suffix in {".yaml", ".hyper"}
    }
    assert in_tree <= shipped
    modules = {
        str(p.relative_to(root)).replace(os.sep, "/")
        for p in (root / "recbole_pmtrec").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules <= set(names), sorted(modules - set(names))  # setup.cfg lists every subpackage
