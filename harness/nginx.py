"""nginx: the bench's download contender, and the README's proxy for browsers (it adds the token), run
from the very config the README shows.

etcd-backup's own deployments are `harness.deployment.Deployment`: started as users start them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from harness.processes import ROOT, free_port, http, stop_process, stopped_on_failure, wait_until

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"
README_PROXY = {"listen": "127.0.0.1:8081", "name": "backup.example.com", "upstream": "http://127.0.0.1:8080",
                "token": "REPLACE-ME"}
"""What the README's proxy config for browsers says where a test puts its own: its listen address, the name
the browser uses, the API's address and the token."""


class Nginx:
    """nginx (Debian's) serving `directory` at the API's download path, with sendfile on."""

    READY = ("/api/v1/backup/none", {404})
    """A path and the statuses it answers once nginx serves."""

    def __init__(self, work: Path, directory: Path) -> None:
        self._setup(work, lambda listen: f"""server {{
    listen {listen};
    location /api/v1/backup/ {{ alias {directory}/; }}
  }}""")

    def _setup(self, work: Path, servers: Callable[[str], str]) -> None:
        """Write nginx.conf: the server blocks `servers` gives for a free loopback address (host:port)."""
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
  {servers(f"127.0.0.1:{self.port}")}
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
            path, statuses = self.READY
            wait_until(lambda: http("GET", self.base + path, timeout=1)[0] in statuses, 30, "nginx", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class TokenProxy(Nginx):
    """The README's proxy for a browser when the API has a token, run from the README's own config (`config`,
    README_PROXY's values replaced): nginx in front of `upstream` (the API's base URL) adds `Authorization:
    Bearer <token>`, passes the browser's Host on, and refuses any other name than `public_name` with 421. The
    browser reaches it as http://<public_name>:<port>."""

    READY = ("/healthz", {200, 421})
    """By its address: the API's /healthz, or 421 from the server that refuses every other name."""

    def __init__(self, work: Path, upstream: str, token: str, public_name: str, config: str | None = None) -> None:
        config = readme_proxy_config() if config is None else config
        self._setup(work, lambda listen: _replaced(config, {"listen": listen, "name": public_name,
                                                            "upstream": upstream, "token": token}))
        self.public_base = f"http://{public_name}:{self.port}"


PROXY_DOCUMENT = ROOT / "docs" / "monitoring.md"
"""The document that shows the proxy for browsers (the status page with tokens): the README points to it."""


def readme_proxy_config() -> str:
    """The documented nginx config for browsers (PROXY_DOCUMENT's one ```nginx block), as written there."""
    blocks = re.findall(r"^```nginx\n(.*?)^```$", PROXY_DOCUMENT.read_text(), re.MULTILINE | re.DOTALL)
    if len(blocks) != 1:
        raise ValueError(f"{PROXY_DOCUMENT.name} has {len(blocks)} ```nginx blocks, expected one: the browsers' proxy")
    return str(blocks[0])


def server_blocks(config: str) -> list[str]:
    """The top-level `server { ... }` blocks of `config`, each whole (comments with braces would confuse it)."""
    blocks, depth, start = [], 0, 0
    for match in re.finditer(r"[{}]", config):
        if match.group() == "{":
            if depth == 0:
                start = config.rfind("server", 0, match.start())
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                blocks.append(config[start:match.end()])
    return blocks


def _replaced(config: str, values: dict[str, str]) -> str:
    """`config` with each of README_PROXY's values replaced by `values`' (each must be there: a README that
    no longer says one would otherwise be run with the README's own address, name or token)."""
    for key, placeholder in README_PROXY.items():
        if placeholder not in config:
            raise ValueError(f"the README's proxy config no longer has its {key} ({placeholder}):\n{config}")
        config = config.replace(placeholder, values[key])
    return config
