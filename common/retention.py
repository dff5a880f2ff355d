"""Which backups to keep: the original etcd-backup's `rotate` (keep the newest N), and the optional `retention`
section: a maximum age, and a tiered policy (everything from the last hour, then the newest backup
of each hour, day and week for so many hours, days and weeks; as gardener's etcd-backup-restore and
kops' etcd-manager keep theirs).

A backup is kept if any rule keeps it; `rotate` then caps how many are kept; the newest backup is
never deleted. Backup times come from the names, never from file dates.

Compacted backups (worker.compact) are decided apart and count toward no rule: a compacted backup is kept while it
is newer than the oldest kept backup taken from etcd (within the recovery window, where it bounds a restore's
deltas), so that compactions never push a real backup out of `rotate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from common import backups
from common.config import RetentionConfig
from common.deltas import parse_delta_name
from common.storage import BackupStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    name: str
    keep: bool
    reason: str


def plan(names: list[str], now: datetime, rotate: int, retention: RetentionConfig | None,
         protect: str | None = None) -> list[Decision]:
    """Decide, for each backup name (any order), whether to keep it and why; newest first.

    Backups named in the future (common.backups.in_time_order) count as the oldest: no age rule
    keeps them (their age is unknown), and they are never "the newest". Stale backups are decided
    apart (_plan_stale): they never take the place of a current backup.
    """
    current = [name for name in names if not backups.is_stale(name) and not backups.is_compacted(name)]
    stale = [name for name in names if backups.is_stale(name)]
    compacted = [name for name in names if backups.is_compacted(name)]
    decisions = _plan_current(current, now, rotate, retention, protect)
    decisions += _plan_stale(stale, backups.newest(current, now), now, rotate, protect)
    decisions += _plan_compacted(compacted, decisions, now, protect)
    order = {name: index for index, name in enumerate(backups.in_time_order(names, now)[::-1])}
    return sorted(decisions, key=lambda decision: order[decision.name])


def _plan_stale(names: list[str], newest_current: str | None, now: datetime, rotate: int,
                protect: str | None) -> list[Decision]:
    """A stale backup (allow-stale-member) is kept only while no current backup is newer, which holds all
    it holds (a member applies only what the quorum committed), and then only the newest `rotate` of them."""
    decisions = []
    kept = 0
    for name in backups.in_time_order(names, now)[::-1]:
        if name != protect and backups.is_future(name, now):
            decisions.append(Decision(name, False, "named in the future: its age is unknown, no rule keeps it"))
        elif name != protect and newest_current is not None and name < newest_current:
            decisions.append(Decision(name, False, f"stale, and the current backup {newest_current} is newer"))
        elif kept < rotate or name == protect:
            kept += 1
            decisions.append(Decision(name, True, "stale, and newer than every current backup"))
        else:
            decisions.append(Decision(name, False, f"stale, beyond the newest {rotate} stale backups (rotate)"))
    return decisions


def _plan_compacted(names: list[str], decided: list[Decision], now: datetime, protect: str | None) -> list[Decision]:
    """A compacted backup is kept while it is newer than the oldest kept backup taken from etcd: a restore to a
    revision after it starts from it (and applies fewer deltas); before that, no delta is kept to restore from."""
    kept_real = [decision.name for decision in decided if decision.keep and not backups.is_stale(decision.name)
                 and not backups.is_future(decision.name, now)]
    oldest = min(kept_real, default=None)
    decisions = []
    for name in names:
        if name == protect:
            decisions.append(Decision(name, True, "the compacted backup just made"))
        elif backups.is_future(name, now):
            decisions.append(Decision(name, False, "named in the future: its age is unknown, no rule keeps it"))
        elif oldest is None or name > oldest:
            decisions.append(Decision(name, True, "compacted, within the recovery window" + (
                f" (after {oldest}, the oldest kept backup taken from etcd)" if oldest is not None else "")))
        else:
            decisions.append(Decision(name, False, f"compacted, older than {oldest}, the oldest kept backup taken "
                                                   "from etcd: no restore starts from it"))
    return decisions


def _plan_current(names: list[str], now: datetime, rotate: int, retention: RetentionConfig | None,
                  protect: str | None) -> list[Decision]:
    newest_first = backups.in_time_order(names, now)[::-1]
    newest = backups.newest(names, now)
    placed = [name for name in newest_first if not backups.is_future(name, now)]
    times = {name: _time(name) for name in placed}
    reasons: dict[str, str] = {}
    if newest is not None:
        reasons[newest] = "the newest backup"
    if protect in names:
        reasons.setdefault(protect, "the backup just taken")
    if retention is None:
        for name in newest_first[:rotate]:
            reasons.setdefault(name, f"among the newest {rotate} (rotate)")
    else:
        for rule in _rules(retention):
            for name, why in rule(placed, times, now).items():
                reasons.setdefault(name, why)
    decisions = []
    kept = 0
    for name in newest_first:
        kept_because = reasons.get(name)
        if kept_because is not None and (kept < rotate or name in (newest, protect)):
            kept += 1
            decisions.append(Decision(name, True, kept_because))
        elif kept_because is not None:
            decisions.append(Decision(name, False, f"beyond rotate {rotate}, though {kept_because}"))
        elif name not in times:
            decisions.append(Decision(name, False, "named in the future: its age is unknown, no rule keeps it"))
        else:
            decisions.append(Decision(name, False, _why_not(retention, rotate)))
    return decisions


def prune(store: BackupStore, now: datetime, rotate: int, retention: RetentionConfig | None,
          protect: str | None = None) -> list[Decision]:
    """Delete the backups (and their metadata) that `plan` does not keep, then the deltas that `plan_deltas` does
    not keep; return the decisions, the backups' first."""
    decisions = plan(store.list_backups(now), now, rotate, retention, protect)
    for decision in decisions:
        if not decision.keep and store.delete(decision.name):
            logger.info("removed %s: %s", decision.name, decision.reason)
    delta_decisions = plan_deltas(store, decisions, now)
    for decision in delta_decisions:
        if not decision.keep and store.delete_delta(decision.name):
            logger.info("removed %s: %s", decision.name, decision.reason)
    return decisions + delta_decisions


def plan_deltas(store: BackupStore, decisions: list[Decision], now: datetime) -> list[Decision]:
    """Decide, for each stored delta (in revision order), whether to keep it: a restore starts from a full
    backup and applies the deltas after its revision, so a delta whose revisions all come at or before the
    oldest kept full backup's (one a restore can start from: current, with metadata) serves no restore."""
    names = store.list_deltas()
    oldest = _oldest_restorable(store, decisions, now) if names else None
    if oldest is None:  # no backup to start from (yet): nothing tells which deltas are needed; keep them all
        return [Decision(name, True, "no kept full backup with metadata to tell") for name in names]
    backup, revision = oldest
    decided = []
    for name in names:
        said = parse_delta_name(name)
        assert said is not None, name  # list_deltas lists deltas' names only
        if said.last <= revision:
            decided.append(Decision(name, False, f"no kept full backup precedes it: the oldest, {backup}, "
                                                 f"holds revision {revision}"))
        else:
            decided.append(Decision(name, True, f"follows the kept full backup {backup} (revision {revision})"))
    return decided


def _oldest_restorable(store: BackupStore, decisions: list[Decision], now: datetime) -> tuple[str, int] | None:
    """The oldest kept backup taken from etcd that a restore can start from, and its revision (the compacted ones
    kept are newer, and their names' order need not be their revisions')."""
    for decision in reversed(decisions):  # oldest first
        name = decision.name
        if decision.keep and not backups.is_stale(name) and not backups.is_future(name, now) \
                and not backups.is_compacted(name):
            metadata = store.read_metadata(name)
            if metadata is not None:
                return name, metadata.revision
    return None


Rule = Callable[[list[str], dict[str, datetime], datetime], dict[str, str]]


def _rules(retention: RetentionConfig) -> list[Rule]:
    rules: list[Rule] = []
    if retention.max_age is not None:
        max_age = timedelta(seconds=retention.max_age)
        rules.append(lambda names, times, now: {
            name: f"younger than max-age {_duration(max_age)}" for name in names if now - times[name] < max_age})
    if retention.tiered:
        rules.append(lambda names, times, now: {
            name: "from the last hour" for name in names if now - times[name] < timedelta(hours=1)})
        tiers = [
            ("hour", retention.hourly, timedelta(hours=1), lambda t: t.strftime("%Y-%m-%d %H:00")),
            ("day", retention.daily, timedelta(days=1), lambda t: t.strftime("%Y-%m-%d")),
            ("week", retention.weekly, timedelta(weeks=1), lambda t: f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}"),
        ]
        for unit, count, length, bucket in tiers:
            if count:
                rules.append(_newest_per_bucket(unit, count * length, bucket))
    return rules


def _newest_per_bucket(unit: str, window: timedelta, bucket: Callable[[datetime], str]) -> Rule:
    """Keep the newest backup of each hour/day/week that is younger than `window`."""

    def rule(names: list[str], times: dict[str, datetime], now: datetime) -> dict[str, str]:
        kept: dict[str, str] = {}
        seen: set[str] = set()
        for name in names:  # newest first: the first of each bucket is its newest
            if now - times[name] >= window:
                continue
            key = bucket(times[name])
            if key not in seen:
                seen.add(key)
                kept[name] = f"the newest of its {unit} ({key})"
        return kept

    return rule


def _why_not(retention: RetentionConfig | None, rotate: int) -> str:
    if retention is None:
        return f"beyond the newest {rotate} (rotate)"
    parts = []
    if retention.max_age is not None:
        parts.append(f"older than max-age {_duration(timedelta(seconds=retention.max_age))}")
    if retention.tiered:
        parts.append(f"not kept by the tiers (hourly {retention.hourly}, daily {retention.daily}, "
                     f"weekly {retention.weekly})")
    return " and ".join(parts) or "kept by no rule"


def _time(name: str) -> datetime:
    started = backups.backup_time(name)
    assert started is not None, f"{name} is not a backup name"
    return started


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds}s"
