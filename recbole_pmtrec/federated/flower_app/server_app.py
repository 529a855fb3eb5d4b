"""The Flower ServerApp of PF-MSMTrec and its baselines (Message API: one message per node, its own arrays).

Run config (``[tool.flwr.app.config]`` in this app's pyproject, overridden by ``flwr run --run-config``):
``config`` (the federated yaml, on the ServerApp's machine), ``overrides`` (JSON of config keys),
``output-dir`` (RunRecord, per-round server state, progress log), ``resume``, ``node-wait-seconds``,
``round-timeout``, ``client-factory`` / ``strategy-factory`` (``module:function``; tests swap them).

A run: wait until one node per scenario is connected; ``query.setup`` maps node ids to scenarios and
collects roles and groups; the strategy is built from them; round 0 collects the initial uploads; then each
round sends every node its own arrays (``train``), aggregates what came back, records it, and saves the
round; at the end every node evaluates on test. Only the roles the strategy sends ever reach this process:
every array name received is listed in ``received_arrays.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from recbole_pmtrec.federated.flower_app import checkpoint, wire
from recbole_pmtrec.federated.results import (
    RoundRecord,
    RunRecord,
    critical_path,
    mean_over_scenarios,
    metric_names,
)

app = ServerApp()


class ClientFailed(RuntimeError):
    """A client's message failed or timed out and the config's ``min_clients`` does not allow going on."""


class Session:
    """The nodes of one run, by scenario, and the exchange of one message per node."""

    def __init__(self, grid: Grid, settings: dict, out: Path, fed_config: dict):
        self.grid, self.settings, self.out = grid, settings, out
        self.node_of: dict[str, int] = {}  # scenario -> node id
        self.active: list[str] = []  # scenarios still in the run (a failed client sits out under min_clients)
        self.min_clients = int(fed_config.get("min_clients") or len(fed_config["scenarios"]))
        self.valid_after = _knob(fed_config, "valid_after")
        self.select_metric = _knob(fed_config, "select_metric")
        self.record: RunRecord | None = None
        self.received: dict[str, set[str]] = {}

    def best_round(self) -> int | None:
        """The round with the best mean valid ``select_metric`` so far (first on ties), as simulate.py picks it."""
        return self.record.best_round(self.select_metric) if self.record and self.record.rounds else None

    def log(self, line: str) -> None:
        print(line, flush=True)
        with open(self.out / "progress.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def wait_for_nodes(self, expected: int) -> list[int]:
        deadline = time.monotonic() + float(self.settings["node-wait-seconds"])
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= expected:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(nodes)} of {expected} SuperNodes connected after {self.settings['node-wait-seconds']} s: "
                    "start one SuperNode per scenario (see docs/FEDERATED.md, Running on Flower)"
                )
            time.sleep(0.5)

    def exchange(
        self, message_type: str, contents: dict, server_round: int, min_replies: int | None = None
    ) -> dict[str, RecordDict]:
        """Send ``contents[key]`` to its node (key: scenario, or node id before setup); the replies by key."""
        key_of_node = {}
        messages = []
        for key, content in contents.items():
            node = self.node_of.get(key, key)
            key_of_node[node] = key
            messages.append(
                Message(content, dst_node_id=int(node), message_type=message_type, group_id=str(server_round))
            )
        ids = set(self.grid.push_messages(messages))
        replies: dict = {}
        failures: dict = {}
        deadline = time.monotonic() + float(self.settings["round-timeout"])
        while ids and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(ids):
                ids.discard(reply.metadata.reply_to_message_id)
                key = key_of_node[reply.metadata.src_node_id]
                if reply.has_error():
                    failures[key] = reply.error.reason
                else:
                    replies[key] = reply.content
                    self._note_received(key, reply.content)
            if ids:
                time.sleep(float(self.settings["poll-seconds"]))
        for key in set(contents) - set(replies) - set(failures):
            failures[key] = f"no reply within round-timeout={self.settings['round-timeout']} s"
        if failures:
            named = "; ".join(
                f"{'scenario' if isinstance(k, str) else 'node'} {k}: {why}"
                for k, why in sorted(failures.items(), key=str)
            )
            self.active = [s for s in self.active if s not in failures]
            if len(replies) < (self.min_clients if min_replies is None else min_replies):
                raise ClientFailed(
                    f"round {server_round} ({message_type}): client failed: {named}; "
                    f"{len(replies)} clients left, min_clients = {self.min_clients}: stopping"
                )
            self.log(f"round {server_round}: going on without {sorted(failures, key=str)} ({named})")
        return replies

    def _note_received(self, key, content: RecordDict) -> None:
        """Every array name in every ArrayRecord a client sent (unpacked), as ``<record>/<array>``."""
        names = self.received.setdefault(str(key), set())
        for record_name, record in content.array_records.items():
            names.update(f"{record_name}/{name}" for name in wire.from_array_record(record))


def _settings(context: Context) -> dict:
    settings = {str(k): v for k, v in context.run_config.items()}
    settings["overrides"] = json.loads(str(settings.get("overrides") or "{}"))
    return settings


def _load_fed_config(settings: dict) -> dict:
    from recbole_pmtrec.federated.config import load_config

    return load_config(str(settings["config"]) or None, settings["overrides"])


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = _settings(context)
    fed_config = _load_fed_config(settings)
    out = Path(str(settings["output-dir"]) or fed_config.get("output_dir") or "federated_runs")
    out.mkdir(parents=True, exist_ok=True)
    session = Session(grid, settings, out, fed_config)
    try:
        run(session, fed_config)
    except Exception as err:
        session.log(f"FAILED: {type(err).__name__}: {err}")
        raise
    finally:
        checkpoint.save_received(out, session.received)


def run(session: Session, fed_config: dict) -> RunRecord:
    """The whole federated run over a connected grid (see the module docstring)."""
    settings, out = session.settings, session.out
    scenarios = list(fed_config["scenarios"])
    seed = int(fed_config["seed"])
    nodes = session.wait_for_nodes(len(scenarios))
    resumed = checkpoint.load_last(out) if settings["resume"] else None
    request = {
        "fed_config": fed_config,
        "seed": seed,
        "client_factory": settings["client-factory"],
        "run_tag": checkpoint.run_tag(out),
        "resume_round": resumed.last_round if resumed else 0,
    }
    setup = RecordDict({"setup": wire.to_config_record(request)})
    infos = session.exchange(wire.SETUP, {node: setup for node in nodes}, 0, len(nodes))
    info = {node: wire.from_config_record(reply.config_records["info"]) for node, reply in infos.items()}
    session.node_of = {i["scenario"]: node for node, i in info.items()}
    session.active = [s for s in scenarios if s in session.node_of]
    if sorted(session.node_of) != sorted(scenarios) or len(info) != len(scenarios):
        raise ValueError(
            f"connected nodes hold scenarios {sorted(i['scenario'] for i in info.values())}, "
            f"the run expects {sorted(scenarios)} (one SuperNode per scenario)"
        )
    by_scenario = {i["scenario"]: i for i in info.values()}
    first = by_scenario[scenarios[0]]
    for scenario, other in by_scenario.items():  # as simulate.check_same_layout
        if (other["roles"], other["groups"]) != (first["roles"], first["groups"]):
            raise ValueError(
                f"client {scenario!r} holds other arrays / roles / groups than client {scenarios[0]!r}: every "
                "client of a run must build the same model over the run's common vocabulary"
            )
    strategy = wire.resolve(settings["strategy-factory"])(fed_config, first["roles"], first["groups"])
    sent_roles = sorted(strategy.sent_roles())
    num_examples = {s: int(by_scenario[s]["num_train"]) for s in scenarios}
    session.log(f"{strategy.name}: {len(scenarios)} clients {scenarios}, sending roles {sent_roles}")

    if resumed:
        strategy.load_state(resumed.strategy_state)
        record, downloads, start = resumed.record, resumed.downloads, resumed.last_round + 1
        record.config, session.record = fed_config, record
        session.log(f"resuming after round {resumed.last_round}")
    else:
        record = RunRecord(
            strategy=strategy.name,
            seed=seed,
            runtime="flower",
            scenarios=scenarios,
            config=fed_config,
            test_from=_knob(fed_config, "test_from"),
        )
        roles_record = RecordDict({"round": wire.to_config_record({"sent_roles": sent_roles})})
        replies = session.exchange(wire.UPLOAD, {s: roles_record for s in scenarios}, 0, len(scenarios))
        uploads = {s: wire.from_array_record(replies[s].array_records.get("upload")) for s in scenarios}
        downloads = strategy.initial(uploads)
        start = 1

    for server_round in range(start, int(fed_config["rounds"]) + 1):
        downloads = _round(session, strategy, record, server_round, downloads, sent_roles, num_examples)
        checkpoint.save_round(out, server_round, strategy.state(), downloads, record)

    _test(session, record, downloads)
    record.save(out / "record.json")
    session.log(record.summary_markdown())
    return record


def _knob(fed_config: dict, key: str) -> str:
    """Runtime knobs shared with simulate.py (the same defaults and choices)."""
    from recbole_pmtrec.federated.simulate import _knob as simulate_knob

    return simulate_knob(fed_config, key)


def _contents(session: Session, downloads: dict, request: dict) -> dict[str, RecordDict]:
    """One message per active client: its own arrays and the request."""
    return {
        s: RecordDict(
            {
                "download": wire.to_array_record(downloads.get(s, {})),
                "round": wire.to_config_record({**request, "keep_round": session.best_round()}),
            }
        )
        for s in session.active
    }


def _round(session, strategy, record, server_round, downloads, sent_roles, num_examples):
    """Train on every active client, aggregate, (optionally) validate the aggregate; record the round."""
    started = time.perf_counter()
    request = {"server_round": server_round, "options": strategy.client_options(server_round)}
    contents = _contents(session, downloads, {**request, "sent_roles": sent_roles})
    replies = session.exchange(wire.TRAIN, contents, server_round)
    uploads = {s: wire.from_array_record(r.array_records.get("upload")) for s, r in replies.items()}
    fit = {s: wire.from_metric_record(r.metric_records.get("fit")) for s, r in replies.items()}
    valid = {s: wire.from_metric_record(r.metric_records.get("valid")) for s, r in replies.items()}
    eval_seconds = [m.pop("eval_seconds", 0.0) for m in fit.values()]
    aggregate_started = time.perf_counter()
    new_downloads = strategy.aggregate(server_round, uploads, {s: num_examples[s] for s in uploads})
    aggregate_seconds = time.perf_counter() - aggregate_started
    if session.valid_after == "aggregate":
        contents = _contents(session, new_downloads, {"split": "valid", "server_round": server_round})
        replies = session.exchange(wire.EVALUATE, contents, server_round)
        valid = {s: wire.from_metric_record(r.metric_records.get("metrics")) for s, r in replies.items()}
        eval_seconds = [m.pop("eval_seconds", 0.0) for m in valid.values()]
    round_record = record.add_round(
        RoundRecord(
            server_round=server_round,
            fit=fit,
            valid=valid,
            wall_seconds=time.perf_counter() - started,
            train_seconds=critical_path([m.get("train_seconds", 0.0) for m in fit.values()], concurrent=True),
            eval_seconds=critical_path(eval_seconds, concurrent=True),
            aggregate_seconds=aggregate_seconds,
        )
    )
    session.record = record
    session.log(_progress_line(round_record))
    return new_downloads


def _progress_line(rr: RoundRecord) -> str:
    tasks = metric_names(rr.valid, "auc")
    aucs = " ".join(f"{t} {mean_over_scenarios(rr.valid, f'auc@{t}'):.4f}" for t in tasks)
    return (
        f"round {rr.server_round}: valid AUC {aucs} | wall {rr.wall_seconds:.1f} s = local training "
        f"{rr.train_seconds:.1f} s + eval {rr.eval_seconds:.1f} s + aggregation {rr.aggregate_seconds:.2f} s "
        f"+ Flower overhead {rr.overhead_seconds:.1f} s ({100 * rr.overhead_share:.0f} %)"
    )


def _test(session: Session, record: RunRecord, downloads: dict) -> None:
    """Every active client loads the tested round's arrays (its own state of that round for ``best``) and
    evaluates on test."""
    last = record.rounds[-1].server_round if record.rounds else 0
    tested = last
    request = {"split": "test", "restore_round": 0}
    if record.test_from == "best" and session.best_round() is not None:
        tested = session.best_round()
        downloads = checkpoint.load_round(session.out, tested).downloads
        request["restore_round"] = tested
    replies = session.exchange(wire.EVALUATE, _contents(session, downloads, request), last)
    record.test = {s: wire.from_metric_record(r.metric_records.get("metrics")) for s, r in replies.items()}
    for metrics in record.test.values():
        metrics.pop("eval_seconds", None)
    record.test_round = tested
