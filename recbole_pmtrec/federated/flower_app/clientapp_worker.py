"""A long-lived ClientApp executor for one SuperNode started with ``--isolation process``.

Flower 1.42 runs every message in a fresh ``flwr-clientapp`` process (one task per process: ~5-7 s of
torch/RecBole imports and a data load per round and node). With ``flower-supernode --isolation process``
the SuperNode launches nothing itself and waits for an executor to acquire its tasks on its Runtime API.
This worker is that executor: it acquires each ClientApp task with the task's token, runs it *in this
process* exactly as ``flwr-clientapp`` would (pull the message, context and FAB; call the ClientApp; push
the reply and the context back), and keeps the imported modules, the loaded ClientApp and whatever the
ClientApp caches (the scenario's data, the built client) for the next task.

Usage (next to ``flower-supernode --isolation process --port P``)::

    python -m recbole_pmtrec.federated.flower_app.clientapp_worker --runtime-api-address 127.0.0.1:P
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from logging import ERROR, INFO, WARNING

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.config import get_project_dir
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

_installed_fabs: set[str] = set()
_in_task = False
_apps: dict[str, ClientApp] = {}


def _load_client_app(run, fab) -> ClientApp:
    """Install the FAB once per hash and load its ClientApp once (module imports stay cached)."""
    if fab.hash_str not in _apps:
        if (
            fab.hash_str not in _installed_fabs
            and not get_project_dir(run.fab_id, run.fab_version, fab.hash_str).exists()
        ):
            install_from_fab(fab.content, skip_prompt=True)
        _installed_fabs.add(fab.hash_str)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        _apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
    return _apps[fab.hash_str]


def run_task(runtime_api_address: str, token: str) -> bool:
    """Run one ClientApp task in this process; returns whether the ClientApp completed.

    The task's heartbeat stops before its output is pushed: a heartbeat sent after the task ended is answered
    "no such task", and Flower's heartbeat answers that with SIGINT to the whole process."""
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    times = [time.perf_counter()]
    try:
        message, context, run, fab = pull_task_input(client)
        times.append(time.perf_counter())
        reply = _load_client_app(run, fab)(message=message, context=context)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # the error goes back to the ServerApp as Flower's error reply
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        details = f"{type(ex)}:<'{ex}'>"
        if message is not None:
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message
            )
    finally:
        times.append(time.perf_counter())
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            heartbeat.stop()
            push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            client.close()
    times.append(time.perf_counter())
    kind = message.metadata.message_type if message is not None else "?"
    steps = ", ".join(
        f"{name} {b - a:.2f} s" for name, a, b in zip(("pull", "app", "push"), times, times[1:])
    )
    log(INFO, "%s task %s: %s", kind, sub_status, steps)
    return sub_status == SubStatus.COMPLETED


def serve(runtime_api_address: str, poll_seconds: float) -> None:
    """Acquire and run ClientApp tasks until terminated."""
    global _in_task
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    log(INFO, "ClientApp worker on %s (pid %d)", runtime_api_address, os.getpid())
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    while True:
        res = client.AcquireTask(request)
        if res.HasField("task") and res.token:
            _in_task = True
            try:
                run_task(runtime_api_address, res.token)
            finally:
                _in_task = False
        else:
            time.sleep(poll_seconds)


def _on_sigterm(*_) -> None:
    """Stop now: every finished round is already saved, and torch/RecBole threads would delay a normal exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _on_sigint(*_) -> None:
    """Flower's task heartbeat raises SIGINT in its process when the SuperNode no longer knows the task (it
    ended, or its run was stopped): the task is finished here regardless, so the worker keeps serving."""
    if _in_task:
        log(WARNING, "ignoring SIGINT from a task heartbeat (the task is ending)")
        return
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's --host:--port")
    parser.add_argument("--poll-seconds", type=float, default=0.2)
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        help="modules to import before the first task (e.g. the client)",
    )
    args = parser.parse_args(argv)
    for module in args.preload:
        importlib.import_module(module)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)
    serve(args.runtime_api_address, args.poll_seconds)


if __name__ == "__main__":
    main()
