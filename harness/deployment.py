"""etcd-backup deployed as users deploy it: its config file, then the Procfile's processes (or the
all-in-one command), started through the shell on the installed console scripts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from rq import Worker

from common.storage.local import LocalStore, is_temp_name
from harness.files import write_config
from harness.processes import BIN_DIR, ROOT, free_port, http, stop_process, stopped_on_failure, wait_until
from harness.servers import RedisServer


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def start(command: str, config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start a Procfile-style command through the shell, as foreman/honcho would, in its own process group. The
    shell execs it: the process is the program itself, which stop_process's SIGTERM reaches (dash does not exec a
    `sh -c` command by itself, and a SIGTERM to the shell left the program running, orphaned)."""
    environment = {**os.environ, "PATH": f"{BIN_DIR}:{os.environ['PATH']}", "ETCD_BACKUP_CONFIG": str(config), **env}
    with open(log, "wb") as out:
        return subprocess.Popen(f"exec {command}", shell=True, cwd=ROOT, env=environment, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_api(base: str, proc: subprocess.Popen[bytes]) -> None:
    wait_until(lambda: http("GET", f"{base}/healthz", timeout=1)[0] == 200, 30, base, proc)


class Deployment:
    """etcd-backup as users run it, from its config file: `etcd-backup --config` alone (embedded
    queue) when `redis` is None, else the Procfile's web process and worker processes on Redis."""

    def __init__(self, work: Path, etcd_urls: list[str], redis: RedisServer | None = None,
                 environments: dict[str, dict[str, str]] | None = None, **config: Any) -> None:
        """`environments`: more environment variables for each Procfile process ("web", "worker", ...), as
        deploy/kubernetes/procfile gives each Deployment its own credentials: $REDIS_URL (a Redis user of its
        own: the config then names no Redis), $AWS_ACCESS_KEY_ID, ..."""
        self.work = work
        self.redis = redis
        self.environments = environments or {}
        own_redis_urls = any("REDIS_URL" in environment for environment in self.environments.values())
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.backup_dir = work / "backups"
        self.config = work / "config.yml"
        work.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {
            "backup-dir": str(self.backup_dir),
            "listen": f"127.0.0.1:{self.port}",
            "etcd": {"endpoints": etcd_urls},
            **({"redis-url": redis.url} if redis is not None and not own_redis_urls else {}),
        }
        document.update({key.replace("_", "-"): value for key, value in config.items()})
        write_config(self.config, document)
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int = 1) -> Deployment:
        if self.redis is None:  # the all-in-one command: API and worker thread on the embedded queue
            self.web = start(f"etcd-backup --config {self.config}", self.config, self.work / "web.log",
                             REDIS_URL="")
        else:
            self.web = self.start_process(procfile()["web"], "web")
            for _ in range(workers):
                self.start_worker()
        with stopped_on_failure(self.stop):
            wait_for_api(self.base, self.web)
        return self

    def start_worker(self, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start one more worker process and (unless not `wait`) wait until it has registered with RQ."""
        assert self.redis is not None, "the all-in-one process has its worker inside"
        connection = self.redis.client()
        expected = len(Worker.all(connection=connection)) + 1
        worker = self.start_process(procfile()["worker"], f"worker{len(self.workers)}")
        self.workers.append(worker)
        if wait:
            wait_until(lambda: len(Worker.all(connection=connection)) == expected, 30, "the worker to register",
                       worker)
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
        """Start another process of this deployment (a Procfile line) with its config (and its `environments`);
        stopped by the caller."""
        role = {line: role for role, line in procfile().items()}.get(command)
        return start(command, self.config, self.work / f"{name}.log", **self.environments.get(role or "", {}))

    def stop_workers(self) -> None:
        for worker in self.workers:
            stop_process(worker, timeout=30)
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        if self.web is not None:
            stop_process(self.web, timeout=30)
