"""The contenders as real processes: both deployments of etcd-backup, and nginx for downloads.

They are started exactly as users start them (the `etcd-backup` command, the Procfile's lines),
with the same helpers the tests use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml
from rq import Worker

from common.backups import list_backups
from tests.services import RedisServer, free_port, http, procfile, start, stop_process, wait_for_api, wait_until

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"


class Service:
    """One etcd-backup deployment with its own config, backup-dir and logs under `work`."""

    def __init__(self, work: Path, etcd_url: str, redis: RedisServer | None = None, rotate: int = 2) -> None:
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
            "rotate": rotate,
            "etcd": {"endpoints": [etcd_url]},
        }
        if redis is not None:
            document["redis-url"] = redis.url
        self.config.write_text(yaml.safe_dump(document))
        self.web: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        if self.redis is None:  # the all-in-one command: API and worker thread on the embedded queue
            self.web = start(f"exec etcd-backup --config {self.config}", self.config, self.work / "server.log",
                             REDIS_URL="")
        else:  # the Procfile's web and one worker process on Redis
            self.web = start(procfile()["web"], self.config, self.work / "web.log")
            self.start_worker()
        wait_for_api(self.base, self.web)
        return self

    def start_worker(self) -> None:
        """Start a fresh worker process (its peak RSS then covers only what follows)."""
        assert self.redis is not None
        if self.worker is not None:
            _stop_group(self.worker)
        connection = self.redis.client()
        # Worker.all() lists workers that have not yet noticed a stop; wait for the old one to leave.
        wait_until(lambda: not Worker.all(connection=connection), 30, "the old worker to leave")
        self.worker = start(f"exec {procfile()['worker']}", self.config, self.work / "worker.log")
        wait_until(lambda: len(Worker.all(connection=connection)) == 1, 30, "the worker to register", self.worker)

    def worker_peak_rss(self) -> int:
        """The worker process's peak resident memory in bytes (VmHWM)."""
        assert self.worker is not None
        return peak_rss(self.worker.pid)

    def post_backup(self) -> dict[str, Any]:
        status, _, body = http("POST", f"{self.base}/api/v1/backup", timeout=3600)
        if status != 200:
            raise RuntimeError(f"POST {self.base}/api/v1/backup: {status} {body!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def newest_backup(self) -> Path:
        return self.backup_dir / list_backups(self.backup_dir)[-1]

    def stop(self) -> None:
        for proc in (self.worker, self.web):
            if proc is not None:
                _stop_group(proc)


class Nginx:
    """nginx (Debian's) serving `directory` at the API's download path, with sendfile on."""

    def __init__(self, work: Path, directory: Path) -> None:
        self.work = work
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        temp_paths = "\n".join(f"  {kind}_temp_path {work}/{kind};" for kind in
                               ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (work / "nginx.conf").write_text(f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}  # backups are 0600 files in a 0700 directory
worker_processes 1;
pid {work}/nginx.pid;
events {{ worker_connections 512; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
{temp_paths}
  server {{
    listen 127.0.0.1:{self.port};
    location /api/v1/backup/ {{ alias {directory}/; }}
  }}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        with open(self.work / "nginx.log", "wb") as log:
            self.proc = subprocess.Popen(
                [NGINX_BIN, "-p", str(self.work), "-c", str(self.work / "nginx.conf"), "-e", "stderr"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_until(lambda: http("GET", f"{self.base}/api/v1/backup/none", timeout=1)[0] == 404, 30, "nginx", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    stop_process(proc, timeout=30)
