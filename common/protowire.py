"""Protobuf's wire format, by hand, for the few messages where the `protobuf` package costs too much or knows too
little: etcd3's protos predate fields etcd 3.4 sends (a watch response's `fragment`), and the protobuf this project
can use with them (3.20, pure Python on Python 3.11) spends more CPU building and parsing a Txn than the gRPC
call itself (docs/performance.md: a point-in-time restore applies one Txn per revision).

Each encoder here is checked against the protobuf package's own serialization (tests/test_pitr_apply.py), and
each reader trusts nothing: a cut message raises ValueError, not a wrong value.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, LENGTH_DELIMITED = 0, 2
_UINT64 = (1 << 64) - 1


def read_varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """The varint at `position` and the position after it (ValueError if the message ends inside it)."""
    value, shift = 0, 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("a protobuf message cut inside a varint")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            return value, position
        shift += 7


def fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """The top-level fields of a message, in order: (field number, wire type, value): a varint's value, a
    length-delimited field's bytes (a view, not a copy); fixed-width fields are skipped by their width (their
    value is given as 0). ValueError on a cut message or a wire type protobuf 3 does not write."""
    view, position = memoryview(data), 0
    while position < len(view):
        tag, position = read_varint(view, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == VARINT:
            value, position = read_varint(view, position)
            yield number, wire_type, value
        elif wire_type == LENGTH_DELIMITED:
            length, position = read_varint(view, position)
            if position + length > len(view):
                raise ValueError("a protobuf message cut inside a field")
            yield number, wire_type, view[position:position + length]
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            if position > len(view):
                raise ValueError("a protobuf message cut inside a field")
            yield number, wire_type, 0
        else:
            raise ValueError(f"a protobuf field of wire type {wire_type}")


def varint(value: int) -> bytes:
    """`value` as a varint; a negative one as protobuf writes an int64: its 64-bit two's complement (10 bytes)."""
    value &= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field `number` holding `payload` (bytes, or an embedded message's encoding)."""
    return tag(number, LENGTH_DELIMITED) + varint(len(payload)) + payload
