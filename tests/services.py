"""Real etcd and Redis servers for the tests, on free loopback ports, in temp dirs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import etcd3
import redis
import yaml
from rq import Worker

from common.storage.local import LocalStore, is_temp_name

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"
REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
BIN_DIR = Path(sys.executable).parent
"""Where the project's console scripts (etcd-backup, gunicorn) are installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
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


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for an etcd that serves TLS and checks client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class EtcdServer:
    """One etcd member (Debian's etcd-server) on loopback, optionally serving TLS to clients."""

    def __init__(
        self, data_dir: Path, name: str = "default", tls: TLSFiles | None = None, extra_args: Sequence[str] = (),
        uid: int | None = None,
    ) -> None:
        self.data_dir = data_dir
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
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")  # noqa: SIM115 - lives with proc
        as_user = [] if self.uid is None else [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
        self.proc = subprocess.Popen(
            [*as_user, ETCD_BIN, "--name", self.name, "--data-dir", str(self.data_dir),
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

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def start_cluster(work_dir: Path, size: int = 3, uids: Sequence[int | None] = ()) -> list[EtcdServer]:
    """Start a `size`-member etcd cluster on loopback; return its members, healthy.

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
        members.append(EtcdServer(home / f"member{number}", name=f"member{number}", uid=uid))
    initial_cluster = ",".join(f"{member.name}={member.peer_url}" for member in members)
    for member in members:
        member.initial_cluster = initial_cluster
        member.launch()  # all at once: none is healthy before a quorum has started
    for member in members:
        assert member.proc is not None
        wait_until(member.healthy, 60, f"etcd member at {member.url}", member.proc)
    return members


class RedisServer:
    """A redis-server (Debian's) on loopback, with persistence off."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_BIN, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.work_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: bool(self.client().ping()), 15, f"redis at {self.url}", self.proc)
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


ROOT = Path(__file__).resolve().parent.parent
"""The project's root: where the Procfile is and where its commands run."""


def http(method: str, url: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request; return status, headers and body, whatever the status."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def start(command: str, config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start a Procfile-style command through the shell, as foreman/honcho would, in its own process group."""
    environment = {**os.environ, "PATH": f"{BIN_DIR}:{os.environ['PATH']}", "ETCD_BACKUP_CONFIG": str(config), **env}
    with open(log, "wb") as out:
        return subprocess.Popen(command, shell=True, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_for_api(base: str, proc: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: http("GET", f"{base}/healthz", timeout=1)[0] == 200, 30, base, proc)


class Deployment:
    """etcd-backup as users run it, from its config file: `etcd-backup --config` alone (embedded
    queue) when `redis` is None, else the Procfile's web process and worker processes on Redis."""

    def __init__(self, work: Path, etcd_urls: list[str], redis: RedisServer | None = None, **config: Any) -> None:
        self.work = work
        self.redis = redis
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.backup_dir = work / "backups"
        self.config = work / "config.yml"
        work.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {
            "backup-dir": str(self.backup_dir),
            "listen": f"127.0.0.1:{self.port}",
            "etcd": {"endpoints": etcd_urls},
            **({"redis-url": redis.url} if redis is not None else {}),
        }
        document.update({key.replace("_", "-"): value for key, value in config.items()})
        self.config.write_text(yaml.safe_dump(document))
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int = 1) -> Deployment:
        if self.redis is None:  # the all-in-one command: API and worker thread on the embedded queue
            self.web = start(f"exec etcd-backup --config {self.config}", self.config, self.work / "web.log",
                             REDIS_URL="")
        else:
            self.web = start(f"exec {procfile()['web']}", self.config, self.work / "web.log")
            for _ in range(workers):
                self.start_worker()
        try:
            wait_for_api(self.base, self.web)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start one more worker process and wait until it has registered with RQ."""
        assert self.redis is not None, "the all-in-one process has its worker inside"
        connection = self.redis.client()
        expected = len(Worker.all(connection=connection)) + 1
        worker = start(f"exec {procfile()['worker']}", self.config, self.work / f"worker{len(self.workers)}.log")
        self.workers.append(worker)
        wait_until(lambda: len(Worker.all(connection=connection)) == expected, 30, "the worker to register", worker)
        return worker

    def replace_workers(self) -> subprocess.Popen[bytes]:
        """Stop every worker process (SIGTERM) and start a fresh one."""
        assert self.redis is not None
        connection = self.redis.client()
        self.stop_workers()
        wait_until(lambda: not Worker.all(connection=connection), 30, "the old workers to leave")
        return self.start_worker()

    def web_worker_pid(self) -> int:
        """The pid of gunicorn's worker process, the one that serves requests."""
        assert self.web is not None
        return int(Path(f"/proc/{self.web.pid}/task/{self.web.pid}/children").read_text().split()[0])

    def request(self, method: str, path: str, timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
        return http(method, f"{self.base}{path}", timeout=timeout)

    def post_backup(self) -> dict[str, Any]:
        """POST /api/v1/backup; return the answer, which must be a 200."""
        status, _, body = self.request("POST", "/api/v1/backup", timeout=3600)
        if status != 200:
            raise RuntimeError(f"POST {self.base}/api/v1/backup: {status} {body!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def backups(self) -> list[str]:
        return LocalStore(self.backup_dir).list_backups()

    def temp_files(self) -> list[str]:
        return sorted(name for name in os.listdir(self.backup_dir) if is_temp_name(name))

    def start_process(self, command: str, name: str) -> subprocess.Popen[bytes]:
        """Start another process of this deployment (a Procfile line) with its config; stopped by the caller."""
        return start(command, self.config, self.work / f"{name}.log")

    def stop_workers(self) -> None:
        for worker in self.workers:
            stop_process(worker, timeout=30)
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.web is not None:
            stop_process(self.web, timeout=30)
