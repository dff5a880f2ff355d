"""etcd client construction: the first healthy endpoint, with auth and TLS as configured.

We use the gRPC stubs that the `etcd3` package ships, not its client class: the client only takes
TLS material as file paths and cannot use the system's CA roots, while the config allows inline PEM.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import grpc
from etcd3 import etcdrpc

from common.config import EtcdConfig

logger = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]

CHANNEL_OPTIONS = [
    # Notice a peer that vanished mid-snapshot (host down, network cut) instead of waiting forever.
    # etcd refuses pings more frequent than its --grpc-keepalive-min-time (5s by default).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Let the thread that iterates a snapshot stream poll gRPC itself instead of being handed each
    # message by gRPC's own thread: measured on a 300 MB snapshot, 40% less CPU to receive it.
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
]


class SnapshotStream(Iterator[etcdrpc.SnapshotResponse], Protocol):
    """etcd's Maintenance.Snapshot responses as gRPC delivers them: an iterator that can be cancelled."""

    def cancel(self) -> bool: ...


class EtcdUnavailable(Exception):
    """No configured endpoint could be used; the message says why for each one."""


@dataclass
class EtcdConnection:
    """An open channel to one healthy etcd member."""

    endpoint: str
    channel: grpc.Channel
    metadata: Metadata
    status: etcdrpc.StatusResponse

    def snapshot(self) -> SnapshotStream:
        """Start the Maintenance.Snapshot stream (no deadline: a big database takes a while)."""
        stub = etcdrpc.MaintenanceStub(self.channel)
        responses: SnapshotStream = stub.Snapshot(
            etcdrpc.SnapshotRequest(), metadata=self.metadata
        )
        return responses

    def key_count(self, revision: int, timeout: float) -> int:
        """How many keys etcd holds at `revision` (a count-only range over the whole keyspace)."""
        response = etcdrpc.KVStub(self.channel).Range(
            etcdrpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True, revision=revision),
            metadata=self.metadata, timeout=timeout,
        )
        return int(response.count)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EtcdConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(config: EtcdConfig) -> EtcdConnection:
    """Return a connection to the first endpoint, in configured order, that answers in time."""
    problems = []
    for endpoint in config.endpoints:
        channel = _open_channel(endpoint, config)
        try:
            metadata = _authenticate(channel, config)
            status = etcdrpc.MaintenanceStub(channel).Status(
                etcdrpc.StatusRequest(), timeout=config.timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            channel.close()
            problems.append(f"{endpoint}: {describe_rpc_error(exc, config.timeout)}")
            logger.warning("etcd endpoint %s", problems[-1])
            continue
        return EtcdConnection(endpoint, channel, metadata, status)
    raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(problems))


def describe_rpc_error(exc: grpc.RpcError, timeout: float) -> str:
    """Turn a gRPC error into a short human cause."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout:g}s"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"unreachable ({details})"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED) and "auth" in details:
        return f"authentication refused ({details})"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"permission denied ({details}); snapshots need etcd's root role"
    return f"{code.name if code else 'error'}: {details}"


def _open_channel(endpoint: str, config: EtcdConfig) -> grpc.Channel:
    parts = urlsplit(endpoint)
    target = parts.netloc
    if parts.scheme == "https":
        # No CA configured: gRPC falls back to the system's trusted roots.
        credentials = grpc.ssl_channel_credentials(
            root_certificates=config.tls_ca,
            private_key=config.tls_key,
            certificate_chain=config.tls_cert,
        )
        return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def _authenticate(channel: grpc.Channel, config: EtcdConfig) -> Metadata:
    """Exchange username/password for a token; return the metadata that carries it."""
    if config.username is None or config.password is None:
        return ()
    response = etcdrpc.AuthStub(channel).Authenticate(
        etcdrpc.AuthenticateRequest(name=config.username, password=config.password),
        timeout=config.timeout,
    )
    return (("token", response.token),)
