"""Tuning trials as Ray tasks: ``run_recbole_pmtrec.py --hyper=... --workers=N`` (local, loopback) or
``--ray_address=HOST:PORT`` (an existing cluster).

The trials are the ones RecBole's ``HyperTuning`` would run, in its order: its search algorithm is first
run dry (the objective answers at once), which for ``exhaustive`` and ``random`` does not depend on the
results. Each trial then runs as one Ray task on one CPU thread, exactly as :func:`objective_function`
runs it in one process (it seeds itself from ``seed``), so a trial's numbers are those of running it alone.
The results are handed to the same ``HyperTuning`` in the sequential order, so the table and the best
parameters are the sequential run's. ``bayes`` (TPE) proposes each trial from the results before it and is
refused here. A trial that raises is reported with its parameters and traceback; the others go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import traceback

import recbole_pmtrec  # noqa: F401  (numpy aliases before ray imports)

LOOPBACK = "127.0.0.1"


def planned_trials(tuner) -> list[dict]:
    """The parameter dicts ``tuner.run()`` would try, in its order (a dry run of its search algorithm)."""
    from recbole.trainer import HyperTuning

    planned: list[dict] = []

    def instant(config_dict, _files):
        planned.append(dict(config_dict))
        # a strictly better score each time, so hyperopt's no-progress early stop never ends the dry run
        score = -len(planned)
        return {
            "model": "",
            "best_valid_score": score,
            "valid_score_bigger": False,
            "best_valid_result": {},
            "test_result": {},
        }

    dry = HyperTuning(instant, space=tuner.space, algo=tuner.algo, max_evals=tuner.max_evals)
    with contextlib.redirect_stdout(io.StringIO()):
        dry.run()
    return planned


def _distinct_run_names() -> None:
    """RecBole names a trial's TensorBoard folder (``log_tensorboard/model-<time>``) and checkpoint
    (``<model>-<time>.pth``) by the second: two workers starting trials in the same second in the same
    folder would share them (and one trial's clean-up removed the other's folder). Add the worker's pid."""
    import recbole.trainer.trainer as trainer_module
    import recbole.utils.utils as utils_module

    if getattr(utils_module.get_local_time, "with_pid", False):
        return
    clock = utils_module.get_local_time

    def get_local_time():
        return f"{clock()}-{os.getpid()}"

    get_local_time.with_pid = True
    utils_module.get_local_time = trainer_module.get_local_time = get_local_time


def prepare_worker(cwd: str, argv: list[str], threads: int = 1) -> None:
    """A Ray worker about to run a task as the driver would: ``threads`` torch threads, the driver's working
    directory and command line (RecBole's Config reads ``--key=value`` from ``sys.argv``), run names of
    its own."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    os.chdir(cwd)
    sys.argv = list(argv)
    _distinct_run_names()


def _trial(objective, params: dict, config_files, cwd: str, argv: list[str]) -> dict:
    """One trial in a Ray worker (one thread, see ``prepare_worker``); never raises."""
    prepare_worker(cwd, argv)
    started = time.time()
    try:
        return {"result": objective(dict(params), config_files), "seconds": time.time() - started}
    except Exception:  # reported by the driver with the trial's parameters; the other trials go on
        return {"error": traceback.format_exc(), "seconds": time.time() - started}


@contextlib.contextmanager
def ray_session(workers: int | None, address: str | None):
    """``ray.init`` on this machine (``workers`` CPUs, loopback, no dashboard, no usage report) or on
    ``address``; shut down on exit."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # a loaded machine starts Ray's node agent slowly; its default 30 s to register would end the node
    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    import ray

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=max(1, int(workers or 1)),
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def run_trials(tuner, workers: int | None = None, ray_address: str | None = None) -> list[dict]:
    """Run ``tuner``'s trials on Ray and record them in ``tuner`` as ``tuner.run()`` would; return the
    failed ones (``{"params", "error"}``), also printed."""
    if getattr(tuner.algo, "__module__", "").startswith("hyperopt.tpe"):
        raise ValueError(
            "bayes (TPE) proposes each trial from the previous results: run it without --workers"
        )
    trials = planned_trials(tuner)
    outcomes: dict[int, dict] = {}
    started = time.time()
    with ray_session(workers, ray_address) as ray:
        task = ray.remote(num_cpus=1)(_trial)
        pending = {
            task.remote(
                tuner.objective_function, params, tuner.fixed_config_file_list, os.getcwd(), sys.argv
            ): i
            for i, params in enumerate(trials)
        }
        print(f"{len(trials)} trials on Ray ({ray_address or f'{workers} local workers'})", flush=True)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            outcomes[i] = ray.get(done[0])
            label = tuner.params2str(trials[i])
            if "error" in outcomes[i]:
                status = "FAILED"
            else:
                status = f"best valid score {outcomes[i]['result']['best_valid_score']:.4f}"
            print(
                f"[{len(outcomes)}/{len(trials)}] {label}: {status} ({outcomes[i]['seconds']:.1f} s; "
                f"{time.time() - started:.1f} s since start)",
                flush=True,
            )
    failures = []
    objective = tuner.objective_function
    try:
        for i, params in enumerate(trials):  # the sequential order: same table, same best parameters
            if "error" in outcomes[i]:
                failures.append({"params": params, "error": outcomes[i]["error"]})
                continue
            tuner.objective_function = lambda _c, _f, result=outcomes[i]["result"]: result
            with contextlib.redirect_stdout(io.StringIO()):
                tuner.trial(params)
    finally:
        tuner.objective_function = objective
    for failure in failures:
        print(f"trial {tuner.params2str(failure['params'])} failed:\n{failure['error']}", flush=True)
    return failures


def failures_markdown(failures: list[dict], params2str) -> str:
    """The failed trials under the result table: parameters and the last line of the traceback."""
    if not failures:
        return ""
    lines = ["", "failed trials:"]
    for failure in failures:
        last = failure["error"].strip().splitlines()[-1]
        lines.append(f"- {params2str(failure['params'])}: {last}")
    return "\n".join(lines) + "\n"
