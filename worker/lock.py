"""The per-cluster backup lock in Redis: one backup at a time across all workers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError

from common.queue import LOCK_KEY

logger = logging.getLogger(__name__)

LOCK_TTL = 30.0
"""Seconds the lock outlives a worker that was killed; a live holder renews it every third of that."""


@contextmanager
def backup_lock(connection: redis.Redis, blocking: bool = True) -> Iterator[bool]:
    """Hold the backup lock for the duration of the block; yield whether it was acquired."""
    # thread_local=False: the renewing thread must see the token that this thread acquired.
    lock = connection.lock(LOCK_KEY, timeout=LOCK_TTL, thread_local=False)
    if not lock.acquire(blocking=blocking):
        yield False
        return
    done = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lock, done), name="backup-lock-renewer", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        done.set()
        renewer.join()
        try:
            lock.release()
        except LockError:
            logger.warning("the backup lock expired before the backup ended")


def _renew(lock: redis.lock.Lock, done: threading.Event) -> None:
    while not done.wait(LOCK_TTL / 3):
        try:
            lock.reacquire()
        except (LockError, redis.RedisError) as exc:
            logger.warning("cannot renew the backup lock: %s", exc)
