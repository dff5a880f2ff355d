"""Who wrote an object of the store: Ed25519 signatures with a key that the store never sees.

A bucket or a volume is written by more than this service (other tools, whoever holds credentials that can
put objects, a node that mounts it). Without authentication, whoever can write there can plant a backup that
becomes "latest" and is restored as the truth, or edit one field of metadata to move a restore in time. With
`signing` configured, the workers and the delta watcher sign what they store with the private key, and every
reader (the API, the drill, retention, restore) takes only what the public key verifies
(common.storage.authenticated): verifying needs no secret, so a restore host holds only the public key.

What is signed:
- a backup's metadata, whole (its name, its archive's SHA-256 and size, its revision and times, the last
  drill): the archive is bound to it by that SHA-256, checked by whoever reads the archive;
- a delta's name fields (revisions, times, encrypted) with the SHA-256 of its stored bytes: both go into the
  delta's name, so that a listing alone tells which deltas are ours, and a read checks the bytes.

Keys are text: `etcd-backup-signing-key:<base64url of the 32-byte Ed25519 seed>` in a file (the private key,
mode 0600), and `etcd-backup-verify-key:<base64url of the 32-byte public key>` (the public key, in the config
as it is: not a secret).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.small_files import read_small_file

PRIVATE_PREFIX = "etcd-backup-signing-key:"
PUBLIC_PREFIX = "etcd-backup-verify-key:"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_KEY_FILE = 4 << 10
"""A key file is one line and comments: a bigger file is not one, and is not read whole."""
VERIFIED_CACHE = 100_000
"""Signatures remembered as good, per process: listings check every backup and delta on every request, and
one Ed25519 verification (about 60 us) a thousand times over is a noticeable part of a list's answer."""


class BadKey(ValueError):
    """A key's text or file is not a key of ours; the message never quotes a private key."""


def encode(data: bytes) -> str:
    """URL-safe base64 without padding: what goes into keys and into delta names (no '/', no '=')."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode(text: str, size: int) -> bytes | None:
    """The `size` bytes that `encode` wrote as `text`, or None if `text` is not that."""
    if len(text) != (size * 4 + 2) // 3 or not text.isascii():
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    # Base64 has more than one text for some byte strings (trailing bits): only the one encode() writes counts,
    # or a signed delta name could be respelled into a second name of the same delta.
    return data if len(data) == size and encode(data) == text else None


@dataclass(frozen=True)
class VerifyKey:
    """The public key: checks what the signing key signed."""

    raw: bytes

    def __str__(self) -> str:
        return PUBLIC_PREFIX + encode(self.raw)

    @property
    def fingerprint(self) -> str:
        """A short name of the key for messages and `config check`: the first 16 hex digits of its SHA-256."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verifier(self) -> Verifier:
        return Verifier(self)


def parse_verify_key(text: str) -> VerifyKey:
    """The public key written as `etcd-backup-verify-key:...`; BadKey if `text` is not one."""
    text = text.strip()
    raw = decode(text.removeprefix(PUBLIC_PREFIX), KEY_BYTES) if text.startswith(PUBLIC_PREFIX) else None
    if raw is None:
        raise BadKey(f"not a verify key: expected {PUBLIC_PREFIX}<43 characters> (what `etcd-backup keygen` "
                        "prints)")
    return VerifyKey(raw)


class Signer:
    """The private key: signs what the workers and the watcher store."""

    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.verify_key = VerifyKey(self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def __repr__(self) -> str:  # never the key
        return f"Signer({self.verify_key.fingerprint})"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def new_signing_key() -> tuple[str, VerifyKey]:
    """A new key pair: the private key's text (for its file) and the public key."""
    seed = os.urandom(KEY_BYTES)
    return PRIVATE_PREFIX + encode(seed), Signer(seed).verify_key


def parse_signing_key(text: str) -> Signer:
    """The private key of a key file's `text` (one `etcd-backup-signing-key:...` line, `#` comments allowed)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    seed = (decode(lines[0].removeprefix(PRIVATE_PREFIX), KEY_BYTES)
            if len(lines) == 1 and lines[0].startswith(PRIVATE_PREFIX) else None)
    if seed is None:
        raise BadKey(f"not a signing key file: expected one line {PRIVATE_PREFIX}... (what `etcd-backup keygen` "
                        "writes)")
    return Signer(seed)


def read_signing_key(path: Path) -> Signer:
    """The private key in the file at `path`; OSError if it cannot be read or is no small regular file
    (common.small_files), BadKey if it is not one."""
    data, _ = read_small_file(path, MAX_KEY_FILE)
    try:
        return parse_signing_key(data.decode())
    except UnicodeDecodeError:
        raise BadKey("not a signing key file: not text") from None


class Verifier:
    """Checks signatures with one public key, remembering the good ones (VERIFIED_CACHE)."""

    def __init__(self, key: VerifyKey) -> None:
        self.key = key
        self._public = Ed25519PublicKey.from_public_bytes(key.raw)
        self._good: OrderedDict[bytes, None] = OrderedDict()

    def verify(self, message: bytes, signature: bytes) -> bool:
        remembered = hashlib.sha256(signature + message).digest()
        if remembered in self._good:
            return True
        try:
            self._public.verify(signature, message)
        except InvalidSignature:
            return False
        self._good[remembered] = None
        if len(self._good) > VERIFIED_CACHE:
            self._good.popitem(last=False)
        return True
