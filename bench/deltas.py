"""The delta watcher under a steady write load: its recovery point, its memory, and the restore's speed.

A full backup, then the Procfile's `deltas` process beside the deployment's web and worker while writers put
at a steady rate (threads, or processes of their own for rates one Python process cannot make). The recovery
point is the longest time from a write (its put answered) to a delta that holds its revision appearing in the
backup dir (polled every POLL seconds); the API's etcd_backup_recovery_point_seconds is sampled as well. With
`burst`, BURST_VALUES values of a MiB are put at once in the middle of the writes. Then `etcd-backup restore
--to-revision` the last write.

Alone (issue 26: the watcher at the highest rate this machine's etcd sustains from concurrent clients):

    python -m bench.deltas --capacity                       # that rate: writer processes putting flat out
    python -m bench.deltas --rate 3000 --seconds 180 --period 2 --burst
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import etcd3

from bench.measure import MB
from common.deltas import parse_delta_name
from common.recovery_window import LEASE_KEY
from common.storage import LocalStore
from harness.cli import etcd_backup
from harness.deployment import Deployment, procfile
from harness.fill import ETCD_FLAGS
from harness.processes import http, rss, stop_process, wait_until
from harness.servers import EtcdServer, RedisServer

POLL = 0.05
"""Seconds between two looks at the backup dir (and the watcher's RSS, the API's metric every 10th)."""
PREFIX = "/bench-deltas/"
KEYS = 1000
"""Keys the writer cycles through: overwrites, as a busy cluster's writes mostly are."""
VALUE_BYTES = 100
WRITERS = 4
"""Writer threads: one alone does not keep up with 1,000 puts a second on a busy 2-core machine."""
BURST_VALUES, BURST_VALUE_BYTES = 100, 1 << 20
"""The burst: this many values of a MiB, put as fast as etcd takes them (issue 26)."""


class DeltaBench:
    def __init__(self, work: Path, deployment: Deployment, log: Callable[[str], None]) -> None:
        self.work, self.deployment, self.log = work, deployment, log
        self.measured: dict[str, float] = {}
        self.details: dict[str, Any] = {}

    def run(self, client: Any, rate: int, seconds: float, period: float, value_bytes: int = VALUE_BYTES,
            writer_processes: int = 0, endpoint: str = "", burst: bool = False,
            restore: bool = True) -> None:
        """Write `rate` puts of `value_bytes` a second for `seconds` with the watcher on (its delta-period:
        `period`): on WRITERS threads of `client`, or on `writer_processes` processes of their own (each with a
        client of `endpoint`); with `burst`, BURST_VALUES values of a MiB in the middle; then (`restore`) a
        point-in-time restore to the last write."""
        self.log(f"delta watcher: {rate} writes/s of {value_bytes} bytes for {seconds:g} s, delta-period {period:g} s"
                 f"{', a burst of 100 MiB values' if burst else ''}")
        began = time.monotonic()
        self.deployment.post_backup()
        watcher = self.deployment.start_process(procfile()["deltas"], "deltas")  # its pid: the watcher's (exec)
        try:
            # Writes begin once it watches (it holds the lease): its start-up is not a recovery point.
            assert self.deployment.redis is not None
            redis = self.deployment.redis.client()
            wait_until(lambda: redis.exists(LEASE_KEY) == 1, 30, "the delta watcher to take its lease", watcher)
            sampler = _Sampler(self.deployment, watcher.pid).start()
            bursts = threading.Timer(seconds / 2, self._burst, args=(client,)) if burst else None
            if bursts is not None:
                bursts.start()
            if writer_processes:
                writes = _write_in_processes(endpoint, rate, seconds, value_bytes, writer_processes)
            else:
                writes = _write_steadily(client, rate, seconds, b"v" * value_bytes)
            if bursts is not None:
                bursts.join()
            end = max(writes[-1][0], self.details.get("burst", {}).get("last_revision", 0))
            sampler.wait_for(end, timeout=period + 30)
            sampler.stop()
        finally:
            stop_process(watcher, timeout=30)
        self._recovery_point(writes, sampler, period)
        self.details["deltas"]["value_bytes"] = value_bytes
        if burst:
            self.details["deltas"]["burst"] = self.details.pop("burst")
        self._memory(sampler)
        if restore:
            self._restore(end)
        self.details["deltas"]["bench_seconds"] = time.monotonic() - began

    def _burst(self, client: Any) -> None:
        """BURST_VALUES values of BURST_VALUE_BYTES, one after another, as fast as etcd takes them."""
        began, value = time.monotonic(), b"b" * BURST_VALUE_BYTES
        revisions = [int(client.put(f"{PREFIX}burst/{number % 10}", value).header.revision)
                     for number in range(BURST_VALUES)]
        self.details["burst"] = {"values": BURST_VALUES, "value_bytes": BURST_VALUE_BYTES,
                                 "seconds": time.monotonic() - began, "last_revision": revisions[-1]}

    def _recovery_point(self, writes: list[tuple[int, float]], sampler: _Sampler, period: float) -> None:
        stored = sorted(sampler.stored.items())  # (last revision, seen stored at), in revision order
        worst, worst_at, index = 0.0, 0.0, 0
        for revision, written in writes:
            while stored[index][0] < revision:
                index += 1
            if stored[index][1] - written > worst:
                worst, worst_at = stored[index][1] - written, written - writes[0][1]
        self.measured["deltas_recovery_point_over_period_s"] = worst - period
        self.details["deltas"] = {
            "writes_per_s": len(writes) / (writes[-1][1] - writes[0][1]), "writes": len(writes),
            "delta_period_s": period, "recovery_point_s": worst, "deltas_stored": len(stored),
            "worst_write_at_s": worst_at,
            "metric_recovery_point_max_s": max(sampler.metric, default=None),
        }

    def _memory(self, sampler: _Sampler) -> None:
        samples = sampler.rss
        self.measured["deltas_watcher_peak_rss_mb"] = max(samples) / MB
        # Flat: the last tenth's peak over the first half's (the first delta's buffers are in both); a burst in the
        # middle may take memory while it lasts (bounded by the watch queue and a delta), not keep it.
        half, tenth = len(samples) // 2, max(1, len(samples) // 10)
        self.measured["deltas_watcher_rss_growth_mb"] = (max(samples[-tenth:]) - max(samples[:half])) / MB
        self.details["deltas"].update(watcher_rss_mb_samples=len(samples),
                                      watcher_rss_first_half_peak_mb=max(samples[:half]) / MB,
                                      watcher_rss_second_half_peak_mb=max(samples[half:]) / MB,
                                      watcher_rss_last_tenth_peak_mb=max(samples[-tenth:]) / MB)

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


def _write_steadily(client: Any, rate: int, seconds: float, value: bytes) -> list[tuple[int, float]]:
    """Put `rate` times a second for `seconds` (WRITERS threads: one put waits for its answer), each on time or
    as soon as the one before it in its thread is answered; return each put's revision and when it was answered."""
    writes: list[tuple[int, float]] = []
    began = time.monotonic()

    def write(first: int) -> None:
        writes.extend(_write_share(client, first, WRITERS, rate, seconds, began, value))  # list.extend: atomic

    threads = [threading.Thread(target=write, args=(first,), name=f"writer-{first}") for first in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(writes)


def _write_share(client: Any, first: int, step: int, rate: int, seconds: float, began: float,
                 value: bytes) -> list[tuple[int, float]]:
    """Puts number `first`, `first + step`, ... of `rate` a second from `began` (time.monotonic(): the same clock
    in every process), each on time or as soon as the one before it is answered; none after `seconds` (and one
    more): the rate reached is what was written."""
    writes = []
    for number in range(first, int(rate * seconds), step):
        if time.monotonic() > began + seconds + 1:  # behind (etcd, or this machine, does not take the rate): ended
            break
        time.sleep(max(0.0, began + number / rate - time.monotonic()))
        answer = client.put(f"{PREFIX}{number % KEYS:04d}", value)
        writes.append((int(answer.header.revision), time.time()))
    return writes


def _write_in_processes(endpoint: str, rate: int, seconds: float, value_bytes: int,
                        processes: int) -> list[tuple[int, float]]:
    """_write_steadily's writes, on `processes` processes of their own (one Python process's puts are bound by
    its GIL), each with WRITERS threads; their writes, merged."""
    began = time.monotonic() + 2.0  # room for the processes to start
    step = processes * WRITERS
    context = multiprocessing.get_context("spawn")  # no fork of a process with gRPC threads
    with context.Pool(processes) as pool:
        shares = pool.starmap(_process_writes, [(endpoint, process, step, rate, seconds, began, value_bytes)
                                                for process in range(processes)])
    return sorted(write for share in shares for write in share)


def _process_writes(endpoint: str, process: int, step: int, rate: int, seconds: float, began: float,
                    value_bytes: int) -> list[tuple[int, float]]:
    client = _client(endpoint)
    value, writes = b"v" * value_bytes, []

    def write(first: int) -> None:
        writes.extend(_write_share(client, first, step, rate, seconds, began, value))

    threads = [threading.Thread(target=write, args=(process + thread * (step // WRITERS),))
               for thread in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return writes


def _client(endpoint: str) -> Any:
    host, _, port = endpoint.removeprefix("http://").rpartition(":")
    return etcd3.client(host=host, port=int(port), timeout=10)


def capacity(endpoint: str, processes: int, seconds: float, value_bytes: int) -> float:
    """Puts a second etcd takes from `processes` processes of WRITERS threads each, putting flat out for `seconds`."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        counts = pool.starmap(_flat_out, [(endpoint, seconds, value_bytes)] * processes)
    return sum(counts) / seconds


def _flat_out(endpoint: str, seconds: float, value_bytes: int) -> int:
    client, value, counts = _client(endpoint), b"c" * value_bytes, []
    client.put(f"{PREFIX}warm-up", value)
    deadline = time.monotonic() + seconds

    def write(thread: int) -> None:
        count = 0
        while time.monotonic() < deadline:
            client.put(f"{PREFIX}capacity/{thread}/{count % KEYS:04d}", value)
            count += 1
        counts.append(count)

    threads = [threading.Thread(target=write, args=(thread,)) for thread in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


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


def main() -> None:
    parser = argparse.ArgumentParser(description="the delta watcher at a steady write rate (issue 26)")
    parser.add_argument("--capacity", action="store_true", help="only measure the puts a second etcd takes")
    parser.add_argument("--rate", type=int, default=3000, help="puts a second")
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--period", type=float, default=2, help="the watcher's delta-period, seconds")
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--processes", type=int, default=3, help="writer processes (WRITERS threads each)")
    parser.add_argument("--burst", action="store_true", help=f"{BURST_VALUES} values of a MiB in the middle")
    parser.add_argument("--no-restore", action="store_true", help="skip the point-in-time restore at the end")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: its servers and processes stopped too
    with tempfile.TemporaryDirectory(prefix="bench-deltas-") as directory:
        work = Path(directory)
        etcd, redis = EtcdServer(work / "etcd", extra_args=ETCD_FLAGS).start(), RedisServer(work / "redis").start()
        try:
            if options.capacity:
                for processes in (1, 2, 3, 4, 6):
                    print(json.dumps({"writer_processes": processes, "threads_each": WRITERS,
                                      "puts_per_s": capacity(etcd.url, processes, 10, options.value_bytes)}),
                          flush=True)
                return
            deployment = Deployment(work / "deployment", [etcd.url], redis, rotate=2,
                                    delta_period=f"{options.period:g}s").start()
            client = etcd.client()
            try:
                bench = DeltaBench(work, deployment, lambda line: print(line, flush=True))
                bench.run(client, options.rate, options.seconds, options.period, options.value_bytes,
                          options.processes, etcd.url, options.burst, not options.no_restore)
            finally:
                client.close()
                deployment.stop()
            print(json.dumps({"measured": bench.measured, "details": bench.details}, indent=1))
        finally:
            redis.stop()
            etcd.stop()


if __name__ == "__main__":
    main()
