"""Hyperparameter tuning with RecBole's ``HyperTuning`` (hyperopt: exhaustive, random, bayes), in-process.

A trial leaves no file behind unless asked (``save_trials=True``, ``--save_trials``): no checkpoint, no log
file, no TensorBoard folder per trial (see :func:`recbole_pmtrec.quick_start.objective_function`); the
result table is the tuning's one output."""

from __future__ import annotations

import os
from datetime import datetime
from functools import partial

from recbole.trainer import HyperTuning

from recbole_pmtrec.quick_start import objective_function


def _model_objective(config_dict, config_file_list, model, dataset, save_trials=False):
    return objective_function(
        {**config_dict, "model": model, "dataset": dataset}, config_file_list, saved=save_trials
    )


def result_table(tuner: HyperTuning) -> str:
    """A markdown table: one row per trial (parameters, best valid score, valid and test metrics)."""
    rows = list(tuner.params2result.items())
    if not rows:
        return "(no trial finished)\n"
    valid_keys = list(rows[0][1]["best_valid_result"].keys())
    test_keys = list(rows[0][1]["test_result"].keys())
    header = (
        ["params", "best_valid_score"] + [f"valid {k}" for k in valid_keys] + [f"test {k}" for k in test_keys]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for params, result in rows:
        cells = [params, f"{result['best_valid_score']:.4f}"]
        cells += [f"{result['best_valid_result'][k]:.4f}" for k in valid_keys]
        cells += [f"{result['test_result'][k]:.4f}" for k in test_keys]
        lines.append("| " + " | ".join(cells) + " |")
    best = tuner.params2str(tuner.best_params) if tuner.best_params is not None else "none"
    lines += ["", f"best params: {best}  (best valid score {tuner.best_score})"]
    return "\n".join(lines) + "\n"


def tune(
    model,
    dataset,
    params_file,
    config_file_list=None,
    algo="exhaustive",
    max_evals=100,
    output=None,
    save_trials=False,
    workers=None,
    ray_address=None,
):
    """Run a search over ``params_file`` (RecBole's format: ``name choice [..]``, ``uniform lo,hi``, ...),
    write the result table (markdown) to ``output`` and return ``{"best_params", "best_score", "table"}``.

    ``save_trials``: keep every trial's checkpoint (``checkpoint_dir``), log file (``log/``) and TensorBoard
    folder (``log_tensorboard/``), as RecBole's own tuning does; off by default.

    ``workers`` / ``ray_address``: run the trials as Ray tasks, on this machine or on a Ray cluster
    (:mod:`recbole_pmtrec.parallel`: same trials, same table; a failed trial is listed, the others go on)."""
    tuner = HyperTuning(
        partial(_model_objective, model=model, dataset=dataset, save_trials=save_trials),
        params_file=params_file,
        fixed_config_file_list=config_file_list,
        algo=algo,
        max_evals=max_evals,
    )
    failures = []
    if workers or ray_address:
        from recbole_pmtrec.parallel import run_trials

        failures = run_trials(tuner, workers=workers, ray_address=ray_address)
    else:
        tuner.run()
    if output is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = os.path.join("hyper_results", f"{model}-{dataset}-{stamp}.md")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    table = result_table(tuner)
    if failures:
        from recbole_pmtrec.parallel import failures_markdown

        table += failures_markdown(failures, tuner.params2str)
    with open(output, "w", encoding="utf-8") as f:
        f.write(f"# Tuning {model} on {dataset} ({algo}, {params_file})\n\n{table}")
    print(f"tuning table written to {output}\n{table}")
    return {"best_params": tuner.best_params, "best_score": tuner.best_score, "table": output}
