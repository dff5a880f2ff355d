"""read_ahead: the snapshot reader thread hands over everything, raises what it met, never outlives its consumer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing

import pytest

from worker.pipeline import Stalled, read_ahead


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "snapshot-reader"]


def test_every_item_arrives_in_order() -> None:
    assert list(read_ahead(iter(range(10_000)), depth=4, cancel=lambda: None)) == list(range(10_000))
    assert reader_threads() == []


def test_an_error_in_the_stream_is_raised_after_the_items_before_it() -> None:
    def stream() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("stream ended early")

    received = []
    with pytest.raises(ValueError, match="stream ended early"):
        for item in read_ahead(stream(), depth=8, cancel=lambda: None):
            received.append(item)
    assert received == [1, 2]
    assert reader_threads() == []


def test_a_consumer_that_gives_up_cancels_a_blocked_reader_and_waits_for_it() -> None:
    cancelled = threading.Event()

    def stalled_stream() -> Iterator[bytes]:
        yield b"first"
        cancelled.wait(30)  # like a gRPC stream waiting for etcd: only cancel() wakes it
        raise RuntimeError("cancelled")

    with closing(read_ahead(stalled_stream(), depth=8, cancel=cancelled.set)) as received:
        assert next(received) == b"first"
    assert cancelled.is_set()
    assert reader_threads() == []


def test_a_consumer_that_gives_up_stops_a_reader_blocked_on_a_full_queue() -> None:
    produced = []

    def endless() -> Iterator[int]:
        number = 0
        while True:
            produced.append(number)
            yield number
            number += 1

    with closing(read_ahead(endless(), depth=2, cancel=lambda: None)) as received:
        assert next(received) == 0
    assert reader_threads() == []
    assert len(produced) <= 5  # the reader stayed at most `depth` items ahead


def test_a_stream_that_sends_nothing_for_the_idle_timeout_stalls() -> None:
    cancelled = threading.Event()

    def frozen_stream() -> Iterator[bytes]:
        yield b"first"
        cancelled.wait(30)  # a peer that stopped sending, until cancel() wakes the reader
        raise RuntimeError("cancelled")

    received = read_ahead(frozen_stream(), depth=8, cancel=cancelled.set, idle_timeout=0.3)
    assert next(received) == b"first"
    with pytest.raises(Stalled, match="nothing received for 0.3s"):
        next(received)
    assert cancelled.is_set()
    assert reader_threads() == []
