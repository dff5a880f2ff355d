"""Reading a small file that a setting or an option names: the config file, a key, a certificate, an identity.

Such a path may name anything: a typo, a hostile local user's symlink, a Secret volume's own symlinks. A named
pipe nobody writes to would block open() for ever, /dev/zero (or a disk image where a PEM was meant) would be
read until memory runs out. So the file is opened without blocking, must be a regular file once symlinks are
followed (a Kubernetes Secret's files are symlinks), and is read up to a bound: no more than `limit` bytes.
"""

from __future__ import annotations

import os
import stat


class NotASmallFile(OSError):
    """The path names no regular file, or one larger than the bound; its strerror says which, as an OSError's
    says why a file could not be opened (callers show either the same way)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.strerror = problem


def read_small_file(path: str | os.PathLike[str], limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at `path` (symlinks followed) and its status as it was read. OSError if it
    cannot be opened or read; NotASmallFile (an OSError) if it is no regular file or holds more than `limit`
    bytes."""
    # Checked before opening, as opening some devices does something (a tape rewinds, a terminal is taken).
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotASmallFile("not a regular file")
    # Non-blocking: a FIFO swapped in since the stat would otherwise wait for a writer; fstat() tells it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotASmallFile("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise NotASmallFile(f"larger than {_size(limit)}")
    return data, status


def _size(limit: int) -> str:
    """`limit` bytes in words: "1 MiB", "4 KiB", "100 bytes"."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if limit % (1 << shift) == 0:
            return f"{limit >> shift} {unit}"
    return f"{limit} bytes"
