"""Where a point-in-time restore's time goes, revision by revision, and the apply before and after (issue 26).

    python -m bench.apply [--revisions 50000] [--rounds 3] [--value-bytes 1024]

`--revisions` single-put revisions of a 1 KiB value (1,000 keys overwritten in turn), stored as the watcher stores
them (common.deltas, about MAX_DELTA_BYTES each), then:

- the phases of one revision on the Python side, CPU per revision: reading (decoding) the deltas, building the
  Txn with etcd3's protobuf classes and serializing it, writing the same bytes by hand (common.protowire), parsing
  the answer, the lease bookkeeping (recovery.pitr.LeasesKeptAlive.grant_missing on leaseless puts);
- the gRPC call on a throwaway etcd (recovery.throwaway, its data in /dev/shm), pre-encoded bytes: wall time,
  this process's CPU and etcd's CPU per call; etcd's own numbers beside it: a serial loop of Put calls, and its
  capacity with calls in flight (threads, futures);
- guarded pipelining: Txns in flight, each with a compare that holds only once the revision before it is
  applied (its key's mod_revision), re-sent in order when it fails: rate and Txns re-sent, per depth;
- the apply before (etcd3's protobuf objects, one stub call each, as recovery.pitr did), now
  (recovery.pitr._apply), and now with the deltas read on the applying thread (what the reading thread is worth),
  alternated round by round on fresh throwaway etcds, each applying every revision.

Every apply's result is checked (etcd at the last revision). Prints a JSON report; docs/performance.md has a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from etcd3 import etcdrpc

from common import etcd
from common.deltas import (
    MAX_DELTA_BYTES,
    NO_FINGERPRINT,
    PUT,
    Event,
    Fingerprint,
    Revision,
    decode_delta,
    delta_name,
    encode_delta,
)
from recovery import throwaway
from recovery.pitr import (
    TXN_METHOD,
    LeasesKeptAlive,
    _apply,
    _apply_revisions,
    head_revision,
    txn_request,
    txn_revision,
)
from recovery.restore import SHARED_MEMORY

KEYS = 1000


def history(revisions: int, value_bytes: int) -> list[Revision]:
    """Revisions 2.. (a new etcd is at 1), each one put of a `value_bytes` value."""
    value, now = b"v" * value_bytes, time.time()
    return [Revision(number, now, (Event(PUT, f"/bench-apply/{number % KEYS:04d}".encode(), value),))
            for number in range(2, revisions + 2)]


def as_deltas(revisions: list[Revision]) -> list[tuple[str, bytes]]:
    """`revisions` as the watcher stores them: a delta each time the events reach MAX_DELTA_BYTES."""
    deltas, batch, size, previous = [], [], 0, Fingerprint(revisions[0].number - 1, NO_FINGERPRINT)
    for revision in revisions:
        batch.append(revision)
        size += sum(len(event.key) + len(event.value) + 32 for event in revision.events)
        if size >= MAX_DELTA_BYTES or revision is revisions[-1]:
            deltas.append((str(delta_name(batch, encrypted=False)), encode_delta(previous, batch)))
            previous, batch, size = Fingerprint(batch[-1].number, NO_FINGERPRINT), [], 0
    return deltas


def decoded(deltas: list[tuple[str, bytes]]) -> Iterator[Revision]:
    for name, data in deltas:
        yield from decode_delta(name, data).revisions


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fresh_etcd() -> Iterator[tuple[etcd.EtcdConnection, int]]:
    """A throwaway etcd on a new data dir in /dev/shm (as the apply's, when it has room), and its pid."""
    with tempfile.TemporaryDirectory(dir=SHARED_MEMORY, prefix="etcd-backup-bench-apply-") as directory:
        work = Path(directory)
        work.chmod(0o700)
        with throwaway.throwaway_etcd(work, work / "data", None, None) as connection:
            yield connection, etcd_pid(work)


def etcd_pid(work: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(work) and b"etcd" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    raise RuntimeError(f"no etcd runs in {work}")


def per_revision(count: int, action: Callable[[], object]) -> float:
    """Microseconds of this process's CPU per revision that `action` takes for `count` revisions."""
    began = cpu()
    action()
    return (cpu() - began) * 1e6 / count


def python_phases(deltas: list[tuple[str, bytes]], revisions: list[Revision]) -> dict[str, float]:
    count = len(revisions)
    built: list[etcdrpc.TxnRequest] = []
    encoded = [txn_request(revision.events) for revision in revisions[:1000]]
    answer = etcdrpc.TxnResponse(header=etcdrpc.ResponseHeader(cluster_id=1, member_id=2, revision=123456,
                                                                raft_term=2), succeeded=True,
                                 responses=[etcdrpc.ResponseOp(response_put=etcdrpc.PutResponse(
                                     header=etcdrpc.ResponseHeader(revision=123456)))]).SerializeToString()
    return {
        "decode_deltas_us": per_revision(count, lambda: sum(1 for _ in decoded(deltas))),
        "protobuf_build_us": per_revision(count, lambda: built.extend(
            etcdrpc.TxnRequest(success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
                key=event.key, value=event.value, lease=event.lease)) for event in revision.events])
            for revision in revisions)),
        "protobuf_serialize_us": per_revision(count, lambda: [request.SerializeToString() for request in built]),
        "hand_encode_us": per_revision(count, lambda: [txn_request(revision.events) for revision in revisions]),
        "protobuf_parse_answer_us": per_revision(len(encoded) * 10, lambda: [
            etcdrpc.TxnResponse.FromString(answer).header.revision for _ in range(len(encoded) * 10)]),
        "hand_parse_answer_us": per_revision(len(encoded) * 10, lambda: [
            txn_revision(answer) for _ in range(len(encoded) * 10)]),
    }


def lease_bookkeeping(connection: etcd.EtcdConnection, revisions: list[Revision]) -> float:
    with LeasesKeptAlive(connection) as leases:
        def bookkeeping() -> None:
            for revision in revisions:
                leases.grant_missing(revision.events)

        return per_revision(len(revisions), bookkeeping)


def calls(connection: etcd.EtcdConnection, pid: int, revisions: list[Revision]) -> dict[str, float]:
    """Serial raw Txn calls of pre-encoded bytes; serial Puts; Puts in flight."""
    txn = connection.channel.unary_unary(TXN_METHOD)
    kv = etcdrpc.KVStub(connection.channel)
    requests = [txn_request(revision.events) for revision in revisions]
    puts = [etcdrpc.PutRequest(key=event.key, value=event.value) for revision in revisions
            for event in revision.events]
    found: dict[str, float] = {}

    def measured(name: str, action: Callable[[], object]) -> None:
        wall, mine, its = time.perf_counter(), cpu(), process_cpu(pid)
        action()
        count = len(requests)
        found[f"{name}_per_s"] = count / (time.perf_counter() - wall)
        found[f"{name}_python_cpu_us"] = (cpu() - mine) * 1e6 / count
        found[f"{name}_etcd_cpu_us"] = (process_cpu(pid) - its) * 1e6 / count

    measured("serial_txn_bytes", lambda: [txn(request, metadata=connection.metadata, timeout=30)
                                          for request in requests])
    measured("serial_put_stub", lambda: [kv.Put(put, metadata=connection.metadata, timeout=30) for put in puts])
    measured("put_4_threads", lambda: in_threads(4, lambda put: kv.Put(put, metadata=connection.metadata,
                                                                       timeout=30), puts))
    measured("put_32_futures", lambda: in_flight(32, lambda put: kv.Put.future(put, metadata=connection.metadata,
                                                                               timeout=30), puts))
    return found


def in_threads(threads: int, call: Callable[[Any], object], items: list[Any]) -> None:
    workers = [threading.Thread(target=lambda first: [call(item) for item in items[first::threads]], args=(first,))
               for first in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def in_flight(depth: int, call: Callable[[Any], Any], items: list[Any]) -> None:
    pending: deque[Any] = deque()
    for item in items:
        pending.append(call(item))
        if len(pending) >= depth:
            pending.popleft().result()
    for future in pending:
        future.result()


def guarded_pipeline(connection: etcd.EtcdConnection, revisions: list[Revision], depth: int) -> dict[str, float]:
    """Up to `depth` Txns in flight, each guarded by mod_revision(previous revision's key) == its number; a Txn
    whose guard failed (it changed nothing) is sent again, in order, once those after it have failed too."""
    txn = connection.channel.unary_unary(TXN_METHOD, response_deserializer=etcdrpc.TxnResponse.FromString)
    head = int(connection.status.header.revision)
    shifted = [Revision(head + 1 + index, revision.seen, revision.events) for index, revision in enumerate(revisions)]

    def request(index: int) -> bytes:
        revision = shifted[index]
        guard = [] if index == 0 else [etcdrpc.Compare(key=shifted[index - 1].events[0].key,
                                                       target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                                                       mod_revision=revision.number - 1)]
        return bytes(etcdrpc.TxnRequest(compare=guard).SerializeToString()) + txn_request(revision.events)

    began, resent, following, window = time.perf_counter(), 0, 0, deque[tuple[int, Any]]()
    while following < len(shifted) or window:
        # The first is sent alone: its predecessor is the snapshot's head, which nothing in flight can move.
        while following < len(shifted) and len(window) < (1 if following == 0 else depth):
            window.append((following, txn.future(request(following), metadata=connection.metadata, timeout=30)))
            following += 1
        index, future = window.popleft()
        answer = future.result()
        if answer.succeeded:
            if int(answer.header.revision) != shifted[index].number:
                raise RuntimeError(f"revision {shifted[index].number} landed on {answer.header.revision}")
            continue
        for _, later in window:
            if later.result().succeeded:
                raise RuntimeError("a Txn succeeded after its predecessor failed")
        resent += 1 + len(window)
        window.clear()
        following = index
    seconds = time.perf_counter() - began
    return {"per_s": len(shifted) / seconds, "resent": resent}


def applied_before(connection: etcd.EtcdConnection, revisions: Iterator[Revision], target: int) -> int:
    """The apply as recovery.pitr had it before issue 26: etcd3's protobuf objects, a stub call per revision
    (leases and checks as now)."""
    kv = etcdrpc.KVStub(connection.channel)
    current, events = int(connection.status.header.revision), 0
    with LeasesKeptAlive(connection) as leases:
        for revision in revisions:
            leases.grant_missing(revision.events)
            operations = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=event.key, value=event.value,
                                                                           lease=event.lease))
                          for event in revision.events]
            current = int(kv.Txn(etcdrpc.TxnRequest(success=operations), metadata=connection.metadata,
                                 timeout=30).header.revision)
            if current != revision.number:
                raise RuntimeError(f"revision {revision.number} landed on {current}")
            events += len(revision.events)
    if current != target:
        raise RuntimeError(f"etcd is at {current}, not {target}")
    return events


def applied_inline(connection: etcd.EtcdConnection, revisions: Iterator[Revision], target: int) -> int:
    """The apply now, but each revision read and encoded on the applying thread, not ahead on a thread of its own:
    what the reading thread (recovery.pitr._prepared_ahead) is worth."""
    head = head_revision(connection)
    with LeasesKeptAlive(connection) as leases:
        return _apply_revisions(connection, ((revision, txn_request(revision.events)) for revision in revisions),
                                target, leases, head)


def before_and_after(deltas: list[tuple[str, bytes]], target: int, rounds: int) -> dict[str, list[float]]:
    sides: dict[str, Callable[[etcd.EtcdConnection], int]] = {
        "before": lambda connection: applied_before(connection, decoded(deltas), target),
        "now": lambda connection: _apply(connection, decoded(deltas), target),
        "now_read_inline": lambda connection: applied_inline(connection, decoded(deltas), target),
    }
    found: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(rounds):
        for name in (list(sides) if round_ % 2 == 0 else list(reversed(sides))):  # each side first in turn
            with fresh_etcd() as (connection, _):
                began = time.perf_counter()
                events = sides[name](connection)
                found[name].append(events / (time.perf_counter() - began))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--depths", type=int, nargs="*", default=[2, 4, 16])
    options = parser.parse_args()
    revisions = history(options.revisions, options.value_bytes)
    deltas = as_deltas(revisions)
    report: dict[str, Any] = {"revisions": len(revisions), "deltas": len(deltas), "loadavg_before": os.getloadavg()}
    report["python_us_per_revision"] = python_phases(deltas, revisions)
    sample = revisions[:min(len(revisions), 10_000)]
    with fresh_etcd() as (connection, pid):
        report["python_us_per_revision"]["lease_bookkeeping_us"] = lease_bookkeeping(connection, sample)
        report["calls"] = calls(connection, pid, sample)
    report["guarded_pipeline"] = {}
    for depth in [1, *options.depths]:
        with fresh_etcd() as (connection, _):
            report["guarded_pipeline"][f"depth_{depth}"] = guarded_pipeline(connection, sample, depth)
    applied = before_and_after(deltas, revisions[-1].number, options.rounds)
    report["apply_events_per_s"] = {name: {"median": statistics.median(rates), "all": rates}
                                    for name, rates in applied.items()}
    report["apply_now_over_before"] = (report["apply_events_per_s"]["now"]["median"]
                                       / report["apply_events_per_s"]["before"]["median"])
    report["loadavg_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
