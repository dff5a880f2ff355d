"""A delta is read within bounds whatever it holds: a planted one of a few tens of KiB that inflates to millions
of tiny events, or whose records go past the revisions its name says, is refused quickly, in little memory."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common import deltas
from common.deltas import (
    _KEY,
    _PREVIOUS,
    _REVISION,
    DELETE,
    MAGIC,
    MAX_DELTA_BYTES,
    PUT,
    DeltaError,
    DeltaName,
    Event,
    Fingerprint,
    Revision,
    decode_delta,
    encode_delta,
)

SEEN = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
BASELINE_ALLOWANCE = 100 << 20
"""Memory a refused bomb may cost over the process's peak before it: its inflated bytes (tens of MiB), no objects."""


def name_of(first: int, last: int) -> str:
    return str(DeltaName(first, last, SEEN, SEEN, encrypted=False))


def raw_delta(records: list[tuple[int, int, bytes]], previous: int) -> bytes:
    """A delta file made by hand (as whoever can write the store can): (revision, event count, events' bytes)
    records after revision `previous`, with a correct SHA-256 (it detects damage, not tampering)."""
    parts = [MAGIC + _PREVIOUS.pack(previous, bytes(32))]
    for number, count, events in records:
        parts.append(_REVISION.pack(number, 0, count) + events)
    body = b"".join(parts)
    return gzip.compress(body + hashlib.sha256(body).digest(), compresslevel=9, mtime=0)


def tiny_deletes(count: int) -> bytes:
    """`count` DELETE events of a one-byte key: 6 bytes each, a thousand to one in gzip."""
    return (_KEY.pack(DELETE, 1) + b"k") * count


PROBE = """
import json, resource, sys, time
from common.deltas import DeltaError, decode_delta
name, path, allowance = sys.argv[1], sys.argv[2], int(sys.argv[3])
stored = open(path, "rb").read()
# The old code built ~170 bytes of objects per event: fail it fast (MemoryError) rather than let it eat the machine.
vmdata = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmData:")) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (vmdata + 4 * allowance, vmdata + 4 * allowance))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.monotonic()
try:
    decode_delta(name, stored)
    outcome = "accepted"
except DeltaError as exc:
    outcome = "DeltaError: " + str(exc)
except MemoryError:
    outcome = "MemoryError"
seconds = time.monotonic() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({"outcome": outcome, "seconds": seconds, "grown": grown}))
"""


def decode_in_a_process(name: str, stored: bytes, tmp_path: Path) -> dict[str, object]:
    """decode_delta in a fresh Python: its outcome, how long it took, and how much its peak memory grew."""
    path = tmp_path / name
    path.write_bytes(stored)
    done = subprocess.run([sys.executable, "-c", PROBE, name, str(path), str(BASELINE_ALLOWANCE)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_a_small_delta_inflating_to_millions_of_tiny_events_is_refused_quickly_in_little_memory(
        tmp_path: Path) -> None:
    """38 KiB stored, 22 MiB inflated (under MAX_PLAIN_BYTES), 4 million events in revisions of 10,000: the
    old code built every one (13 s, 666 MiB) before checking anything."""
    revisions = 400
    name = name_of(101, 100 + revisions)
    stored = raw_delta([(101 + n, 10_000, tiny_deletes(10_000)) for n in range(revisions)], previous=100)
    assert len(stored) < 64 << 10
    found = decode_in_a_process(name, stored, tmp_path)
    outcome, seconds, grown = str(found["outcome"]), float(found["seconds"]), int(found["grown"])  # type: ignore[arg-type]
    assert outcome.startswith(f"DeltaError: {name}: ") and "events" in outcome, found
    assert grown < BASELINE_ALLOWANCE, f"peak memory grew {grown >> 20} MiB: {found}"
    assert seconds < 10, found


def test_a_delta_claiming_more_events_than_the_watcher_writes_in_one_record_is_refused_at_its_count() -> None:
    name, count = name_of(101, 101), deltas.MAX_DELTA_EVENTS + 1
    with pytest.raises(DeltaError, match=rf"^{name}: {count} events by revision 101, more than"):
        decode_delta(name, raw_delta([(101, count, tiny_deletes(count))], 100))


def test_records_past_the_names_last_revision_are_refused_before_the_rest_is_read() -> None:
    """Revisions 101..110 as the name says, then 111 and, after it, a record the old code read to its end (it
    checked the name against the revisions only once all were parsed: 'a record is cut short' here)."""
    name = name_of(101, 110)
    good = [(number, 1, tiny_deletes(1)) for number in range(101, 111)]
    past = (111, 1, tiny_deletes(1))
    cut_short = (112, 3_000_000, tiny_deletes(10))
    with pytest.raises(DeltaError, match=rf"^{name}: holds revision 111, past 110, the last its name says"):
        decode_delta(name, raw_delta([*good, past, cut_short], previous=100))


def test_a_first_record_other_than_the_names_first_is_refused_at_once() -> None:
    name = name_of(101, 110)
    with pytest.raises(DeltaError, match=rf"^{name}: its first revision is 105, not 101 as its name says"):
        decode_delta(name, raw_delta([(105, 1, tiny_deletes(1)), (106, 3_000_000, b"")], previous=100))


def test_the_most_events_the_watcher_can_write_in_one_delta_are_read() -> None:
    """The watcher writes once its batch reaches MAX_DELTA_BYTES, counting 16 bytes plus key and value per event
    (worker.deltas._Batch): below that, one-byte keys and empty values; then one more watch response of 1,000
    revisions (etcd's most per response) of 128 puts each (etcd's default --max-txn-ops)."""
    below = (MAX_DELTA_BYTES - 1) // 17
    revisions = [Revision(101 + n, time.time(), tuple(Event(DELETE, b"k") for _ in range(1000)))
                 for n in range(below // 1000)]
    revisions += [Revision(revisions[-1].number + 1 + n, time.time(), tuple(Event(PUT, b"k", b"") for _ in range(128)))
                  for n in range(1000)]
    events = sum(len(revision.events) for revision in revisions)
    assert events < deltas.MAX_DELTA_EVENTS
    name = name_of(revisions[0].number, revisions[-1].number)
    delta = decode_delta(name, encode_delta(Fingerprint(100, bytes(32)), revisions))
    assert sum(len(revision.events) for revision in delta.revisions) == events
