"""The in-process runtime: every client in this process, arrays moved by plain function calls.

It is the reference the Flower runtime (``flower_app/server_app.py``, ``client_app.py``) must match number for
number (same seed, same config), so the protocol is spelled out here, in the ServerApp's message order:

1. build every client with ``client.make_client(fed_config, scenario, seed)`` (scenarios in config order);
   roles and groups must be identical on every client; ``make_strategy(fed_config, roles, groups)``;
   FedAvg weights ``num_examples`` are the clients' ``num_train``;
2. round 0: every client uploads ``sent_roles()``; ``strategy.initial`` gives what each client loads first;
3. rounds ``1..rounds``, per client (the ServerApp's ``train`` message): download what the server sent, ``fit(
   round, client_options(round))``, evaluate ``valid``, upload; then ``aggregate(round, uploads, num_examples)``;
4. test (the ``evaluate`` message): every client downloads the last aggregation's arrays and evaluates ``test``.

So by default (``valid_after: fit``) valid measures each client's model right after its local training, and
test the model the server gave back. Options: ``valid_after: aggregate`` evaluates valid after the download
instead (the model a client starts the next round with, i.e. the one test measures: the personalized one for
personalized strategies, the global one for FedAvg); ``test_from: best`` tests the round with the best mean
valid ``select_metric`` over scenarios and tasks (every client's ``state()`` and that round's arrays are kept
and restored) instead of the last round. The ServerApp implements both the same way.

A client whose fit or evaluation raises ends the run with an error naming its scenario, unless ``min_clients``
allows the round to go on without it (it then sits out the rest of the run and gets no test metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from recbole_pmtrec.federated.results import RoundRecord, RunRecord, critical_path, mean_metric
from recbole_pmtrec.federated.strategies import knob, make_strategy

CHOICES = {"test_from": ("best", "last"), "valid_after": ("fit", "aggregate")}


def _knob(fed_config: dict, key: str) -> str:
    value = str(knob(fed_config, key))
    if value not in CHOICES.get(key, (value,)):
        raise ValueError(f"{key} = {value!r}: use one of {', '.join(CHOICES[key])}")
    return value


def _default_factory():
    from recbole_pmtrec.federated.client import make_client

    return make_client


def check_same_layout(clients: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The roles and groups every client reports; they must be identical (same names, same roles, groups)."""
    first = next(iter(clients))
    roles, groups = clients[first].roles(), clients[first].groups()
    for scenario, client in clients.items():
        if client.roles() != roles or client.groups() != groups:
            diff = sorted(set(client.roles()).symmetric_difference(roles))[:5]
            raise ValueError(
                f"client {scenario!r} holds other arrays / roles / groups than client {first!r} (e.g. {diff}): "
                "every client of a run must build the same model over the run's common vocabulary"
            )
    return roles, groups


def _snapshot(client, arrays: dict) -> tuple[dict, dict]:
    return {k: v.copy() for k, v in client.state().items()}, {k: v.copy() for k, v in arrays.items()}


def run(
    fed_config: dict, client_factory: Callable | None = None, log: Callable[[str], None] = print
) -> RunRecord:
    """Run one federated experiment in this process (see the module for the protocol) -> its record."""
    test_from, valid_after, metric = (
        _knob(fed_config, k) for k in ("test_from", "valid_after", "select_metric")
    )
    factory = client_factory or _default_factory()
    seed, scenarios = int(fed_config["seed"]), list(fed_config["scenarios"])
    min_clients = fed_config.get("min_clients") or len(scenarios)

    clients = {s: factory(fed_config, s, seed) for s in scenarios}
    roles, groups = check_same_layout(clients)
    strategy = make_strategy(fed_config, roles, groups)
    sent = strategy.sent_roles()
    record = RunRecord(
        strategy=strategy.name,
        seed=seed,
        runtime="simulate",
        scenarios=scenarios,
        config=dict(fed_config),
        test_from=test_from,
    )
    arrays = strategy.initial({s: c.upload(sent) for s, c in clients.items()})
    num_examples = {s: int(c.num_train) for s, c in clients.items()}
    active = list(scenarios)
    best_value, best_round, best_snapshot = -math.inf, None, None
    sign = -1.0 if metric == "logloss" else 1.0

    def drop(scenario: str, server_round: int, step: str, err: Exception) -> None:
        active.remove(scenario)
        if len(active) < min_clients:
            raise RuntimeError(
                f"client {scenario!r} failed in {step} of round {server_round} ({type(err).__name__}: {err}); "
                f"{len(active)} clients left, min_clients = {min_clients}: stopping"
            ) from err
        log(f"round {server_round}: client {scenario!r} failed in {step} ({err}); going on without it")

    def evaluate_valid(server_round: int) -> tuple[dict, list[float]]:
        valid, seconds = {}, []
        for s in list(active):
            try:
                eval_start = time.perf_counter()
                valid[s] = dict(clients[s].evaluate("valid"))
                seconds.append(time.perf_counter() - eval_start)
            except Exception as err:  # a crashed client: see drop()
                drop(s, server_round, "evaluation", err)
        return valid, seconds

    for server_round in range(1, int(fed_config["rounds"]) + 1):
        start = time.perf_counter()
        options = strategy.client_options(server_round)
        fit, uploads, valid, eval_seconds = {}, {}, {}, []
        for s in list(active):
            try:
                clients[s].download(arrays[s])
                fit[s] = dict(clients[s].fit(server_round, options))
                if valid_after == "fit":
                    eval_start = time.perf_counter()
                    valid[s] = dict(clients[s].evaluate("valid"))
                    eval_seconds.append(time.perf_counter() - eval_start)
                uploads[s] = clients[s].upload(sent)
            except Exception as err:  # a crashed client: see drop()
                fit.pop(s, None)
                valid.pop(s, None)
                drop(s, server_round, "fit", err)
        aggregate_start = time.perf_counter()
        arrays = strategy.aggregate(server_round, uploads, {s: num_examples[s] for s in uploads})
        aggregate_seconds = time.perf_counter() - aggregate_start
        if valid_after == "aggregate":
            for s in active:
                clients[s].download(arrays[s])
            valid, eval_seconds = evaluate_valid(server_round)
        round_record = record.add_round(
            RoundRecord(
                server_round=server_round,
                fit=fit,
                valid=valid,
                wall_seconds=time.perf_counter() - start,
                train_seconds=critical_path(
                    [float(m.get("train_seconds", 0.0)) for m in fit.values()], False
                ),
                eval_seconds=critical_path(eval_seconds, False),
                aggregate_seconds=aggregate_seconds,
            )
        )
        value = mean_metric(valid, metric)
        log(
            f"round {server_round}: mean valid {metric} {value:.4f} over {len(valid)} scenarios, "
            f"{round_record.wall_seconds:.1f} s (training {round_record.train_seconds:.1f} s)"
        )
        if test_from == "best" and not math.isnan(value) and sign * value > best_value:
            best_value, best_round = sign * value, server_round
            best_snapshot = {s: _snapshot(clients[s], arrays[s]) for s in active}

    test_round = len(record.rounds)
    if test_from == "best" and best_snapshot is not None:
        test_round = best_round
        for s in active:
            state, arrays[s] = best_snapshot[s]
            clients[s].load_state(state)
    for s in active:
        clients[s].download(arrays[s])
    record.test = {s: dict(clients[s].evaluate("test")) for s in active}
    record.test_round = test_round
    log(f"test (round {test_round}): mean {metric} {mean_metric(record.test, metric):.4f}")
    return record
