"""The signing key's life outside the store: keygen, the config's `signing` section, the processes that need the
private key, and the rules a signature and a backup's time obey (common.signing, common.metadata)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from common.backups import backup_name
from common.config import ConfigError, load_config
from common.deltas import DeltaName, parse_delta_name
from common.metadata import BackupMetadata, parse_metadata
from common.signing import decode, encode, new_signing_key, parse_signing_key, parse_verify_key, read_signing_key
from harness.cli import COMMAND, etcd_backup

STARTED = datetime(2026, 12, 1, 6, 0, 0, 250000, tzinfo=UTC)


def metadata(started: datetime = STARTED) -> BackupMetadata:
    return BackupMetadata(filename=backup_name(STARTED), filesize=100, cluster_id="1", member_id="2",
                          endpoint="http://127.0.0.1:2379", revision=10, etcd_version="3.4.23", db_size=20480,
                          db_sha256="0" * 64, started=started.isoformat(), duration=0.5)


def write_config(tmp_path: Path, **document: object) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"etcd": {}, "backup-dir": str(tmp_path / "backups"), **document}))
    return path


def test_keygen_writes_a_private_key_once_and_prints_its_verify_key(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    done = etcd_backup("keygen", "--key-file", str(key_file))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    signer = parse_signing_key(key_file.read_text())
    assert f"verify-key: {signer.verify_key}" in done.stdout
    # Never over an existing key: losing one makes every backup signed with it unreadable.
    before = key_file.read_bytes()
    again = etcd_backup("keygen", "--key-file", str(key_file))
    assert again.returncode == 2 and "File exists" in again.stderr and key_file.read_bytes() == before


def test_config_check_shows_the_verify_key_and_its_fingerprint_and_never_the_private_key(tmp_path: Path) -> None:
    private, verify_key = new_signing_key()
    key_file = tmp_path / "signing.key"
    key_file.write_text(private + "\n")
    key_file.chmod(0o600)
    done = etcd_backup("config", "check", "--config", str(write_config(tmp_path, signing={"key-file": str(key_file)})))
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)["signing"]
    assert shown == {"verify-key": str(verify_key), "key-file": str(key_file), "fingerprint": verify_key.fingerprint}
    assert private.split(":")[1] not in done.stdout


@pytest.mark.parametrize(("section", "named", "says"), [
    ({}, "signing", "give verify-key"),
    ({"verify-key": "etcd-backup-verify-key:short"}, "signing.verify-key", "not a verify key"),
    ({"verify-key": "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"}, "signing.verify-key",
     "not a verify key"),
    ({"key-file": "KEY", "verify-key": str(new_signing_key()[1])}, "signing.verify-key", "is not the public key of"),
    ({"key-file": "NOT-A-KEY"}, "signing.key-file", "not a signing key file"),
    ({"key-file": "MISSING"}, "signing.key-file", "No such file"),
    ({"key-file": "KEY", "other": 1}, "signing.other", ""),
])
def test_a_bad_signing_section_is_one_line_naming_the_key(tmp_path: Path, section: dict[str, object], named: str,
                                                          says: str) -> None:
    key_file, not_a_key = tmp_path / "signing.key", tmp_path / "not-a-key"
    key_file.write_text(new_signing_key()[0] + "\n")
    not_a_key.write_text("AGE-SECRET-KEY-1NOTOURS\n")
    for path in (key_file, not_a_key):
        path.chmod(0o600)
    paths = {"KEY": str(key_file), "NOT-A-KEY": str(not_a_key), "MISSING": str(tmp_path / "missing")}
    section = {key: paths.get(value, value) if isinstance(value, str) else value for key, value in section.items()}
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, signing=section))
    assert str(raised.value).startswith(named) and says in str(raised.value) and "\n" not in str(raised.value)
    assert "AGE-SECRET-KEY" not in str(raised.value)


@pytest.mark.parametrize("command", ["worker", "deltas", "serve"])
def test_a_process_that_stores_refuses_to_start_with_only_the_verify_key(tmp_path: Path, command: str) -> None:
    """What it stored unsigned every reader would refuse: it says so, before it takes a backup."""
    config = write_config(tmp_path, signing={"verify-key": str(new_signing_key()[1])},
                          **{"redis-url": "redis://127.0.0.1:1/0"})
    done = etcd_backup(command, "--config", str(config), timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines()[-1].startswith("etcd-backup: signing.key-file: required"), done.stderr


def test_a_process_without_signing_warns_what_a_store_writer_can_do(tmp_path: Path) -> None:
    config = write_config(tmp_path, **{"redis-url": "redis://127.0.0.1:1/0"})
    with subprocess.Popen([COMMAND, "worker", "--config", str(config)], stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        proc.terminate()
    assert "WARNING" in line and "no signing key" in line and "can plant a backup" in line, line


# --- the rules of a signature and of a backup's time ----------------------------------------------------------


def test_a_started_outside_the_second_its_name_says_is_not_metadata() -> None:
    """A backup's time is its name's: an edited `started` (signed or not) cannot move it for --to-time, the
    status or the metrics."""
    assert parse_metadata(metadata().to_bytes(), backup_name(STARTED)) is not None
    for moved in (timedelta(hours=-1), timedelta(seconds=-0.3), timedelta(seconds=0.75), timedelta(days=3000000)):
        try:
            edited = metadata(STARTED + moved)
        except OverflowError:
            continue
        assert parse_metadata(edited.to_bytes(), backup_name(STARTED)) is None, moved
    document = json.loads(metadata().to_bytes())
    document["started"] = "9999-01-01T00:00:00+00:00"
    assert parse_metadata(json.dumps(document).encode(), backup_name(STARTED)) is None


def test_a_signature_covers_every_field_and_only_its_own_kind_of_object() -> None:
    private, verify_key = new_signing_key()
    signer, verifier = parse_signing_key(private), verify_key.verifier()
    signed = metadata()
    signature = signer.sign(signed.signed_message())
    assert verifier.verify(signed.signed_message(), signature)
    for field in dataclasses.fields(BackupMetadata):
        if field.name in ("signature", "filename", "started"):
            continue
        value = getattr(signed, field.name)
        other = {str: "x", int: 7, float: 9.5, bool: True}.get(type(value), ["edited"] if value is None else None)
        edited = dataclasses.replace(signed, **{field.name: other})
        assert not verifier.verify(edited.signed_message(), signature), field.name
    # A delta's signature over the same bytes is no metadata signature, nor the reverse.
    name = parse_delta_name(f"delta-{10:019d}-{12:019d}-20261201_060000-20261201_060001.bin.gz")
    assert isinstance(name, DeltaName)
    assert not name.signed_message(bytes(32)).startswith(signed.signed_message()[:20])


def test_a_signed_name_has_one_spelling() -> None:
    """Base64 text whose unused trailing bits differ decodes to the same bytes: that second name of one delta
    is no delta's name, or a planted copy under it would count as ours."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    signature = os.urandom(64)
    text = encode(signature)
    respelled = text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1]  # 86 characters hold 4 bits more than 64 bytes
    assert base64.urlsafe_b64decode(respelled + "==") == signature  # the same bytes...
    assert decode(text, 64) == signature and decode(respelled, 64) is None  # ...one spelling
    unsigned = f"delta-{10:019d}-{12:019d}-20261201_060000-20261201_060001"
    digest = encode(os.urandom(32))
    assert parse_delta_name(f"{unsigned}-{digest}-{text}.bin.gz") is not None
    assert parse_delta_name(f"{unsigned}-{digest}-{respelled}.bin.gz") is None
    with pytest.raises(ValueError, match="not a verify key"):
        parse_verify_key("etcd-backup-verify-key:" + encode(os.urandom(31)))


def test_a_signing_key_others_can_read_is_refused(tmp_path: Path) -> None:
    """Whoever reads it can sign a planted backup: as ssh refuses a private key, the config refuses it."""
    key_file = tmp_path / "signing.key"
    key_file.write_text(new_signing_key()[0] + "\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(tmp_path, signing={"key-file": str(key_file)}))
    assert str(raised.value).startswith("signing.key-file") and "chmod 600" in str(raised.value), raised.value
    key_file.chmod(0o600)
    assert load_config(write_config(tmp_path, signing={"key-file": str(key_file)})).signing is not None


def test_a_signing_key_file_swapped_for_a_pipe_or_a_device_is_refused_at_once(tmp_path: Path) -> None:
    """A worker reads signing.key-file when it first signs, after the config was checked: a FIFO put in its place
    (nobody writes to it) or a symlink to /dev/zero is refused at once, not waited on or read until memory ends."""
    fifo, to_zero = tmp_path / "fifo.key", tmp_path / "zero.key"
    os.mkfifo(fifo, 0o600)
    to_zero.symlink_to("/dev/zero")
    for path in (fifo, to_zero):
        raised: list[BaseException] = []

        def read(path: Path = path, raised: list[BaseException] = raised) -> None:
            try:
                read_signing_key(path)
            except BaseException as exc:  # noqa: BLE001 - what it raised is asserted below
                raised.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(5)
        blocked = reader.is_alive()
        if blocked:  # waiting in open() for a writer to the FIFO: a writer's open lets the thread end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(5)
        assert not blocked, f"reading {path.name} did not end in 5 s"
        assert len(raised) == 1 and isinstance(raised[0], OSError), raised
        assert raised[0].strerror == "not a regular file", raised


def test_a_duration_no_job_could_last_is_not_metadata() -> None:
    """A job ends at backup-timeout (1 h at most): a recorded duration of years would keep the backup "just
    completed" in /metrics and the status long after the service died."""
    assert parse_metadata(dataclasses.replace(metadata(), duration=3599.0).to_bytes(), backup_name(STARTED))
    for duration in (1e9, 7201.0, -1.0, float("nan"), float("inf")):
        edited = dataclasses.replace(metadata(), duration=duration)
        assert parse_metadata(edited.to_bytes(), backup_name(STARTED)) is None, duration
