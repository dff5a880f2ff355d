"""The point-in-time apply (recovery.pitr): the Txn bytes it writes by hand are protobuf's own, a restore through it
equals the original etcd key for key (value, create and mod revision, version, lease), and a revision that does not
land on its number stops it."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from etcd3 import etcdrpc

from common.deltas import DELETE, PUT, Event, Revision
from harness.cli import etcd_backup
from harness.in_process import Service
from harness.servers import EtcdServer, etcdctl
from recovery.pitr import _apply, txn_request, txn_revision
from recovery.restore import RestoreError
from tests.test_deltas import wait_stored, watcher

pytestmark = pytest.mark.xdist_group("point-in-time")


def protobufs_own(events: tuple[Event, ...]) -> bytes:
    """The TxnRequest etcd3's protobuf classes serialize for `events`: what the apply sent before it wrote its own."""
    operations = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=event.key, value=event.value,
                                                                   lease=event.lease)) if event.kind == PUT
                  else etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=event.key))
                  for event in events]
    return bytes(etcdrpc.TxnRequest(success=operations).SerializeToString())


def test_the_txn_bytes_written_by_hand_are_protobufs_own() -> None:
    """Every shape of event a delta holds, alone and mixed: the bytes equal protobuf's, byte for byte, and parse
    back to the same request; the revision read from a response is its header's, whatever follows it."""
    shapes = [
        (Event(PUT, b"/k", b"v"),),
        (Event(PUT, b"/k", b""),),  # an empty value: proto3 writes no field
        (Event(PUT, b"/k", b"x" * 300_000, lease=0x7FFF_FFFF_FFFF_FFFF),),  # lengths and varints of many bytes
        (Event(PUT, b"/k", b"v", lease=-5),),  # a negative int64: ten bytes of two's complement
        (Event(DELETE, b"/gone"),),
        (Event(PUT, b"\x00\xff", b"\x80", lease=1), Event(DELETE, b"/d"), Event(PUT, b"/e" * 200, b"w")),
    ]
    for events in shapes:
        assert txn_request(events) == protobufs_own(events), events
        assert etcdrpc.TxnRequest.FromString(txn_request(events)) == etcdrpc.TxnRequest.FromString(
            protobufs_own(events))
    for revision in (0, 1, 127, 128, 2**40, 2**63 - 1):
        response = etcdrpc.TxnResponse(header=etcdrpc.ResponseHeader(cluster_id=2**64 - 1, member_id=7,
                                                                      revision=revision, raft_term=3),
                                       succeeded=True,
                                       responses=[etcdrpc.ResponseOp(response_put=etcdrpc.PutResponse())])
        assert txn_revision(response.SerializeToString()) == revision
    cut = etcdrpc.TxnResponse(header=etcdrpc.ResponseHeader(revision=2**40)).SerializeToString()[:-2]
    with pytest.raises(ValueError):
        txn_revision(cut)


def all_keys(endpoint: str, revision: int | None = None) -> dict[bytes, tuple[bytes, int, int, int, int]]:
    """Every key and its (value, create revision, mod revision, version, lease), as `etcdctl get -w json` shows."""
    args = ["get", "", "--from-key", "-w", "json", *([f"--rev={revision}"] if revision is not None else [])]
    answer = json.loads(etcdctl(*args, endpoint=endpoint).stdout)
    return {base64.b64decode(kv["key"]): (base64.b64decode(kv.get("value", "")), int(kv["create_revision"]),
                                          int(kv["mod_revision"]), int(kv.get("version", 0)), int(kv.get("lease", 0)))
            for kv in answer.get("kvs", [])}


def write_history(client: Any, prefix: str) -> int:
    """Puts, overwrites, multi-key Txns, a range delete, single deletes, leases granted, put with, revoked (a
    revision of deletes only): return the last revision."""
    lease = client.lease(600)
    short = client.lease(300)
    for round_ in range(20):
        client.put(f"{prefix}plain/{round_ % 7}", f"value {round_}")  # overwrites: versions grow
        client.put(f"{prefix}leased/{round_ % 3}", f"leased {round_}", lease=lease)
        client.transaction(compare=[], success=[client.transactions.put(f"{prefix}txn/a", f"a{round_}"),
                                                client.transactions.put(f"{prefix}txn/b{round_ % 4}", "b"),
                                                client.transactions.delete(f"{prefix}plain/{(round_ + 3) % 7}")],
                           failure=[])
        if round_ % 5 == 4:
            client.delete(f"{prefix}txn/a")  # a revision whose only event is a delete
    client.put(f"{prefix}short/1", "s", lease=short)
    client.put(f"{prefix}short/2", "s", lease=short)
    short.revoke()  # one revision that deletes both keys, nothing else
    client.put(f"{prefix}range/x", "x")
    client.put(f"{prefix}range/y", "y")
    client.delete_prefix(f"{prefix}range/")  # a multi-key delete
    return int(client.put(f"{prefix}last", "end").header.revision)


def test_a_restore_equals_the_original_key_for_key(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path) -> None:
    """A history of every kind of revision after a full backup, restored through the deltas to its end and to a
    revision in the middle: each restored etcd equals the original at that revision, every key's value, create
    and mod revision, version and lease."""
    own = EtcdServer(tmp_path / "etcd").start()  # its whole keyspace and leases: the test's own
    try:
        service = make_service(etcd_overrides={"endpoints": [own.url]}, delta_period="100ms")
        client, prefix = own.client(), "/apply/"
        client.put(f"{prefix}plain/0", "in the backup")
        client.put(f"{prefix}plain/1", "in the backup", lease=client.lease(900))
        backup = service.client.post("/api/v1/backup").get_json()["filename"]
        base = service.store.read_metadata(backup)
        end = write_history(client, prefix)
        with watcher(service.config, redis_conn):
            wait_stored(redis_conn, end)
        middle = (base.revision + end) // 2 if base is not None else end
        expected = {target: all_keys(own.url, target) for target in (middle, end)}
    finally:
        own.stop()
    for target, keys in expected.items():
        data_dir = tmp_path / f"restored-{target}"
        done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-revision", str(target),
                           "--data-dir", str(data_dir), timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"etcd is at revision {target}" in done.stdout
        server = EtcdServer(data_dir).start()
        try:
            assert all_keys(server.url) == keys
        finally:
            server.stop()
    assert any(lease for *_, lease in expected[end].values()) and len(expected[end]) > 10, expected[end]


def puts(first: int, count: int) -> list[Revision]:
    return [Revision(number, time.time(), (Event(PUT, f"/k{number % 3}".encode(), b"v"),))
            for number in range(first, first + count)]


def test_a_revision_that_does_not_land_on_its_number_stops_the_apply(empty_etcd: Any) -> None:
    """Each revision is checked where it lands: a write to the throwaway etcd between two (as an expiring lease
    would make) stops the apply at the next one."""
    head = int(empty_etcd.status.header.revision)
    kv = etcdrpc.KVStub(empty_etcd.channel)

    def with_a_stray_write(revisions: list[Revision]) -> Iterator[Revision]:
        for index, revision in enumerate(revisions):
            yield revision
            if index == 2:  # the reading thread runs ahead: the write may come any time after the third
                kv.Put(etcdrpc.PutRequest(key=b"/stray", value=b"s"), timeout=10)

    with pytest.raises(RestoreError, match="left etcd at revision"):
        _apply(empty_etcd, with_a_stray_write(puts(head + 1, 2000)), head + 2000)


def test_revisions_out_of_order_stop_the_apply_where_they_break(empty_etcd: Any) -> None:
    head = int(empty_etcd.status.header.revision)
    swapped = puts(head + 1, 6)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(RestoreError, match="the deltas have a hole there"):
        _apply(empty_etcd, iter(swapped), head + 6)
    kv = etcdrpc.KVStub(empty_etcd.channel)
    assert int(kv.Range(etcdrpc.RangeRequest(key=b"/k0"), timeout=10).header.revision) == head + 2
