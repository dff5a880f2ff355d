"""A throwaway etcd on a restored data dir: the drill checks one, a point-in-time restore applies deltas to one.

It listens only on unix sockets inside its 0700 work dir, so no other local user can connect, and dies with
its parent (SIGKILL on the parent's death).

Which etcd: the config's `etcd-bin` (one or more etcd binaries; else `etcd` on the PATH), the one whose version
suits the backup's recorded `etcd_version` (choose_etcd); the caller says which version ran.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from common import etcd
from common.config import EtcdConfig
from common.deltas import MAX_DELTA_EVENTS, MAX_PLAIN_BYTES
from recovery.workdir import SOCKET_PREFIX, private_workdir

START_TIMEOUT = 60.0
"""Seconds the restored etcd has to answer."""
CLIENT_SOCKET, PEER_URL = "client:1", "unix://peer:2"
"""unix:// URLs name a socket file relative to etcd's working directory, the 0700 work dir."""
MEMBER_NAME = "drill"
SHORT_PATHS = Path("/tmp")
"""Where the client reaches the socket through a short path: a unix socket's path may not be longer than
107 bytes, and the work dir may be deep (a restore's sits beside the user's --data-dir)."""


REQUEST_LIMITS = ("--max-txn-ops", str(MAX_DELTA_EVENTS), "--max-request-bytes", str(MAX_PLAIN_BYTES))
"""A point-in-time restore applies each original revision as one Txn: one that deleted a lease's keys, or a prefix,
holds a delete per key (etcd's default allows 128 operations), and production etcd may have taken a value bigger
than the default 1.5 MiB (its --max-request-bytes raised). What a delta may hold bounds both instead."""


class ThrowawayFailed(Exception):
    """The throwaway etcd did not start or answer."""


def member_flags() -> dict[str, str]:
    """The `etcdctl snapshot restore` member settings a data dir for the throwaway etcd is restored with."""
    return {"name": MEMBER_NAME, "initial_cluster": f"{MEMBER_NAME}={PEER_URL}",
            "initial_advertise_peer_urls": PEER_URL}


@dataclass(frozen=True)
class EtcdBinary:
    """An etcd server binary and its version (`etcd --version`)."""

    path: str
    version: str
    """e.g. "3.5.1"."""

    def __str__(self) -> str:
        return f"etcd {self.version} ({self.path})"


ETCD_VERSION = re.compile(r"etcd Version: (\d+)\.(\d+)\.(\d+)")
VERSION_TIMEOUT = 30.0


def etcd_binary(path: str | Path) -> EtcdBinary:
    """The etcd at `path` and its version; ThrowawayFailed if it is not an etcd that says its version."""
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ThrowawayFailed(f"cannot run {path} --version: {getattr(exc, 'strerror', None) or exc}") from None
    found = ETCD_VERSION.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise ThrowawayFailed(f"{path} is not an etcd server: `{path} --version` does not say \"etcd Version: X.Y.Z\"")
    return EtcdBinary(str(path), ".".join(found.groups()))


def _minor(version: str) -> tuple[int, int] | None:
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else None


def choose_etcd(candidates: Sequence[Path], backup_version: str | None) -> EtcdBinary:
    """The etcd to start on a backup taken from an etcd of `backup_version` (its metadata's; None: unknown), of the
    config's `etcd-bin` `candidates` (none: `etcd` on the PATH): the first of the backup's minor version; else the
    oldest newer one (etcd upgrades a data dir by one minor version at a time); else the newest (etcd 3.4 starts a
    restored 3.5 snapshot, as tried: a snapshot restore writes a new member); the first when the backup's version
    is unknown."""
    if not candidates:
        found = shutil.which("etcd")
        if found is None:
            raise ThrowawayFailed("etcd is not on the PATH (nor is etcd-bin set): it is needed to start the restored "
                                  "member")
        return etcd_binary(found)
    binaries = [etcd_binary(path) for path in candidates]
    wanted = _minor(backup_version) if backup_version is not None else None
    if wanted is None:
        return binaries[0]
    by_minor = sorted(((_minor(binary.version) or (0, 0), index) for index, binary in enumerate(binaries)))
    same = [index for minor, index in by_minor if minor == wanted]
    newer = [index for minor, index in by_minor if minor > wanted]
    return binaries[(same or newer or [by_minor[-1][1]])[0]]


@contextmanager
def throwaway_etcd(work: Path, data_dir: Path, username: str | None, password: str | None,
                   binary: EtcdBinary | None = None) -> Iterator[etcd.EtcdConnection]:
    """Start etcd (`binary`; None: `etcd` on the PATH) on `data_dir` (restored with member_flags) in `work`; yield a
    connection to it (logged in as `username`: the restored database keeps etcd's users and auth setting); stop it
    afterwards."""
    etcd_bin = (binary or choose_etcd((), None)).path
    with open(work / "etcd.log", "wb") as log:
        process = subprocess.Popen(
            # setpriv --pdeathsig: the kernel kills etcd if its parent dies (kill -9 included).
            ["setpriv", "--pdeathsig", "KILL", "--", etcd_bin, "--name", MEMBER_NAME, "--data-dir", str(data_dir),
             "--listen-client-urls", f"unix://{CLIENT_SOCKET}", "--advertise-client-urls", f"unix://{CLIENT_SOCKET}",
             "--listen-peer-urls", PEER_URL, "--initial-advertise-peer-urls", PEER_URL,
             "--initial-cluster", f"{MEMBER_NAME}={PEER_URL}", *REQUEST_LIMITS],
            stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )
    try:
        with private_workdir(SOCKET_PREFIX, SHORT_PATHS) as short:
            (short / "w").symlink_to(work.resolve())
            access = EtcdConfig(endpoints=(f"unix://{short / 'w' / CLIENT_SOCKET}",), timeout=START_TIMEOUT,
                                username=username, password=password)
            with _connect_when_up(access, process, work / CLIENT_SOCKET, short / "w" / CLIENT_SOCKET) as connection:
                yield connection
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


LISTEN_POLL = 0.02
"""Seconds between two looks at etcd while it starts: its client socket, then its health."""
HEALTH_TIMEOUT = 1.0
"""Seconds one look at etcd's health may take (etcd answers in ms once it listens)."""
MAX_HEALTH_ANSWER = 64 << 10


def _connect_when_up(access: EtcdConfig, process: subprocess.Popen[bytes], socket_file: Path,
                     short_socket: Path) -> etcd.EtcdConnection:
    """Connect once etcd serves, on `socket_file` (`short_socket`: the same, by a path short enough to connect
    to). Nothing connects over gRPC before: a connection to a socket not made yet fails, and etcd.connect warns of
    every endpoint that fails (right for the cluster's etcd; for this one, starting, it was a warning after every
    successful drill and restore). Its health is asked instead, over the socket, until it has elected itself; and
    between two asks, whether it still runs: an etcd that dies once it listens is said at once (a gRPC connect
    waiting for it to serve waited out the whole START_TIMEOUT, a minute, for a process that was gone)."""
    deadline = time.monotonic() + START_TIMEOUT
    while not (socket_file.is_socket() and _serves(short_socket)):
        if process.poll() is not None:
            raise ThrowawayFailed(f"the restored etcd exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise ThrowawayFailed(f"the restored etcd did not serve within {START_TIMEOUT:g}s")
        time.sleep(LISTEN_POLL)
    waiting = replace(access, timeout=max(deadline - time.monotonic(), 1.0))
    try:
        return etcd.connect(waiting, prove=False)  # one member of its own: current by definition
    except etcd.EtcdUnavailable as exc:
        status = process.poll()
        if status is not None:
            raise ThrowawayFailed(f"the restored etcd exited with status {status}") from None
        raise ThrowawayFailed(f"the restored etcd did not answer: {exc}") from None


def _serves(socket_path: Path) -> bool:
    """etcd's /health, asked over its client socket (etcd serves HTTP there beside gRPC), says true: it has a
    leader, itself. With auth on too: /health needs no user (etcd 3.4 and 3.5, tried)."""
    answer = b""
    try:
        with socket.socket(socket.AF_UNIX) as connection:
            connection.settimeout(HEALTH_TIMEOUT)
            connection.connect(str(socket_path))
            connection.sendall(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
            while len(answer) < MAX_HEALTH_ANSWER and (chunk := connection.recv(4096)):
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.0 200") and b'"health":"true"' in answer
