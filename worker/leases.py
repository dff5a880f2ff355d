"""Keys in Redis that a live worker keeps renewing, so that others can tell when it died.

- The job heartbeat: the API's waiting POST sees a backup job whose worker was killed (the job stays
  "started" in RQ for an hour) as soon as its heartbeat expires.
- The backup lock: one backup of the cluster at a time across all workers. A job takes it with its
  own id as the token, which also tags its temp file: a temp file is a dead backup's unless it
  carries the lock holder's id and that holder's heartbeat is alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from redis.client import Pipeline
from redis.exceptions import LockError

from common.queue import HEARTBEAT_TTL, LOCK_KEY, heartbeat_key
from common.redis_tools import text, transaction

logger = logging.getLogger(__name__)

LOCK_TTL = 30.0
"""Seconds the lock outlives a worker cut off from Redis; a live holder renews it every third of that."""
LOCK_POLL_SECONDS = 0.2
"""How often a backup waiting for the lock tries again."""


@contextmanager
def backup_lock(connection: redis.Redis, token: str, blocking: bool = True) -> Iterator[bool]:
    """Hold the backup lock, as `token`, for the duration of the block; yield whether it was acquired."""
    # thread_local=False: the renewing thread must see the token that this thread acquired.
    lock = connection.lock(LOCK_KEY, timeout=LOCK_TTL, thread_local=False)
    while not lock.acquire(blocking=False, token=token):
        if not blocking:
            yield False
            return
        _break_if_holder_dead(connection)
        time.sleep(LOCK_POLL_SECONDS)
    try:
        with renewing(lock.reacquire, LOCK_TTL / 3, "the backup lock"):
            yield True
    finally:
        try:
            lock.release()
        except LockError:
            logger.warning("the backup lock expired before the backup ended")


def _break_if_holder_dead(connection: redis.Redis) -> None:
    """Delete the lock if its holder's heartbeat has expired: a killed worker's lock would otherwise
    keep every backup waiting until its TTL ran out."""

    def delete_if_holder_dead(pipe: Pipeline) -> str | None:
        holder = pipe.get(LOCK_KEY)
        if holder is None or pipe.exists(heartbeat_key(text(holder))):
            return None
        pipe.multi()
        pipe.delete(LOCK_KEY)
        return text(holder)

    dead_holder = transaction(connection, delete_if_holder_dead, LOCK_KEY)
    if dead_holder is not None:
        logger.warning("took over the backup lock of job %s, whose worker stopped answering", dead_holder)


def live_backup(connection: redis.Redis) -> str | None:
    """The job id of the backup that holds the lock with a live heartbeat, if any."""
    holder = connection.get(LOCK_KEY)
    if holder is None:
        return None
    job_id = text(holder)
    return job_id if connection.exists(heartbeat_key(job_id)) else None


@contextmanager
def job_heartbeat(connection: redis.Redis, job_id: str) -> Iterator[None]:
    """Keep the job's heartbeat key alive while the block runs.

    The key is left to expire rather than deleted at the end: between this block and RQ storing the
    job's result, the API must not take the job for dead.
    """
    key = heartbeat_key(job_id)

    def beat() -> None:
        connection.set(key, 1, ex=int(HEARTBEAT_TTL))

    beat()
    with renewing(beat, HEARTBEAT_TTL / 3, "the job heartbeat"):
        yield


_CLEAR_UNEXPIRING = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 or ttl > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def clear_unexpiring_lease(connection: redis.Redis, key: str, ttl: float) -> bool:
    """Delete the lease `key` if it has no TTL or one longer than `ttl` (which its holders set), in one step, so that
    a live holder's lease, renewed meanwhile, is never deleted; whether it did. Such a key was set by hand (or by
    whoever can write to Redis): no holder would ever release it, and every process waiting for it would wait for
    good. A Lua script, run by its hash (the worker's Redis user may EVALSHA, not EVAL)."""
    return bool(connection.register_script(_CLEAR_UNEXPIRING)(keys=[key], args=[int(ttl * 1000)]))


@contextmanager
def renewing(renew: Callable[[], object], every: float, what: str) -> Iterator[None]:
    """Call `renew` every `every` seconds on a thread while the block runs."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            try:
                renew()
            except (LockError, redis.RedisError) as exc:
                logger.warning("cannot renew %s: %s", what, exc)

    renewer = threading.Thread(target=loop, name=f"renew {what}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
