"""Whether etcd answers, as the workers see it: every process that takes backups (a worker, the all-in-one
server's worker thread) and the delta watcher ask etcd every REPORT_PERIOD seconds and write what they saw to
Redis; the API's /readyz and its recovery point read that report instead of asking etcd themselves.

So the API needs no etcd credentials: the client key a backup needs (kube-apiserver's apiserver-etcd-client, in
the README's example) can write every key of the cluster, and the pods that face the network do not hold it.

A report is written by whoever can write Redis: it is read as hostile input. Its size is bounded, every field
is checked, and one from the future or older than FRESH_SECONDS is not taken. A forged report can make /readyz
say ready (as a forged job result can say a backup succeeded); it cannot make the API touch etcd or the store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from common import etcd
from common.config import EtcdConfig, printable

logger = logging.getLogger(__name__)

SEEN_KEY = "etcd-backup:etcd-seen"
"""The newest report of etcd answering (JSON: reporter, at, endpoint, version, revision), with a TTL of
FRESH_SECONDS: any reporter's success is enough for readiness, so the last one written wins."""
FAILED_KEY = "etcd-backup:etcd-failed"
"""The newest report of etcd not answering (JSON: reporter, at, error), with the same TTL: what /readyz says
when no success is fresh."""
REPORT_PERIOD = 5.0
"""Seconds between a reporter's checks."""
FRESH_SECONDS = 30.0
"""A report older than this says nothing about etcd now (a reporter that stopped, or is stuck)."""
CLOCK_SKEW_SECONDS = 5.0
"""How far in the future a report's time may be (the reporter's clock against the reader's)."""
MAX_REPORT_BYTES = 4096
"""A report is a few hundred bytes; a longer value is not one (and is never read whole)."""
MAX_TEXT = 1000
"""Characters kept of a report's text fields (an endpoint, an error)."""


@dataclass(frozen=True)
class Sighting:
    """What one reporter saw when it asked etcd at `at` (Unix time): `endpoint` answered, or `error` if none did."""

    reporter: str
    at: float
    endpoint: str = ""
    version: str = ""
    revision: int | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None

    def age(self, now: float) -> float:
        return max(0.0, now - self.at)

    def describe(self, now: float) -> str:
        when = f"{self.reporter} at {datetime.fromtimestamp(self.at, UTC).isoformat(timespec='seconds')} " \
               f"({self.age(now):.0f} s ago)"
        if self.answered:
            return f"{self.endpoint} answers (etcd {self.version}), as seen by {when}"
        return f"{when}: {self.error}"


def reporter_name(role: str) -> str:
    """Who reports, as an operator finds it: the role, the host (a pod's name) and the process."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def check_and_report(config: EtcdConfig, connection: redis.Redis, reporter: str) -> Sighting:
    """Ask etcd (a current member, as a backup does) and write what was seen; return it."""
    try:
        with etcd.connect(config) as member:
            sighting = Sighting(reporter, time.time(), endpoint=member.endpoint, version=member.status.version,
                                revision=member.proof.cluster_revision)
    except Exception as exc:  # noqa: BLE001 - etcd not answering is what this reports
        sighting = Sighting(reporter, time.time(), error=(str(exc) or type(exc).__name__)[:MAX_TEXT])
    document = {"reporter": sighting.reporter, "at": sighting.at}
    if sighting.answered:
        document.update(endpoint=sighting.endpoint, version=sighting.version, revision=sighting.revision)
    else:
        document.update(error=sighting.error)
    key = SEEN_KEY if sighting.answered else FAILED_KEY
    connection.set(key, json.dumps(document), px=int(FRESH_SECONDS * 1000))
    return sighting


def start_reporter(config: EtcdConfig, connection: redis.Redis, role: str) -> tuple[threading.Thread, threading.Event]:
    """Report every REPORT_PERIOD seconds, on a daemon thread, until the event is set. A failure to write Redis
    is logged and tried again next period: it never ends the thread."""
    stop = threading.Event()
    reporter = reporter_name(role)

    def report_until_stopped() -> None:
        failing = False
        while not stop.is_set():
            try:
                check_and_report(config, connection, reporter)
                failing = False
            except Exception as exc:  # noqa: BLE001 - logged once per outage; the next period tries again
                if not failing:
                    logger.warning("cannot report etcd's state to Redis (%s: %s); retrying every %g s",
                                   type(exc).__name__, exc, REPORT_PERIOD)
                failing = True
            stop.wait(REPORT_PERIOD)

    thread = threading.Thread(target=report_until_stopped, name="etcd-reporter", daemon=True)
    thread.start()
    return thread, stop


def newest(connection: redis.Redis, key: str, now: float) -> Sighting | None:
    """The fresh report in `key` (SEEN_KEY or FAILED_KEY), or None if there is none, it is stale, or it is not
    a report (logged). Redis' own errors are raised."""
    try:
        raw: bytes = connection.getrange(key, 0, MAX_REPORT_BYTES)  # type: ignore[assignment]  # bytes, as stored
    except redis.ResponseError as exc:  # WRONGTYPE: not a report; an unreachable Redis raises ConnectionError
        logger.warning("ignored %s: not a report of etcd's state (%s)", key, exc)
        return None
    if not raw:
        return None
    try:
        if len(raw) > MAX_REPORT_BYTES:
            raise ValueError(f"longer than {MAX_REPORT_BYTES} bytes")
        sighting = _parse(json.loads(raw), answered=key == SEEN_KEY)
    except Exception as exc:  # noqa: BLE001 - any of them: the value is not a report
        # Parsing touches nothing but the value (Redis' errors were raised above), so whatever it raises says the
        # value is no report: not only ValueError and TypeError, also OverflowError (a time of 400 digits is an
        # int no float holds) and RecursionError (arrays nested 2,000 deep in 4 KiB), which json.loads and
        # math.isfinite raise on JSON no reporter writes.
        logger.warning("ignored %s: not a report of etcd's state (%s)", key, exc)
        return None
    if not (now - FRESH_SECONDS <= sighting.at <= now + CLOCK_SKEW_SECONDS):
        return None
    return sighting


def _parse(document: object, answered: bool) -> Sighting:
    if not isinstance(document, dict):
        raise TypeError("not a JSON object")
    at = document["at"]
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise TypeError("at is not a Unix time")
    if not answered:
        return Sighting(_text(document, "reporter"), float(at), error=_text(document, "error") or "failed")
    revision = document["revision"]
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise TypeError("revision is not a revision")
    return Sighting(_text(document, "reporter"), float(at), endpoint=_text(document, "endpoint"),
                    version=_text(document, "version"), revision=revision)


def _text(document: dict[str, object], field: str) -> str:
    value = document[field]
    if not isinstance(value, str):
        raise TypeError(f"{field} is not a string")
    return printable(value[:MAX_TEXT])


def readiness(connection: redis.Redis, now: float | None = None) -> str:
    """The etcd check of /readyz: who saw etcd answer, and when; raises RuntimeError (saying why) if no
    reporter did within FRESH_SECONDS."""
    now = time.time() if now is None else now
    try:
        seen = newest(connection, SEEN_KEY, now)
        failed = None if seen is not None else newest(connection, FAILED_KEY, now)
    except redis.RedisError as exc:
        raise RuntimeError(f"unknown: cannot read the workers' reports of etcd from Redis ({exc})") from None
    if seen is not None:
        return seen.describe(now)
    why = f"no worker has reported etcd answering in {FRESH_SECONDS:g} s"
    raise RuntimeError(why + (f"; the last report: {failed.describe(now)}" if failed is not None else
                              " (is a worker running?)"))


def etcd_seen_at(connection: redis.Redis) -> Callable[[], tuple[int, float] | None]:
    """A function that answers etcd's revision and when a reporter saw it (None if no fresh report has it), for
    common.recovery_window.recovery_point."""

    def ask() -> tuple[int, float] | None:
        try:
            seen = newest(connection, SEEN_KEY, time.time())
        except redis.RedisError as exc:
            logger.warning("recovery point from the store alone: cannot read etcd's revision (%s)", exc)
            return None
        return None if seen is None or seen.revision is None else (seen.revision, seen.at)

    return ask
