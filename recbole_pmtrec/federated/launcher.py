"""One command for a federated run on Flower's deployment engine, all on loopback.

    python -m recbole_pmtrec.federated --config properties/federated/ml100k.yaml [--strategy X --rounds N ...]

Checks the config, the strategy and the scenarios' data before anything starts; then starts one SuperLink,
and per scenario one SuperNode (its own data path and state folder in its node config) with a long-lived
ClientApp worker next to it (``--isolation process``; ``--isolation subprocess`` gives Flower's default of one
fresh ClientApp process per message; the SuperNodes' idle poll is capped at ``--node-poll-seconds``, see
``flower_app/supernode.py``); submits the Flower App with ``flwr run``; prints the ServerApp's
progress per round; waits for the run's end (``flwr ls``); prints the results; and stops every process it
started, also on failure, timeout and Ctrl-C. Flower's telemetry, update check and runtime dependency
installation are off; every address is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from recbole_pmtrec.federated.flower_app import processes
from recbole_pmtrec.federated.flower_app.wire import DEFAULT_CLIENT_FACTORY, DEFAULT_STRATEGY_FACTORY

APP_DIR = Path(__file__).resolve().parent / "flower_app"
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "OMP_NUM_THREADS": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",  # how often the SuperLink's executor looks for a ServerApp to start
}


class FederatedRunFailed(RuntimeError):
    """The run ended without results (the message says which scenario or process, and why)."""


def _environment(flwr_home: Path, extra_pythonpath: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(extra_pythonpath + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _write_flwr_home(flwr_home: Path, superlink_port: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
        f'address = "127.0.0.1:{superlink_port}"\ninsecure = true\n'
    )


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class Launch:
    """One run: options in, processes up, results out, processes down (``run`` does all of it)."""

    def __init__(self, args: argparse.Namespace, fed_config: dict, data_paths: dict[str, str]):
        self.args, self.fed_config, self.data_paths = args, fed_config, data_paths
        self.out = Path(args.output_dir or fed_config.get("output_dir") or "federated_runs").resolve()
        self.scratch = self.out / "flower"
        self.flwr_home = self.scratch / "flwr_home"
        self.env = _environment(self.flwr_home, args.pythonpath)
        self.group = processes.ProcessGroup(self.scratch / "logs", self.env)
        self.node_procs: dict[str, list[processes.Started]] = {}
        self.progress_seen = 0
        self.t0 = time.perf_counter()

    def run(self) -> Path:
        superlink_port = self.args.port or processes.free_port()
        if self.args.port:
            processes.check_port_free(superlink_port, "--port (SuperLink)")
        if not self.args.resume:
            for stale in ("progress.log", "record.json", "received_arrays.json"):
                (self.out / stale).unlink(missing_ok=True)
        _write_flwr_home(self.flwr_home, superlink_port)
        started = time.perf_counter()
        try:
            self._start_federation(superlink_port)
            run_id = self._submit()
            self._wait(run_id, started)
        finally:
            stopping = time.perf_counter()
            self.group.stop_all()
            killed = (
                f" (killed after the grace time: {', '.join(self.group.slow_to_stop)})"
                if self.group.slow_to_stop
                else ""
            )
            self.say(f"stopped every process in {time.perf_counter() - stopping:.1f} s{killed}")
        return self.out / "record.json"

    def _start_federation(self, superlink_port: int) -> None:
        """SuperLink, SuperNodes and workers all start at once (nodes and workers retry until they connect)."""
        superlink = self.group.start(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(superlink_port),
                "--disable-runtime-dependency-installation",
            ],
            cwd=self.scratch,
        )
        for index, scenario in enumerate(self.fed_config["scenarios"]):
            node_port = processes.free_port()
            node_config = " ".join(
                [
                    f"scenario={_toml_string(scenario)}",
                    f"partition-id={index}",
                    f"data-path={_toml_string(self.data_paths[scenario])}",
                    f"state-dir={_toml_string(str(self.out / 'client_state'))}",
                ]
            )
            command = [
                *self._supernode_command(),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{superlink_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(node_port),
                "--node-config",
                node_config,
            ]
            if self.args.isolation == "process":
                command += ["--isolation", "process"]
            procs = [self.group.start(f"supernode-{scenario}", command, cwd=self.scratch)]
            if self.args.isolation == "process":
                worker = [
                    sys.executable,
                    "-m",
                    "recbole_pmtrec.federated.flower_app.clientapp_worker",
                    "--runtime-api-address",
                    f"127.0.0.1:{node_port}",
                    "--preload",
                    "recbole_pmtrec.federated.flower_app.client_app",
                    "--preload",
                    self.args.client_factory.partition(":")[0],
                ]
                procs.append(self.group.start(f"clientapp-{scenario}", worker, cwd=self.scratch))
            self.node_procs[scenario] = procs
        processes.wait_for_port(superlink_port, 90, superlink)
        self.say(f"SuperLink on 127.0.0.1:{superlink_port}, {len(self.node_procs)} SuperNodes starting")

    def _supernode_command(self) -> list[str]:
        """Flower's SuperNode, with its idle poll shortened unless ``--node-poll-seconds`` is Flower's 3 s."""
        if self.args.node_poll_seconds >= 3:
            return ["flower-supernode"]
        script = APP_DIR / "supernode.py"
        return [sys.executable, str(script), "--poll-seconds", str(self.args.node_poll_seconds)]

    def say(self, line: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {line}", flush=True)

    def _run_config(self) -> Path:
        overrides = {k: v for k, v in self.fed_config.items() if k in self.args.override_keys}
        values = {
            "config": str(Path(self.args.config).resolve()) if self.args.config else "",
            "overrides": json.dumps(overrides, sort_keys=True),
            "output-dir": str(self.out),
            "resume": bool(self.args.resume),
            "round-timeout": float(self.args.round_timeout),
            "client-factory": self.args.client_factory,
            "strategy-factory": self.args.strategy_factory,
        }
        lines = [
            f"{k} = {str(v).lower() if isinstance(v, bool) else _toml_value(v)}" for k, v in values.items()
        ]
        path = self.scratch / "run_config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _submit(self) -> int:
        output = processes.run_command(
            ["flwr", "run", str(APP_DIR), "--run-config", str(self._run_config()), "--format", "json"],
            self.env,
            timeout=120,
            cwd=self.scratch,
        )
        try:
            reply = json.loads(output[output.index("{") :])
        except ValueError:
            raise FederatedRunFailed(f"flwr run printed no JSON:\n{output[-2000:]}") from None
        if not reply.get("success"):
            raise FederatedRunFailed(f"flwr run failed: {reply.get('error-message', reply)}")
        self.say(f"submitted run {reply['run-id']}")
        return int(reply["run-id"])

    def _status(self, run_id: int) -> str:
        output = processes.run_command(
            ["flwr", "ls", "--run-id", str(run_id), "--format", "json"],
            self.env,
            timeout=60,
            cwd=self.scratch,
        )
        runs = json.loads(output[output.index("{") :]).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""

    def _run_log_tail(self, run_id: int, lines: int = 25) -> str:
        """The end of the run's log as the SuperLink keeps it (the ServerApp's output: its traceback when it
        failed before it could write ``FAILED`` to the progress file)."""
        try:
            output = processes.run_command(
                ["flwr", "log", str(run_id), "--show"], self.env, timeout=60, cwd=self.scratch
            )
        except (RuntimeError, TimeoutError) as err:
            output = str(err)
        tail = "\n".join(output.strip().splitlines()[-lines:])
        return f"the run's log ends with:\n{tail}\n(process logs in {self.group.log_dir})"

    def _print_progress(self) -> list[str]:
        path = self.out / "progress.log"
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        for line in lines[self.progress_seen :]:
            if line and not line.startswith(("|", "**")):
                self.say(line)
            else:
                print(line, flush=True)
        self.progress_seen = len(lines)
        return lines

    def _wait(self, run_id: int, started: float) -> None:
        """Until the run ends: progress as it comes; ``flwr ls`` every few seconds, at once when the
        ServerApp wrote its results or its failure; a node's or the SuperLink's exit ends the wait early."""
        deadline = started + self.args.timeout if self.args.timeout else None
        min_clients = self.fed_config.get("min_clients") or len(self.node_procs)
        last_status_check = 0.0
        while True:
            time.sleep(0.5)
            lines = self._print_progress()
            ended = (self.out / "record.json").exists() or any(line.startswith("FAILED") for line in lines)
            if ended or time.perf_counter() - last_status_check > 10:
                status, last_status_check = self._status(run_id), time.perf_counter()
                if status.startswith("finished"):
                    lines = self._print_progress()
                    if status != "finished:completed" or not (self.out / "record.json").exists():
                        failed = [line for line in lines if line.startswith("FAILED")]
                        why = failed[-1] if failed else self._run_log_tail(run_id)
                        raise FederatedRunFailed(f"run {run_id} ended {status}: {why}")
                    self.say(f"run {run_id} {status}")
                    return
            self._check_alive(min_clients)
            if deadline and time.perf_counter() > deadline:
                raise FederatedRunFailed(
                    f"run {run_id} did not finish within --timeout {self.args.timeout} s"
                )

    def _check_alive(self, min_clients: int) -> None:
        if self.group.started[0].popen.poll() is not None:
            raise FederatedRunFailed(f"the SuperLink exited:\n{self.group.started[0].tail()}")
        dead = sorted(
            {s for s, procs in self.node_procs.items() for p in procs if p.popen.poll() is not None}
        )
        if len(self.node_procs) - len(dead) < min_clients:
            proc = next(p for p in self.node_procs[dead[0]] if p.popen.poll() is not None)
            raise FederatedRunFailed(
                f"the client of scenario {dead[0]} stopped ({proc.name} exited with code "
                f"{proc.popen.returncode}):\n{proc.tail()}"
            )


def _toml_value(value) -> str:
    return _toml_string(value) if isinstance(value, str) else repr(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_pmtrec.federated", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", help="federated yaml (properties/federated/*.yaml)")
    parser.add_argument("--strategy", help="pfmsmtrec, fedavg, fedprox, fedbn, fedper, ditto, local")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--min-clients", type=int, help="go on when fewer clients answer a round (default: all)"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other config key (yaml value)"
    )
    parser.add_argument("--output-dir", help="where the RunRecord, round states and logs go")
    parser.add_argument("--prepare", action="store_true", help="rewrite the scenario folders even if present")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the output dir's last finished round"
    )
    parser.add_argument("--port", type=int, help="the SuperLink's port (default: a free one)")
    parser.add_argument(
        "--isolation",
        choices=("process", "subprocess"),
        default="process",
        help="process: one long-lived ClientApp worker per node (fast); subprocess: Flower's default",
    )
    parser.add_argument(
        "--timeout", type=float, default=0, help="stop the run after this many seconds (0: none)"
    )
    parser.add_argument("--round-timeout", type=float, default=3600.0)
    parser.add_argument(
        "--node-poll-seconds",
        type=float,
        default=0.5,
        help="how often an idle SuperNode asks for messages (Flower's own: 3)",
    )
    parser.add_argument("--client-factory", default=DEFAULT_CLIENT_FACTORY, help=argparse.SUPPRESS)
    parser.add_argument("--strategy-factory", default=DEFAULT_STRATEGY_FACTORY, help=argparse.SUPPRESS)
    parser.add_argument("--pythonpath", action="append", default=[], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict:
    import yaml

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    for key in ("strategy", "rounds", "seed", "min_clients"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return overrides


def check_strategy(fed_config: dict) -> None:
    from recbole_pmtrec.federated.strategies import STRATEGIES

    if str(fed_config["strategy"]).lower() not in STRATEGIES:
        raise ValueError(f"unknown strategy {fed_config['strategy']!r}; valid: {', '.join(STRATEGIES)}")


def prepare_scenarios(fed_config: dict, force: bool = False) -> dict[str, str]:
    """Write the scenario folders if needed (``--prepare`` forces it); fail on a scenario without rows.
    Returns each scenario's data path (the folder that holds its own folder and the public vocabulary)."""
    from recbole_pmtrec.federated import scenarios

    if force or not scenarios.is_prepared(fed_config):
        scenarios.prepare(fed_config)
    for scenario in fed_config["scenarios"]:
        folder = scenarios.scenario_folder(fed_config, scenario)
        inter = folder / f"{scenarios.scenario_name(fed_config, scenario)}.inter"
        with open(inter, "rb") as handle:
            has_rows = sum(1 for _ in zip(range(2), handle)) > 1
        if not has_rows:
            raise ValueError(
                f"scenario {scenario!r} has no rows ({inter}): drop it from scenarios or fix its data"
            )
    return {s: str(fed_config["data_path"]) for s in fed_config["scenarios"]}


def prepare(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """The checked config and each scenario's data path: everything that can fail before a process starts."""
    from recbole_pmtrec.federated.config import load_config

    overrides = _overrides(args)
    args.override_keys = set(overrides)
    fed_config = load_config(args.config, overrides)
    if args.strategy_factory == DEFAULT_STRATEGY_FACTORY:
        check_strategy(fed_config)
    if args.client_factory != DEFAULT_CLIENT_FACTORY:  # a test's client brings its own data
        return fed_config, {s: str(fed_config["data_path"]) for s in fed_config["scenarios"]}
    return fed_config, prepare_scenarios(fed_config, force=args.prepare)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fed_config, data_paths = prepare(args)
    except (KeyError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        record_path = Launch(args, fed_config, data_paths).run()
    except (FederatedRunFailed, OSError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process this run started was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"results: {record_path}")
    return 0
