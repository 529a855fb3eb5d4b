"""What a first run meets: config errors before any data is read, one epoch numbering (RecBole's, from 0) in
the log and in errors, one loss scale in the epoch log, no pandas FutureWarnings from RecBole's dataset
loading, and tuning that leaves no file per trial unless asked."""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from pathlib import Path

import pytest
import recbole.data.dataset.dataset as recbole_dataset_module
import torch

from recbole_pmtrec import Config, compat, create_dataset, data_preparation, get_model, get_trainer
from recbole_pmtrec import quick_start as quick_start_module
from recbole_pmtrec.quick_start import objective_function, run_recbole_pmtrec
from recbole_pmtrec.validation import ConfigError

TEST_DATA = Path(__file__).resolve().parent / "data"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------------------- config errors
@pytest.fixture
def no_data(monkeypatch):
    """Any attempt to read a dataset fails the test: the config error must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was created before the config was checked")

    monkeypatch.setattr(quick_start_module, "create_dataset", refuse)
    monkeypatch.setattr(recbole_dataset_module.Dataset, "__init__", refuse)


BAD_CONFIGS = [
    # the list of combiners is not pinned here: test modules register their own (test_pmtrec_trainer.py)
    ({"mtl_method": "pcgrd"}, "'mtl_method' has the value 'pcgrd'; allowed: one of "),
    ({"pmtrec_alpha": 0.9}, "'pmtrec_alpha' has the value 0.9; allowed: a number >= 1"),
    ({"pmtrec_alpha": "fast"}, "'pmtrec_alpha' has the value 'fast'; allowed: a number >= 1"),
    ({"pmtrec_tau": 0.0}, "'pmtrec_tau' has the value 0.0; allowed: a number > 0"),
    ({"pmtrec_tau": -1e-4}, "'pmtrec_tau' has the value -0.0001; allowed: a number > 0"),
    ({"encoder": "gcn"}, "'encoder' has the value 'gcn'; allowed: one of lightgcn, mf, ngcf"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_CONFIGS)
def test_config_error_is_raised_before_any_data_is_loaded(no_data, fast_config, overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        run_recbole_pmtrec("PMTRec", "ml-100k", config_dict={**fast_config, **overrides})
    with pytest.raises(ConfigError, match=re.escape(expected)):  # the tuning objective: the same check
        objective_function({**fast_config, **overrides, "model": "PMTRec", "dataset": "ml-100k"})


def test_config_error_from_the_command_line(no_data, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "run_recbole_pmtrec_script", PROJECT_ROOT / "run_recbole_pmtrec.py"
    )
    command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(command)
    argv = ["--model=PMTRec", "--dataset=ml-100k", "--pmtrec_tau=-1"]
    monkeypatch.setattr("sys.argv", ["run_recbole_pmtrec.py", *argv])
    with pytest.raises(ConfigError, match=r"'pmtrec_tau' has the value -1; allowed: a number > 0"):
        command.main(argv)


def test_valid_values_pass_and_encoder_is_checked_only_for_models_that_build_one():
    config = Config("PMTRec", "ml-100k", config_dict={"mtl_method": "PCGrad", "encoder": "LightGCN"})
    assert config["pmtrec_alpha"] >= 1 and config["pmtrec_tau"] > 0
    Config("PMTRec", "ml-100k", config_dict={"pmtrec_alpha": 1, "pmtrec_tau": 1})  # the ablations' values
    Config("BPR", "ml-100k", config_dict={"encoder": "anything"})  # BPR has no encoder knob of ours


# ---------------------------------------------------------------------------------------------- epoch log
def _toy_run(fast_config, **overrides):
    """PMTRec (MF, main + DirectAU) on the hand-made auxtoy files: 4 training batches an epoch."""
    config = Config(
        "PMTRec",
        "auxtoy",
        config_dict={
            **fast_config,
            "data_path": str(TEST_DATA),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "aux_tasks": ["directau"],
            "train_batch_size": 4,
            "eval_args": {
                "split": {"RS": [0.6, 0.2, 0.2]},
                "order": "TO",
                "group_by": "user",
                "mode": "full",
            },
            "metrics": ["Recall"],
            "topk": [5],
            "valid_metric": "recall@5",
            "state": "INFO",
            **overrides,
        },
    )
    dataset = create_dataset(config)
    train_data, valid_data, _test = data_preparation(config, dataset)
    model = get_model("PMTRec")(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "PMTRec")(config, model)
    return trainer, model, train_data, valid_data


def _messages(caplog) -> list[str]:
    return [ANSI.sub("", record.getMessage()) for record in caplog.records]


def test_epoch_log_shows_each_task_loss_once_as_the_mean_per_batch(fast_config, caplog):
    trainer, model, train_data, valid_data = _toy_run(fast_config, epochs=2)
    per_batch = []
    step = trainer.train_step

    def recorded(interaction, epoch):
        losses = step(interaction, epoch)
        per_batch.append((epoch, losses.tolist()))
        return losses

    trainer.train_step = recorded
    caplog.set_level(logging.INFO)
    trainer.fit(train_data, valid_data, saved=False)
    assert len(train_data) > 1  # a sum and a mean over the batches differ

    lines = [m for m in _messages(caplog) if re.match(r"epoch \d+ training", m)]
    assert len(lines) == 2
    for epoch_idx, line in enumerate(lines):
        assert line.startswith(f"epoch {epoch_idx} training [")
        assert "task losses (mean per batch): main=" in line and "directau=" in line
        assert "train_loss" not in line  # RecBole's unnamed, summed form is gone
        logged = [float(v) for v in re.findall(r"=(-?\d+\.\d+)", line)]
        batches = [losses for s, losses in per_batch if s == epoch_idx + 1]  # s = epoch + 1
        mean = torch.tensor(batches).mean(dim=0).tolist()
        assert logged == pytest.approx(mean, abs=1e-4)
    # no other line repeats the losses on another scale
    assert not [m for m in _messages(caplog) if "task losses" in m and "training [" not in m]
    # RecBole's own record of the epoch's loss uses the same scale (the sum over tasks of the means)
    assert trainer.train_loss_dict[1] == pytest.approx(
        sum(float(v) for v in re.findall(r"=(-?\d+\.\d+)", lines[1])), abs=1e-3
    )


def test_non_finite_loss_error_names_the_epoch_as_the_log_numbers_it(fast_config, caplog, capsys):
    trainer, model, train_data, valid_data = _toy_run(fast_config, epochs=3, show_progress=True)
    forward = model.multitask_forward
    calls = {"n": 0}

    def poisoned(interaction):  # every batch of RecBole's epoch 1 (the second) gives a NaN DirectAU loss
        out = forward(interaction)
        calls["n"] += 1
        if calls["n"] > len(train_data):
            out.losses[1] = out.losses[1] * float("nan")
        return out

    model.multitask_forward = poisoned
    caplog.set_level(logging.INFO)
    with pytest.raises(ValueError, match=r"not finite for task\(s\) \['directau'\] at epoch 1 ") as info:
        trainer.fit(train_data, valid_data, saved=False, show_progress=True)
    assert "(0-based, as in the log; PMTRec's s = 2)" in str(info.value)
    messages = _messages(caplog)
    assert any(m.startswith("epoch 0 training [") for m in messages)
    assert any(m.startswith("epoch 0 evaluating [") for m in messages)
    assert not any(m.startswith("epoch 1 training") for m in messages)
    progress = ANSI.sub("", capsys.readouterr().err)
    assert re.search(r"Train\s+1\b", progress)  # RecBole's progress bar names the failing epoch 1 too


# ---------------------------------------------------------------------------------------------- warnings
def _load_ml100k_recording_warnings(silence: bool) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if silence:  # compat.apply() installed these at import; "always" above outranks them until re-applied
            compat._recbole_pandas_warnings()
        create_dataset(Config("BPR", "ml-100k", config_dict={"state": "WARNING"}))
    return list(caught)


def _pandas_future_warnings(caught) -> list[str]:
    return [
        f"{Path(w.filename).name}:{w.lineno} {str(w.message)[:60]}"
        for w in caught
        if issubclass(w.category, FutureWarning) and "recbole" in w.filename
    ]


def test_ml100k_load_emits_no_pandas_future_warning():
    assert _pandas_future_warnings(_load_ml100k_recording_warnings(silence=True)) == []


def test_without_the_filter_ml100k_load_emits_recboles_pandas_future_warnings():
    """The test above could fail: without compat's filter the same load records RecBole's pandas warnings
    (dataset.py:501 _load_feat, :648 / :650 _fill_nan, :1217 _remap)."""
    found = _pandas_future_warnings(_load_ml100k_recording_warnings(silence=False))
    assert any("A value is trying to be set on a copy" in w for w in found), found
    assert any("in Series.agg cannot aggregate" in w for w in found), found
    assert {w.split(" ")[0].split(":")[0] for w in found} == {"dataset.py"}


def test_the_filter_is_scoped_to_recbole_dataset_module():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat._recbole_pandas_warnings()
        warnings.warn_explicit(
            "A value is trying to be set on a copy of a DataFrame or Series through chained assignment "
            "using an inplace method.",
            FutureWarning,
            "elsewhere.py",
            1,
            module="my_code",
        )
    assert len(caught) == 1  # the same warning from another module still shows


# ---------------------------------------------------------------------------------------------- tuning
def _tune(tmp_path, save_trials: bool):
    from recbole_pmtrec.tuning import tune

    params = tmp_path / "grid.hyper"
    params.write_text("learning_rate choice [0.01,0.005]\n")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(
        f"data_path: {TEST_DATA}\n"
        "load_col: {inter: [user_id, item_id, timestamp]}\n"
        "epochs: 1\nshow_progress: False\nstate: ERROR\nuse_gpu: False\n"
        "metrics: [Recall]\ntopk: [5]\nvalid_metric: recall@5\n"
        f"checkpoint_dir: {tmp_path / 'saved'}\n"
    )
    return tune(
        "BPR",
        "auxtoy",
        str(params),
        config_file_list=[str(fixed)],
        output=str(tmp_path / "table.md"),
        save_trials=save_trials,
    )


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if p.is_file())


def test_tuning_leaves_no_checkpoint_log_or_tensorboard_per_trial_by_default(tmp_path):
    result = _tune(tmp_path, save_trials=False)
    assert "learning_rate" in Path(result["table"]).read_text()
    assert _files(tmp_path, "*.pth") == []
    assert _files(tmp_path, "*.log") == []
    assert _files(tmp_path, "events.out.tfevents*") == []


def test_tuning_keeps_each_trials_files_when_asked(tmp_path):
    _tune(tmp_path, save_trials=True)
    assert len(_files(tmp_path / "saved", "*.pth")) >= 1  # one per trial (two in one second share a name)
    assert len(_files(tmp_path / "log", "*.log")) >= 1  # one per trial (two in one second share a name)


# ---------------------------------------------------------------------------------------------- the demo
def test_demo_reads_its_numbers_from_the_epoch_log(fast_config, caplog, tmp_path):
    """The demo's curves and row-weight summary come from the log file the trainer writes (RecBole's file
    format: date, level, two spaces, message)."""
    from recbole_pmtrec import demo

    trainer, model, train_data, valid_data = _toy_run(fast_config, epochs=2)
    caplog.set_level(logging.INFO)
    trainer.fit(train_data, valid_data, saved=False)
    log = tmp_path / "run.log"
    log.write_text("".join(f"Wed 02 Dec 2026 06:00:00 INFO  {m}\n" for m in _messages(caplog)))
    valid, main_weight = demo._epoch_numbers(str(log))
    assert sorted(valid) == [0, 1] and all(0 <= v <= 1 for v in valid.values())
    assert set(main_weight) == {"user", "item"} and all(sorted(s) == [0, 1] for s in main_weight.values())


def test_readme_shows_the_table_the_demo_prints():
    """The README's demo table has the demo's header, and its config file is named there."""
    from recbole_pmtrec import demo

    runs = {"BPR": {"metric": "recall@20", "best_valid": 0.0, "test": {"recall@10": 0.0, "ndcg@20": 0.0}}}
    header = demo.format_table("ml-100k", runs).splitlines()[2]
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert "| model | valid recall@20 (best) | test recall@10 |" in header
    assert (
        "| model | valid recall@20 (best) | test recall@10 | test recall@20 | test ndcg@10 | test ndcg@20 |"
        in readme
    )
    assert "properties/demo_ml100k.yaml" in readme


def test_ensure_dir_tolerates_a_folder_created_by_another_process(tmp_path, monkeypatch):
    """Every rank of a multi-process run builds a Trainer, which ensures checkpoint_dir: RecBole's ensure_dir
    (exists, then makedirs) raises in the rank that loses the race. The race, by hand: the folder appears
    between the check and the creation."""
    import os

    import recbole.trainer.trainer as trainer_module
    import recbole.utils.logger as logger_module

    folder = tmp_path / "saved"
    folder.mkdir()  # made by the other rank after this one looked
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    for ensure_dir in (trainer_module.ensure_dir, logger_module.ensure_dir):
        ensure_dir(str(folder))
    with pytest.raises(FileExistsError):  # RecBole's own: the race is real
        compat._recbole_ensure_dir(str(folder))
