"""What the views need from the app: the config, the job queue (every kind of job) and the backup store,
built once by create_app."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

from flask import current_app
from rq import Queue

from common.config import Config
from common.storage import BackupStore


@dataclass(frozen=True)
class State:
    KEY: ClassVar[str] = "etcd_backup"

    config: Config
    queue: Queue
    store: BackupStore
    waiting_slots: threading.BoundedSemaphore
    """One per request that may wait for its job (a POST); the others answer 202 at once."""


def state() -> State:
    """Return the State of the app handling the current request."""
    value: State = current_app.extensions[State.KEY]
    return value
