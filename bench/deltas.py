"""The delta watcher under a steady write load: its recovery point, its memory, and the restore's speed.

A full backup, then the Procfile's `deltas` process beside the deployment's web and worker while a writer puts
at a steady rate. The recovery point is the longest time from a write (its put answered) to a delta that holds
its revision appearing in the backup dir (polled every POLL seconds); the API's
etcd_backup_recovery_point_seconds is sampled as well. Then `etcd-backup restore --to-revision` the last write.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import MB
from common.deltas import parse_delta_name
from common.storage import LocalStore
from harness.cli import etcd_backup
from harness.deployment import Deployment, procfile
from harness.processes import http, rss, stop_process, wait_until
from worker.deltas import LEASE_KEY

POLL = 0.05
"""Seconds between two looks at the backup dir (and the watcher's RSS, the API's metric every 10th)."""
PREFIX = "/bench-deltas/"
KEYS = 1000
"""Keys the writer cycles through: overwrites, as a busy cluster's writes mostly are."""
VALUE = b"v" * 100
WRITERS = 4
"""Writer threads: one alone does not keep up with 1,000 puts a second on a busy 2-core machine."""


class DeltaBench:
    def __init__(self, work: Path, deployment: Deployment, log: Callable[[str], None]) -> None:
        self.work, self.deployment, self.log = work, deployment, log
        self.measured: dict[str, float] = {}
        self.details: dict[str, Any] = {}

    def run(self, client: Any, rate: int, seconds: float, period: float) -> None:
        """Write `rate` puts a second for `seconds` with the watcher on (its delta-period: `period`)."""
        self.log(f"delta watcher: {rate} writes/s for {seconds:g} s, delta-period {period:g} s")
        began = time.monotonic()
        self.deployment.post_backup()
        watcher = self.deployment.start_process(procfile()["deltas"], "deltas")  # its pid: the watcher's (exec)
        try:
            # Writes begin once it watches (it holds the lease): its start-up is not a recovery point.
            assert self.deployment.redis is not None
            redis = self.deployment.redis.client()
            wait_until(lambda: redis.exists(LEASE_KEY) == 1, 30, "the delta watcher to take its lease", watcher)
            sampler = _Sampler(self.deployment, watcher.pid).start()
            writes = _write_steadily(client, rate, seconds)
            end = writes[-1][0]
            sampler.wait_for(end, timeout=period + 30)
            sampler.stop()
        finally:
            stop_process(watcher, timeout=30)
        self._recovery_point(writes, sampler, period)
        self._memory(sampler)
        self._restore(end)
        self.details["deltas"]["bench_seconds"] = time.monotonic() - began

    def _recovery_point(self, writes: list[tuple[int, float]], sampler: _Sampler, period: float) -> None:
        stored = sorted(sampler.stored.items())  # (last revision, seen stored at), in revision order
        worst, index = 0.0, 0
        for revision, written in writes:
            while stored[index][0] < revision:
                index += 1
            worst = max(worst, stored[index][1] - written)
        self.measured["deltas_recovery_point_over_period_s"] = worst - period
        self.details["deltas"] = {
            "writes_per_s": len(writes) / (writes[-1][1] - writes[0][1]), "writes": len(writes),
            "delta_period_s": period, "recovery_point_s": worst, "deltas_stored": len(stored),
            "metric_recovery_point_max_s": max(sampler.metric, default=None),
        }

    def _memory(self, sampler: _Sampler) -> None:
        samples = sampler.rss
        self.measured["deltas_watcher_peak_rss_mb"] = max(samples) / MB
        # Flat: the second half's peak over the first half's (the first delta's buffers are in both).
        half = len(samples) // 2
        self.measured["deltas_watcher_rss_growth_mb"] = (max(samples[half:]) - max(samples[:half])) / MB
        self.details["deltas"]["watcher_rss_mb_samples"] = len(samples)

    def _restore(self, end: int) -> None:
        data_dir = self.work / "deltas-restored"
        began = time.monotonic()
        done = etcd_backup("restore", "--config", str(self.deployment.config), "--to-revision", str(end),
                           "--data-dir", str(data_dir), timeout=600)
        seconds = time.monotonic() - began
        applied = re.search(r"applied (\d+) events", done.stdout)
        if done.returncode != 0 or applied is None or f"etcd is at revision {end}" not in done.stdout:
            raise RuntimeError(f"the restore to revision {end} failed: {done.stdout}{done.stderr}")
        events = int(applied[1])
        self.measured["deltas_restore_events_per_s"] = events / seconds
        self.details["deltas"].update(restore_events=events, restore_seconds=seconds)


def _write_steadily(client: Any, rate: int, seconds: float) -> list[tuple[int, float]]:
    """Put `rate` times a second for `seconds` (WRITERS threads: one put waits for its answer), each on time or
    as soon as the one before it in its thread is answered; return each put's revision and when it was answered."""
    writes: list[tuple[int, float]] = []
    began = time.monotonic()

    def write(first: int) -> None:
        for number in range(first, int(rate * seconds), WRITERS):
            time.sleep(max(0.0, began + number / rate - time.monotonic()))
            answer = client.put(f"{PREFIX}{number % KEYS:04d}", VALUE)
            writes.append((int(answer.header.revision), time.time()))  # list.append: atomic

    threads = [threading.Thread(target=write, args=(first,), name=f"writer-{first}") for first in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(writes)


class _Sampler:
    """In a thread: when each delta appears in the backup dir, the watcher's RSS, and the API's metric."""

    def __init__(self, deployment: Deployment, pid: int) -> None:
        self.deployment, self.pid = deployment, pid
        self.stored: dict[int, float] = {}
        self.rss: list[int] = []
        self.metric: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delta-sampler", daemon=True)

    def start(self) -> _Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wait_for(self, revision: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while max(self.stored, default=0) < revision:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the watcher stored no delta up to revision {revision} in {timeout:g} s")
            time.sleep(POLL)

    def _run(self) -> None:
        store, looks = LocalStore(self.deployment.backup_dir), 0
        while not self._stop.wait(POLL):
            now = time.time()
            for name in store.list_deltas():
                said = parse_delta_name(name)
                if said is not None:
                    self.stored.setdefault(said.last, now)
            self.rss.append(rss(self.pid))
            looks += 1
            if looks % 10 == 0:
                self.metric += _recovery_point_metric(self.deployment)


def _recovery_point_metric(deployment: Deployment) -> list[float]:
    status, _, body = http("GET", f"{deployment.base}/metrics", timeout=10)
    found = re.search(rb"^etcd_backup_recovery_point_seconds ([0-9.e+-]+)$", body, re.MULTILINE)
    return [float(found[1])] if status == 200 and found else []
