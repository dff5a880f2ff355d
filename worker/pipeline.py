"""Read a stream on a thread of its own, a bounded number of items ahead of its consumer.

A backup has two halves that each need about a core: receiving etcd's stream (gRPC, protobuf
parsing, SHA-256) and compressing + writing it. Run one after the other they add up; overlapped,
the backup takes about as long as etcd needs to send the snapshot. The GIL is no obstacle: the
heavy calls on both sides (hashlib, isal, file writes, gRPC's wait for data) release it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from common.phases import Phases

T = TypeVar("T")

POLL_SECONDS = 0.1
"""How often a producer blocked on a full queue checks whether the consumer gave up."""


@dataclass(frozen=True)
class _End:
    error: BaseException | None


class Stalled(Exception):
    """The stream produced nothing for longer than its idle timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"nothing received for {seconds:g}s")


class _Producer(Generic[T]):
    """Runs `items` on a thread of its own, handing what it yields over through a bounded queue."""

    def __init__(self, items: Iterator[T], depth: int, phases: Phases) -> None:
        self.phases = phases
        self.handoff: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(items,), name="snapshot-reader", daemon=True)
        self.thread.start()

    def stop(self, cancel: Callable[[], object]) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            cancel()
        self.thread.join()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                with self.phases("reader waits for the consumer"):
                    handed = self._put(item)
                if not handed:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_End(exc))
        else:
            self._put(_End(None))

    def _put(self, item: T | _End) -> bool:
        while not self.stopped.is_set():
            try:
                self.handoff.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False


def read_ahead(items: Iterator[T], depth: int, cancel: Callable[[], object],
               idle_timeout: float | None = None, phases: Phases | None = None) -> Generator[T, None, None]:
    """Yield what `items` yields, produced on a background thread up to `depth` items ahead.

    An exception raised by `items` is raised here, in the consumer, after the items before it.
    If `items` produces nothing for `idle_timeout` seconds, Stalled is raised (and `items` cancelled).
    Whatever ends the consumer's loop early (an exception, `close()`), the producer is stopped:
    `cancel()` must make a blocked `next(items)` return or raise (for gRPC: the call's cancel()),
    and the thread is joined before this generator finishes, so nothing outlives the backup.
    `phases` gets the time each side waited for the other (common.phases).
    """
    phases = Phases() if phases is None else phases
    producer = _Producer(items, depth, phases)
    try:
        while True:
            began = time.perf_counter()
            try:
                item = producer.handoff.get(timeout=idle_timeout)
            except queue.Empty:
                raise Stalled(idle_timeout or 0) from None
            finally:
                phases.add("consumer waits for the reader", time.perf_counter() - began)
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        producer.stop(cancel)
