"""etcd-backup in the test's own process: the API's Flask test client and a worker thread, on a
real Redis. Quicker than a Deployment, and the test can reach into both."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from api import create_app
from common.config import Config
from worker.runner import ThreadWorker, start_thread_worker

ConfigFactory = Callable[..., Path]
"""conftest's `write_config`: writes a config file (the test's etcd and backup-dir, with overrides)."""


class Service:
    """The API (Flask test client) and one worker thread, both on the real Redis."""

    def __init__(self, config: Config, connection: redis.Redis) -> None:
        self.config = config
        self.connection = connection
        self.client: FlaskClient = create_app(config, connection).test_client()
        self.worker: ThreadWorker | None = None

    def start_worker(self) -> None:
        self.worker = start_thread_worker(self.config, self.connection)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=30)
            self.worker = None


def fetch(service: Service, url: str, method: str = "GET", **kwargs: Any) -> TestResponse:
    """Request `url`, read the whole body and close the response (a download holds a file open)."""
    response = service.client.open(url, method=method, **kwargs)
    response.get_data()
    response.close()
    return response


@contextmanager
def served_over_http(service: Service) -> Iterator[str]:
    """Serve `service`'s API over real HTTP on a free loopback port (werkzeug, a thread per request), for
    clients that are separate processes (the `etcd-backup` commands, a browser); yield its base URL."""
    server = make_server("127.0.0.1", 0, service.client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
