"""Train one benchmark cell and record what the paper's figures need.

``run_cell`` follows ``recbole_pmtrec.quick_start.run_recbole_pmtrec`` step for step (same seeding, same
order, FLOPs count included, since it draws from the same random streams), so the command written for a
cell (``cell_command``) reproduces its numbers; in addition it records, per epoch, the training time and
losses and, per evaluation, the valid metrics (RecBole returns only the best ones).
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import subprocess
import time
import traceback
from logging import getLogger

import torch
from recbole.data.transform import construct_transform
from recbole.utils import init_logger, init_seed

from recbole_pmtrec.benchmark.suite import Cell
from recbole_pmtrec.config import Config
from recbole_pmtrec.utils import (
    close_tensorboard,
    create_dataset,
    data_preparation,
    get_flops_or_none,
    get_model,
    get_trainer,
)


def cell_command(cell: Cell) -> str:
    """The command line that runs the cell alone (``run_recbole_pmtrec.py`` with every config entry)."""
    args = ["python", "run_recbole_pmtrec.py", f"--model={cell.model}", f"--dataset={cell.recbole_dataset}"]
    for key, value in cell.config.items():
        args.append(f"--{key}={value if isinstance(value, str) else repr(value)}")
    return " ".join(_shell_quote(a) for a in args)


def _shell_quote(arg: str) -> str:
    """Quote for a POSIX shell, preferring double quotes around Python reprs (which use single quotes)."""
    if shlex.quote(arg) == arg:
        return arg
    if not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def source_version() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it (None outside a checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here, check=False)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty.returncode else "")


def _plain(value):
    """JSON-ready copies of RecBole's results (numpy scalars, OrderedDicts, tuples of losses)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _init_file_logger(config) -> str | None:
    """RecBole's logger writing to its log file only (the console shows the benchmark's progress bar)."""
    root = getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    init_logger(config)
    log_file = None
    for handler in root.handlers[:]:
        if isinstance(handler, logging.FileHandler):
            log_file = handler.baseFilename
        else:
            root.removeHandler(handler)
    return log_file


def _record_history(trainer) -> list[dict]:
    """Wrap the trainer's epoch methods: one entry per training epoch, valid results where it evaluated."""
    history: list[dict] = []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def recorded_train_epoch(train_data, epoch_idx, *args, **kwargs):
        start = time.perf_counter()
        losses = train_epoch(train_data, epoch_idx, *args, **kwargs)
        history.append(
            {"epoch": epoch_idx, "train_s": time.perf_counter() - start, "train_loss": _plain(losses)}
        )
        return losses

    def recorded_valid_epoch(valid_data, *args, **kwargs):
        start = time.perf_counter()
        score, result = valid_epoch(valid_data, *args, **kwargs)
        if history:
            history[-1].update(
                valid_s=time.perf_counter() - start, valid_score=float(score), valid=_plain(result)
            )
        return score, result

    trainer._train_epoch = recorded_train_epoch
    trainer._valid_epoch = recorded_valid_epoch
    return history


def run_cell(cell: Cell) -> dict:
    """Train and test one cell; returns its record (``status`` ok, with results, history and times)."""
    start = time.perf_counter()
    config = Config(model=cell.model, dataset=cell.recbole_dataset, config_dict=dict(cell.config))
    init_seed(config["seed"], config["reproducibility"])
    log_file = _init_file_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    data_s = time.perf_counter() - start

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    get_flops_or_none(model, dataset, config["device"], construct_transform(config))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    history = _record_history(trainer)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test_start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    test_s = time.perf_counter() - test_start
    close_tensorboard(trainer)
    if os.path.exists(trainer.saved_model_file):
        os.remove(trainer.saved_model_file)

    evaluated = [h for h in history if "valid_score" in h]
    best = max(evaluated, key=lambda h: h["valid_score"]) if evaluated else None
    return {
        "status": "ok",
        "best_valid_score": float(best_valid_score),
        "best_valid_result": _plain(best_valid_result),
        "test_result": _plain(test_result),
        "best_epoch": best["epoch"] if best else None,
        "epochs_run": len(history),
        "history": history,
        "times": {
            "data_s": data_s,
            "train_s": sum(h["train_s"] for h in history),
            "valid_s": sum(h.get("valid_s", 0.0) for h in history),
            "test_s": test_s,
        },
        "log_file": log_file,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(config["device"]),
            "machine": platform.machine(),
            "source": source_version(),
        },
        "wall_s": time.perf_counter() - start,
    }


def run_cell_safely(cell: Cell) -> dict:
    """``run_cell``, with a failure (NaN loss, solver error, ...) recorded instead of raised."""
    start = time.perf_counter()
    try:
        return run_cell(cell)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        getLogger().exception(f"benchmark cell {cell.id} failed")
        return failure(err, time.perf_counter() - start)


def failure(err: BaseException, wall_s: float) -> dict:
    """A failed cell's outcome (called in the ``except`` block: the traceback is the one being handled)."""
    return {
        "status": "failed",
        "error": f"{type(err).__name__}: {err}",
        "traceback": traceback.format_exc(),
        "wall_s": wall_s,
    }
