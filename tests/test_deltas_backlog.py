"""The delta watcher catching up a backlog of big values (issue 24, item 7): etcd sends up to 1,000 revisions in
one catch-up watch response, far more than gRPC's default 4 MiB receive limit once values are big."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from etcd3 import etcdrpc

from common import etcd
from common.config import Config
from common.recovery_window import GAPS_KEY, STATS_KEY
from harness.cli import COMMAND, etcd_backup
from harness.in_process import Service
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer
from harness.writer import current_revision
from tests.test_deltas import stored_revisions
from worker.deltas import LEASE_KEY, _is_fragment, _Received, _watch, _WholeRevisions

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


def fragments(config: Config, start: int, end: int) -> list[list[int]]:
    """The mod revisions of the events in each response of the delta watcher's watch from `start` to `end`."""
    responses: list[list[int]] = []
    with etcd.connect(config.etcd) as member, _watch(member, start) as received:
        deadline = time.monotonic() + 30
        while not responses or responses[-1][-1:] != [end]:
            response = received.get(timeout=max(0.0, deadline - time.monotonic()))
            assert isinstance(response, _Received), response
            if response.message.events:
                responses.append([int(event.kv.mod_revision) for event in response.message.events])
    return responses


def split(revision: int, responses: list[list[int]]) -> bool:
    """Whether `revision`'s events came in more than one response."""
    return sum(revision in response for response in responses) > 1


def test_revisions_split_across_fragments_are_stored_whole_and_the_first_fingerprinted_whole(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path, report: Report) -> None:
    """etcd splits a response into fragments at any event: a txn's revision may come in two. Here the revision the
    watch starts at (whose fingerprint ties the deltas to the stored ones) and one in the middle are each split:
    neither is cut in two nor taken for another history, and a restore equals etcd key for key."""
    own = EtcdServer(tmp_path / "etcd").start()
    try:
        service = make_service(etcd_overrides={"endpoints": [own.url]}, delta_period="200ms")
        config, log = tmp_path / "config.yml", tmp_path / "deltas.log"
        client = own.client()
        txn = client.transactions

        def three_puts(name: str) -> int:
            """One revision of three 450 KB values: 1.35 MB, within etcd's default --max-request-bytes."""
            client.transaction(compare=[], failure=[], success=[
                txn.put(f"/split/{name}-{number}", value(f"{name}-{number}", 450_000)) for number in range(3)])
            return int(client.get(f"/split/{name}-0")[1].mod_revision)

        client.put("/split/before-backup", "1")
        backup = service.client.post("/api/v1/backup").get_json()["filename"]
        with watcher_process(config, log) as first:
            first_txn = three_puts("first")  # the last stored: the next watch starts there
            wait_stored(redis_conn, first_txn, first, log, timeout=30)
            first.kill()
            first.wait()
        redis_conn.delete(LEASE_KEY)
        client.put("/split/big", value("big", 1_000_000))
        middle_txn = three_puts("middle")
        end = client.put("/split/after", "2").header.revision
        client.close()
        # etcd's fragments hold its --max-request-bytes + 512 KiB: 1 MiB from now on, less than each txn's three
        # values (1.35 MB). With the default (2 MiB), a revision the watch starts at is never split: no request
        # is that large.
        own.stop()
        own.extra_args = ["--max-request-bytes", str(512 << 10)]
        own.start()
        seen = fragments(service.config, first_txn, end)
        assert split(first_txn, seen) and split(middle_txn, seen), seen
        with watcher_process(config, log) as second:
            wait_stored(redis_conn, end, second, log, timeout=60)
        assert redis_conn.lrange(GAPS_KEY, 0, -1) == [], log.read_text()[-2000:]
        metadata = service.store.read_metadata(backup)
        assert metadata is not None
        assert stored_revisions(service.store, service.config) == list(range(metadata.revision + 1, end + 1))
        original = keyspace(own.url, b"/split/")
        assert len(original) == 9
        assert restored_keyspace(config, end, tmp_path / "restored", b"/split/") == original
        report("a watcher restarted (after kill -9) at a txn revision of three 450 KB values, etcd's fragments "
               "1 MiB: the txn and another one after it each split across two watch responses",
               f"no gap (the first's fingerprint over all its events), every revision stored once (each txn one "
               f"revision of three events), `restore --to-revision {end}` equals etcd; fragments: {seen}")
    finally:
        own.stop()


def received(events: list[tuple[int, bytes]], fragment: bool) -> _Received:
    message = etcdrpc.WatchResponse(events=[{"kv": {"key": key, "mod_revision": revision, "value": b"v"}}
                                            for revision, key in events])
    return _Received(message, fragment, message.ByteSize())


def test_whole_revisions_from_fragments() -> None:
    """A fragment may end inside a revision: its events wait for the next response; one that is not a fragment
    ends with a whole revision."""
    whole = _WholeRevisions()

    def numbers(response: _Received) -> list[tuple[int, tuple[bytes, ...]]]:
        return [(revision.number, tuple(event.key for event in revision.events))
                for revision in whole.take(response, seen=0.0)]

    assert numbers(received([(5, b"a"), (6, b"b"), (6, b"c")], fragment=True)) == [(5, (b"a",))]
    assert numbers(received([(6, b"d")], fragment=True)) == []
    assert numbers(received([(6, b"e"), (7, b"f")], fragment=False)) == [(6, (b"b", b"c", b"d", b"e")), (7, (b"f",))]
    assert numbers(received([], fragment=False)) == []  # a progress notification, or the watch's creation
    assert numbers(received([(8, b"g")], fragment=False)) == [(8, (b"g",))]


def test_the_fragment_flag_is_read_from_the_wire() -> None:
    """etcd3's protos are etcd 3.3's, without WatchResponse's `fragment = 7`: it is read from the message's bytes,
    after fields of every wire type etcd writes before it."""
    body = etcdrpc.WatchResponse(header={"revision": 300}, watch_id=2, created=True,
                                 cancel_reason="x").SerializeToString()
    events = etcdrpc.WatchResponse(events=[{"kv": {"key": b"k", "value": b"v" * 300}}]).SerializeToString()
    assert not _is_fragment(body + events)
    assert _is_fragment(body + b"\x38\x01" + events)
    assert not _is_fragment(body + b"\x38\x00" + events)
    assert _Received.parse(body + b"\x38\x01" + events).message.events[0].kv.value == b"v" * 300


BURSTS = '''
import os, sys
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2
from common.deltas import MAX_DELTA_BYTES, NO_FINGERPRINT, Fingerprint, encode_delta
from harness.processes import rss
from worker.deltas import _Batch, _Received, _WholeRevisions, return_large_buffers
if sys.argv[1] == "fixed":  # the watcher's setting (run_watcher makes it)
    assert return_large_buffers()
def through_the_watcher(responses):
    batch = _Batch()
    for data in responses:
        for revision in _WholeRevisions().take(_Received.parse(data), 0.0):
            batch.add(revision)
            if batch.size >= MAX_DELTA_BYTES:
                encode_delta(Fingerprint(1, NO_FINGERPRINT), batch.revisions)
                batch = _Batch()
    encode_delta(Fingerprint(1, NO_FINGERPRINT), batch.revisions)
def response(first, count, size):
    return etcdrpc.WatchResponse(events=[kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv_pb2.KeyValue(
        key=b"/k%d" % (number % 1000), mod_revision=number, value=b"v" * size))
        for number in range(first, first + count)]).SerializeToString()
small = [response(2, 1000, 1024)] * 20
through_the_watcher(small)
print(rss(os.getpid()), flush=True)
for burst in range(3):
    # 100 values of a MiB, as etcd sends them to a watch: responses of up to 16 MiB
    through_the_watcher([response(10_000 + burst * 1000 + first, 16, 1 << 20) for first in range(0, 100, 16)])
    through_the_watcher(small)
    print(rss(os.getpid()), flush=True)
'''


def test_bursts_of_large_values_do_not_keep_the_watchers_memory() -> None:
    """Three bursts of 100 values of a MiB, each followed by steady 1 KiB puts, through the watcher's own steps
    (a watch response parsed, its whole revisions, the batch, the delta encoded), in a fresh process with the
    watcher's malloc setting: its memory after each burst is what it was before the first. (Without the setting,
    glibc raises its threshold for mapping a buffer apart with each large one freed, and the heap keeps them:
    measured 94 MB before, 106 MB after each burst; a watcher process, whose reading thread allocates what the
    writing one frees, kept 53 MB more in bench.deltas.)"""
    done = subprocess.run([sys.executable, "-c", BURSTS, "fixed"], capture_output=True, text=True, timeout=120,
                          check=True)
    before, *after = (int(line) for line in done.stdout.split())
    assert max(after) - before <= 4 << 20, (before, after)
