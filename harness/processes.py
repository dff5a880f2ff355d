"""What every throwaway server is built on: free loopback ports, waiting for a process to be ready,
stopping it, one HTTP request, and a process's peak memory."""

from __future__ import annotations

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
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
