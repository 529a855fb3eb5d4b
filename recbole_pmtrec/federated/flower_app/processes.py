"""The processes a launcher starts, and the promise that every one of them is stopped.

Each process gets its own session (``start_new_session=True``), so SIGTERM to its process group also
reaches what it started itself (a SuperNode's ``flower-superexec`` and ClientApp processes); the descendants
found before stopping get SIGTERM too (a SuperLink starts its ``flower-superexec``, and through it the
``flwr-serverapp``, in a session of its own). Each is then waited for and reaped (a ``flower-superexec``
watches its parent's pid and lingers while that parent is an unreaped zombie); what does not end within the
grace time is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            raise OSError(
                f"{what}: port {port} on 127.0.0.1 is in use ({err.strerror}); pick another"
            ) from None


def wait_for_port(port: int, seconds: float, proc: Started) -> None:
    """Until something accepts connections on 127.0.0.1:port; fails early if ``proc`` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited (code {proc.popen.returncode}) while starting:\n{proc.tail()}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(
        f"{proc.name} did not listen on 127.0.0.1:{port} within {seconds:.0f} s:\n{proc.tail()}"
    )


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class ProcessGroup:
    """Starts named processes with their output in ``log_dir`` and stops all of them (see module)."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir, self.env = log_dir, env
        self.started: list[Started] = []
        self.slow_to_stop: list[str] = []  # names that needed SIGKILL
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, command: list[str], cwd: Path | None = None) -> Started:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=cwd,
                start_new_session=True,
            )
        started = Started(name, popen, log_path)
        self.started.append(started)
        return started

    def exited(self) -> list[Started]:
        return [p for p in self.started if p.popen.poll() is not None]

    def stop_all(self, grace_seconds: float = 10.0) -> None:
        """SIGTERM every process started here and every descendant (a SuperLink starts its executor in a
        session of its own), wait, SIGKILL what is left after the grace time, reap everything."""
        import psutil

        family: list[psutil.Process] = []
        for proc in self.started:
            try:
                leader = psutil.Process(proc.popen.pid)
                family += [leader, *leader.children(recursive=True)]
            except psutil.Error:
                pass
        for proc in reversed(self.started):
            _signal_group(proc.popen, signal.SIGTERM)
        for member in family:
            _signal(member, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for proc in reversed(self.started):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.slow_to_stop.append(proc.name)
        _, alive = psutil.wait_procs(family, timeout=max(0.1, deadline - time.monotonic()))
        self.slow_to_stop += [f"{p.name()}[{p.pid}]" for p in alive if _alive(p)]
        for proc in self.started:
            _signal_group(proc.popen, signal.SIGKILL)
        for member in alive:
            _signal(member, signal.SIGKILL)
        for proc in self.started:
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.started.clear()


def _signal(process, sig: int) -> None:
    import psutil

    try:
        process.send_signal(sig)
    except psutil.Error:
        pass


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(command: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> str:
    """A short command's stdout (``flwr run`` / ``flwr ls``), in its own session, killed on timeout."""
    popen = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
        text=True,
    )
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(popen, signal.SIGKILL)
        popen.communicate()
        raise TimeoutError(f"{' '.join(command[:3])} did not finish within {timeout:.0f} s") from None
    finally:
        _signal_group(popen, signal.SIGKILL)  # anything it left behind in its session
    if popen.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed (code {popen.returncode}): {err.strip()[-2000:]}")
    return out
