"""The in-process runtime: every client in this process, arrays moved by plain function calls.

It is the reference the Flower runtime must match number for number (same seed, same config), so the
protocol is spelled out here and the ServerApp follows the same steps in the same order:

1. build every client with ``client.make_client(fed_config, scenario, seed)`` (scenarios in config order);
   roles and groups must be identical on every client; ``make_strategy(fed_config, roles, groups)``;
2. round 0: every client uploads ``sent_roles()``; ``strategy.initial`` -> every client downloads its arrays;
3. rounds ``1..rounds``: every client ``fit(round, client_options(round))`` then uploads; ``aggregate(round,
   uploads, num_examples)`` with ``num_examples`` from the fit metrics; every client downloads its arrays and
   evaluates ``valid`` (so valid measures the model a client starts the next round with: the personalized one
   for personalized strategies, the personal model for Ditto, the own model for local-only);
4. test: from the round with the best mean valid AUC over scenarios and tasks (``test_from: best``; every
   client's ``state()`` and downloaded arrays are kept from that round and restored) or from the last round
   (``test_from: last``); every client evaluates ``test``.

A client whose fit or evaluation raises ends the run with an error naming its scenario, unless ``min_clients``
allows the round to go on without it (it then sits out the rest of the run and gets no test metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from recbole_pmtrec.federated.results import RoundRecord, RunRecord, critical_path, mean_metric
from recbole_pmtrec.federated.strategies import make_strategy

# Runtime knobs that properties/federated/defaults.yaml does not hold yet, with their proposed defaults.
PROPOSED_DEFAULTS = {"test_from": "best", "select_metric": "auc"}
TEST_FROM = ("best", "last")


def _knob(fed_config: dict, key: str):
    return fed_config[key] if key in fed_config else PROPOSED_DEFAULTS[key]


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
    test_from = str(_knob(fed_config, "test_from"))
    if test_from not in TEST_FROM:
        raise ValueError(f"test_from = {test_from!r}: use one of {', '.join(TEST_FROM)}")
    metric = str(_knob(fed_config, "select_metric"))
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
    for s, client in clients.items():
        client.download(arrays[s])

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

    for server_round in range(1, int(fed_config["rounds"]) + 1):
        start = time.perf_counter()
        options = strategy.client_options(server_round)
        fit, uploads = {}, {}
        for s in list(active):
            try:
                fit[s] = dict(clients[s].fit(server_round, options))
                uploads[s] = clients[s].upload(sent)
            except Exception as err:  # a crashed client: see drop()
                fit.pop(s, None)
                drop(s, server_round, "fit", err)
        num_examples = {s: int(fit[s].get("num_examples", clients[s].num_train)) for s in uploads}
        aggregate_start = time.perf_counter()
        arrays = strategy.aggregate(server_round, uploads, num_examples)
        aggregate_seconds = time.perf_counter() - aggregate_start
        valid, eval_seconds = {}, []
        for s in list(active):
            try:
                eval_start = time.perf_counter()
                clients[s].download(arrays[s])
                valid[s] = dict(clients[s].evaluate("valid"))
                eval_seconds.append(time.perf_counter() - eval_start)
            except Exception as err:
                drop(s, server_round, "evaluation", err)
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
            state, downloaded = best_snapshot[s]
            clients[s].load_state(state)
            clients[s].download(downloaded)
    record.test = {s: dict(clients[s].evaluate("test")) for s in active}
    record.test_round = test_round
    log(f"test (round {test_round}): mean {metric} {mean_metric(record.test, metric):.4f}")
    return record
