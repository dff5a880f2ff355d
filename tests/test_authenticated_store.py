"""With `signing`, only what this service stored comes back (common.storage.authenticated), whatever else is written
to the store: tried as an attacker who can write the store and nothing else (no Redis, no signing key, no age
identity), in the three store modes (local, S3, S3 + age).

Each attack is what issue 24 found on the service without signing: a planted backup that became `latest` and was
drilled and restored with the attacker's values, an edited `started` that moved a --to-time restore across an
incident, files claiming revision 10^15 that made retention delete every real backup, a `started` in 9999 that
kept a dead service looking healthy, and planted or edited deltas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from pyrage import x25519

from common import backups
from common.config import parse_config
from common.deltas import (
    PUT,
    Event,
    Fingerprint,
    Revision,
    decode_delta,
    delta_name,
    encode_delta,
    fingerprint,
    parse_delta_name,
)
from common.signing import parse_signing_key
from common.storage import AuthenticatedStore, open_store
from harness.cli import etcd_backup
from harness.in_process import Service, served_over_http
from harness.keys import encryption, signing
from harness.report import Report
from harness.s3 import S3Server
from harness.servers import EtcdServer
from harness.writer import current_revision, keys_at
from recovery.pitr import Target, plan_restore
from recovery.restore import RestoreError
from tests.test_deltas import restored, wait_stored, watcher
from worker.backup import take_backup
from worker.drill import run_drill

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("point-in-time")]
MODES = ["local", "s3", "s3+age"]


def signed_service(mode: str, make_service: Callable[..., Service], seaweedfs: S3Server, tmp_path: Path,
                   identity: x25519.Identity, identity_file: Path, **overrides: Any) -> Service:
    settings: dict[str, Any] = {"signing": signing(tmp_path), **overrides}
    if mode.startswith("s3"):
        settings.update(seaweedfs.settings(*seaweedfs.place()))
    if mode.endswith("age"):
        settings["encryption"] = encryption(identity, identity_file)
    return make_service(**settings)


def attackers_backup(victim: Service, attacker_etcd: EtcdServer, tmp_path: Path, at: datetime) -> tuple[str, bytes,
                                                                                                         bytes]:
    """A backup of the attacker's own etcd named for `at`, as the service would take it (encrypted to the victim's
    public recipients, when it encrypts), signed with the attacker's own key: its name, archive and metadata."""
    document = {"etcd": {"endpoints": [attacker_etcd.url]}, "backup-dir": str(tmp_path / "attacker"),
                "signing": signing(tmp_path, "attacker.key")}
    if victim.config.encryption is not None:
        document["encryption"] = {"recipients": list(victim.config.encryption.recipients)}
    config = parse_config(document, {})
    store = open_store(config)
    store.prepare()
    name = take_backup(config, store, "attacker", now=lambda: at).filename
    signed = store.read_metadata(name)  # as stored: signed with the attacker's key
    opened = store.open(name)
    assert signed is not None and signed.signature is not None and opened is not None
    with opened.file as file:
        archive = file.read()
    return name, archive, signed.to_bytes()


def raw_metadata(service: Service, name: str) -> dict[str, Any]:
    raw = service.peek(backups.metadata_name(name))
    assert raw is not None
    document: dict[str, Any] = json.loads(raw)
    return document


def restore_to_time(service: Service, tmp_path: Path, when: datetime, label: str) -> tuple[str, Path]:
    data_dir = tmp_path / f"restored-{label}"
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-time", when.isoformat(),
                       "--data-dir", str(data_dir), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, data_dir


@pytest.mark.parametrize("mode", MODES)
def test_planted_replayed_and_edited_backups_are_never_listed_drilled_restored_or_counted(
        mode: str, make_service: Callable[..., Service], seaweedfs: S3Server, etcd: EtcdServer,
        redis_conn: redis.Redis, tmp_path: Path, identity: x25519.Identity, identity_file: Path,
        report: Report, caplog: pytest.LogCaptureFixture) -> None:
    service = signed_service(mode, make_service, seaweedfs, tmp_path, identity, identity_file, rotate=3)
    prefix = f"/registry/secrets/{tmp_path.name}/"
    etcd.client().put(prefix + "s1", "real")
    real = [service.client.post("/api/v1/backup").get_json()["filename"] for _ in range(3)]
    newest_real = backups.backup_time(real[-1])
    assert newest_real is not None

    # 1. A planted base: the attacker's etcd, its backup named 2 s after the newest, signed with another key.
    attacker_etcd = EtcdServer(tmp_path / "attacker-etcd").start()
    try:
        attacker_etcd.client().put(prefix + "s1", "attacker")
        planted, archive, metadata = attackers_backup(service, attacker_etcd, tmp_path,
                                                      newest_real + timedelta(seconds=2))
    finally:
        attacker_etcd.stop()
    service.plant(backups.metadata_name(planted), metadata)
    service.plant(planted, archive)
    # ... and the same without any signature.
    unsigned = backups.backup_name(newest_real + timedelta(seconds=3), encrypted=service.config.encryption is not None)
    service.plant(backups.metadata_name(unsigned),
                  json.dumps({**json.loads(metadata), "filename": unsigned, "signature": None,
                              "started": (newest_real + timedelta(seconds=3)).isoformat()}).encode())
    service.plant(unsigned, archive)
    # 2. A replay: our newest backup, archive and signed metadata, copied under a later name.
    replayed = backups.backup_name(newest_real + timedelta(seconds=4), encrypted=service.config.encryption is not None)
    service.plant(backups.metadata_name(replayed), json.dumps({**raw_metadata(service, real[-1]),
                                                                 "filename": replayed}).encode())
    service.plant(replayed, service.peek(real[-1]) or b"")
    # 3. An edited field of our oldest: its `started`, moved an hour back (its signature kept).
    edited = raw_metadata(service, real[0])
    edited["started"] = (backups.backup_time(real[0]) - timedelta(hours=1)).isoformat()  # type: ignore[operator]
    service.plant(backups.metadata_name(real[0]), json.dumps(edited).encode())
    # 4. Retention bait: two 1-byte "backups" a second before now, metadata claiming revision 10^15, started 9999.
    now = datetime.now(UTC).replace(microsecond=0)
    taken = {backups.backup_time(name) for name in service.backend.list_backups()}  # plain or .age: its second
    bait = [backups.backup_name(now - timedelta(seconds=second)) for second in range(1, 12)
            if now - timedelta(seconds=second) not in taken][:2]
    for name in bait:
        service.plant(backups.metadata_name(name), json.dumps({**json.loads(metadata), "filename": name,
                                                               "filesize": 1, "revision": 10 ** 15,
                                                               "started": "9999-01-01T00:00:00+00:00"}).encode())
        service.plant(name, b"x")
    not_ours = [planted, unsigned, replayed, real[0], *bait]

    listed = service.client.get("/api/v1/backup").get_json()
    assert listed == real[1:], listed
    # Each refusal is said once, naming the object, however often the store is listed.
    assert service.client.get("/api/v1/backup").get_json() == listed
    said = [record.getMessage() for record in caplog.records if planted in record.getMessage()]
    assert len(said) == 1 and "does not accept" in said[0], said
    detail = [entry["filename"] for entry in service.client.get("/api/v1/backup?detail=true").get_json()]
    assert detail == real[1:], detail
    for name in not_ours:
        assert service.client.get(f"/api/v1/backup/{name}").status_code == 404, name
    assert isinstance(service.store, AuthenticatedStore)
    assert set(service.store.not_ours(datetime.now(UTC))) == set(not_ours)

    drilled = run_drill(service.config, redis_conn)
    assert drilled.backup == real[-1] and drilled.passed, drilled

    output, data_dir = restore_to_time(service, tmp_path, datetime.now(UTC), "now")
    assert f"{real[-1]} (revision" in output and not any(name in output for name in not_ours), output
    assert restored(data_dir, prefix) == {(prefix + "s1").encode(): b"real"}
    # The edited backup's real time is before the hour it claims: --to-time that hour finds no backup at all.
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-time",
                       edited["started"], "--data-dir", str(tmp_path / "restored-edited"), timeout=120)
    assert done.returncode == 1 and "no full backup" in done.stderr, done.stderr

    # Retention counts only ours (rotate 3: the next backup removes the oldest of ours) and removes none of theirs.
    fourth = service.client.post("/api/v1/backup").get_json()["filename"]
    assert service.client.get("/api/v1/backup").get_json() == [*real[1:], fourth]
    assert all(service.peek(name) is not None for name in not_ours)
    # The status: the newest of ours, not the bait's year 9999; what is not ours, counted.
    status = service.client.get("/api/v1/status").get_json()
    assert status["newest"]["filename"] == fourth and status["backups"]["count"] == 3, status
    assert status["backups"]["not_ours"] == len(not_ours), status
    report(f"[{mode}] with signing: a backup of the attacker's etcd signed with another key (the newest by name), "
           "the same unsigned, our newest replayed under a later name, our oldest with `started` an hour back, two "
           "1-byte files claiming revision 10^15 and started 9999",
           f"list and ?detail=true show only {len(real) - 1} real backups, each planted name 404, not_ours() names "
           f"all {len(not_ours)}; the drill passed on {real[-1]}; restore --to-time now restored "
           f"{real[-1]} (the real value); --to-time at the edited time found no backup; rotate 3 after the "
           "next backup kept the 3 newest of ours and every planted file")


def forged_copy(data: bytes, name: str, identity: x25519.Identity | None) -> bytes:
    """Delta `name`'s bytes with every put's value changed, re-encoded as the watcher would (re-encrypted to the
    public recipient when it is encrypted: what a store writer who knows only that can do)."""
    delta = decode_delta(name, data, [identity] if identity is not None else [])
    revisions = [Revision(revision.number, revision.seen, tuple(Event(event.kind, event.key, b"forged" if event.kind
                                                                      == PUT else b"") for event in revision.events))
                 for revision in delta.revisions]
    return encode_delta(delta.previous, revisions, [identity.to_public()] if identity is not None else [])


@pytest.mark.parametrize("mode", ["local", "s3+age"])
def test_planted_and_edited_deltas_are_never_applied_and_never_stop_the_watcher(
        mode: str, make_service: Callable[..., Service], seaweedfs: S3Server, etcd: EtcdServer,
        redis_conn: redis.Redis, tmp_path: Path, identity: x25519.Identity, identity_file: Path,
        report: Report) -> None:
    service = signed_service(mode, make_service, seaweedfs, tmp_path, identity, identity_file, delta_period="200ms")
    opener = identity if service.config.encryption is not None else None
    prefix = f"/signed-deltas-{tmp_path.name}/"
    client = etcd.client()
    client.put(prefix + "before", "x")
    service.client.post("/api/v1/backup")
    with watcher(service.config, redis_conn):
        for number in range(20):
            client.put(f"{prefix}{number}", f"real-{number}")
        end = current_revision(etcd.url)
        wait_stored(redis_conn, end)
        ours = service.store.list_deltas()
        assert ours and all(parse_delta_name(name).signature is not None for name in ours)  # type: ignore[union-attr]

        # Planted: an unsigned delta after the last (the attacker's values), one signed with another key that
        # claims revision 10^15 (the watcher would take the store as past etcd), and an edited copy of our last.
        attacker = AuthenticatedStore(service.backend, parse_signing_key(
            Path(signing(tmp_path, "attacker.key")["key-file"]).read_text()).verify_key,
            tmp_path / "attacker.key")
        after = [Revision(end + offset, time.time(), (Event(PUT, f"{prefix}planted".encode(), b"attacker"),))
                 for offset in (1, 2)]
        last = decode_delta(ours[-1], service.backend.read_delta(ours[-1]) or b"", [identity] if opener else [])
        chained = fingerprint(last.revisions[-1].number, last.revisions[-1].events)
        recipients = [identity.to_public()] if opener else []
        unsigned = str(delta_name(after, encrypted=bool(opener)))
        service.backend.put_delta(unsigned, encode_delta(chained, after, recipients))
        far = [Revision(10 ** 15, time.time(), (Event(PUT, b"/far", b"attacker"),))]
        far_name = attacker.put_delta(str(delta_name(far, encrypted=bool(opener))),
                                      encode_delta(Fingerprint(10 ** 15 - 1, bytes(32)), far, recipients))
        planted = [unsigned, far_name]

        # Not ours: not listed, not in the recovery window, not applied; the restore reaches exactly our end.
        assert service.store.list_deltas() == ours
        window = service.client.get("/api/v1/recovery-window").get_json()
        assert window["latest"]["revision"] == end, window
        with pytest.raises(RestoreError, match=f"reach revision {end} "):
            plan_restore(service.store, Target(end + 2), datetime.now(UTC), [identity])
        data_dir = tmp_path / "restored"
        done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-revision", str(end),
                           "--data-dir", str(data_dir), timeout=120)
        assert done.returncode == 0, done.stderr
        assert restored(data_dir, prefix) == keys_at(etcd.url, prefix)

        # The watcher goes on storing (the 10^15 name is not ours: it does not take the store as past etcd).
        for number in range(5):
            client.put(f"{prefix}more-{number}", "real")
        later = current_revision(etcd.url)
        wait_stored(redis_conn, later)
    assert plan_restore(service.store, Target(later), datetime.now(UTC), [identity]).revision == later

    # Edited: our first delta's bytes replaced by a copy with other values, under its own signed name.
    target = ours[0]
    edited = forged_copy(service.backend.read_delta(target) or b"", target, opener)
    service.backend.delete_delta(target)
    service.backend.put_delta(target, edited)
    with pytest.raises(RestoreError, match="not the ones its signed name names"):
        plan_restore(service.store, Target(later), datetime.now(UTC), [identity])
    assert all(service.peek(name) is not None for name in planted)
    report(f"[{mode}] with signing: an unsigned delta chained after the last real one, a delta signed with another "
           "key claiming revision 10^15, then our first delta's bytes replaced by a re-encoded copy with other "
           "values (re-encrypted to the public recipient in the age mode)",
           f"the planted deltas are not listed; the recovery window ends at {end}; a restore to {end + 2} is refused "
           f"'reach revision {end}'; `restore --to-revision {end}` matches etcd key for key; the watcher stored "
           f"on to {later}; with the first delta replaced, planning refuses it: 'its bytes are not the ones its "
           "signed name names'")


def test_backups_from_before_signing_are_kept_unlisted_and_restored_only_when_asked(
        make_service: Callable[..., Service], etcd: EtcdServer, tmp_path: Path, report: Report) -> None:
    prefix = f"/before-signing-{tmp_path.name}/"
    etcd.client().put(prefix + "k", "before")
    before = make_service()
    unsigned = before.client.post("/api/v1/backup").get_json()["filename"]
    before.stop_worker()  # the next backups are the signed service's worker's
    etcd.client().put(prefix + "k", "after")
    service = make_service(signing=signing(tmp_path))  # the same backup-dir, now signed
    assert service.client.get("/api/v1/backup").get_json() == []
    # Names that are taken by what is not ours (bait for the next backup's name): it is named past them.
    now = datetime.now(UTC).replace(microsecond=0)
    bait = [name for second in range(4) if (name := backups.backup_name(now + timedelta(seconds=second)))
            != unsigned]
    for name in bait:
        service.plant(name, b"not ours")
    signed = service.client.post("/api/v1/backup")
    assert signed.status_code == 200, signed.get_json()
    assert signed.get_json()["filename"] not in bait
    assert service.client.get("/api/v1/backup").get_json() == [signed.get_json()["filename"]]

    started = datetime.fromisoformat(raw_metadata(service, unsigned)["started"])
    when = (started + timedelta(milliseconds=10)).isoformat()
    refused = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-time", when,
                          "--data-dir", str(tmp_path / "refused"), timeout=120)
    assert refused.returncode == 1 and "no full backup" in refused.stderr, refused.stderr
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-time", when, "--allow-unsigned",
                       "--data-dir", str(tmp_path / "restored"), timeout=120)
    assert done.returncode == 0 and f"{unsigned} (revision" in done.stdout, done.stderr
    assert restored(tmp_path / "restored", prefix) == {(prefix + "k").encode(): b"before"}
    report("a backup taken before signing was configured, then signing on; four non-backups planted under the "
           "names of the next four seconds",
           "the unsigned backup is not listed and `restore --to-time` its time finds no backup; with "
           "--allow-unsigned it restores it (the value it held); the next backup was named past the planted names")


def test_verify_and_restore_from_the_service_refuse_an_archive_that_is_not_the_one_its_metadata_records(
        make_service: Callable[..., Service], etcd: EtcdServer, tmp_path: Path, report: Report) -> None:
    """Another genuine backup's archive under this one's name: a good snapshot, of another moment. The service
    announces the SHA-256 its metadata records; `verify URL` and `restore URL` hold the bytes to it."""
    service = make_service()
    first = service.client.post("/api/v1/backup").get_json()["filename"]
    etcd.client().put(f"/swapped-{tmp_path.name}", "later")
    second = service.client.post("/api/v1/backup").get_json()["filename"]
    service.plant(first, service.peek(second) or b"")
    with served_over_http(service) as base:
        good = etcd_backup("verify", f"{base}/api/v1/backup/{second}")
        swapped = etcd_backup("verify", f"{base}/api/v1/backup/{first}")
        restore = etcd_backup("restore", f"{base}/api/v1/backup/{first}", "--data-dir", str(tmp_path / "restored"))
    assert good.returncode == 0, good.stderr
    for done in (swapped, restore):
        assert done.returncode == 1 and "is not the one its metadata records" in done.stderr, done.stderr
    assert not (tmp_path / "restored").exists()
    report("the archive of one backup replaced by another genuine backup's archive (a good snapshot, of another "
           "moment); `etcd-backup verify URL` and `restore URL` from the service",
           "both exit 1: 'the archive (...) is not the one its metadata records (...): replaced or damaged'; no "
           "data dir is made")


@pytest.mark.parametrize("edit", [{"started": "9999-01-01T00:00:00+00:00"}, {"duration": 1e9}],
                         ids=["started-9999", "duration-1e9"])
def test_an_edited_time_never_makes_a_dead_service_look_fresh_signed_or_not(
        make_service: Callable[..., Service], tmp_path: Path, edit: dict[str, Any], report: Report) -> None:
    service = make_service()
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    time.sleep(2.5)
    service.plant(backups.metadata_name(name), json.dumps({**raw_metadata(service, name), **edit}).encode())
    status = service.client.get("/api/v1/status").get_json()
    assert status["newest"]["filename"] == name and status["newest"]["age_seconds"] >= 2, status["newest"]
    metrics = service.client.get("/metrics").get_data(as_text=True)
    success = [float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("etcd_backup_last_success_timestamp_seconds ")]
    assert success and time.time() - success[0] >= 2, success
    report(f"without signing, the newest backup's metadata edited: {edit}",
           f"the metadata is refused (not the second its name says, or a duration no job lasts): the status says "
           f"{status['newest']['age_seconds']:.0f} s ago and /metrics' last success {time.time() - success[0]:.0f} s "
           "ago, from the backup's name")
