"""Where the time of one backup or one restore goes, phase by phase: for the bench (bench/run.py prints
a table of them) and a debug log line.

Cheap enough to be always on: a phase costs two perf_counter() calls and a dict update; a phase of a
stream (receiving, hashing, compressing, writing), timed per chunk of 32 KiB or more, adds about
4 ms to a 300 MB backup. Phases that run on different threads overlap: their sum may exceed the
wall-clock time of the whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar


class Phases:
    """Seconds spent per named phase, summed over every time the phase ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the block as (part of) phase `name`, whether it ends normally or not."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def __str__(self) -> str:
        return ", ".join(f"{name} {seconds:.3f}s" for name, seconds in self.seconds.items())


_recording: ContextVar[Phases | None] = ContextVar("phases", default=None)


@contextmanager
def recording(phases: Phases) -> Iterator[Phases]:
    """Have phase() time into `phases` while the block runs (on this thread): for a path of many small
    functions (a restore's), where handing a Phases down every call would clutter them all."""
    token = _recording.set(phases)
    try:
        yield phases
    finally:
        _recording.reset(token)


def phase(name: str) -> AbstractContextManager[None]:
    """Time the block as phase `name` of what recording() set; nothing is timed when nothing records."""
    phases = _recording.get()
    return nullcontext() if phases is None else phases(name)
