"""The delta watcher catching up a backlog of big values (issue 24, item 7): etcd sends up to 1,000 revisions in
one catch-up watch response, far more than gRPC's default 4 MiB receive limit once values are big."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from etcd3 import etcdrpc

from harness.cli import COMMAND, etcd_backup
from harness.in_process import Service
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer
from harness.writer import current_revision
from tests.test_deltas import stored_revisions
from worker.deltas import LEASE_KEY, STATS_KEY

pytestmark = pytest.mark.xdist_group("point-in-time")  # restores, as tests/test_deltas.py's
MiB = 1 << 20


@contextmanager
def watcher_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`etcd-backup deltas`, as the Procfile runs it; stopped (SIGTERM) at the end unless killed before."""
    with log.open("ab") as out:
        process = subprocess.Popen([COMMAND, "deltas", "--config", str(config)], stderr=out)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


def wait_stored(connection: redis.Redis, revision: int, process: subprocess.Popen[bytes], log: Path,
                timeout: float) -> None:
    """Wait until the watcher has stored every revision up to `revision`; fail with the end of its log."""

    def stored() -> bool:
        return int(connection.hget(STATS_KEY, "last_revision") or 0) >= revision

    try:
        wait_until(stored, timeout, f"deltas up to revision {revision}", process)
    except (TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}; the watcher's log ends:\n{log.read_text()[-3000:]}") from None


def keyspace(url: str, prefix: bytes) -> dict[bytes, tuple[str, int]]:
    """Every key under `prefix`: its value's SHA-256 and its mod revision, read a few keys at a time (a page of
    1 MiB values must fit the receive limit of this channel of the test's own)."""
    channel = grpc.insecure_channel(url.removeprefix("http://"), options=[("grpc.max_receive_message_length",
                                                                             64 * MiB)])
    kv, after, end, keys = etcdrpc.KVStub(channel), prefix, prefix[:-1] + bytes([prefix[-1] + 1]), {}
    try:
        while True:
            answer = kv.Range(etcdrpc.RangeRequest(key=after, range_end=end, limit=16), timeout=30)
            for pair in answer.kvs:
                keys[pair.key] = (hashlib.sha256(pair.value).hexdigest(), int(pair.mod_revision))
            if not answer.more:
                return keys
            after = answer.kvs[-1].key + b"\0"
    finally:
        channel.close()


def restored_keyspace(config: Path, revision: int, data_dir: Path, prefix: bytes) -> dict[bytes, tuple[str, int]]:
    """`etcd-backup restore --to-revision`, then the keyspace of an etcd started on the restored data dir."""
    done = etcd_backup("restore", "--config", str(config), "--to-revision", str(revision), "--data-dir",
                       str(data_dir), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"etcd is at revision {revision}" in done.stdout, done.stdout
    server = EtcdServer(data_dir).start()
    try:
        return keyspace(server.url, prefix)
    finally:
        server.stop()


def value(name: str, size: int) -> bytes:
    """`size` bytes, distinct per key (compressible: the test measures the watch, not gzip)."""
    return (name.encode() + b"|") * (size // (len(name) + 1)) + b"." * (size % (len(name) + 1))


@pytest.mark.slow
def test_a_killed_watcher_catches_up_a_backlog_of_big_values(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path, report: Report) -> None:
    """kill -9 the watcher process; 50 values of 1 MiB and 2,000 of 10 KB written while it is down; started
    again, it stores every revision (none twice), and a restore to the last equals etcd key for key (value, mod
    revision). Before: the catch-up response (up to 1,000 revisions) broke gRPC's 4 MiB receive limit, every
    retry, until etcd compacted the backlog away."""
    own = EtcdServer(tmp_path / "etcd").start()  # 70 MB written: not the shared one
    try:
        service = make_service(etcd_overrides={"endpoints": [own.url]}, delta_period="200ms")
        config, log = tmp_path / "config.yml", tmp_path / "deltas.log"
        client = own.client()
        client.put("/backlog/before-backup", "1")
        backup = service.client.post("/api/v1/backup").get_json()["filename"]
        with watcher_process(config, log) as first:
            stored_before = client.put("/backlog/before-kill", "2").header.revision
            wait_stored(redis_conn, stored_before, first, log, timeout=30)
            first.kill()  # -9: its lease stays, until it lapses
            first.wait()
        redis_conn.delete(LEASE_KEY)  # as if its lease had run out (LEASE_TTL), sooner

        def put(name: str, size: int) -> Any:
            return client.put(f"/backlog/{name}", value(name, size))

        for number in range(50):
            put(f"big-{number:02d}", MiB)
        with ThreadPoolExecutor(8) as pool:  # etcd syncs its log once for the writes that arrive together
            list(pool.map(lambda number: put(f"small-{number:04d}", 10_000), range(2000)))
        end = current_revision(own.url)
        with watcher_process(config, log) as second:
            wait_stored(redis_conn, end, second, log, timeout=180)
        metadata = service.store.read_metadata(backup)
        assert metadata is not None
        assert stored_revisions(service.store, service.config) == list(range(metadata.revision + 1, end + 1))
        original = keyspace(own.url, b"/backlog/")
        assert len(original) == 2052
        assert restored_keyspace(config, end, tmp_path / "restored", b"/backlog/") == original
        report("`etcd-backup deltas` killed -9; 50 values of 1 MiB and 2,000 of 10 KB written; started again",
               f"every revision {metadata.revision + 1}..{end} stored once; `restore --to-revision {end}` equals "
               "etcd key for key (value, mod revision)")
    finally:
        own.stop()
