"""The all-in-one server: the API under gunicorn plus one worker thread (and the schedule's, when the
config has one), in one process."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from api import create_app
from api.server import gunicorn_settings
from common import queue
from common.config import Config
from scheduler.cron import compacts, start_thread_scheduler
from worker.deltas import start_thread_watcher
from worker.runner import ThreadWorker, start_thread_worker


class AllInOneServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Config) -> None:
        self.config = config
        self.worker: ThreadWorker | None = None
        self.scheduler: tuple[threading.Thread, threading.Event] | None = None
        self.watcher: tuple[threading.Thread, threading.Event] | None = None
        super().__init__()

    def load_config(self) -> None:
        # One gunicorn worker process: the embedded queue and its worker thread live inside it.
        settings = {**gunicorn_settings(self.config), "workers": 1, "worker_exit": self.worker_exit}
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Runs in the gunicorn worker process, so the embedded Redis is created after fork().
        connection = queue.connect(self.config)
        self.worker = start_thread_worker(self.config, connection)
        if self.config.schedule is not None or self.config.drill is not None or compacts(self.config):
            self.scheduler = start_thread_scheduler(self.config, connection)
        if self.config.deltas:
            self.watcher = start_thread_watcher(self.config, connection)
        return create_app(self.config, connection)

    def worker_exit(self, server: Any, gunicorn_worker: Any) -> None:
        """On shutdown, let a running backup finish (within gunicorn's graceful timeout)."""
        for started in (self.scheduler, self.watcher):
            if started is not None:
                thread, stop = started
                stop.set()
                thread.join(self.cfg.graceful_timeout)
        if self.worker is not None:
            self.worker.stop(timeout=self.cfg.graceful_timeout)
