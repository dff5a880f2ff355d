"""A small client of the API: list backups, download one (resuming an interrupted download with Range).

It trusts nothing it receives. A name from the server (the list, `latest`, a redirect) is used only if
it is a backup name; a redirect is followed only on the service's own origin, so the token goes nowhere
else; a download is checked against its Content-Length and the SHA-256 the service sends, and written
0600, never through a symlink, into the directory asked for; every request ends by one deadline.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import http.client
import io
import json
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TextIO
from urllib.parse import SplitResult, urljoin, urlsplit

from common import backups

CHUNK = 1 << 20
PART_SUFFIX = ".part"
BACKUP_PATH = "/api/v1/backup"
READ_TIMEOUT = 60.0
"""Seconds a connect or a read may wait for the server's next byte."""
DEFAULT_DEADLINE = 3600.0
"""Seconds a whole command may talk to the service: a server that trickles (a byte now and then, never
idle for READ_TIMEOUT) is cut off by it. An hour moves a 3.6 GB backup at 1 MB/s."""
MAX_REDIRECTS = 5
MAX_LIST_BYTES = 16 << 20
"""The list of 1,000 backups is 33 KB; a bigger answer is not the service's, and is not held in memory."""
MAX_ERROR_BYTES = 64 << 10
MAX_SHOWN = 80
"""A name or an error message from the server is cut to this many characters in our one-line errors."""
REDIRECTS = (301, 302, 303, 307, 308)
HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class ClientError(Exception):
    """The service refused, could not be reached, or sent what cannot be used; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UsageError(ClientError):
    """What was given on the command line cannot be used (exit status 2)."""


def one_line(text: str, limit: int = 200) -> str:
    """`text` without control characters (newlines, NUL, terminal escapes), blanks collapsed, cut to `limit`."""
    flat = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def shown(value: object) -> str:
    """`value` as our messages quote it: repr (escapes control characters), cut short."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


NAME_FORM = "snapshot-YYYYMMDD_HHMMSS.tar.gz"


def check_name(name: object, source: str) -> str:
    """`name` if it is a backup name; else ClientError naming `source`. Such a name is a bare file name:
    it cannot leave the directory it is joined to, and prints as itself."""
    if isinstance(name, str) and backups.is_backup_name(name):
        return name
    raise ClientError(f"{source} gave {shown(name)}, which is not a backup name ({NAME_FORM}): refusing to use it")


def check_given_name(name: str) -> str:
    """A backup name given on the command line: UsageError if it is none."""
    if not backups.is_backup_name(name):
        raise UsageError(f"{shown(name)} is not a backup name ({NAME_FORM})")
    return name


class Deadline:
    """One deadline for everything a command asks of the service."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def error(self, base: str) -> ClientError:
        return ClientError(f"no complete answer from {base} within the deadline of {self.seconds:g} s "
                           "(--deadline)")


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class Body(io.RawIOBase):
    """A response body. A read waits at most READ_TIMEOUT for data, and none goes past the deadline: a timer
    shuts the socket down then, which ends whatever read is under way."""

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 deadline: Deadline, timer: threading.Timer, what: str) -> None:
        super().__init__()
        self.connection = connection
        self.response = response
        self.deadline = deadline
        self.timer = timer
        self.what = what

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # typeshed: Buffer
        try:
            # read1: what has arrived, at most one system call; read() would wait for the whole buffer.
            data = self.response.read1(len(buffer))
        except (OSError, http.client.HTTPException) as exc:
            raise self._broken(exc) from None
        if not data and self.deadline.expired():  # the timer shut the socket down: that is no end of file
            raise self.deadline.error(self.what)
        buffer[: len(data)] = data
        return len(data)

    def _broken(self, exc: BaseException) -> ClientError:
        if self.deadline.expired():
            return self.deadline.error(self.what)
        if isinstance(exc, TimeoutError):
            return ClientError(f"{self.what}: nothing received for {READ_TIMEOUT:g} s")
        return ClientError(f"{self.what}: the connection broke: {_describe(exc)}")

    def close(self) -> None:
        self.timer.cancel()
        self.response.close()
        self.connection.close()
        super().close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(str(exc) or type(exc).__name__)


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = READ_TIMEOUT,
                 deadline: float = DEFAULT_DEADLINE) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise UsageError(f"{shown(base_url)} is not the service's http:// or https:// URL")
        self.origin = _origin(parts)
        self.prefix = parts.path
        self.token = token
        self.timeout = timeout
        self.deadline = Deadline(deadline)

    def open(self, path: str, headers: dict[str, str] | None = None) -> Body:
        """GET `path` (under the service's URL), following redirects on the service's own origin only;
        a 2xx answer's body, else ClientError with the service's message."""
        url = self.base_url + path
        for _ in range(MAX_REDIRECTS + 1):
            body = self._get(url, path, headers or {})
            if body.status not in REDIRECTS:
                break
            location = body.header("Location") or ""
            body.close()
            url = self._redirect_target(url, location, path)
        else:
            raise ClientError(f"GET {path}: more than {MAX_REDIRECTS} redirects")
        if not 200 <= body.status < 300:
            with body:
                raise ClientError(f"GET {path}: {body.status} {self._message(body)}", body.status)
        return body

    def _get(self, url: str, path: str, headers: dict[str, str]) -> Body:
        parts = urlsplit(url)
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise self.deadline.error(self.base_url)
        timeout = min(self.timeout, remaining)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(parts.hostname or "", _origin(parts)[2], timeout=timeout,
                                                     context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(parts.hostname or "", _origin(parts)[2], timeout=timeout)
        timer: threading.Timer | None = None
        try:
            connection.connect()
            # The socket outlives the connection object's reference to it (the response reads from it).
            sock = connection.sock
            timer = threading.Timer(self.deadline.remaining(), _cut, (sock,))
            timer.daemon = True
            timer.start()
            request_headers = {**headers, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
            connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                               headers=request_headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            if timer is not None:
                timer.cancel()
            connection.close()
            if self.deadline.expired():
                raise self.deadline.error(self.base_url) from None
            if timer is None:  # connecting failed
                raise ClientError(f"cannot reach {self.base_url}: {_describe(exc)}") from None
            raise ClientError(f"GET {path}: no valid HTTP answer from {self.base_url}: {_describe(exc)}") from None
        return Body(connection, response, self.deadline, timer, f"GET {path}")

    def _redirect_target(self, url: str, location: str, path: str) -> str:
        """Where a redirect may go: the service's own origin and a backup path, else ClientError."""
        target = urljoin(url, location)
        parts = urlsplit(target)
        if _origin(parts) != self.origin:
            where = f"{parts.scheme}://{parts.netloc}"
            raise ClientError(f"GET {path}: redirected to {shown(where)}, not the service ({self.base_url}): "
                              "refused (the token goes to the service only)")
        resource = parts.path.removeprefix(self.prefix)
        if resource != BACKUP_PATH:
            check_name(resource.removeprefix(BACKUP_PATH + "/"), f"GET {path}: a redirect")
        return target

    def _message(self, body: Body) -> str:
        """The service's {"message": ...} (or the start of whatever else was sent), on one line."""
        raw = _read_capped(body, MAX_ERROR_BYTES)
        try:
            message = json.loads(raw)["message"]
        except (ValueError, KeyError, TypeError, IndexError, RecursionError):
            message = raw[:200].decode(errors="replace")
        return one_line(str(message))

    def get_json(self, path: str) -> object:
        """GET `path` and parse its answer as JSON (at most MAX_LIST_BYTES of it); ClientError if it is not."""
        source = f"GET {path}"
        with self.open(path) as body:
            raw = _read_capped(body, MAX_LIST_BYTES)
        if len(raw) > MAX_LIST_BYTES:
            raise ClientError(f"{source}: the answer is larger than {MAX_LIST_BYTES >> 20} MiB: not the service's")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise ClientError(f"{source}: the answer is not JSON: {shown(raw[:40])}") from None

    def details(self) -> list[dict[str, object]]:
        """The service's backups with their metadata (?detail=true), oldest first; ClientError if an entry is
        not an object named like a backup."""
        path = f"{BACKUP_PATH}?detail=true"
        entries = self.get_json(path)
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise ClientError(f"GET {path}: the answer is not a list of backups: {shown(entries)}")
        for entry in entries:
            check_name(entry.get("filename"), f"GET {path}")
        return entries

    def list(self) -> list[str]:
        """The service's backups, oldest first; ClientError if any entry is no backup name."""
        names = self.get_json(BACKUP_PATH)
        if not isinstance(names, list):
            raise ClientError(f"GET {BACKUP_PATH}: the answer is not a list of backup names: {shown(names)}")
        return [check_name(name, f"GET {BACKUP_PATH}") for name in names]

    def resolve(self, name: str) -> str:
        """`latest` is the newest current backup's name (never a stale one: a current backup taken before it
        may well hold more); any other name is itself."""
        if name != "latest":
            return name
        names = [name for name in self.list() if not backups.is_stale(name)]
        if not names:
            raise ClientError(f"{self.base_url} has no current backup (stale ones are taken by name only)")
        # The service lists backups named in the future first, so the last is the newest; if even the
        # last is in the future (all are, or an older service), which is the newest is unknown.
        if backups.is_future(names[-1], datetime.now(UTC)):
            raise ClientError(f"the newest backup listed, {names[-1]}, is named in the future (a clock was ahead): "
                              "give the name of the backup to download")
        return names[-1]

    def download(self, name: str, directory: Path, progress: TextIO | None = None,
                 check: Callable[[BinaryIO], object] | None = None) -> Path:
        """Download backup `name` (or `latest`) into `directory`; resume a `.part` file left by an
        interrupted run. `check(file)` runs on the complete, digest-checked download before it gets its
        name; if it raises, nothing is kept."""
        if name != "latest":
            check_given_name(name)
        directory_fd = _open_directory(directory)
        try:
            name = self.resolve(name)
            _refuse_existing(directory_fd, directory / name)
            part = _Part(directory_fd, directory / (name + PART_SUFFIX))
            try:
                self._fetch(name, part, progress)
            except BaseException:
                part.close(keep=not part.bad)  # a cut download is kept, to resume
                raise
            if check is not None:
                try:
                    part.file.seek(0)
                    check(part.file)
                except BaseException:
                    part.close(keep=False)  # the same bytes would come again: nothing to resume
                    raise
            part.publish(directory / name)
        finally:
            os.close(directory_fd)
        return directory / name

    def _fetch(self, name: str, part: _Part, progress: TextIO | None) -> None:
        path = f"{BACKUP_PATH}/{name}"
        have = part.size()
        try:
            body = self.open(path, {"Range": f"bytes={have}-"} if have else {})
        except ClientError as exc:
            if exc.status != 416 or not have:
                raise
            # The .part is as long as the backup or longer: not a prefix of it that Range can complete.
            have = 0
            body = self.open(path)
        with body:
            total, expected = _announced(body, path, have)
            part.start(have if body.status == 206 else 0)
            done = part.receive(body, total, name, progress)
        if done != total:
            raise ClientError(f"{name}: got {done} of {total} bytes; run again to resume")
        if expected is not None:
            actual = part.digest.hexdigest()
            if actual != expected[1]:
                part.bad = True
                raise ClientError(f"{name}: its SHA-256 is {actual}, the service sent {expected[1]} "
                                  f"({expected[0]}): not kept")


def _cut(sock: socket.socket | None) -> None:
    """End every read on `sock`, from the deadline's timer thread."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed: nothing left to end
            pass


def _read_capped(body: Body, limit: int) -> bytes:
    """At most `limit` + 1 bytes of `body`: one more than allowed tells that it is too long."""
    data = bytearray()
    while len(data) <= limit and (chunk := body.read(min(CHUNK, limit + 1 - len(data)))):
        data += chunk
    return bytes(data)


def _announced(body: Body, path: str, have: int) -> tuple[int, tuple[str, str] | None]:
    """The size of the whole backup the answer announces, and its SHA-256 with the header that said so."""
    length = body.header("Content-Length")
    # ASCII digits only, and not too many: str.isdigit() also takes "²", which int() refuses.
    if length is None or not (length.isascii() and length.isdigit() and len(length) <= 18):
        raise ClientError(f"GET {path}: the service sent no Content-Length ({shown(length)}): a cut download "
                          "could not be told from a whole one")
    if body.status == 206:
        content_range = CONTENT_RANGE.fullmatch(body.header("Content-Range") or "")
        if content_range is None or int(content_range[1]) != have or int(content_range[2]) + 1 != int(
                content_range[3]) or int(length) != int(content_range[3]) - have:
            raise ClientError(f"GET {path}: asked for bytes {have}-, got Content-Range "
                              f"{shown(body.header('Content-Range'))} with Content-Length {length}")
        total = int(content_range[3])
    elif body.status == 200:
        total = int(length)
    else:
        raise ClientError(f"GET {path}: {body.status} is no answer to a download")
    return total, announced_sha256(body, path)


def announced_sha256(body: Body, path: str) -> tuple[str, str] | None:
    """The SHA-256 of the whole backup from X-Backup-Sha256 or Repr-Digest (RFC 9530), if either is sent."""
    found: list[tuple[str, str]] = []
    if (hex_digest := body.header("X-Backup-Sha256")) is not None:
        if not HEX_SHA256.fullmatch(hex_digest.lower()):
            raise ClientError(f"GET {path}: X-Backup-Sha256 {shown(hex_digest)} is no SHA-256")
        found.append(("X-Backup-Sha256", hex_digest.lower()))
    if (repr_digest := body.header("Repr-Digest")) is not None:
        for member in repr_digest.split(","):
            algorithm, _, value = member.strip().partition("=")
            if algorithm.strip().lower() != "sha-256":
                continue
            try:
                raw = base64.b64decode(value.strip().removeprefix(":").removesuffix(":"), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != hashlib.sha256().digest_size:
                raise ClientError(f"GET {path}: Repr-Digest {shown(repr_digest)} holds no SHA-256")
            found.append(("Repr-Digest", raw.hex()))
    if len({digest for _, digest in found}) > 1:
        raise ClientError(f"GET {path}: X-Backup-Sha256 and Repr-Digest disagree: not kept")
    return found[0] if found else None


def _open_directory(directory: Path) -> int:
    """A descriptor of `directory`: every file of the download is opened relative to it, by a bare name."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ClientError(f"output directory {directory} does not exist") from None
    except NotADirectoryError:
        raise ClientError(f"output directory {directory} is not a directory") from None
    except OSError as exc:
        raise ClientError(f"cannot open output directory {directory}: {exc.strerror}") from None


def _refuse_existing(directory_fd: int, path: Path) -> None:
    try:
        os.lstat(path.name, dir_fd=directory_fd)
    except FileNotFoundError:
        return
    raise ClientError(f"{path} already exists: not overwritten (remove it to download the backup again)")


class _Part:
    """The `.part` file a download is written to: 0600, never through a symlink, a FIFO or another's file."""

    def __init__(self, directory_fd: int, path: Path) -> None:
        self.directory_fd = directory_fd
        self.path = path
        self.digest = hashlib.sha256()
        self.on_disk = False
        self.bad = False
        """The bytes are not the backup's (a wrong digest): not kept to resume."""
        self.file: BinaryIO = self._open_existing() or io.BytesIO()

    def _open_existing(self) -> BinaryIO | None:
        try:
            # O_NONBLOCK: a FIFO planted under the name does not block the open (fstat tells it is one).
            fd = os.open(self.path.name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.directory_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ClientError(f"{self.path} is a symlink: refusing to write through it (remove it)") from None
            raise ClientError(f"cannot open {self.path}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            raise ClientError(f"{self.path} is not a regular file of this user's: refusing to write to it "
                              "(remove it)")
        os.fchmod(fd, 0o600)  # left by an older client, which created it with the umask's mode
        self.on_disk = True
        return os.fdopen(fd, "r+b")

    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size if self.on_disk else 0

    def start(self, offset: int) -> None:
        """Get ready to append the bytes from `offset`: the digest covers what is kept before it."""
        if not self.on_disk:
            # O_EXCL and O_NOFOLLOW: the name is ours alone from here; fchmod: whatever the umask.
            fd = os.open(self.path.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.directory_fd)
            os.fchmod(fd, 0o600)
            self.file = os.fdopen(fd, "r+b")
            self.on_disk = True
        self.file.truncate(offset)
        self.file.seek(0)
        left = offset
        while left and (chunk := self.file.read(min(CHUNK, left))):
            self.digest.update(chunk)
            left -= len(chunk)

    def receive(self, body: Body, total: int, name: str, progress: TextIO | None) -> int:
        done = self.file.tell()
        shown_at = 0.0
        while chunk := body.read(CHUNK):
            self.file.write(chunk)
            self.digest.update(chunk)
            done += len(chunk)
            if progress is not None and (time.monotonic() - shown_at > 0.5 or done == total):
                shown_at = time.monotonic()
                width = 30
                filled = width * done // max(total, 1)
                progress.write(f"\r{name} [{'#' * filled}{'.' * (width - filled)}] {done >> 20}/{total >> 20} MiB")
                progress.flush()
        if progress is not None:
            progress.write("\n")
        self.file.flush()
        return done

    def publish(self, final: Path) -> None:
        """Give the complete download its name: link (never replaces what is there, symlink included), then
        drop the .part."""
        os.fsync(self.file.fileno())
        self.file.close()
        try:
            os.link(self.path.name, final.name, src_dir_fd=self.directory_fd, dst_dir_fd=self.directory_fd,
                    follow_symlinks=False)
        except FileExistsError:
            raise ClientError(f"{final} appeared during the download: not overwritten; the download is in "
                              f"{self.path}") from None
        os.unlink(self.path.name, dir_fd=self.directory_fd)

    def close(self, keep: bool) -> None:
        self.file.close()
        if not keep and self.on_disk:
            os.unlink(self.path.name, dir_fd=self.directory_fd)
