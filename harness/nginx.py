"""nginx: the bench's download contender, and the README's proxy for browsers (it adds the token).

etcd-backup's own deployments are `harness.deployment.Deployment`: started as users start them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness.processes import free_port, http, stop_process, stopped_on_failure, wait_until

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx (Debian's) serving `directory` at the API's download path, with sendfile on."""

    READY = ("/api/v1/backup/none", 404)
    """A path and the status it answers once nginx serves."""

    def __init__(self, work: Path, directory: Path) -> None:
        self._setup(work, f"location /api/v1/backup/ {{ alias {directory}/; }}")

    def _setup(self, work: Path, locations: str, server_name: str = "_") -> None:
        """Write nginx.conf: one server on a free loopback port, named `server_name`, with `locations`."""
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
    server_name {server_name};
    {locations}
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
        with stopped_on_failure(self.stop):
            path, status = self.READY
            wait_until(lambda: http("GET", self.base + path, timeout=1)[0] == status, 30, "nginx", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class TokenProxy(Nginx):
    """The README's setup for a browser when the API has a token: nginx in front of `upstream` (the API's
    base URL) adds `Authorization: Bearer <token>` to every request, and passes the browser's Host on (the
    API answers it when it is in allowed-hosts). The browser reaches it as http://<public_name>:<port>."""

    READY = ("/healthz", 200)

    def __init__(self, work: Path, upstream: str, token: str, public_name: str) -> None:
        self._setup(work, f"""location / {{
      proxy_pass {upstream};
      proxy_set_header Host $http_host;
      proxy_set_header Authorization "Bearer {token}";
    }}""", server_name=public_name)
        self.public_base = f"http://{public_name}:{self.port}"
