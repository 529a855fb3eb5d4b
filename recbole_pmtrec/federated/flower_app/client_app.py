"""The Flower ClientApp of PF-MSMTrec and its baselines: one SuperNode = one scenario = one client.

The node says which scenario it holds in its node config (``scenario="<name>"``, or ``partition-id=<i>`` into
the config's ``scenarios``) and where that scenario's files are (``data-path``, overriding the config's
``data_path`` on this node only). The client is built once per process by the contract's ``make_client``
and kept (data loaded once); what must never leave it (BN statistics, private template parts, optimizer
state, RNG) lives in ``context.state`` between messages and, for resuming, in ``state-dir`` on this node's
own disk. A reply carries only the roles the strategy sends, plus metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from recbole_pmtrec.federated.flower_app import wire

app = ClientApp()

_clients: dict[str, list] = {}  # client key -> [client, step, its state when built]: built once per process
_STATE, _STATE_META = "client_state", "client_meta"


def _node_scenario(fed_config: dict, node_config: dict) -> str:
    scenarios = list(fed_config["scenarios"])
    if "scenario" in node_config:
        name = str(node_config["scenario"])
        if name not in scenarios:
            raise ValueError(f"node-config scenario={name!r} is not among the run's scenarios {scenarios}")
        return name
    if "partition-id" in node_config:
        index = int(node_config["partition-id"])
        if not 0 <= index < len(scenarios):
            raise ValueError(
                f"node-config partition-id={index} is outside the run's {len(scenarios)} scenarios"
            )
        return scenarios[index]
    raise ValueError("this SuperNode's --node-config names no scenario (scenario=<name> or partition-id=<i>)")


def _client_key(setup: dict, scenario: str) -> str:
    text = json.dumps([setup["fed_config"], setup["seed"], setup["client_factory"], scenario], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _state_file(context: Context, setup: dict, server_round: int) -> Path:
    base = Path(str(context.node_config.get("state-dir", "federated_client_state")))
    return base / setup["run_tag"] / setup["scenario"] / f"round_{server_round:04d}.npz"


def _client(context: Context):
    """The node's client, restored to the state ``context.state`` holds (a no-op when this process made it)."""
    setup = wire.from_config_record(context.state.config_records[_STATE_META])
    entry = _clients.get(setup["key"])
    if entry is None:
        client = _build(context, setup)
        entry = _clients[setup["key"]] = [client, -1, client.state()]
    client, step, _ = entry
    if step != setup["step"] and _STATE in context.state.array_records:
        client.load_state(wire.from_array_record(context.state.array_records[_STATE]))
        entry[1] = setup["step"]
    return client, setup


def _build(context: Context, setup: dict):
    fed_config = dict(setup["fed_config"])
    if "data-path" in context.node_config:
        fed_config["data_path"] = str(Path(str(context.node_config["data-path"])).expanduser().resolve())
    make_client = wire.resolve(setup["client_factory"])
    return make_client(fed_config, setup["scenario"], int(setup["seed"]))


def _save(
    context: Context, client, setup: dict, server_round: int = 0, keep_round: int | None = None
) -> None:
    """Keep the client's full state in ``context.state``; after a round (``server_round`` > 0) also on this
    node's disk, keeping that round, the one before it and ``keep_round`` (the best so far)."""
    state = client.state()
    setup["step"] += 1
    context.state.array_records[_STATE] = wire.to_array_record(state)
    context.state.config_records[_STATE_META] = wire.to_config_record(setup)
    _clients[setup["key"]][1] = setup["step"]
    if server_round:
        path = _state_file(context, setup, server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **state)
        os.replace(tmp, path)
        keep = {path.name, _state_file(context, setup, server_round - 1).name}
        if keep_round:
            keep.add(_state_file(context, setup, keep_round).name)
        for old in path.parent.glob("round_*.npz"):
            if old.name not in keep:
                old.unlink()


def _restore(context: Context, client, setup: dict, server_round: int) -> None:
    """Load the state this node saved after ``server_round`` (resume, or test from the best round)."""
    path = _state_file(context, setup, server_round)
    if not path.exists():
        raise FileNotFoundError(
            f"scenario {setup['scenario']}: no saved client state for round {server_round} at {path}"
        )
    with np.load(path) as saved:
        client.load_state({name: saved[name] for name in saved.files})


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    """Build (or reuse) this node's client; on resume, load its state saved after ``resume_round``."""
    request = wire.from_config_record(msg.content.config_records["setup"])
    scenario = _node_scenario(request["fed_config"], context.node_config)
    meta = {**request, "scenario": scenario, "key": _client_key(request, scenario), "step": 0}
    context.state.config_records[_STATE_META] = wire.to_config_record(meta)
    client, meta = _client(context)
    if _clients[meta["key"]][1] != -1:  # this process ran the same client before: a new run starts afresh
        client.load_state(_clients[meta["key"]][2])
    if request.get("resume_round"):
        _restore(context, client, meta, int(request["resume_round"]))
    _save(context, client, meta)
    info = {
        "scenario": scenario,
        "num_train": int(client.num_train),
        "roles": client.roles(),
        "groups": client.groups(),
        "pid": os.getpid(),
    }
    return Message(RecordDict({"info": wire.to_config_record(info)}), reply_to=msg)


@app.query("upload")
def upload(msg: Message, context: Context) -> Message:
    client, _ = _client(context)
    roles = set(wire.from_config_record(msg.content.config_records["round"])["sent_roles"])
    return Message(RecordDict({"upload": wire.to_array_record(client.upload(roles))}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Download what the server sent, fit one round, evaluate on valid, upload the sent roles."""
    started = time.perf_counter()
    client, meta = _client(context)
    request = wire.from_config_record(msg.content.config_records["round"])
    client.download(wire.from_array_record(msg.content.array_records.get("download")))
    fit = dict(client.fit(int(request["server_round"]), dict(request["options"])))
    eval_started = time.perf_counter()
    valid = dict(client.evaluate("valid"))
    fit["eval_seconds"] = time.perf_counter() - eval_started
    uploaded = client.upload(set(request["sent_roles"]))
    _save(context, client, meta, int(request["server_round"]), request.get("keep_round"))
    fit["clientapp_seconds"] = time.perf_counter() - started
    content = RecordDict(
        {
            "upload": wire.to_array_record(uploaded),
            "fit": wire.to_metric_record(fit),
            "valid": wire.to_metric_record(valid),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Load what the server sent and evaluate a split: ``valid`` after aggregation (``server_round`` given:
    the state is saved as that round's), or ``test`` at the end (from ``restore_round``'s state if given)."""
    client, meta = _client(context)
    request = wire.from_config_record(msg.content.config_records["round"])
    if request.get("restore_round"):
        _restore(context, client, meta, int(request["restore_round"]))
    client.download(wire.from_array_record(msg.content.array_records.get("download")))
    started = time.perf_counter()
    metrics = dict(client.evaluate(str(request["split"])))
    metrics["eval_seconds"] = time.perf_counter() - started
    _save(context, client, meta, int(request.get("server_round", 0)), request.get("keep_round"))
    return Message(RecordDict({"metrics": wire.to_metric_record(metrics)}), reply_to=msg)
