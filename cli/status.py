"""`etcd-backup status`: the service at a glance, for the person on call, and a cron/Nagios-style check of the
newest backup's age (--max-age) and of the recovery point's (--max-recovery-age: how much losing etcd now loses).

It shows the status document (common.status) that the service answers at GET /api/v1/status (--url), or
that it finds itself reading the store and Redis of a config (--config). Everything in it may come from a
server that is not the service: every text is shown on one line, without control characters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from cli.recovery import DEFAULT_URL, URL_ENV, duration, service_options
from cli.tree import Commands, add_command
from common import present, recovery_text
from common.startup import read_config
from common.storage import StorageError, open_store
from recovery.client import Client, ClientError, UsageError, one_line

STATUS_PATH = "/api/v1/status"


def add_commands(commands: Commands) -> None:
    """Add status to the command tree."""
    parser = add_command(
        commands, "status", run,
        "show the newest backup, the recovery window, failures, the drill, the queue and the next run",
        "Asks the service (--url, as `list` does), or reads the store and Redis of a config itself\n"
        "(--config). With --max-age it is a check: exit 1 when the newest backup is older (or there is\n"
        "none), for cron or Nagios; with --max-recovery-age, the same for the recovery point (the newest\n"
        "revision a restore reaches: exit 1 when it is older, or there is none). Coloured on a terminal\n"
        "only (NO_COLOR turns it off).",
        ["etcd-backup status --url http://backup-host:8080",
         "etcd-backup status --config /etc/etcd-backup/config.yml --max-age 7h --max-recovery-age 5m",
         "etcd-backup status --json | jq .recovery_window.recovery_point"],
        config_option=False, parents=[service_options(default_url=None)])
    parser.add_argument("--config", metavar="FILE",
                        help="read the store and Redis of this config instead of asking the service")
    parser.add_argument("--max-age", type=duration, metavar="DURATION",
                        help="exit 1 when the newest backup is older than this, e.g. 7h (Go syntax)")
    parser.add_argument("--max-recovery-age", type=duration, metavar="DURATION",
                        help="exit 1 when the recovery point is older than this, or there is none (deltas off or "
                             "none stored), e.g. 5m")
    parser.add_argument("--json", action="store_true", help="print the status document as JSON, for scripts")


def run(args: argparse.Namespace) -> None:
    local = args.config is not None and args.url is None
    source = f"config {args.config}" if local else (args.url or os.environ.get(URL_ENV, DEFAULT_URL))
    try:
        document = _local(args.config) if local else _remote(args, source)
        problems = check(document, args.max_age) + check_recovery(document, args.max_recovery_age)
        if args.json:
            asked = args.max_age is not None or args.max_recovery_age is not None
            checked = {"ok": not problems, "problems": problems} if asked else {}
            shown = json.dumps({**document, **checked}, indent=1)
        else:
            shown = report(document, problems, source, colour=sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    except UsageError as exc:
        _fail(str(exc), status=2)
    except ClientError as exc:
        _fail(str(exc), status=1)
    except (KeyError, TypeError, AttributeError, ValueError):  # a field missing, or of another kind
        _fail(f"{source}: the status document is not one this version of etcd-backup can read", status=1)
    print(shown)
    if problems:
        sys.exit(1)


def _remote(args: argparse.Namespace, url: str) -> dict[str, Any]:
    if args.config is not None:
        raise UsageError("give --url (ask the service) or --config (read its store), not both")
    document = Client(url, args.token, deadline=args.deadline).get_json(STATUS_PATH)
    if not isinstance(document, dict) or not isinstance(document.get("backups"), dict):
        raise ClientError(f"GET {STATUS_PATH}: the answer is not a status document (an older service?)")
    return document


def _local(config_path: str) -> dict[str, Any]:
    # Deferred: the queue's libraries (Redis' client, RQ, fakeredis) take a quarter of a second to load, and
    # cli.main imports this module for every command, `etcd-backup restore` included.
    from common import queue, status
    from common.clock import redis_clock

    config = read_config(config_path)
    # Without redis-url the queue is embedded in the service's own process: nothing to read from here.
    job_queue = queue.job_queue(queue.connect(config)) if config.redis_url is not None else None
    try:
        return status.gather(config, open_store(config), job_queue,
                             redis_clock(job_queue.connection if job_queue is not None else None)())
    except StorageError as exc:
        raise ClientError(f"backup-dir: {exc}") from None


def check(document: dict[str, Any], max_age: float | None) -> list[str]:
    """What makes the check fail: the newest backup older than `max_age` seconds, or none at all."""
    if max_age is None:
        return []
    newest = document.get("newest")
    if newest is None:
        return ["no backup"]
    age = newest.get("age_seconds")
    if not isinstance(age, int | float):
        raise ClientError(f"GET {STATUS_PATH}: the newest backup's age is not a number: not the service's answer")
    if age > max_age:
        return [f"the newest backup is {_duration(age)} old, more than --max-age {_duration(max_age)}"]
    return []


def check_recovery(document: dict[str, Any], max_age: float | None) -> list[str]:
    """What makes the recovery point's check fail: no recovery point (deltas off, none stored, a service that does
    not say), one named in the future (its age unknown), or one older than `max_age` seconds."""
    if max_age is None:
        return []
    recovery = document.get("recovery_window")
    if not isinstance(recovery, dict):
        return ["no recovery point: the service does not say"]
    if not recovery.get("deltas_on"):
        return ["no recovery point: deltas are off"]
    point = recovery.get("recovery_point")
    if point is None:
        return [f"no recovery point: {recovery_text.no_point_reason(recovery)}"]
    age = point.get("age_seconds")
    if age is None:
        return ["the recovery point is named in the future (a clock ahead, or a planted delta): its age is unknown"]
    if not isinstance(age, int | float) or isinstance(age, bool):
        raise ClientError(f"GET {STATUS_PATH}: the recovery point's age is not a number: not the service's answer")
    if age > max_age:
        return [f"the recovery point is {_duration(age)} old, more than --max-recovery-age {_duration(max_age)}"]
    return []


GREEN, YELLOW, RED, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[0m"
TONES = {recovery_text.OK: GREEN, recovery_text.WARN: YELLOW, recovery_text.BAD: RED}


def report(document: dict[str, Any], problems: list[str], source: str, colour: bool) -> str:
    """The status as a few lines for a person; `source`: where it is from; `colour`: ANSI colours (a terminal)."""

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if colour else text

    lines = [("status of", f"{_text(source)} at {_when_text(document['time'])}")]
    newest = document.get("newest")
    if newest is None:
        lines.append(("newest backup", paint("none", RED)))
    else:
        revision = newest.get("revision")
        age = paint(f"{_duration(newest['age_seconds'])} ago", RED if problems else GREEN)
        lines.append(("newest backup", f"{_text(newest['filename'])}, {age} ({_when_text(newest['completed'])}), "
                                       f"{_size(newest['filesize'])}"
                                       + (f", revision {_text(revision)}" if revision is not None else "")))
    kept = document["backups"]
    lines.append(("kept", f"{_text(present.count(kept['count'], 'backup'))}, {_size(kept['bytes'])}"))
    if kept.get("not_ours"):  # signed store: what is there and not ours is never restored, but someone put it there
        lines.append(("not ours", paint(f"{_text(present.count(kept['not_ours'], 'object'))} in the store not signed "
                                        "with this service's key (planted, edited, or older than signing): ignored",
                                        YELLOW)))
    failure = document.get("last_failure")
    if failure is None:
        lines.append(("last failure", "none" if document.get("redis") == "ok" else "unknown"))
    else:
        when = f"{_duration(failure['age_seconds'])} ago ({_when_text(failure['time'])})"
        failing = document.get("failing")
        lines.append(("last failure", paint(f"{when}: {_text(failure['message'])}", RED if failing else YELLOW)))
    lines.append(("drill", _drill(document.get("drill"), document.get("redis"), paint)))
    depth = document.get("queue")
    if depth is not None:
        workers = depth.get("workers")
        lines.append(("queue", f"{_text(depth.get('queued'))} queued, {_text(depth.get('running'))} running, "
                               f"{paint(_text(present.count(workers, 'worker')), RED if workers == 0 else GREEN)}, "
                               f"{_text(present.count(depth.get('failed_jobs'), 'failed job'))} kept"))
    if document.get("redis") != "ok":
        lines.append(("redis", paint(_text(document.get("redis")), YELLOW)))
    for label, text, tone in recovery_text.lines(document.get("recovery_window")):
        late = label == "recovery point" and any(problem.startswith("the recovery point") for problem in problems)
        shown = _text(text, limit=1000)
        lines.append((label, paint(shown, RED if late else TONES[tone]) if tone is not None else shown))
    schedule = document.get("schedule") or {}
    for kind in ("backup", "drill"):
        planned = schedule.get(kind)
        lines.append((f"next {kind}", "not scheduled" if planned is None else
                      f"{_when_text(planned['next'])} ({_text(planned['cron'])})"))
    if problems:
        lines.append(("check", paint("FAILED: " + "; ".join(problems), RED)))
    elif document.get("failing"):
        lines.append(("check", paint("the last backup failed", RED)))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)


def _drill(drill: dict[str, Any] | None, redis_state: object, paint: Callable[[str, str], str]) -> str:
    if drill is None:
        return "never run" if redis_state == "ok" else "unknown"
    ago = f"{_duration(drill['age_seconds'])} ago"
    on = f" on {_text(drill['backup'])}" if drill.get("backup") else ""
    if drill.get("passed"):
        return paint("passed", GREEN) + f" {ago}{on}"
    last = f" (last passed {_when_text(drill['last_success'])})" if drill.get("last_success") else " (never passed)"
    return paint("failed", RED) + f" {ago}{on}: {_text(drill.get('reason') or '')}{last}"


def _text(value: object, limit: int = 300) -> str:
    """`value` on one line, control characters (a terminal's escapes) removed."""
    return one_line(str(value), limit=limit)


def _fail(message: str, status: int) -> NoReturn:
    print(one_line(f"etcd-backup status: {message}", limit=1000), file=sys.stderr)
    sys.exit(status)


# Shown on one line, whatever the document held.


def _when_text(iso: object) -> str:
    return _text(present.when(iso))


def _duration(seconds: object) -> str:
    return _text(present.duration(seconds))


def _size(count: object) -> str:
    return _text(present.size(count))
