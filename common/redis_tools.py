"""Two things every reader and writer of this service's Redis keys needs: its answers as text, and a
transaction that starts over when a key it read has changed. For the API and the workers alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import redis
from redis.client import Pipeline

_T = TypeVar("_T")


def text(value: bytes | str) -> str:
    """A value read from Redis, as text: the connections answer bytes (RQ stores binary data, so none is
    made with decode_responses), but a test's or a caller's may answer str."""
    return value.decode() if isinstance(value, bytes) else value


def transaction(connection: redis.Redis, step: Callable[[Pipeline], _T], *watched: str) -> _T:
    """Run `step` and then, in one MULTI/EXEC, the commands it queued; return what `step` returned.

    `step` gets a pipeline that WATCHes `watched`: its reads run at once, and after `pipe.multi()` its
    writes are queued (a step that writes nothing need not call it). If a watched key changed before
    EXEC, nothing is written and `step` runs again, on what the keys hold now.
    """
    # redis-py's own retry loop. Its annotations want a `step` that returns None, and return what EXEC
    # answered; with value_from_callable it returns what `step` returned.
    return cast(_T, connection.transaction(step, *watched, value_from_callable=True))  # type: ignore[arg-type]
