"""Adversary tests for encrypted backups (common.encryption), the S3 catalog cache and the S3 part buffers.

Written by an adversary review. Two of them failed until the service was fixed: a planted `.tar.gz.age`
whose age header runs to a few megabytes kept a worker's core busy for minutes to hours (rage re-parses
a growing header from its start: quadratic), and a plaintext archive planted under an encrypted backup's
name (or an encrypted one under a plain name) was verified, and drilled, as "good"."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyrage
import pytest
import redis
import yaml
from pyrage import x25519

from common import backups
from common.config import parse_config
from common.encryption import AGE_MAGIC, MAX_HEADER, NotIntact, decrypting
from common.metadata import BackupMetadata
from common.storage import S3Store, StorageError
from harness.cli import etcd_backup
from harness.in_process import Service
from harness.keys import encryption
from harness.report import Report
from harness.s3 import S3Server
from harness.servers import EtcdServer
from recovery.verify import VerifyError
from worker.archive import write_archive
from worker.backup import take_backup
from worker.drill import run_drill

NAME = "snapshot-20260101_000000.tar.gz.age"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def post_backup(service: Service) -> dict[str, Any]:
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    body: dict[str, Any] = answer.get_json()
    return body


def later_name(name: str, seconds: int, encrypted: bool) -> str:
    moment = backups.backup_time(name)
    assert moment is not None
    return backups.backup_name(moment + timedelta(seconds=seconds), encrypted=encrypted)


def plant_backup(service: Service, name: str, data: bytes, metadata: BackupMetadata) -> None:
    """A backup as someone who can write to the store would leave one: the archive and a matching metadata."""
    document = {**metadata.to_json(), "filename": name, "filesize": len(data),
                "archive_sha256": hashlib.sha256(data).hexdigest(),
                "recipients": metadata.recipients if backups.is_encrypted(name) else None}
    if backups.is_encrypted(name) and not document["recipients"]:
        document["recipients"] = ["age1forged"]
    service.plant(backups.metadata_name(name), json.dumps(document).encode())
    service.plant(name, data)


def huge_header(body_bytes: int) -> bytes:
    """An age header whose one stanza has `body_bytes` of well-formed 64-column lines, and no end."""
    line = b"A" * 64 + b"\n"
    return AGE_MAGIC + b"-> X25519 " + b"A" * 43 + b"\n" + line * (body_bytes // len(line))


# ---------------------------------------------------------------- planted age files


def test_an_age_header_of_megabytes_is_refused_at_once_not_parsed_for_hours(
        make_service: Callable[..., Service], identity: x25519.Identity, identity_file: Path, tmp_path: Path,
        redis_conn: redis.Redis, report: Report) -> None:
    service = make_service(encryption=encryption(identity, identity_file))
    real = post_backup(service)["filename"]
    planted = later_name(real, 1, encrypted=True)  # the newest: the drill's pick
    service.plant(planted, huge_header(2 << 20))

    began = time.monotonic()
    answer = service.client.post(f"/api/v1/backup/{planted}/verify")
    verify_seconds = time.monotonic() - began
    assert answer.status_code != 200 and "header is longer than" in answer.get_json()["message"], answer.get_json()
    began = time.monotonic()
    drilled = run_drill(service.config, redis_conn)
    drill_seconds = time.monotonic() - began
    assert drilled.backup == planted and not drilled.passed and "header is longer than" in drilled.reason
    path = tmp_path / planted
    path.write_bytes(service.read_backup(planted))
    began = time.monotonic()
    done = etcd_backup("verify", str(path), "--identity", str(identity_file))
    cli_seconds = time.monotonic() - began
    assert done.returncode == 1 and "header is longer than" in done.stderr, done.stderr
    # Before the fix: 36 s for a 1.6 MB header, the square of that for each doubling.
    assert max(verify_seconds, drill_seconds, cli_seconds) < 10
    # A real header ends well within the bound; one just under it is still read at once.
    with pytest.raises(NotIntact):
        with decrypting(io.BytesIO(huge_header(MAX_HEADER - 200) + b"--- " + b"A" * 43 + b"\n" + os.urandom(100)),
                        [identity]) as plaintext:
            plaintext.read()
    report("a planted snapshot-*.tar.gz.age (the newest) whose age header is one stanza of 2 MB of base64 lines: "
           "POST .../verify, the restore drill, `etcd-backup verify --identity`",
           f"before the fix rage re-parsed the growing header (1.6 MB: 36 s of a core, 16 MB: about an hour); now "
           f"refused at {MAX_HEADER >> 10} KiB: verify job {answer.status_code} in {verify_seconds:.1f}s, drill "
           f"failed in {drill_seconds:.1f}s, CLI exit 1 in {cli_seconds:.1f}s: 'header is longer than "
           f"{MAX_HEADER >> 10} KiB'")


def test_a_plaintext_archive_under_an_encrypted_name_and_the_reverse_are_never_good(
        make_service: Callable[..., Service], identity: x25519.Identity, identity_file: Path, tmp_path: Path,
        redis_conn: redis.Redis, report: Report) -> None:
    service = make_service(encryption=encryption(identity, identity_file))
    real = post_backup(service)
    encrypted = service.read_backup(real["filename"])
    plain = pyrage.decrypt(encrypted, [identity])  # the same snapshot, in the clear: its metadata matches
    metadata = service.store.read_metadata(real["filename"])
    assert metadata is not None

    plain_as_age = later_name(real["filename"], 1, encrypted=True)
    age_as_plain = later_name(real["filename"], 2, encrypted=False)
    plant_backup(service, plain_as_age, plain, metadata)
    plant_backup(service, age_as_plain, encrypted, metadata)
    listed = service.client.get("/api/v1/backup").get_json()
    assert plain_as_age in listed and age_as_plain in listed

    plain_answer = service.client.post(f"/api/v1/backup/{plain_as_age}/verify")
    assert plain_answer.status_code != 200, plain_answer.get_json()
    assert "not age-encrypted" in plain_answer.get_json()["message"]
    age_answer = service.client.post(f"/api/v1/backup/{age_as_plain}/verify")
    assert age_answer.status_code != 200 and "says it is not" in age_answer.get_json()["message"]
    drilled = run_drill(service.config, redis_conn)  # the newest current backup is the encrypted one planted plain
    assert drilled.backup == age_as_plain and not drilled.passed, drilled

    on_disk = tmp_path / plain_as_age
    on_disk.write_bytes(plain)
    done = etcd_backup("verify", str(on_disk), "--identity", str(identity_file))
    assert done.returncode == 1 and "not age-encrypted" in done.stderr, done.stdout + done.stderr
    renamed = tmp_path / "downloaded.bin"  # an operator's own name says nothing: the content decides
    renamed.write_bytes(plain)
    assert etcd_backup("verify", str(renamed)).returncode == 0
    # The real one is still good.
    assert service.client.post(f"/api/v1/backup/{real['filename']}/verify").status_code == 200
    report("planted beside a real encrypted backup, each with metadata matching its snapshot: the same snapshot "
           "decrypted, as snapshot-*.tar.gz.age; the encrypted archive as snapshot-*.tar.gz; verify job, drill, CLI",
           f"before the fix both verified 200 'good' and the drill passed on the one it picked; now the verify job "
           f"answers {plain_answer.status_code} {plain_answer.get_json()['message'][:70]!r} and "
           f"{age_answer.status_code} {age_answer.get_json()['message'][:60]!r}, the drill fails, the CLI exits 1 "
           "on a backup's name (and checks a file of another name by its content)")


# ---------------------------------------------------------------- the encrypting pipeline under failure


class _Sink:
    def __init__(self, fail_after: int | None = None, delay: float = 0.0, block: threading.Event | None = None):
        self.data = bytearray()
        self.fail_after, self.delay, self.block = fail_after, delay, block

    def write(self, data: bytes) -> int:
        if self.block is not None:
            self.block.wait()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_after is not None and len(self.data) + len(data) > self.fail_after:
            raise StorageError("the store refuses")
        self.data += data
        return len(data)

    def flush(self) -> None:
        pass


def _chunks(count: int, die_at: int | None = None) -> Iterator[bytes]:
    for number in range(count):
        if number == die_at:
            raise ConnectionError("etcd died")
        yield random.randbytes(32 << 10)


def test_failing_encrypted_archives_never_hang_nor_leak_threads_or_descriptors(identity: x25519.Identity,
                                                                               report: Report) -> None:
    recipient = [str(identity.to_public())]
    size = 40 * (32 << 10)
    gc.collect()
    fds, threads = open_fds(), threading.active_count()
    outcomes: dict[str, int] = {}
    began = time.monotonic()
    for round_ in range(60):
        cases: list[tuple[str, _Sink, Iterator[bytes]]] = [
            ("store refuses", _Sink(fail_after=round_ * 997), _chunks(40)),
            ("etcd dies", _Sink(), _chunks(40, die_at=round_ % 40)),
            ("slow store refuses", _Sink(fail_after=200_000, delay=0.0005), _chunks(40)),
        ]
        for case, sink, chunks in cases:
            try:
                write_archive(sink, NAME, datetime.now(UTC), size, chunks, 1, recipient)
                outcome = "written"
            except (StorageError, ConnectionError) as exc:
                outcome = type(exc).__name__
            outcomes[f"{case}: {outcome}"] = outcomes.get(f"{case}: {outcome}", 0) + 1
    # A reader that stops early, and one that raises, on a stream bigger than the pipes hold.
    good = _Sink()
    write_archive(good, NAME, datetime.now(UTC), size, _chunks(40), 1, recipient)
    for _ in range(30):
        with decrypting(io.BytesIO(bytes(good.data)), [identity]) as plaintext:
            plaintext.read(10)
        with pytest.raises(VerifyError), decrypting(io.BytesIO(bytes(good.data)), [identity]) as plaintext:
            plaintext.read(1000)
            raise VerifyError("the reader refused what it read")
    # A store that blocks, then refuses: the archive fails once it is released, nothing waits for ever.
    release = threading.Event()
    blocked = _Sink(fail_after=0, block=release)
    failure: list[BaseException] = []

    def write_blocked() -> None:
        try:
            write_archive(blocked, NAME, datetime.now(UTC), size, _chunks(40), 1, recipient)
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)

    writer = threading.Thread(target=write_blocked)
    writer.start()
    time.sleep(0.5)
    release.set()
    writer.join(20)
    assert not writer.is_alive() and isinstance(failure[0], StorageError), failure
    seconds = time.monotonic() - began
    assert outcomes.get("etcd dies: written", 0) == 0 and outcomes.get("slow store refuses: written", 0) == 0, outcomes
    gc.collect()
    assert (open_fds(), threading.active_count()) == (fds, threads)
    report("180 encrypted archives in one process whose store refuses (at every offset), whose etcd stream dies "
           "(at every chunk), whose slow store refuses; 60 decryptions whose reader stops early or raises; a store "
           "that blocks then refuses",
           f"each fails with the store's or the stream's own error ({outcomes}), in {seconds:.1f}s in all, none "
           f"hangs; descriptors {fds} -> {open_fds()}, threads {threads} -> {threading.active_count()}")


# ---------------------------------------------------------------- what reaches the bucket


def test_no_part_sent_to_the_bucket_holds_plaintext_even_when_the_backup_fails(
        make_service: Callable[..., Service], moto: S3Server, etcd: EtcdServer, identity: x25519.Identity,
        identity_file: Path, caplog: pytest.LogCaptureFixture, report: Report) -> None:
    client = etcd.client()
    values = [random.randbytes(1 << 20) for _ in range(12)]  # incompressible: three 5 MiB parts
    for number, value in enumerate(values):
        client.put(f"/adversary/secret-{number}", value)
    client.close()
    settings = moto.settings(*moto.place())
    settings["s3"].update({"part-size": 5 << 20, "concurrency": 3})
    service = make_service(worker=False, encryption=encryption(identity, identity_file), **settings)
    sent: list[tuple[int, bytes]] = []

    def store_recording(fail_part: int | None) -> S3Store:
        assert service.config.s3 is not None
        store = S3Store(service.config.s3)  # not open_store's, which it caches per process

        def recording(upload_part: Callable[..., Any]) -> Callable[..., Any]:
            def record(**arguments: Any) -> Any:
                sent.append((arguments["PartNumber"], bytes(arguments["Body"])))
                if arguments["PartNumber"] == fail_part:
                    raise StorageError("the store refuses part 2")
                return upload_part(**arguments)
            return record

        upload_with(store, recording)
        return store

    caplog.set_level("DEBUG")
    with pytest.raises(Exception, match="refuses part 2"):
        take_backup(service.config, store_recording(fail_part=2), "job-1")
    metadata = take_backup(service.config, store_recording(fail_part=None), "job-2")
    assert service.store.list_backups() == [metadata.filename]  # the failed one is nowhere
    plaintext = pyrage.decrypt(service.read_backup(metadata.filename), [identity])
    assert plaintext.startswith(b"\x1f\x8b")  # the .tar.gz the parts must never show
    samples = [plaintext[start:start + 64] for start in range(0, len(plaintext) - 64, len(plaintext) // 50)]
    samples += [value[start:start + 64] for value in values for start in (0, 500_000)]
    firsts = [body for number, body in sent if number == 1]
    assert len(firsts) == 2 and all(body.startswith(AGE_MAGIC) for body in firsts) and len(sent) >= 4
    assert not any(b"snapshot-" in body or any(sample in body for sample in samples) for _, body in sent)
    assert str(identity) not in caplog.text
    client = etcd.client()
    client.delete_prefix("/adversary/")
    client.close()
    report("encryption on, 12 MB of random values in etcd, S3 parts of 5 MiB at concurrency 3: a backup whose "
           "part 2 is refused, then one that succeeds; every part body recorded as sent",
           f"{len(sent)} parts sent, both uploads' first part opening with the age magic; none holds the gzip/tar "
           f"header's name nor any of {len(samples)} 64-byte slices of the plaintext .tar.gz or of the values; the "
           "failed backup is not listed; no identity in the DEBUG log")


# ---------------------------------------------------------------- the S3 catalog cache


def test_the_catalog_cache_rereads_only_changed_metadata_and_never_serves_stale_or_foreign_metadata(
        s3_service: Callable[..., Service], report: Report) -> None:
    service = s3_service()
    first, second = (post_backup(service)["filename"] for _ in range(2))
    assert service.config.s3 is not None
    store = S3Store(service.config.s3)  # not open_store's, which it caches per process
    gets: list[str] = []
    get_object = store.client.get_object

    def counting(**arguments: Any) -> Any:
        gets.append(arguments["Key"])
        return get_object(**arguments)

    store.client.get_object = counting

    def catalog() -> dict[str, BackupMetadata | None]:
        return {entry.name: entry.metadata for entry in store.catalog(datetime.now(UTC))}

    assert all(catalog().values()) and len(gets) == 2
    gets.clear()
    cached = catalog()
    assert gets == [] and all(cached.values())  # SeaweedFS's listing ETag is the one its GET gave

    # Replaced in place, the same size (a digit of the duration): a new ETag, read again.
    raw = service.peek(backups.metadata_name(first))
    assert raw is not None
    document = json.loads(raw)
    document["key_count"] = 4242424242
    service.plant(backups.metadata_name(first), json.dumps(document).encode())
    assert catalog()[first].key_count == 4242424242  # type: ignore[union-attr]
    # Another backup's metadata under this one's name: not this backup's.
    foreign = service.peek(backups.metadata_name(second))
    assert foreign is not None
    service.plant(backups.metadata_name(first), foreign)
    assert catalog()[first] is None
    # Deleted: none; deleted with its backup: gone from the cache too.
    store.client.delete_object(Bucket=store.settings.bucket, Key=store.key(backups.metadata_name(first)))
    assert catalog()[first] is None
    assert store.delete(second)
    assert list(catalog()) == [first] and set(store._metadata_read) == set()
    # The second re-created under its name with its old metadata: read again, not taken from before.
    service.plant(second, b"x" * 100)
    service.plant(backups.metadata_name(second), foreign)
    gets.clear()
    assert catalog()[second] is not None and len(gets) == 1
    report("the S3 catalog (SeaweedFS): listed twice; a metadata replaced by one of the same size; by another "
           "backup's; deleted; its backup deleted; re-created",
           "the second listing read no metadata; the same-size replacement was read again (its new key_count "
           "shown), another backup's was refused, a deleted one was None, a deleted backup left the cache, a "
           "re-created one was read again")


# ---------------------------------------------------------------- the S3 part buffers


def upload_with(store: S3Store, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Each backup uploads with a client of its own (S3Store.new_client): wrap the upload_part of each."""
    new_client = store.new_client

    def wrapped_client() -> Any:
        client = new_client()
        client.upload_part = wrap(client.upload_part)
        return client

    store.new_client = wrapped_client  # type: ignore[method-assign]


def test_part_buffers_are_never_refilled_while_a_part_is_still_being_sent(moto: S3Server, report: Report) -> None:
    config = parse_config({"etcd": {}, **moto.settings(*moto.place())}, {})
    assert config.s3 is not None
    store = S3Store(dataclasses.replace(config.s3, part_size=5 << 20, concurrency=3))
    changed: list[int] = []

    def slow_and_retried(upload_part: Callable[..., Any]) -> Callable[..., Any]:
        def send_twice(**arguments: Any) -> Any:
            body = arguments["Body"]
            before = hashlib.sha256(body).digest()
            time.sleep(random.uniform(0, 0.3))
            upload_part(**arguments)  # a first attempt, then the retry botocore would make, of the same body
            time.sleep(random.uniform(0, 0.3))
            answer = upload_part(**arguments)
            if hashlib.sha256(body).digest() != before:
                changed.append(arguments["PartNumber"])
            return answer
        return send_twice

    upload_with(store, slow_and_retried)
    threads = threading.active_count()
    for round_ in range(3):
        written = hashlib.sha256()
        name = f"snapshot-2026010{round_ + 1}_000000.tar.gz"
        with store.new_backup(name, f"job-{round_}") as pending:
            for _ in range(70):
                data = random.randbytes(random.randrange(1, 900_000))
                written.update(data)
                pending.write(data)
            pending.publish(BackupMetadata(
                filename=name, filesize=1, cluster_id="1", member_id="1", endpoint="x", revision=1,
                etcd_version="3.4", db_size=1, db_sha256="0" * 64, started=datetime.now(UTC).isoformat(),
                duration=0.0))
        opened = store.open(name)
        assert opened is not None
        with opened.file as file:
            assert hashlib.sha256(file.read()).digest() == written.digest(), f"backup {name} is corrupt"
    assert changed == [] and threading.active_count() == threads
    # A part refused: the backup fails at once, aborted, nothing waits.
    def refused(upload_part: Callable[..., Any]) -> Callable[..., Any]:
        def refuse(**arguments: Any) -> Any:
            raise StorageError("refused")
        return refuse

    upload_with(store, refused)
    began = time.monotonic()
    with pytest.raises(StorageError), store.new_backup("snapshot-20260201_000000.tar.gz", "job-x") as pending:
        for _ in range(40):
            pending.write(random.randbytes(1 << 20))
    assert time.monotonic() - began < 10 and threading.active_count() == threads
    assert "snapshot-20260201_000000.tar.gz" not in store.list_backups()
    report("S3 uploads of ~30 MB in writes of random sizes, 5 MiB parts, concurrency 3, each part sent twice "
           "(a retry) with random delays; then a store that refuses every part",
           "no part's buffer changed while it was being sent, each backup reads back with the SHA-256 written, "
           "no upload thread left; the refused upload failed within seconds, not listed")


# ---------------------------------------------------------------- the identity, never printed


def test_an_identity_given_where_its_file_belongs_is_never_printed(
        make_service: Callable[..., Service], identity: x25519.Identity, identity_file: Path, tmp_path: Path,
        report: Report) -> None:
    secret = str(identity)
    pasted_ssh = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n"
                  "-----END OPENSSH PRIVATE KEY-----\n")
    config = tmp_path / "config.yml"
    seen: list[str] = []
    for given in (secret, secret.lower(), pasted_ssh):
        config.write_text(yaml.safe_dump({"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                                          "backup-dir": str(tmp_path / "b"),
                                          "encryption": {"recipients": [str(identity.to_public())],
                                                         "identity-file": given}}))
        checked = etcd_backup("--config", str(config), "config", "check")
        assert checked.returncode == 2 and "encryption.identity-file" in checked.stderr, checked.stderr
        seen.append(checked.stdout + checked.stderr)
    service = make_service(encryption=encryption(identity, identity_file))
    name = post_backup(service)["filename"]
    path = tmp_path / name
    path.write_bytes(service.read_backup(name))
    flag = etcd_backup("verify", str(path), "--identity", secret)
    from_env = etcd_backup("verify", str(path), env={"ETCD_BACKUP_IDENTITY": secret})
    for done in (flag, from_env):
        assert done.returncode == 1 and "cannot read the identity file" in done.stderr, done.stderr
        seen.append(done.stdout + done.stderr)
    for url in ("/metrics", "/api/v1/backup?detail=true", f"/api/v1/backup/{name}", "/"):
        answer = service.client.get(url)
        seen.append(answer.get_data().decode("utf-8", "replace"))
        answer.close()
    seen.append(service.client.post(f"/api/v1/backup/{name}/verify").get_data(as_text=True))
    for text in seen:
        assert secret not in text and secret.lower() not in text and "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU" not in text
    report("an age identity (and an OpenSSH private key) pasted where its file's path belongs: the config's "
           "identity-file (config check), `verify --identity`, $ETCD_BACKUP_IDENTITY; then /metrics, the detail "
           "list, a download, the status page, a verify job",
           "before the fix each of the three echoed the key in its error ('encryption.identity-file: "
           "AGE-SECRET-KEY-1...: No such file or directory'); now exit 2 / exit 1 naming the setting and saying a "
           f"secret key was given ({flag.stderr.strip()[-80:]!r}); no answer holds the identity")
