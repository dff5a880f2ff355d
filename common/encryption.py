"""age encryption of backups (the `encryption` section), streamed, with pyrage (Rust's rage): the cipher is
never ours.

An encrypted backup is the same `.tar.gz`, age-encrypted, named `...tar.gz.age` (common.backups). The
worker encrypts after gzip, on its way to the store: no plaintext touches the disk or the bucket. verify,
restore and the drill decrypt as they read, with an identity (the private key) only they need.

pyrage's stream functions pull from a reader and push to a writer; the backup pipeline pushes, and the
verifier pulls. So each runs pyrage on a thread of its own, joined to the pipeline by an OS pipe: the
pipe's 64 KiB buffer bounds the memory, and a side that stops closes its end, which stops the other.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, Protocol

import pyrage
from pyrage import ssh, x25519

Recipient = Any
"""A pyrage x25519.Recipient or ssh.Recipient (pyrage has no type hints)."""
Identity = Any
"""A pyrage x25519.Identity or ssh.Identity."""

PIPE_CHUNK = 1 << 16
AGE_MAGIC = b"age-encryption.org/v1\n"
"""How every age file begins."""
MAX_HEADER = 64 << 10
"""The most bytes an age header (the recipients' stanzas, then its MAC line) may take here. One stanza is
about 100 bytes (x25519) to 700 (ssh-rsa 4096). rage parses the header again from its start each time it
reads more of it: its time grows with the square of the header's size (a 1.6 MB header took 36 s, a planted
16 MB one an hour of a core), so a longer one is refused before rage sees it."""
HEADER_END = b"\n--- "
"""Where the header's MAC line begins; the line that ends after it ends the header."""


class WrongIdentity(Exception):
    """None of the identities opens the backup: it was encrypted to other recipients."""


class NotIntact(Exception):
    """The age data fails its authentication: tampered with, or cut short."""


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...


class Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


def parse_recipient(text: str) -> Recipient:
    """An age public key (`age1...`) or an ssh one (`ssh-ed25519 ...`, `ssh-rsa ...`); ValueError if neither."""
    text = text.strip()
    try:
        return ssh.Recipient.from_str(text) if text.startswith("ssh-") else x25519.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise ValueError(f"not an age (age1...) or ssh public key: {exc}") from None


def shown_key_path(path: str | os.PathLike[str]) -> str:
    """How to name a key file's path in a message: the path, unless what was given where a path belongs is a
    secret key itself (an age identity, a private key pasted into --identity, $ETCD_BACKUP_IDENTITY or
    identity-file, as other age tools take keys in variables): that is never quoted."""
    text = os.fspath(path)
    if "AGE-SECRET-KEY-" in text.upper() or "PRIVATE KEY" in text.upper() or "\n" in text:
        return "(not a file's path: a secret key itself, never shown; give the path of the file that holds it)"
    return text


def parse_identities(text: str) -> list[Identity]:
    """The identities of an age identity file (`age-keygen`'s output: `AGE-SECRET-KEY-1...` lines, `#`
    comments) or an unencrypted OpenSSH private key. ValueError, never quoting the file: it is a secret."""
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        try:
            return [ssh.Identity.from_buffer(text.encode())]
        except pyrage.IdentityError:
            raise ValueError("an OpenSSH private key that cannot be read (encrypted with a passphrase?)") from None
    identities: list[Identity] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ValueError(f"line {number} is not an age identity (AGE-SECRET-KEY-1...)") from None
    if not identities:
        raise ValueError("no age identity (AGE-SECRET-KEY-1...) in it")
    return identities


PROBE = b"etcd-backup: does an identity open this recipient?"


def identities_open(recipient: Recipient, identities: Sequence[Identity]) -> bool:
    """Whether one of `identities` opens what is encrypted to `recipient`. An age identity's public key is
    derived and compared; an ssh key's cannot be (pyrage gives none), so a few bytes are encrypted to the
    recipient and decrypted with the identities."""
    if isinstance(recipient, x25519.Recipient):
        return str(recipient) in {str(identity.to_public()) for identity in identities
                                  if isinstance(identity, x25519.Identity)}
    try:
        return bool(pyrage.decrypt(pyrage.encrypt(PROBE, [recipient]), list(identities)) == PROBE)
    except pyrage.DecryptError:
        return False


class _Recorded:
    """A reader or writer handed to pyrage, keeping the exception it raised: pyrage reports it only as text."""

    def __init__(self, inner: Readable | Writable) -> None:
        self.inner = inner
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return self.inner.read(size)  # type: ignore[union-attr]
        except BaseException as exc:
            self.failure = exc
            raise

    def write(self, data: bytes) -> int:
        try:
            self.inner.write(bytes(data))  # type: ignore[union-attr]
        except BaseException as exc:
            self.failure = exc
            raise
        return len(data)

    def flush(self) -> None:
        pass


@contextmanager
def encrypting(out: Writable, recipients: Sequence[Recipient]) -> Iterator[BinaryIO]:
    """A writer whose bytes reach `out` encrypted to `recipients`. Leaving the context without an exception
    ends the age stream (its final chunk); with one, `out` holds a stream that must not be published.
    An exception of `out`'s is raised as it is (a StorageError names the store)."""
    read_end, write_end = os.pipe()
    plaintext_in = open(read_end, "rb", buffering=PIPE_CHUNK)  # noqa: SIM115 - the thread closes it
    plaintext_out = open(write_end, "wb", buffering=PIPE_CHUNK)  # noqa: SIM115 - closed below
    sink = _Recorded(out)
    failure: list[BaseException] = []

    def encrypt() -> None:
        try:
            pyrage.encrypt_io(plaintext_in, sink, list(recipients))
        except BaseException as exc:  # noqa: BLE001 - handed to the pipeline's thread
            failure.append(sink.failure or exc)
        finally:
            plaintext_in.close()  # a writer still writing gets EPIPE, not a wait

    thread = threading.Thread(target=encrypt, name="age-encrypt", daemon=True)
    thread.start()
    try:
        yield plaintext_out
        plaintext_out.close()  # the end of the plaintext: the encrypter writes the final chunk
    except BaseException:
        _close_quietly(plaintext_out)
        thread.join()
        if failure:  # the cause, not the broken pipe it made
            raise failure[0] from None
        raise
    thread.join()
    if failure:
        raise failure[0]


@contextmanager
def decrypting(source: BinaryIO, identities: Sequence[Identity]) -> Iterator[BinaryIO]:
    """A reader of `source` decrypted with `identities`. Each 64 KiB chunk is authenticated before it is
    read; leaving the context raises WrongIdentity, NotIntact, or the exception reading `source` raised,
    in that order over whatever the body raised (a cut stream is the decryption's failure, not the tar's)."""
    recorded = _Recorded(_Prefixed(_bounded_header(source), source))
    read_end, write_end = os.pipe()
    plaintext_in = open(read_end, "rb", buffering=PIPE_CHUNK)  # noqa: SIM115 - closed below
    plaintext_out = open(write_end, "wb", buffering=PIPE_CHUNK)  # noqa: SIM115 - the thread closes it
    failure: list[BaseException] = []

    def decrypt() -> None:
        try:
            pyrage.decrypt_io(recorded, plaintext_out, list(identities))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader's thread
            failure.append(exc)
        finally:
            _close_quietly(plaintext_out)  # the reader sees the end

    thread = threading.Thread(target=decrypt, name="age-decrypt", daemon=True)
    thread.start()
    try:
        yield plaintext_in
    except BaseException:
        _close_quietly(plaintext_in)
        thread.join()
        _raise_decryption_failure(failure, recorded)
        raise
    _close_quietly(plaintext_in)
    thread.join()
    _raise_decryption_failure(failure, recorded)


def _bounded_header(source: BinaryIO) -> bytes:
    """The first bytes of `source`, through the end of its age header: NotIntact if the header does not end
    within MAX_HEADER bytes. A source that ends first is left to rage to call cut short."""
    head = b""
    while True:
        mac_line = head.find(HEADER_END)
        end = head.find(b"\n", mac_line + 1) if mac_line >= 0 else -1
        if end >= 0 and end < MAX_HEADER:
            return head
        if end >= 0 or len(head) >= MAX_HEADER:
            raise NotIntact(f"not an intact age file: its header is longer than {MAX_HEADER >> 10} KiB (no "
                            "etcd-backup archive has one; it was tampered with)")
        more = source.read(PIPE_CHUNK)
        if not more:
            return head
        head += more


class _Prefixed:
    """`head`, then the rest of `source`."""

    def __init__(self, head: bytes, source: BinaryIO) -> None:
        self.head, self.source = head, source

    def read(self, size: int = -1) -> bytes:
        if not self.head:
            return self.source.read(size)
        if size < 0:
            data, self.head = self.head + self.source.read(), b""
        else:
            data, self.head = self.head[:size], self.head[size:]
        return data


def _raise_decryption_failure(failure: list[BaseException], source: _Recorded) -> None:
    if not failure:
        return
    if source.failure is not None:
        raise source.failure
    message = str(failure[0])
    if "No matching keys" in message:
        # age cannot tell a header damaged in a recipient's stanza from a stanza for someone else.
        raise WrongIdentity("none of the identities given opens it: it was encrypted to other recipients (or its "
                            "header is damaged)") from None
    if "Broken pipe" in message:
        return  # the reader stopped before the end (it refused what it read): its reason is the one that counts
    raise NotIntact(f"not an intact age file ({message}): tampered with, or cut short") from None


def _close_quietly(stream: BinaryIO) -> None:
    try:
        stream.close()
    except OSError:  # a broken pipe while flushing: the other side has stopped, which is why we close
        pass
