"""The all-in-one server: the API under gunicorn plus one worker thread, in one process."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from api import create_app
from api.server import gunicorn_settings
from common import queue
from common.config import Config
from worker.runner import start_thread_worker


class AllInOneServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Config) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        # One gunicorn worker process: the embedded queue and its worker thread live inside it.
        settings = {**gunicorn_settings(self.config), "workers": 1}
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        # Runs in the gunicorn worker process, so the embedded Redis is created after fork().
        connection = queue.connect(self.config)
        start_thread_worker(self.config, connection)
        return create_app(self.config, connection)

    def load_config_from_file(self, filename: str) -> Any:  # pragma: no cover - never called
        raise NotImplementedError
