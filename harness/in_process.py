"""etcd-backup in the test's own process: the API's Flask test client and a worker thread, on a
real Redis. Quicker than a Deployment, and the test can reach into both, and into the store where
the service keeps its backups (a local backup-dir or an S3 bucket) alike."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from botocore.exceptions import ClientError
from flask.testing import FlaskClient
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from api import create_app
from common.config import Config
from common.etcd_seen import FAILED_KEY, SEEN_KEY
from common.storage import BackupStore, LocalStore, S3Store, open_store
from harness.processes import wait_until
from worker import runner
from worker.runner import ThreadWorker, start_thread_worker

STOP_POLL_SECONDS = 0.1
"""How often a test's worker thread, and the pubsub thread RQ gives it, look whether they were asked to stop: the
product's 1 s (worker.runner's ThreadWorker.POLL_SECONDS and PUBSUB_SLEEP, which cost an all-in-one server nothing
but a second at its exit) made every test's teardown, and every stop_worker() a test calls, wait 1 to 3 s for them,
260 times a run: 330 of its 2,840 test-seconds (a run on a loaded machine). What the worker does between two looks
is the same; only the in-process Service's threads are set so (a Deployment's processes keep the product's)."""
ThreadWorker.POLL_SECONDS = STOP_POLL_SECONDS  # type: ignore[assignment]  # an int in the product; Redis takes both
runner.PUBSUB_SLEEP = STOP_POLL_SECONDS

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
        """Start the worker thread and wait for its first report of etcd (common.etcd_seen), which /readyz reads:
        a real worker's comes within ms of its start, a test's request may come sooner."""
        self.worker = start_thread_worker(self.config, self.connection)
        wait_until(lambda: self.connection.exists(SEEN_KEY, FAILED_KEY) > 0,
                   self.config.etcd.timeout + 30, "the worker's first report of etcd")

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=30)
            self.worker = None

    @property
    def store(self) -> BackupStore:
        """Where the service keeps its backups, as its API and workers reach them."""
        return open_store(self.config)

    def read_backup(self, name: str) -> bytes:
        """The archive of backup `name`, read through the store (it must be there)."""
        opened = self.store.open(name)
        assert opened is not None, f"no backup {name} in {self.store.where}"
        with opened.file as file:
            return file.read()

    @property
    def backend(self) -> BackupStore:
        """The store itself, under its authentication when the config signs (common.storage.authenticated)."""
        return open_store(self.config, allow_unsigned=True)

    # The three below go behind the store's back, as an operator or a hostile writer could: they see what
    # the store holds whether or not it is a backup.

    def plant(self, name: str, data: bytes) -> None:
        """Put `data` under `name` beside the backups: a file in backup-dir, or an object under the prefix."""
        store = self.backend
        if isinstance(store, S3Store):
            store.client.put_object(Bucket=store.settings.bucket, Key=store.key(name), Body=data)
        else:
            assert isinstance(store, LocalStore)
            (store.directory / name).write_bytes(data)

    def peek(self, name: str) -> bytes | None:
        """What is under `name` beside the backups, backup or not; None if nothing is."""
        store = self.backend
        if isinstance(store, S3Store):
            try:
                answer = store.client.get_object(Bucket=store.settings.bucket, Key=store.key(name))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            data: bytes = answer["Body"].read()
            return data
        assert isinstance(store, LocalStore)
        path = store.directory / name
        return path.read_bytes() if path.exists() else None

    def leftovers(self) -> list[str]:
        """Every name the store holds, backups or not, unfinished writes included (a temp file, an S3 multipart
        upload): what a failed backup must not leave behind."""
        store = self.backend
        if isinstance(store, S3Store):
            bucket, prefix = store.settings.bucket, store.settings.prefix
            objects = store.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            uploads = store.client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
            return sorted(item["Key"][len(prefix):] for item in [*objects, *uploads])
        assert isinstance(store, LocalStore)
        return sorted(os.listdir(store.directory))


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
