"""etcd client construction: the first healthy endpoint, with auth and TLS as configured.

We use the gRPC stubs that the `etcd3` package ships, not its client class: the client only takes
TLS material as file paths and cannot use the system's CA roots, while the config allows inline PEM.

gRPC and those stubs are imported by the functions that talk to etcd, not at the top: they take a third of a
second to load, and `etcd-backup restore FILE` imports this module (recovery.restore, recovery.throwaway) without
ever connecting to an etcd (tests/test_startup_imports.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias
from urllib.parse import urlsplit

from common.config import EtcdConfig

if TYPE_CHECKING:
    import grpc
    from etcd3 import etcdrpc

logger = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]

MAX_RECEIVE_BYTES = 32 << 20
"""The largest message taken from etcd. gRPC's default (4 MiB) refused the delta watcher's catch-up: etcd sends up
to 1,000 revisions in one watch response. The watch asks etcd (>= 3.4) to split a response into fragments of at
most its --max-request-bytes + 512 KiB (2 MiB by default), and a single event is at most one request: this is room
for a --max-request-bytes of up to 31 MiB (etcd recommends 10 MiB at most; harness.fill's etcd runs with 16 MiB),
and bounds what one message can make a process hold whatever etcd sends."""

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    # Notice a peer that vanished mid-snapshot (host down, network cut) instead of waiting forever.
    # etcd refuses pings more frequent than its --grpc-keepalive-min-time (5s by default).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
"""Every channel's options; _open_channel adds gRPC's SingleThreadedUnaryStream."""


class SnapshotStream(Iterator["etcdrpc.SnapshotResponse"], Protocol):
    """etcd's Maintenance.Snapshot responses as gRPC delivers them: an iterator that can be cancelled."""

    def cancel(self) -> bool: ...


PROBE_KEY = b"\0etcd-backup:currency-probe"
"""A key nobody writes. Reading it linearizably through a member costs one round trip to the leader."""


class EtcdUnavailable(Exception):
    """No configured endpoint could be used; the message says why for each one."""


class NotCurrent(Exception):
    """A member answers, but cannot prove that it holds the cluster's current data."""


@dataclass(frozen=True)
class Currency:
    """What proves a member current: the quorum's revision read through it, and its raft state."""

    cluster_revision: int
    """The cluster's revision, read through the member from the quorum (a linearizable read)."""
    raft_term: int
    raft_index: int
    is_leader: bool
    alarms: tuple[str, ...]
    """The cluster's active alarms, as `NOSPACE on <member id>`; none disqualifies but CORRUPT on this member."""


@dataclass
class EtcdConnection:
    """An open channel to one etcd member that was proven current (in the quorum, caught up)."""

    endpoint: str
    channel: grpc.Channel
    metadata: Metadata
    status: etcdrpc.StatusResponse
    currency: Currency | None
    """None for a connection made without the proof (the restore drill's own throwaway etcd)."""

    @property
    def proof(self) -> Currency:
        """The proof that the member is current; connect() makes it unless told not to."""
        if self.currency is None:
            raise RuntimeError(f"connected to {self.endpoint} without proving it current")
        return self.currency

    def snapshot(self) -> SnapshotStream:
        """Start the Maintenance.Snapshot stream (no deadline: a big database takes a while)."""
        from etcd3 import etcdrpc

        stub = etcdrpc.MaintenanceStub(self.channel)
        responses: SnapshotStream = stub.Snapshot(
            etcdrpc.SnapshotRequest(), metadata=self.metadata
        )
        return responses

    def key_count(self, revision: int, timeout: float) -> int:
        """How many keys etcd holds at `revision` (a count-only range over the whole keyspace): the quorum's
        count, or, on a connection without the proof, the member's own (a serializable read)."""
        from etcd3 import etcdrpc

        response = etcdrpc.KVStub(self.channel).Range(
            etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True, revision=revision,
                                 serializable=self.currency is None),
            metadata=self.metadata, timeout=timeout,
        )
        return int(response.count)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EtcdConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


Qualify: TypeAlias = "Callable[[grpc.Channel, Metadata, etcdrpc.StatusResponse, float], Currency | None]"
"""Checks a member that answered; raises NotCurrent to pass it over."""


def connect(config: EtcdConfig, prove: bool = True) -> EtcdConnection:
    """Return a connection to the first endpoint, in configured order, that answers in time and
    proves current: a member cut off from the quorum answers too, with old data. `prove=False` skips
    the proof (a throwaway single member, whose auth may not let us read)."""
    return _first_qualifying(config, prove_current if prove else _anyone, "no current etcd member answered")


def connect_leaderless(config: EtcdConfig) -> EtcdConnection:
    """Return a connection to the first endpoint that answers and has no leader: where a stale backup
    comes from (allow-stale-member) once the quorum is gone. A member that has a leader yet failed the
    proof (a CORRUPT alarm, a read that timed out) is passed over: the quorum is not gone."""
    return _first_qualifying(config, _without_leader, "no etcd member without a leader answered")


def _first_qualifying(config: EtcdConfig, qualify: Qualify, none_did: str) -> EtcdConnection:
    import grpc
    from etcd3 import etcdrpc

    problems = []
    for endpoint in config.endpoints:
        channel = _open_channel(endpoint, config)
        try:
            metadata = _authenticate(channel, config)
            status = etcdrpc.MaintenanceStub(channel).Status(
                etcdrpc.StatusRequest(), timeout=config.timeout, metadata=metadata
            )
            currency = qualify(channel, metadata, status, config.timeout)
        except (grpc.RpcError, NotCurrent) as exc:
            channel.close()
            why = describe_rpc_error(exc, config.timeout) if isinstance(exc, grpc.RpcError) else f"not current: {exc}"
            problems.append(f"{endpoint}: {why}")
            logger.warning("etcd endpoint %s", problems[-1])
            continue
        return EtcdConnection(endpoint, channel, metadata, status, currency)
    raise EtcdUnavailable(f"{none_did}: " + "; ".join(problems))


def _anyone(channel: grpc.Channel, metadata: Metadata, status: etcdrpc.StatusResponse, timeout: float) -> None:
    return None


def _without_leader(channel: grpc.Channel, metadata: Metadata, status: etcdrpc.StatusResponse,
                    timeout: float) -> None:
    if status.leader != 0:
        raise NotCurrent("it has a leader, so the quorum is not gone: no stale backup of it")
    return None


def prove_current(channel: grpc.Channel, metadata: Metadata, status: etcdrpc.StatusResponse,
                  timeout: float) -> Currency:
    """Prove that the member behind `channel` is in the quorum and caught up; raise NotCurrent if not.

    A linearizable read through the member needs the leader's ReadIndex (a quorum's heartbeat), and
    is answered only once the member has applied everything up to it: a member cut off from its peers,
    or a learner, fails it. A snapshot the member starts after this read holds at least the revision
    the read returned, so a backup is behind the cluster by at most the writes made while it streams.
    """
    import grpc
    from etcd3 import etcdrpc

    member = status.header.member_id
    if status.leader == 0:
        raise NotCurrent("it has no leader (cut off from the cluster's quorum)")
    try:
        read = etcdrpc.KVStub(channel).Range(etcdrpc.RangeRequest(key=PROBE_KEY), metadata=metadata,
                                             timeout=timeout)
        alarms = etcdrpc.MaintenanceStub(channel).Alarm(
            etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET), metadata=metadata, timeout=timeout).alarms
    except grpc.RpcError as exc:
        raise NotCurrent(f"a linearizable read through it failed: {describe_rpc_error(exc, timeout)}") from None
    if any(alarm.memberID == member and alarm.alarm == etcdrpc.CORRUPT for alarm in alarms):
        raise NotCurrent("etcd raised a CORRUPT alarm on it")
    # NOSPACE (the cluster takes no writes until an operator frees space) leaves the data consistent
    # and current: the very moment a backup is wanted. It is recorded, not refused.
    return Currency(
        cluster_revision=int(read.header.revision), raft_term=int(read.header.raft_term),
        raft_index=int(status.raftIndex), is_leader=status.leader == member,
        alarms=tuple(f"{etcdrpc.AlarmType.Name(alarm.alarm)} on {alarm.memberID:x}" for alarm in alarms),
    )


def unproven_state(status: etcdrpc.StatusResponse) -> Currency:
    """The member's state as it reports it itself, for a stale backup: its own revision, which the quorum
    (if there is one) may be far past, and no alarms (listing them needs a leader)."""
    return Currency(cluster_revision=int(status.header.revision), raft_term=int(status.raftTerm),
                    raft_index=int(status.raftIndex), is_leader=status.leader == status.header.member_id,
                    alarms=())


def describe_rpc_error(exc: grpc.RpcError, timeout: float) -> str:
    """Turn a gRPC error into a short human cause."""
    import grpc

    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout:g}s"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"unreachable ({details})"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED) and "auth" in details:
        return f"authentication refused ({details})"
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:  # etcd 3.4 says Unknown too
        return f"permission denied ({details}); snapshots need etcd's root role"
    return f"{code.name if code else 'error'}: {details}"


def _open_channel(endpoint: str, config: EtcdConfig) -> grpc.Channel:
    import grpc.experimental

    options = [
        *CHANNEL_OPTIONS,
        # Let the thread that iterates a snapshot stream poll gRPC itself instead of being handed each
        # message by gRPC's own thread: measured on a 300 MB snapshot, 40% less CPU to receive it.
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ]
    parts = urlsplit(endpoint)
    if parts.scheme == "unix":  # a socket file: the restore drill's etcd, which nothing else can reach
        return grpc.insecure_channel(f"unix:{parts.path}", options=options)
    target = parts.netloc
    if parts.scheme == "https":
        # No CA configured: gRPC falls back to the system's trusted roots.
        credentials = grpc.ssl_channel_credentials(
            root_certificates=config.tls_ca,
            private_key=config.tls_key,
            certificate_chain=config.tls_cert,
        )
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


def _authenticate(channel: grpc.Channel, config: EtcdConfig) -> Metadata:
    """Exchange username/password for a token; return the metadata that carries it."""
    if config.username is None or config.password is None:
        return ()
    from etcd3 import etcdrpc

    response = etcdrpc.AuthStub(channel).Authenticate(
        etcdrpc.AuthenticateRequest(name=config.username, password=config.password),
        timeout=config.timeout,
    )
    return (("token", response.token),)
