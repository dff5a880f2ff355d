"""The one clock that names backups and judges their age: Redis' (`TIME`), not each host's.

Workers on several hosts share one Redis; if each named backups from its own clock, one host whose
clock is ahead would name backups in the future, and those would sort after every real backup: the
"newest" for the list, rotation, metrics and restores. Redis' clock is the same for every process of
a deployment. The embedded mode's in-process Redis (fakeredis) answers `TIME` from the local clock,
which is then the only clock there is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import redis

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Returns the current time, UTC."""


def local_now() -> datetime:
    return datetime.now(UTC)


def redis_clock(connection: redis.Redis | None) -> Clock:
    """Return a clock that reads Redis' `TIME` (the local clock if there is no Redis, or it does not answer).

    Falling back keeps GETs and metrics working while Redis is down, as they always did; a backup
    cannot be taken then anyway.
    """
    if connection is None:
        return local_now

    def now() -> datetime:
        try:
            seconds, microseconds = connection.time()
        except redis.RedisError as exc:
            logger.warning("Redis TIME failed, using this host's clock: %s", exc)
            return local_now()
        return datetime.fromtimestamp(int(seconds) + int(microseconds) / 1e6, UTC)

    return now
