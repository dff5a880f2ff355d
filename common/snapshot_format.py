"""etcd's snapshot file: the bbolt database, then a trailer, the 32-byte SHA-256 of the database.

etcd sends that trailer after the data of its snapshot stream; `etcdctl snapshot save` writes data +
trailer and `etcdctl snapshot restore` checks it. The worker checks it on etcd's stream, recovery on
the file inside an archive: both split the bytes into data and trailer here, so the two checks
cannot drift apart.
"""

from __future__ import annotations

import hashlib

TRAILER_SIZE = hashlib.sha256().digest_size


class TrailerCheck:
    """Hash a snapshot's first `data_size` bytes as they pass; keep whatever follows as the trailer.

    Fed the snapshot chunk by chunk, however the chunks fall on the data/trailer boundary; at the
    end, `matches()` says whether the trailer is the SHA-256 of the data. How many trailer bytes may
    come is the caller's to check: its error message depends on where the bytes came from.
    """

    def __init__(self, data_size: int) -> None:
        self.data_size = data_size
        self.data_left = data_size
        self.trailer = b""
        self._digest = hashlib.sha256()

    def feed(self, chunk: bytes) -> bytes:
        """Take the next bytes of the snapshot; return the part of them that is data (maybe empty)."""
        data = chunk[: self.data_left]
        self._digest.update(data)
        self.data_left -= len(data)
        self.trailer += chunk[len(data):]
        return data

    @property
    def data_received(self) -> int:
        return self.data_size - self.data_left

    def matches(self) -> bool:
        """Whether the trailer fed so far is exactly the SHA-256 of the data fed so far."""
        return self.trailer == self._digest.digest()

    def sha256_hex(self) -> str:
        """The SHA-256 of the data fed so far, as metadata records it."""
        return self._digest.hexdigest()
