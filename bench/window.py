"""Restore time across a recovery window, with compacted backups (issue 26): does it stay bounded as the window grows?

etcd filled to --size MB, a full backup, then the Procfile deployment (web, worker, scheduler, deltas, standby) with
deltas and compaction on while writers put --rate puts/s of 1 KB for --window-minutes. Then `etcd-backup restore
--to-revision` to 6 targets (the latest and 5 random revisions of the window), each timed with the events it
applied; and the compactions made: how many, their seconds (from the standby's log, or the worker's with
--no-standby: the scheduler's compaction jobs then), their stored bytes, and the peak RSS of the worker and the
standby (their throwaway etcd is a process of its own, counted apart).

    python -m bench.window --window-minutes 10 --rate 1000 --size 300
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rq.registry import StartedJobRegistry

from bench.deltas import WRITERS
from bench.measure import MB
from common import backups
from common.queue import job_queue
from common.storage import LocalStore
from harness.cli import etcd_backup
from harness.deployment import Deployment, procfile
from harness.fill import ETCD_FLAGS, fill
from harness.processes import peak_rss, stop_process
from harness.servers import EtcdServer, RedisServer

PREFIX = "/bench-window/"
KEYS = 10_000
VALUE = b"w" * 1024
TARGETS = 6
"""The latest revision and 5 random ones of the window."""
TARGET_SECONDS = 60.0
"""Issue 26's bound on the worst restore."""


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.window", description=__doc__.splitlines()[0])
    parser.add_argument("--window-minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=1000, help="puts/s of 1 KB during the window")
    parser.add_argument("--size", type=int, default=300, help="MB of etcd database before the window")
    parser.add_argument("--compact-after", type=int, default=100_000, help="compact-after-revisions")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-standby", dest="standby", action="store_false",
                        help="compact with the scheduler's jobs alone, no standby process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-window-") as work:
        result = run(Path(work), args.window_minutes * 60, args.rate, args.size, args.compact_after, args.seed,
                     args.standby)
    print(json.dumps(result, indent=1))


def run(work: Path, window: float, rate: int, size: int, compact_after: int, seed: int,
        standby: bool = True) -> dict[str, Any]:
    etcd = EtcdServer(work / "etcd", extra_args=ETCD_FLAGS).start()
    redis = RedisServer(work / "redis").start()
    deployment = Deployment(work / "deployment", [etcd.url], redis, deltas=True, delta_period="10s",
                            compact_after_revisions=compact_after, rotate=2)
    processes = []
    try:
        client = etcd.client()
        log(f"filling etcd to {size} MB")
        db_size = fill(client, size * MB)
        deployment.start()
        worker_pid = deployment.workers[0].pid
        base = deployment.post_backup()["filename"]
        log(f"full backup {base} ({db_size / MB:.0f} MB database); window of {window:g} s at {rate} puts/s")
        roles = ("deltas", "scheduler", *(("standby",) if standby else ()))
        processes = [deployment.start_process(procfile()[role], role) for role in roles]
        time.sleep(3)  # the watcher takes its lease
        revisions = _write_steadily(client, rate, window)
        latest = revisions[-1]
        log(f"wrote {len(revisions)} puts, revisions {revisions[0]}-{latest}; waiting for the watcher")
        store = LocalStore(deployment.backup_dir)
        _wait(lambda: max((int(name.split("-")[2]) for name in store.list_deltas()), default=0) >= latest, 120)
        watcher_caught_up = time.monotonic()
        if standby:  # until it has applied the latest revision (or compacted past it)
            _wait(lambda: _standby_reached(deployment.work / "standby.log") >= latest, 900)
        standby_lag = round(time.monotonic() - watcher_caught_up, 1)
        if standby:
            log(f"the standby reached revision {latest} {standby_lag} s after the watcher stored it")
        standby_rss = peak_rss(processes[2].pid) / MB if standby else None
        for process in processes:
            stop_process(process, timeout=30)
        processes = []
        _wait(lambda: not _busy(deployment), 900)  # a compaction that runs ends before the restores
        rng = random.Random(seed)
        targets = [latest, *sorted(rng.sample(revisions, TARGETS - 1))]
        restores = [_restore(deployment, work, target) for target in targets]
        compacted = [name for name in store.list_backups() if backups.is_compacted(name)]
        result = {
            "window_s": window, "rate": rate, "db_mb": db_size / MB, "compact_after_revisions": compact_after,
            "revisions_written": len(revisions), "restores": restores,
            "worst_restore_s": max(restore["seconds"] for restore in restores),
            "target_s": TARGET_SECONDS,
            "standby": standby,
            "standby_lag_after_writes_s": standby_lag if standby else None,
            "compactions": _compactions(deployment.work / ("standby.log" if standby else "worker0.log")),
            "compacted_backups": len(compacted),
            "compacted_stored_bytes": sum(stat.size for name in compacted if (stat := store.stat(name)) is not None),
            "worker_peak_rss_mb": peak_rss(worker_pid) / MB,
            "standby_peak_rss_mb": standby_rss,
        }
        return result
    finally:
        for process in processes:
            stop_process(process, timeout=30)
        deployment.stop()
        for name in ("standby.log", "worker0.log", "deltas.log"):  # kept for a look afterwards
            if (deployment.work / name).exists():
                shutil.copy(deployment.work / name, Path(tempfile.gettempdir()) / f"bench-window-{name}")
        redis.stop()
        etcd.stop()


def _write_steadily(client: Any, rate: int, seconds: float) -> list[int]:
    """Put `rate` times a second for `seconds` (WRITERS threads); return the revisions, sorted."""
    revisions: list[int] = []
    began = time.monotonic()

    def write(first: int) -> None:
        for number in range(first, int(rate * seconds), WRITERS):
            time.sleep(max(0.0, began + number / rate - time.monotonic()))
            answer = client.put(f"{PREFIX}{number % KEYS:05d}", VALUE)
            revisions.append(int(answer.header.revision))

    threads = [threading.Thread(target=write, args=(first,)) for first in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(revisions)


def _busy(deployment: Deployment) -> bool:
    """Whether a job is queued or running (a compaction)."""
    assert deployment.redis is not None
    queue = job_queue(deployment.redis.client())
    return queue.count > 0 or StartedJobRegistry(queue=queue).count > 0


def _restore(deployment: Deployment, work: Path, target: int) -> dict[str, Any]:
    data_dir = work / f"restored-{target}"
    began = time.monotonic()
    done = etcd_backup("restore", "--config", str(deployment.config), "--to-revision", str(target),
                       "--data-dir", str(data_dir), timeout=3600)
    seconds = time.monotonic() - began
    applied = re.search(r"applied (\d+) events", done.stdout)
    start = re.search(r"^(snapshot-\S+): ", done.stdout, re.MULTILINE)
    if done.returncode != 0 or applied is None:
        raise RuntimeError(f"the restore to revision {target} failed: {done.stdout}{done.stderr}")
    log(f"restore to {target}: {seconds:.1f} s, {applied[1]} events from {start[1] if start else '?'}")
    return {"target": target, "seconds": round(seconds, 2), "events": int(applied[1]),
            "from": start[1] if start else None}


def _compactions(log_file: Path) -> list[dict[str, Any]]:
    """Each compaction the worker or the standby logged: its backup, base, stored bytes, database bytes, seconds
    (the worker's: restoring, applying and storing; the standby's: storing only, it applied the deltas as they
    came)."""
    made = re.findall(r"compacted backup (\S+): (\S+) and .*?, (\d+) bytes, \d+ keys, database (\d+) "
                      r"bytes, in ([\d.]+) s", log_file.read_text(errors="replace"))
    return [{"backup": name, "from": base, "bytes": int(stored), "db_bytes": int(db), "seconds": float(seconds)}
            for name, base, stored, db, seconds in made]


def _standby_reached(log_file: Path) -> int:
    """The newest revision the standby logged it is at."""
    text = log_file.read_text(errors="replace")
    return max((int(number) for number in re.findall(r"at revision (\d+)", text)), default=0)


def _wait(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(1)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


if __name__ == "__main__":
    main()
