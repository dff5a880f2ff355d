"""What every throwaway server is built on: free loopback ports, waiting for a process to be ready,
stopping it, one HTTP request, and a process's peak memory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The project's root: where the Procfile is and where its commands run."""
BIN_DIR = Path(sys.executable).parent
"""Where the project's console scripts (etcd-backup, gunicorn) are installed."""


def loopback_socket(listen: bool = True) -> tuple[socket.socket, int]:
    """A TCP socket bound to a free port on 127.0.0.1, listening unless told otherwise, and its port.

    The port is the caller's for as long as the socket is open: for a listener of the test's own,
    or a port where connections must be refused (bound, not listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if listen:
        sock.listen()
    port: int = sock.getsockname()[1]
    return sock, port


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a server process about to bind it."""
    sock, port = loopback_socket(listen=False)
    sock.close()
    return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with status {proc.returncode}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not ready after {timeout}s")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout`. A process that leads a process group of its own (a Procfile line,
    started in a new session) is signalled with its whole group, and whatever of the group is left once it has
    exited is killed: no child of it outlives the test (a leftover delta watcher on a worker's shared Redis and
    etcd took the lease, and Redis' word that revisions were stored, from later tests' watchers)."""
    group = _own_group(proc)
    if proc.poll() is None:
        _signal(proc, group, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, group, signal.SIGKILL)
            proc.wait()
    if group is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def _own_group(proc: subprocess.Popen[Any]) -> int | None:
    """The process group `proc` leads, if it leads one (and has not been reaped yet)."""
    try:
        return proc.pid if proc.returncode is None and os.getpgid(proc.pid) == proc.pid else None
    except ProcessLookupError:
        return None


def _signal(proc: subprocess.Popen[Any], group: int | None, signum: signal.Signals) -> None:
    if group is None:
        proc.send_signal(signum)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


@contextmanager
def stopped_on_failure(stop: Callable[[], None]) -> Iterator[None]:
    """Around waiting for what was just started: if it never gets ready (or the wait is interrupted),
    `stop` it before the error goes on, so that no process outlives a failed start."""
    try:
        yield
    except BaseException:
        stop()
        raise


def http(method: str, url: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request; return status, headers and body, whatever the status."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def peak_rss(pid: int) -> int:
    return _memory(pid, "VmHWM")


def rss(pid: int) -> int:
    """Its resident memory now, bytes."""
    return _memory(pid, "VmRSS")


def _memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")
