"""RecBole-style entry points that resolve plugin models, trainers and datasets.

Mirrors ``recbole.quick_start`` step for step (same seeding, same order), so a built-in model run through
the plugin gives RecBole's own numbers; it never imports ``recbole.quick_start`` (that imports ray).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from logging import getLogger

from recbole.data.transform import construct_transform
from recbole.utils import get_environment, init_logger, init_seed, set_color

from recbole_pmtrec.checkpoint import config_from_data, load_checkpoint
from recbole_pmtrec.config import Config
from recbole_pmtrec.trainer.distributed import barrier, share_checkpoint_name
from recbole_pmtrec.utils import (
    close_tensorboard,
    create_dataset,
    data_preparation,
    get_flops_or_none,
    get_model,
    get_trainer,
)


def run_recbole_pmtrec(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """Train and test a model (plugin or RecBole) on a dataset; returns RecBole's result dict."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    transform = construct_transform(config)
    flops = get_flops_or_none(model, dataset, config["device"], transform)
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    share_checkpoint_name(trainer)  # under DDP: rank 0's file name on every rank
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    barrier()  # under DDP: rank 0 has written the best checkpoint before any rank reads it
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    close_tensorboard(trainer)

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
    }


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """The objective for ``recbole.trainer.HyperTuning``: train with ``config_dict`` and report.

    ``saved=True`` (RecBole's default) leaves the trial's checkpoint, log file and TensorBoard folder;
    ``saved=False`` (what ``recbole_pmtrec.tuning.tune`` passes unless ``save_trials``) leaves none of them:
    the best epoch's model is kept in a temporary folder until the trial's test (so the test result is still
    the best valid epoch's, as with ``saved=True``), and no log file or TensorBoard folder outlives the trial."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list)
    scratch = None if saved else tempfile.mkdtemp(prefix="recbole_pmtrec-trial-")
    if scratch is not None:
        config["checkpoint_dir"] = scratch
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    if scratch is not None:  # RecBole's init_logger always opens a log file: drop it (still empty) at once
        for handler in logger.handlers[:]:
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
                os.remove(handler.baseFilename)
    logging.basicConfig(level=logging.ERROR)
    try:
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        try:
            best_valid_score, best_valid_result = trainer.fit(
                train_data, valid_data, verbose=False, saved=True
            )
            test_result = trainer.evaluate(test_data, load_best_model=True)
        finally:
            close_tensorboard(trainer)
            if scratch is not None:
                shutil.rmtree(trainer.tensorboard.log_dir, ignore_errors=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def load_data_and_model(model_file):
    """Load a data-only checkpoint (:mod:`recbole_pmtrec.checkpoint`: nothing in the file is called or
    evaluated), rebuild its config, data and model and return
    ``(config, model, dataset, train_data, valid_data, test_data)``."""
    checkpoint = load_checkpoint(model_file, map_location="cpu")
    config = config_from_data(checkpoint["config"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
