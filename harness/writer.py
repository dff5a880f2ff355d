"""A continuous writer for the delta tests and bench: puts, overwrites and deletes keys under a prefix on a
thread, with some revisions of several events (a txn, a range delete), until stopped."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

from harness.servers import etcdctl


class ContinuousWriter:
    def __init__(self, client: Any, prefix: str, keys: int = 30, pause: float = 0.002) -> None:
        self.client, self.prefix, self.keys, self.pause = client, prefix, keys, pause
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> ContinuousWriter:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop writing; return the number of writes made."""
        self._stop.set()
        self._thread.join()
        return self.writes

    def _run(self) -> None:
        while not self._stop.is_set():
            self.write(self.writes)
            self.writes += 1
            time.sleep(self.pause)

    def write(self, number: int) -> None:
        key = f"{self.prefix}{number % self.keys:03d}"
        step = number % 10
        if step == 7:
            self.client.delete(key)
        elif step == 8:  # one revision, three events
            other = f"{self.prefix}{(number + 1) % self.keys:03d}"
            txn = self.client.transactions
            self.client.transaction(compare=[], failure=[], success=[
                txn.put(key, f"txn-{number}"), txn.put(f"{self.prefix}extra-{number % 3}", b"\x00\xff\n"),
                txn.delete(other)])
        elif step == 9 and number % 50 == 9:  # a range delete: one revision, an event per key
            self.client.delete_prefix(f"{self.prefix}00")
        else:
            self.client.put(key, f"value-{number}\n" * (1 + number % 4))


def keys_at(endpoint: str, prefix: str, revision: int | None = None) -> dict[bytes, bytes]:
    """Every key under `prefix` and its value, as etcdctl reads them from `endpoint` (at `revision`)."""
    args = ["get", "--prefix", prefix, "-w", "json", *([f"--rev={revision}"] if revision is not None else [])]
    answer = json.loads(etcdctl(*args, endpoint=endpoint).stdout)
    return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in answer.get("kvs", [])}


def current_revision(endpoint: str) -> int:
    answer = json.loads(etcdctl("endpoint", "status", "-w", "json", endpoint=endpoint).stdout)
    return int(answer[0]["Status"]["header"]["revision"])
