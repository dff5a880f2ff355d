"""The user keys of an etcd database file (a snapshot): the keys a client's `etcdctl get "" --prefix` sees at the
snapshot's revision. etcd's own tool counts something else: `snapshot status`'s totalKey is every entry of every
bucket, etcd's own (members, auth, meta) and every revision of every key it still keeps; the demo's 20 keys showed as
24, a database with history as several times its keys.

etcd keeps its keys in bbolt's "key" bucket, one entry per revision of a key: the revision (8 bytes big-endian, "_",
8 bytes of sub-revision; a deletion's with a "t" after it) maps to the key and its value (mvccpb.KeyValue, whose
first field is the key). Read in revision order, a key is live if its last entry is not a deletion.

The file is read through bbolt's own structures (its meta page, then the B+tree of buckets), never trusted: a page
outside the file, a page reached twice (a cycle), an element outside its page are BadDatabase, not a loop or a crash.
It runs after etcd's own tool has read the database (recovery.verify), so a damaged file is refused there first.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

from common import protowire

PAGE_HEADER = struct.Struct("<QHHI")
"""id, flags, count, overflow."""
BRANCH_ELEMENT = struct.Struct("<IIQ")
"""pos, ksize, pgid: `pos` counts from the element itself."""
LEAF_ELEMENT = struct.Struct("<IIII")
"""flags, pos, ksize, vsize."""
META = struct.Struct("<IIIIQQQQQQ")
"""magic, version, page size, flags, root bucket (root pgid, sequence), freelist, pgid, txid, checksum."""
BUCKET_HEADER = struct.Struct("<QQ")
"""root pgid (0: an inline bucket, its page follows), sequence."""
MAGIC = 0xED0CDAED
BRANCH, LEAF = 0x01, 0x02
BUCKET_LEAF = 0x01
"""A leaf element that is a bucket, not a key/value pair."""
KEY_BUCKET = b"key"
TOMBSTONE = ord("t")
REVISION_BYTES = 17
"""8 bytes of main revision, "_", 8 of sub-revision; a deletion's entry has a "t" after them."""
MAX_DEPTH = 64
"""A B+tree of 8 GiB has a handful of levels: deeper is a damaged (or forged) file."""


class BadDatabase(Exception):
    """The file is not a bbolt database whose key bucket can be read; the message says where it breaks."""


def user_keys(db_path: Path) -> int:
    """How many keys a client sees in the etcd database `db_path` (a snapshot, its SHA-256 trailer allowed)."""
    with open(db_path, "rb") as file:
        try:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _Database(data).user_keys()
        except (struct.error, ValueError) as exc:  # a structure cut by the file's end; an empty file
            raise BadDatabase(f"cut short: {exc}") from None


class _Database:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.page_size, self.root = self._meta()
        self.seen: set[int] = set()

    def _meta(self) -> tuple[int, int]:
        """The page size and the root bucket's page, of the newer of the two meta pages that is valid."""
        found = []
        offset = 0
        for _ in range(2):
            if offset + PAGE_HEADER.size + META.size > len(self.data):
                break
            meta = META.unpack_from(self.data, offset + PAGE_HEADER.size)
            magic, version, page_size, _, root, _, _, _, txid, _ = meta
            if magic == MAGIC and version == 2 and page_size >= 512 and page_size & (page_size - 1) == 0:
                found.append((txid, page_size, root))
                offset = page_size  # the second meta page is the second page
            else:
                offset = found[0][1] if found else 4096
        if not found:
            raise BadDatabase("no valid bbolt meta page")
        _, page_size, root = max(found)
        return page_size, root

    def _page(self, pgid: int) -> tuple[int, int, int]:
        """Page `pgid`: its offset, flags and element count; each page is read once (a cycle is BadDatabase)."""
        if pgid in self.seen:
            raise BadDatabase(f"page {pgid} is reached twice")
        self.seen.add(pgid)
        offset = pgid * self.page_size
        if pgid < 2 or offset + PAGE_HEADER.size > len(self.data):
            raise BadDatabase(f"page {pgid} is outside the file")
        _, flags, count, _ = PAGE_HEADER.unpack_from(self.data, offset)
        return offset, flags, count

    def _entries(self, offset: int, flags: int, count: int, depth: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        """The leaf elements (flags, key, value) under the page at `offset`, in key order."""
        if depth > MAX_DEPTH:
            raise BadDatabase("the B+tree is deeper than any database's")
        elements = offset + PAGE_HEADER.size
        if flags & BRANCH:
            for index in range(count):
                element = elements + index * BRANCH_ELEMENT.size
                _, _, child = BRANCH_ELEMENT.unpack_from(self.data, element)
                yield from self._entries(*self._page(child), depth + 1)
        elif flags & LEAF:
            for index in range(count):
                element = elements + index * LEAF_ELEMENT.size
                element_flags, position, key_size, value_size = LEAF_ELEMENT.unpack_from(self.data, element)
                start = element + position
                end = start + key_size + value_size
                if end > len(self.data):
                    raise BadDatabase("an element ends outside the file")
                yield element_flags, self.data[start:start + key_size], self.data[start + key_size:end]
        else:
            raise BadDatabase(f"a page of flags {flags:#x} where a branch or leaf page belongs")

    def _bucket(self, header: bytes) -> Iterator[tuple[int, bytes, bytes]]:
        """The entries of the bucket whose header (the value of its element in the parent) is `header`."""
        if len(header) < BUCKET_HEADER.size:
            raise BadDatabase("a bucket's header is cut short")
        root, _ = BUCKET_HEADER.unpack_from(header)
        if root:
            return self._entries(*self._page(root))
        inline = header[BUCKET_HEADER.size:]  # a small bucket: its one leaf page in its header's value
        if len(inline) < PAGE_HEADER.size:
            raise BadDatabase("an inline bucket is cut short")
        _, flags, count, _ = PAGE_HEADER.unpack_from(inline)
        return _Database._inline_entries(inline, flags, count)

    @staticmethod
    def _inline_entries(page: bytes, flags: int, count: int) -> Iterator[tuple[int, bytes, bytes]]:
        if not flags & LEAF:
            raise BadDatabase("an inline bucket that is not a leaf page")
        for index in range(count):
            element = PAGE_HEADER.size + index * LEAF_ELEMENT.size
            if element + LEAF_ELEMENT.size > len(page):
                raise BadDatabase("an inline bucket's element is cut short")
            element_flags, position, key_size, value_size = LEAF_ELEMENT.unpack_from(page, element)
            start = element + position
            if start + key_size + value_size > len(page):
                raise BadDatabase("an inline bucket's element ends outside it")
            yield element_flags, page[start:start + key_size], page[start + key_size:start + key_size + value_size]

    def user_keys(self) -> int:
        root = self.root.to_bytes(8, "little") + bytes(8)  # the meta page holds the root bucket's header
        key_bucket = next((value for flags, name, value in self._bucket(root)
                           if flags & BUCKET_LEAF and name == KEY_BUCKET), None)
        if key_bucket is None:
            raise BadDatabase("no key bucket: not an etcd database")
        live: set[bytes] = set()
        for _, revision, value in self._bucket(key_bucket):
            key = _key_of(value)
            if len(revision) > REVISION_BYTES and revision[REVISION_BYTES] == TOMBSTONE:
                live.discard(key)
            else:
                live.add(key)
        return len(live)


def _key_of(value: bytes) -> bytes:
    """The key of a mvccpb.KeyValue (its field 1, written first by etcd)."""
    try:
        if value[:1] == b"\x0a":  # field 1, length-delimited: the usual case, read without the general parser
            length, position = protowire.read_varint(value, 1)
            if position + length <= len(value):
                return value[position:position + length]
        for number, wire_type, field in protowire.fields(value):
            if number == 1 and wire_type == protowire.LENGTH_DELIMITED and isinstance(field, memoryview):
                return bytes(field)
    except ValueError as exc:
        raise BadDatabase(f"a key's entry is no KeyValue: {exc}") from None
    raise BadDatabase("a key's entry holds no key")
