"""Backups in an S3-compatible bucket (`backup-dir: s3://BUCKET/PREFIX`), so that workers and the API
share nothing but Redis and the bucket.

Each backup is two objects: `PREFIX + snapshot-YYYYMMDD_HHMMSS.tar.gz` and its metadata, the same key
plus `.json`. A new backup is a multipart upload, its parts sent while etcd still streams (no temp file;
memory: a part being filled plus `concurrency` parts in flight); it becomes visible only when the
upload is completed, after its metadata, and both are written with `If-None-Match: *` (and checked
beforehand, for stores that ignore the header): a backup never replaces another. Whatever fails before
that, the upload is aborted.

Only keys directly under the prefix that are backup names and hold bytes are backups: other keys,
"directories" and empty objects are never listed, served or deleted.
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from common.backups import in_time_order, is_backup_name, is_encrypted, metadata_name, report_once
from common.config.schema import S3Config
from common.deltas import MAX_STORED_BYTES, is_delta_name
from common.metadata import MAX_METADATA_BYTES, BackupMetadata, parse_metadata
from common.storage.interface import CatalogEntry, OpenedBackup, StorageError, StoredFile

logger = logging.getLogger(__name__)

MAX_PART_SIZE = 5 << 30
"""S3's largest part."""
PARTS_PER_SIZE = 1000
"""The part size doubles after every this many parts: S3 allows 10,000 parts, and no upload needs them all."""
READ_BUFFER = 1 << 20
PRESIGN_SECONDS = 300
"""How long a presigned download URL is valid: enough to start the download, short if it leaks."""
S3_ERRORS = (ClientError, BotoCoreError)
NOT_THERE = ("404", "NoSuchKey", "NotFound")


class S3Store:
    def __init__(self, settings: S3Config) -> None:
        self.settings = settings
        _return_big_buffers_to_the_system()
        self.session = _session()
        self._session_lock = threading.Lock()
        self.client = self.new_client()
        # Where the client goes: without an endpoint in the settings, AWS or $AWS_ENDPOINT_URL (boto3's chain).
        self.where = f"{settings.url} at {settings.endpoint or self.client.meta.endpoint_url}"
        self._catalog_lock = threading.Lock()
        self._metadata_read: dict[str, tuple[str | None, BackupMetadata | None]] = {}
        """catalog's cache: each backup's metadata, and the ETag of the object it was read from."""

    def __repr__(self) -> str:
        return f"S3Store({self.where!r})"

    def new_client(self) -> Any:
        """A client of its own (from the store's session: ~10 ms). Each backup uploads with one: a client's
        retry quota, drained by an outage, would otherwise leave the next backups' parts no retry at all."""
        with self._session_lock:  # botocore sessions make clients one at a time
            return _client(self.session, self.settings)

    def prepare(self) -> None:
        self.check()

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.settings.bucket)
        except S3_ERRORS as exc:
            missing = isinstance(exc, ClientError) and _code(exc) in (*NOT_THERE, "NoSuchBucket")
            why = f"there is no bucket {self.settings.bucket} ({_describe(exc)})" if missing else _describe(exc)
            raise StorageError(f"cannot reach {self.where}: {why}") from None

    def list_backups(self, now: datetime | None = None) -> list[str]:
        names = [name for name in self._objects() if is_backup_name(name)]
        return sorted(names) if now is None else in_time_order(names, now)

    def catalog(self, now: datetime) -> list[CatalogEntry]:
        """One listing; a metadata object is read only when its ETag is not the one read before (a drill's
        update changes it). Those to read are read `concurrency` at a time: the first ?detail=true on a
        bucket of 1,000 backups is 1,000 GETs."""
        listed = self._objects()
        names = in_time_order([name for name in listed if is_backup_name(name)], now)
        tags = {name: listed[metadata_name(name)].etag for name in names if metadata_name(name) in listed}
        with self._catalog_lock:
            read = dict(self._metadata_read)
            unread = [name for name, tag in tags.items() if read.get(name, (None, None))[0] != tag]
            with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="s3-metadata") as pool:
                read.update(zip(unread, pool.map(self._read_tagged_metadata, unread), strict=True))
            # Only what this listing shows stays: the cache never outgrows the bucket's backups.
            self._metadata_read = {name: read[name] for name in tags}
        return [CatalogEntry(name, listed[name], read[name][1] if name in tags else None) for name in names]

    def stat(self, name: str) -> StoredFile | None:
        if not is_backup_name(name):
            return None
        try:
            head = self.client.head_object(Bucket=self.settings.bucket, Key=self.key(name))
        except S3_ERRORS as exc:
            if isinstance(exc, ClientError) and _code(exc) in NOT_THERE:
                return None
            raise StorageError(f"cannot read {name} in {self.where}: {_describe(exc)}") from None
        if head["ContentLength"] == 0:  # no backup is empty: not ours
            return None
        return StoredFile(size=head["ContentLength"], modified=head["LastModified"].timestamp(),
                          etag=head["ETag"].strip('"'))

    def open(self, name: str) -> OpenedBackup | None:
        stored = self.stat(name)
        if stored is None:
            return None
        reader = _ObjectReader(self.client, self.settings.bucket, self.key(name), stored)
        return OpenedBackup(file=io.BufferedReader(reader, READ_BUFFER), stored=stored)

    def download_url(self, name: str) -> str | None:
        if not self.settings.presign_downloads or self.stat(name) is None:
            return None
        # The store answers the presigned URL itself, so the headers the API sets on its own downloads are signed
        # into it (S3's response-* overrides): no-store, as the archive is every Secret of the cluster and no
        # browser or proxy cache may keep it (with its Last-Modified, a browser would cache it heuristically);
        # and attachment, saved rather than shown. No `filename=`: SeaweedFS's signature check fails on the
        # escaped `;`, `=` and space it needs, and a browser names the file after the URL's last segment, the
        # backup's name.
        url: str = self.client.generate_presigned_url(
            "get_object", ExpiresIn=PRESIGN_SECONDS,
            Params={"Bucket": self.settings.bucket, "Key": self.key(name), "ResponseCacheControl": "no-store",
                    "ResponseContentDisposition": "attachment"})
        return url

    def read_metadata(self, name: str) -> BackupMetadata | None:
        return self._read_tagged_metadata(name)[1]

    def _read_tagged_metadata(self, name: str) -> tuple[str | None, BackupMetadata | None]:
        """The metadata of `name` and the ETag of the object it was read from (None: there is none)."""
        key = self.key(metadata_name(name))
        try:
            # One byte past the limit tells a bigger object, which is not ours, without reading it all.
            got = self.client.get_object(Bucket=self.settings.bucket, Key=key, Range=f"bytes=0-{MAX_METADATA_BYTES}")
            raw = got["Body"].read(MAX_METADATA_BYTES + 1)
        except S3_ERRORS as exc:
            if isinstance(exc, ClientError) and _code(exc) in (*NOT_THERE, "InvalidRange"):  # InvalidRange: empty
                return None, None
            raise StorageError(f"cannot read {key} in {self.where}: {_describe(exc)}") from None
        metadata = parse_metadata(raw, name) if len(raw) <= MAX_METADATA_BYTES else None
        if metadata is None:
            report_once(key, "skipped: not backup metadata")
        return got["ETag"].strip('"'), metadata

    def update_metadata(self, metadata: BackupMetadata) -> None:
        self._put(metadata_name(metadata.filename), metadata.to_bytes())

    @contextmanager
    def new_backup(self, name: str, tag: str) -> Iterator[S3PendingBackup]:
        client = self.new_client()
        try:
            upload = client.create_multipart_upload(
                Bucket=self.settings.bucket, Key=self.key(name), Metadata={"etcd-backup-job": tag},
                ContentType="application/octet-stream" if is_encrypted(name) else "application/gzip",
                **self._object_options())
        except S3_ERRORS as exc:
            raise StorageError(f"cannot write to {self.where}: {_describe(exc)}") from None
        pending = S3PendingBackup(self, client, name, upload["UploadId"])
        try:
            yield pending
        except S3_ERRORS as exc:
            raise StorageError(f"cannot write {name} to {self.where}: {_describe(exc)}") from None
        finally:
            pending.close()

    def delete(self, name: str) -> bool:
        if self.stat(name) is None:  # also: not a backup name, or not ours
            return False
        try:
            for key in (self.key(name), self.key(metadata_name(name))):
                self.client.delete_object(Bucket=self.settings.bucket, Key=key)
        except S3_ERRORS as exc:
            raise StorageError(f"cannot delete {name} in {self.where}: {_describe(exc)}") from None
        return True

    def remove_unpublished(self, live_tag: Callable[[], str | None]) -> list[str]:
        """Abort the multipart uploads of dead backups. A backup starts its upload only while it holds the
        lock, so with none live (asked after looking) every upload is a dead one's. While one is live, none
        is aborted: ListMultipartUploads shows no tag to tell the live one by (and its Initiated time is the
        store's clock, which moto, for one, makes up); the next cleanup with none live takes them."""
        uploads = self._uploads()
        if live_tag() is not None:
            return []
        aborted = [key for key, upload_id in uploads if self._tidy(
            f"abort the upload of {key}", self.client.abort_multipart_upload,
            Bucket=self.settings.bucket, Key=key, UploadId=upload_id)]
        for key in aborted:
            logger.warning("aborted the upload of %s, left by an interrupted backup", key)
        return aborted

    def remove_orphan_metadata(self) -> list[str]:
        names = set(self._objects())
        orphans = [name for name in names if name.endswith(".json") and is_backup_name(name.removesuffix(".json"))
                   and name.removesuffix(".json") not in names]
        return [name for name in orphans if self._tidy(
            f"remove {name}", self.client.delete_object, Bucket=self.settings.bucket, Key=self.key(name))]

    def put_delta(self, name: str, data: bytes) -> str:
        if not is_delta_name(name):
            raise StorageError(f"{name!r} is not a delta's name")
        try:
            if self.exists(name):  # for stores that ignore If-None-Match
                raise StorageError(f"{name} already exists in {self.where}; it was not overwritten")
            self.client.put_object(Bucket=self.settings.bucket, Key=self.key(name), Body=data, IfNoneMatch="*",
                                   ContentType="application/octet-stream", **self._object_options())
        except ClientError as exc:
            raise StorageError(_exists_or(exc, name, self.where)) from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot write {name} to {self.where}: {_describe(exc)}") from None
        return name

    def list_deltas(self) -> list[str]:
        return sorted(name for name in self._objects() if is_delta_name(name))

    def read_delta(self, name: str) -> bytes | None:
        if not is_delta_name(name):
            return None
        try:
            got = self.client.get_object(Bucket=self.settings.bucket, Key=self.key(name),
                                         Range=f"bytes=0-{MAX_STORED_BYTES}")
            data: bytes = got["Body"].read(MAX_STORED_BYTES + 1)
        except S3_ERRORS as exc:
            if isinstance(exc, ClientError) and _code(exc) in (*NOT_THERE, "InvalidRange"):  # InvalidRange: empty
                return None
            raise StorageError(f"cannot read {name} in {self.where}: {_describe(exc)}") from None
        return data

    def delete_delta(self, name: str) -> bool:
        if not is_delta_name(name):
            return False
        try:
            if not self.exists(name):
                return False
            self.client.delete_object(Bucket=self.settings.bucket, Key=self.key(name))
        except S3_ERRORS as exc:
            raise StorageError(f"cannot delete {name} in {self.where}: {_describe(exc)}") from None
        return True

    def _tidy(self, what: str, call: Callable[..., object], **arguments: str) -> bool:
        """A cleanup step; one the store refuses now is logged and left for the next cleanup: it must not fail
        the backup that runs it."""
        try:
            call(**arguments)
        except S3_ERRORS as exc:
            logger.warning("cannot %s in %s: %s", what, self.where, _describe(exc))
            return False
        return True

    def put_metadata_once(self, metadata: BackupMetadata) -> None:
        """The metadata of a new backup: never over another's."""
        self._put(metadata_name(metadata.filename), metadata.to_bytes(), IfNoneMatch="*")

    def complete(self, name: str, upload_id: str, parts: list[dict[str, Any]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.settings.bucket, Key=self.key(name), UploadId=upload_id,
            MultipartUpload={"Parts": parts}, IfNoneMatch="*")

    def exists(self, key_name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.settings.bucket, Key=self.key(key_name))
        except ClientError as exc:
            if _code(exc) in NOT_THERE:
                return False
            raise
        return True

    def _put(self, key_name: str, body: bytes, **conditions: str) -> None:
        self.client.put_object(Bucket=self.settings.bucket, Key=self.key(key_name), Body=body,
                               ContentType="application/json", **self._object_options(), **conditions)

    def _object_options(self) -> dict[str, str]:
        settings, options = self.settings, {}
        if settings.sse is not None:
            options["ServerSideEncryption"] = settings.sse
        if settings.kms_key_id is not None:
            options["SSEKMSKeyId"] = settings.kms_key_id
        if settings.storage_class is not None:
            options["StorageClass"] = settings.storage_class
        return options

    def key(self, name: str) -> str:
        return self.settings.prefix + name

    def taken_names(self) -> set[str]:
        return {name for name in self._objects(empty_too=True) if is_backup_name(name)}

    def _objects(self, empty_too: bool = False) -> dict[str, StoredFile]:
        """Each object directly under the prefix that holds bytes (`empty_too`: and those that do not), by its name
        under the prefix."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=self.settings.prefix, Delimiter="/")
        objects = {}
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.settings.prefix):]
                    if item["Size"] > 0 or empty_too:
                        objects[name] = StoredFile(size=item["Size"], modified=item["LastModified"].timestamp(),
                                                   etag=item["ETag"].strip('"'))
                    elif is_backup_name(name):
                        report_once(item["Key"], "skipped: an empty object")
        except S3_ERRORS as exc:
            raise StorageError(f"cannot list {self.where}: {_describe(exc)}") from None
        return objects

    def _uploads(self) -> list[tuple[str, str]]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.settings.bucket, Prefix=self.settings.prefix)
        try:
            return [(upload["Key"], upload["UploadId"]) for page in pages for upload in page.get("Uploads", [])
                    if is_backup_name(upload["Key"][len(self.settings.prefix):])]
        except S3_ERRORS as exc:
            raise StorageError(f"cannot list the uploads in {self.where}: {_describe(exc)}") from None


class S3PendingBackup:
    """A multipart upload being filled: full parts go on a small thread pool while the next one fills.

    Memory is `concurrency` + 1 part buffers, allocated once and reused: a fresh 16 MiB `bytes` per part
    left the allocator's heap fragmented, and the worker grew by a part or more with every backup.
    """

    def __init__(self, store: S3Store, client: Any, name: str, upload_id: str) -> None:
        self.store, self.client, self.name, self.upload_id = store, client, name, upload_id
        self.part = bytearray(store.settings.part_size)
        self.filled = 0
        self.spare: list[bytearray] = []
        """Buffers whose upload is done, to fill again (appended by the upload threads)."""
        self.parts: list[Future[dict[str, Any]]] = []
        self.slots = threading.BoundedSemaphore(store.settings.concurrency)
        self.pool = ThreadPoolExecutor(store.settings.concurrency, thread_name_prefix="s3-part")
        self.published = False

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            taken = min(len(self.part) - self.filled, len(view))
            self.part[self.filled:self.filled + taken] = view[:taken]
            self.filled += taken
            view = view[taken:]
            if self.filled == len(self.part):
                self._send()
        return len(data)

    def flush(self) -> None:
        """Parts go out when full: S3 takes no part under 5 MiB but the last."""

    def publish(self, metadata: BackupMetadata) -> None:
        if self.filled or not self.parts:
            self._send()
        parts = [part.result() for part in self.parts]
        if self.store.exists(self.name) or self.store.exists(metadata_name(self.name)):
            raise StorageError(f"{self.name} already exists in {self.store.where}; it was not overwritten")
        try:
            self.store.put_metadata_once(metadata)
        except ClientError as exc:
            raise StorageError(_exists_or(exc, self.name, self.store.where)) from None
        try:
            self.store.complete(self.name, self.upload_id, parts)
        except BaseException as exc:
            self._remove_metadata()
            if isinstance(exc, ClientError):
                raise StorageError(_exists_or(exc, self.name, self.store.where)) from None
            raise
        self.published = True

    def _remove_metadata(self) -> None:
        """The metadata goes again when its archive could not follow; if the store cannot take that either,
        the next backup removes it (remove_orphan_metadata): the failure that matters is the first one."""
        try:
            self.client.delete_object(Bucket=self.store.settings.bucket,
                                            Key=self.store.key(metadata_name(self.name)))
        except S3_ERRORS as exc:
            logger.warning("cannot remove the metadata of %s: %s", self.name, _describe(exc))

    def close(self) -> None:
        """Stop the part uploads; abort the upload unless it was published. The part buffers go now, not
        whenever the garbage collector gets to the futures' callbacks (a cycle through self)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.part, self.spare, self.parts = bytearray(), [], []
        if not self.published:
            try:
                self.client.abort_multipart_upload(Bucket=self.store.settings.bucket,
                                                         Key=self.store.key(self.name), UploadId=self.upload_id)
            except S3_ERRORS as exc:  # the next worker start aborts it (remove_unpublished)
                logger.warning("cannot abort the upload of %s: %s", self.name, _describe(exc))

    def _send(self) -> None:
        """Upload the part filled so far, and take a buffer for the next."""
        self.slots.acquire()  # at most `concurrency` parts in flight: memory stays bounded
        # Checked after the wait for a slot: a part that failed (retries spent) during it fails the upload,
        # and no further part goes to a store that refuses them.
        for done in self.parts:
            if done.done() and done.exception() is not None:
                self.slots.release()
                raise done.exception()  # type: ignore[misc]
        number = len(self.parts) + 1
        future = self.pool.submit(self._upload, number, self.part, self.filled)
        future.add_done_callback(lambda _: self.slots.release())
        self.parts.append(future)
        size = part_size(self.store.settings.part_size, number + 1)
        spare = self.spare.pop() if self.spare else None
        self.part = spare if spare is not None and len(spare) == size else bytearray(size)
        self.filled = 0

    def _upload(self, number: int, buffer: bytearray, length: int) -> dict[str, Any]:
        # botocore takes bytes or a bytearray, not a memoryview: a full part goes as it is, the last one copied.
        body = buffer if length == len(buffer) else bytes(memoryview(buffer)[:length])
        answer = self.client.upload_part(Bucket=self.store.settings.bucket, Key=self.store.key(self.name),
                                               UploadId=self.upload_id, PartNumber=number, Body=body)
        self.spare.append(buffer)  # before the slot is released: the writer finds it there
        return {"ETag": answer["ETag"], "PartNumber": number}


class _ObjectReader(io.RawIOBase):
    """An object read from a position on (a ranged GET), seekable for HTTP ranges. `If-Match` its ETag: an
    object replaced while it is read fails the read rather than mixing two backups."""

    def __init__(self, client: Any, bucket: str, key: str, stored: StoredFile) -> None:
        self.client, self.bucket, self.key, self.stored = client, bucket, key, stored
        self.position = 0
        self.body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.stored.size}[whence]
        if base + offset != self.position:
            self._drop_body()
            self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.stored.size:
            return 0
        if self.body is None:
            try:
                self.body = self.client.get_object(Bucket=self.bucket, Key=self.key, IfMatch=f'"{self.stored.etag}"',
                                                   Range=f"bytes={self.position}-")["Body"]
            except S3_ERRORS as exc:
                raise OSError(f"cannot read {self.key}: {_describe(exc)}") from None
        data = self.body.read(len(buffer))
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        self._drop_body()
        super().close()

    def _drop_body(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None


def part_size(first: int, number: int) -> int:
    """The size of part `number` (from 1): `first`, doubled after every PARTS_PER_SIZE parts, so that the
    10,000 parts S3 allows hold any etcd database (16 MiB parts: 16 GB in the first 1,000)."""
    return min(first << ((number - 1) // PARTS_PER_SIZE), MAX_PART_SIZE)


M_MMAP_THRESHOLD = -3
"""glibc's mallopt() parameter: the size from which malloc maps memory of its own, unmapped when freed."""


@functools.cache
def _return_big_buffers_to_the_system() -> None:
    """Fix glibc's mmap threshold at 1 MiB. It is dynamic by default: once a mapped block (a 16 MiB part
    buffer) is freed, it rises above that size, and the next backups' part buffers come from the heap,
    between the pipeline's small allocations, which it then cannot give back: a worker grew 16 MB a backup
    (152 -> 231 MB peak over 6 backups of a 300 MB database). Not glibc (musl): nothing to do."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


def _session() -> boto3.session.Session:
    """One per store: its clients share what botocore loaded (the service model), so a client takes ~10 ms."""
    session = botocore.session.get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    return boto3.session.Session(botocore_session=session)


def _client(session: boto3.session.Session, settings: S3Config) -> Any:
    config = BotoConfig(
        # The 2025 SDKs send and demand CRC checksums by default; many S3-compatible stores refuse them.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60,
        s3={"addressing_style": settings.addressing_style}, max_pool_connections=settings.concurrency + 8,
    )
    verify: bool | str | None = False if settings.insecure_skip_verify else (
        None if settings.ca_file is None else str(settings.ca_file))
    return session.client(
        "s3", endpoint_url=settings.endpoint, region_name=settings.region, verify=verify, config=config,
        aws_access_key_id=settings.access_key_id, aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token)


def _parse_timestamp(value: Any) -> datetime:
    """A listing gives each key's LastModified in ISO 8601, which botocore parses with dateutil at ~140 µs a
    key: most of the time a listing of 1,000 backups took. fromisoformat takes it in a microsecond; any other
    form (the HTTP dates of HEAD's headers) goes to botocore's own parser."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        parsed = botocore_parse_timestamp(value)
    return cast(datetime, parsed)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: Exception) -> str:
    """The store's error, in one line and without a secret (botocore's messages carry none)."""
    return " ".join(str(exc).split())[:300]


def _exists_or(exc: ClientError, name: str, where: str) -> str:
    if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
        return f"{name} already exists in {where}; it was not overwritten"
    return f"cannot write {name} to {where}: {_describe(exc)}"

