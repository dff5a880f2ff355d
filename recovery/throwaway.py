"""A throwaway etcd on a restored data dir: the drill checks one, a point-in-time restore applies deltas to one.

It listens only on unix sockets inside its 0700 work dir, so no other local user can connect, and dies with
its parent (SIGKILL on the parent's death).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import etcd
from common.config import EtcdConfig
from recovery.workdir import SOCKET_PREFIX, private_workdir

START_TIMEOUT = 60.0
"""Seconds the restored etcd has to answer."""
CLIENT_SOCKET, PEER_URL = "client:1", "unix://peer:2"
"""unix:// URLs name a socket file relative to etcd's working directory, the 0700 work dir."""
MEMBER_NAME = "drill"
SHORT_PATHS = Path("/tmp")
"""Where the client reaches the socket through a short path: a unix socket's path may not be longer than
107 bytes, and the work dir may be deep (a restore's sits beside the user's --data-dir)."""


class ThrowawayFailed(Exception):
    """The throwaway etcd did not start or answer."""


def member_flags() -> dict[str, str]:
    """The `etcdctl snapshot restore` member settings a data dir for the throwaway etcd is restored with."""
    return {"name": MEMBER_NAME, "initial_cluster": f"{MEMBER_NAME}={PEER_URL}",
            "initial_advertise_peer_urls": PEER_URL}


@contextmanager
def throwaway_etcd(work: Path, data_dir: Path, username: str | None,
                   password: str | None) -> Iterator[etcd.EtcdConnection]:
    """Start etcd on `data_dir` (restored with member_flags) in `work`; yield a connection to it (logged in as
    `username`: the restored database keeps etcd's users and auth setting); stop it afterwards."""
    etcd_bin = shutil.which("etcd")
    if etcd_bin is None:
        raise ThrowawayFailed("etcd is not on the PATH: it is needed to start the restored member")
    with open(work / "etcd.log", "wb") as log:
        process = subprocess.Popen(
            # setpriv --pdeathsig: the kernel kills etcd if its parent dies (kill -9 included).
            ["setpriv", "--pdeathsig", "KILL", "--", etcd_bin, "--name", MEMBER_NAME, "--data-dir", str(data_dir),
             "--listen-client-urls", f"unix://{CLIENT_SOCKET}", "--advertise-client-urls", f"unix://{CLIENT_SOCKET}",
             "--listen-peer-urls", PEER_URL, "--initial-advertise-peer-urls", PEER_URL,
             "--initial-cluster", f"{MEMBER_NAME}={PEER_URL}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=work,
        )
    try:
        with private_workdir(SOCKET_PREFIX, SHORT_PATHS) as short:
            (short / "w").symlink_to(work.resolve())
            access = EtcdConfig(endpoints=(f"unix://{short / 'w' / CLIENT_SOCKET}",), timeout=2.0,
                                username=username, password=password)
            with _connect_when_up(access, process) as connection:
                yield connection
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _connect_when_up(access: EtcdConfig, process: subprocess.Popen[bytes]) -> etcd.EtcdConnection:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise ThrowawayFailed(f"the restored etcd exited with status {process.returncode}")
        try:
            return etcd.connect(access, prove=False)  # one member of its own: current by definition
        except etcd.EtcdUnavailable:
            if time.monotonic() > deadline:
                raise ThrowawayFailed(f"the restored etcd did not answer within {START_TIMEOUT:g}s") from None
            time.sleep(0.2)
