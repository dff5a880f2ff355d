"""Backup names, and the order in time they give, whatever store (common.storage) holds the backups.

Only names of the form `snapshot-YYYYMMDD_HHMMSS.tar.gz` (`.tar.gz.age` when encrypted, common.encryption;
`.stale.tar.gz` from a member that could not prove it current; `.compacted.tar.gz` made by the worker from a
backup and its deltas, worker.compact) are backups. Everything else in the
store (temp files, an operator's notes, a symlink) is never listed, served or deleted.
"""

from __future__ import annotations

import bisect
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

BACKUP_SUFFIX = ".tar.gz"
ENCRYPTED_SUFFIX = ".age"
"""After BACKUP_SUFFIX in the name of a backup encrypted with age: the same .tar.gz, encrypted."""
STALE_MARK = ".stale"
"""In the name of a backup taken from a member that could not prove it current (allow-stale-member)."""
COMPACTED_MARK = ".compacted"
"""In the name of a compacted backup (worker.compact): not streamed from etcd, but made by the worker from a full
backup and the deltas after it, in a throwaway etcd; named after when the watcher received its revision. It sorts
before a backup taken from etcd in the same second ('.c' < '.t'), and never takes its name."""
NAME_TIME_FORMAT = "%Y%m%d_%H%M%S"
BACKUP_NAME = re.compile(
    r"snapshot-(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})(?:\.stale|\.compacted)?\.tar\.gz(?:\.age)?")
METADATA_SUFFIX = ".json"
"""A backup's metadata (common.metadata) is in a file named after the archive, plus this."""
FUTURE_TOLERANCE = timedelta(seconds=60)
"""How far a backup's name may be ahead of the clock (common.clock) and still be placed in time.

Backups are named from Redis' clock, and readers compare with it too; the slack covers a reader that
falls back to its own clock (Redis down), and NTP keeps hosts well within a second of each other
(etcd itself warns at a 1 s drift between members). A clock set wrong is off by minutes to hours (a
time zone, a dead RTC): far beyond it. Kept small because a backup named within it counts as the
newest until the clock passes it.
"""


def backup_name(started: datetime, stale: bool = False, encrypted: bool = False, compacted: bool = False) -> str:
    """Return the archive name for a snapshot started at `started` (UTC); `stale` marks one from a member
    that could not prove it current (is_stale), `encrypted` one encrypted with age (is_encrypted), `compacted`
    one the worker made from a backup and its deltas (is_compacted)."""
    mark = STALE_MARK if stale else COMPACTED_MARK if compacted else ""
    return (f"snapshot-{started.astimezone(UTC).strftime(NAME_TIME_FORMAT)}{mark}"
            f"{BACKUP_SUFFIX}{ENCRYPTED_SUFFIX if encrypted else ''}")


def _after_second(moment: datetime) -> str:
    """A string that sorts after every backup name of `moment`'s second (plain, stale or encrypted) and
    before every name of the next second: '~' sorts after every character a name's suffix has."""
    return f"snapshot-{moment.astimezone(UTC).strftime(NAME_TIME_FORMAT)}~"


def is_stale(name: str) -> bool:
    """Whether backup `name` is from a member that could not prove it current: taken only with
    allow-stale-member, when no member could; never "the newest backup", which is always current."""
    return name.removesuffix(ENCRYPTED_SUFFIX).endswith(STALE_MARK + BACKUP_SUFFIX)


def is_compacted(name: str) -> bool:
    """Whether backup `name` was made by the worker from a backup and its deltas (worker.compact), not taken
    from etcd: a restore starts from it like from any backup, but it never counts as "the newest backup" taken
    (the metrics' last success, skip-unchanged) and retention counts it apart."""
    return name.removesuffix(ENCRYPTED_SUFFIX).endswith(COMPACTED_MARK + BACKUP_SUFFIX)


def is_encrypted(name: str) -> bool:
    """Whether backup `name` is encrypted with age (common.encryption): its .tar.gz, encrypted."""
    return name.endswith(BACKUP_SUFFIX + ENCRYPTED_SUFFIX)


def member_name(archive_name: str) -> str:
    """Return the name of the snapshot file inside archive `archive_name`."""
    return archive_name.removesuffix(ENCRYPTED_SUFFIX).removesuffix(BACKUP_SUFFIX) + ".db"


def backup_time(name: str) -> datetime | None:
    """Return the UTC time encoded in a backup name, or None if `name` is not a backup name."""
    match = BACKUP_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        # datetime() from the digits, not strptime(): ten times faster, and listings parse every name.
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:  # well-formed digits, impossible date such as month 13
        return None


def is_backup_name(name: str) -> bool:
    return backup_time(name) is not None


def in_time_order(names: list[str], now: datetime) -> list[str]:
    """Return backup `names` oldest first, those named in the future (is_future) first of all.

    A name in the future cannot be when its backup was taken: it was written by a host whose clock
    was ahead (or planted). Its real time is unknown, so it never counts as the newest backup: not
    for the list's last entry (a client's "latest"), rotation, the metrics or the drill.
    """
    ordered = sorted(names)
    # Everything after the newest name that is not in the future is in the future.
    cut = bisect.bisect_right(ordered, _after_second(now + FUTURE_TOLERANCE))
    future = ordered[cut:]
    for name in future:
        report_once(Path(name), f"is named more than {FUTURE_TOLERANCE.seconds} s after the clock (a host's clock was "
                          "ahead): listed as the oldest, never counted as the newest")
    return future + ordered[:cut]


def is_future(name: str, now: datetime) -> bool:
    """Whether backup `name` is named more than FUTURE_TOLERANCE after `now`."""
    return name > _after_second(now + FUTURE_TOLERANCE)


def newest(names: list[str], now: datetime, stale: bool = False, compacted: bool = False) -> str | None:
    """The newest current backup taken from etcd of `names` (with `stale`: the newest stale one; with
    `compacted`: compacted backups count too) that is not named in the future, if any."""
    ordered = in_time_order([name for name in names if is_stale(name) == stale
                             and (compacted or not is_compacted(name))], now)
    return ordered[-1] if ordered and not is_future(ordered[-1], now) else None


_reported: set[tuple[Path | str, str]] = set()


def report_once(path: Path | str, what: str) -> None:
    """Log, once per process, a file of backup-dir that is not taken for what its name says.

    Once: listings run on every request, and a file that stays would fill the log.
    """
    if (path, what) not in _reported:
        _reported.add((path, what))
        logger.warning("backup-dir: %s %s", path, what)


def metadata_name(archive_name: str) -> str:
    return archive_name + METADATA_SUFFIX
