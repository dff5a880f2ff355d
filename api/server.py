"""How gunicorn serves the API: settings shared by the Procfile's `web` and the all-in-one server."""

from __future__ import annotations

from typing import Any

from common.config import Config

HTTP_THREADS = 128
"""Requests served at once per gunicorn worker; a POST holds a thread while it waits for its job."""
WAITING_REQUESTS = HTTP_THREADS - 32
"""POSTs that may wait for their job at once; more get 202 at once, so that 32 threads always remain
for downloads, listings and health checks."""


def gunicorn_settings(config: Config) -> dict[str, Any]:
    # gthread (a POST that waits minutes for its backup blocks a thread, not the worker's heartbeat),
    # reading each request whole before it gets a thread (api.http_worker).
    return {
        "bind": [config.listen],
        "worker_class": "api.http_worker.RequestFirstWorker",
        "threads": HTTP_THREADS,
        **({"certfile": str(config.api_tls_cert), "keyfile": str(config.api_tls_key)} if config.api_tls_cert else {}),
        "accesslog": "-",
        # Several servers may run on one host (a web process beside an all-in-one, tests): the
        # control socket's fixed default path would be fought over.
        "control_socket_disable": True,
    }

