"""Fill an etcd with Kubernetes-like objects until its database reaches a given size.

The mix imitates what a cluster stores, so that gzip's ratio on the snapshot is realistic: pods and
config maps are repetitive JSON (compresses well), secrets carry base64 of random bytes (barely
compresses), events are small. Values are generated from a seeded RNG: the same size gives the
same data on every run.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from typing import Any

ETCD_FLAGS = [
    "--quota-backend-bytes", str(16 << 30),  # room for a large database (etcd's default stops at 2 GB)
    "--max-request-bytes", str(16 << 20), "--max-txn-ops", "100000",  # so that fill() can batch
]
"""Flags for an etcd that fill() fills."""

BATCH_BYTES = 4 << 20
"""One transaction carries about this many bytes of values (etcd runs with --max-request-bytes above it)."""


def fill(client: Any, target_bytes: int, seed: int = 1) -> int:
    """Put objects into etcd until its database file is at least `target_bytes`; return its size."""
    objects = _objects(random.Random(seed))
    size: int = client.status().db_size
    while size < target_bytes:
        puts, batch_bytes = [], 0
        while batch_bytes < min(BATCH_BYTES, target_bytes - size):
            key, value = next(objects)
            puts.append(client.transactions.put(key, value))
            batch_bytes += len(key) + len(value)
        client.transaction(compare=[], success=puts, failure=[])
        size = client.status().db_size
    return size


def _objects(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    kinds = [(_pod, 5), (_config_map, 2), (_secret, 2), (_event, 4)]
    makers = [maker for maker, weight in kinds for _ in range(weight)]
    number = 0
    while True:
        number += 1
        maker = rng.choice(makers)
        namespace = f"team-{rng.randrange(40):02d}"
        name = f"{maker.__name__.strip('_').replace('_', '-')}-{number:08d}-{rng.randrange(16**5):05x}"
        body = maker(rng, namespace, name)
        yield f"/registry/{body['kind'].lower()}s/{namespace}/{name}", json.dumps(body).encode()


def _metadata(rng: random.Random, namespace: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uid": f"{rng.getrandbits(128):032x}",
        "resourceVersion": str(rng.randrange(10**9)),
        "creationTimestamp": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T10:00:00Z",
        "labels": {"app": f"app-{rng.randrange(200)}", "tier": rng.choice(["web", "db", "cache", "batch"])},
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                           "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}}],
    }


def _pod(rng: random.Random, namespace: str, name: str) -> dict[str, Any]:
    containers = [{
        "name": f"c{i}",
        "image": f"registry.example.com/{namespace}/service-{rng.randrange(50)}:v1.{rng.randrange(30)}",
        "env": [{"name": f"SETTING_{j}", "value": f"value-{rng.randrange(1000)}"} for j in range(rng.randrange(5, 40))],
        "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
    } for i in range(rng.randrange(1, 4))]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(rng, namespace, name),
            "spec": {"containers": containers, "nodeName": f"node-{rng.randrange(100)}"},
            "status": {"phase": "Running",
                       "podIP": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"}}


def _config_map(rng: random.Random, namespace: str, name: str) -> dict[str, Any]:
    lines = [f"option_{i} = {rng.choice(['true', 'false', str(rng.randrange(10**6))])}"
             for i in range(rng.randrange(20, 600))]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(rng, namespace, name),
            "data": {"app.conf": "\n".join(lines)}}


def _secret(rng: random.Random, namespace: str, name: str) -> dict[str, Any]:
    keys = {f"key-{i}": base64.b64encode(rng.randbytes(rng.randrange(64, 6000))).decode()
            for i in range(rng.randrange(1, 4))}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _metadata(rng, namespace, name),
            "type": "Opaque", "data": keys}


def _event(rng: random.Random, namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": _metadata(rng, namespace, name),
            "reason": rng.choice(["Scheduled", "Pulled", "Created", "Started", "BackOff"]),
            "message": f"Successfully assigned {namespace}/{name} to node-{rng.randrange(100)}",
            "count": rng.randrange(1, 50)}
