"""Encrypted backups (the `encryption` section): age, streamed, on both stores; the whole recovery path
(verify, restore, download, the drill, the verify job) opens them with the identity, and nothing else can."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyrage
import pytest
import redis
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pyrage import x25519

from common import backups
from common.config import ConfigError, load_config, parse_config
from common.encryption import AGE_MAGIC
from harness.cli import etcd_backup, on_terminal
from harness.files import write_private
from harness.in_process import Service, fetch, served_over_http
from harness.keys import encryption
from harness.report import Report
from harness.servers import EtcdServer, restored_keys
from worker.drill import run_drill


def put_keys(etcd: EtcdServer, prefix: str, count: int = 20) -> dict[str, bytes]:
    client = etcd.client()
    written = {f"{prefix}/key-{number}": f"secret-{number}".encode() for number in range(count)}
    for key, value in written.items():
        client.put(key, value)
    client.close()
    return written


def test_a_backup_is_encrypted_to_the_recipients_and_opens_only_with_the_identity(
        make_service_on_backend: Callable[..., Service], etcd: EtcdServer, identity: x25519.Identity,
        identity_file: Path, tmp_path: Path, report: Report) -> None:
    written = put_keys(etcd, "/encrypted")
    service = make_service_on_backend(encryption=encryption(identity, identity_file))
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    name = answer.get_json()["filename"]
    assert name.endswith(".tar.gz.age") and backups.is_encrypted(name)
    assert service.client.get("/api/v1/backup").get_json() == [name]

    stored = service.read_backup(name)
    assert stored.startswith(AGE_MAGIC) and answer.get_json()["filesize"] == len(stored)
    assert not any(value in stored for value in written.values())  # no Secret in the clear
    with pytest.raises(pyrage.DecryptError, match="No matching keys"):
        pyrage.decrypt(stored, [x25519.Identity.generate()])
    with tarfile.open(fileobj=io.BytesIO(pyrage.decrypt(stored, [identity])), mode="r:gz") as archive:
        [member] = archive.getmembers()
        assert member.name == backups.member_name(name)

    download = fetch(service, f"/api/v1/backup/{name}")
    assert download.status_code == 200 and download.data == stored
    assert download.content_type == "application/octet-stream"
    ranged = fetch(service, f"/api/v1/backup/{name}", headers={"Range": "bytes=0-21"})
    assert ranged.status_code == 206 and ranged.data == AGE_MAGIC
    metadata = service.client.get("/api/v1/backup?detail=true").get_json()[0]
    assert metadata["recipients"] == [str(identity.to_public())]
    assert str(identity) not in json.dumps(metadata)

    # The worker has the identity: its verify job opens the backup.
    verified = service.client.post(f"/api/v1/backup/{name}/verify")
    assert verified.status_code == 200, verified.get_json()

    # An operator's restore, from the downloaded file, with the identity.
    downloaded = tmp_path / name
    downloaded.write_bytes(stored)
    data_dir = tmp_path / "restored"
    done = etcd_backup("restore", str(downloaded), "--data-dir", str(data_dir), "--identity", str(identity_file))
    assert done.returncode == 0, done.stderr
    assert restored_keys(data_dir, "/encrypted/") == written
    report(f"encryption on ({service.store.where}): a backup, read as stored, with another age identity, with "
           "the right one, through the API, verified by the worker, restored by the CLI",
           f"{name}: age from its first byte, no written value in it; another identity: 'No matching keys'; "
           "the right one: one tar.gz member; download 200 octet-stream, Range 206; metadata has the recipient, "
           "never the identity; verify job 200; restore exit 0 and the restored etcd serves all "
           f"{len(written)} keys")


def test_verify_without_the_identity_or_with_another_or_of_a_tampered_file(
        make_service: Callable[..., Service], identity: x25519.Identity, identity_file: Path, tmp_path: Path,
        report: Report) -> None:
    service = make_service(encryption=encryption(identity, identity_file))
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    path = tmp_path / name
    path.write_bytes(service.read_backup(name))
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    with served_over_http(service) as base:  # README's way: download latest, as stored, checked on the way
        downloaded = etcd_backup("download", "latest", "--url", base, "--output-dir", str(fetched), "--verify",
                                 "--identity", str(identity_file))
    assert downloaded.returncode == 0, downloaded.stderr
    assert (fetched / name).read_bytes() == path.read_bytes() and "good: revision" in downloaded.stdout
    good = etcd_backup("verify", str(path), "--identity", str(identity_file))
    assert good.returncode == 0 and "good: revision" in good.stdout, good.stderr
    from_env = etcd_backup("verify", str(path), env={"ETCD_BACKUP_IDENTITY": str(identity_file)})
    assert from_env.returncode == 0, from_env.stderr

    without = etcd_backup("verify", str(path))
    assert without.returncode == 1 and "it is encrypted (age): give the identity" in without.stderr
    other_file = tmp_path / "other.key"
    other_file.write_text(f"{x25519.Identity.generate()}\n")
    other = etcd_backup("verify", str(path), "--identity", str(other_file))
    assert other.returncode == 1 and "none of the identities given opens it" in other.stderr

    # A byte of the header's recipient stanza: where it still parses, age cannot tell it from a stanza for
    # someone else; where it no longer does (the byte is the stanza's random base64), the header is refused.
    damaged_header = ("or its header is damaged", "not an intact age file")
    for where, messages in ((100, damaged_header), (len(path.read_bytes()) // 2, ("not an intact age file",)),
                            (len(path.read_bytes()) - 5, ("not an intact age file",))):
        tampered = bytearray(path.read_bytes())
        tampered[where] ^= 0x01
        flipped = tmp_path / f"flipped-{where}-{name}"
        flipped.write_bytes(bytes(tampered))
        done = etcd_backup("verify", str(flipped), "--identity", str(identity_file))
        assert done.returncode == 1 and any(message in done.stderr for message in messages), (where, done.stderr)
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(path.read_bytes()[:-100])
    truncated = etcd_backup("verify", str(cut), "--identity", str(identity_file))
    assert truncated.returncode == 1 and "not an intact age file" in truncated.stderr
    for done in (good, without, other, truncated):
        assert str(identity) not in done.stdout + done.stderr
    report("`etcd-backup verify` of an encrypted backup: with the identity (flag, $ETCD_BACKUP_IDENTITY), "
           "without, with another, with a byte flipped (header, middle, end), cut 100 bytes short",
           f"exit 0 'good' twice; without: exit 1 {without.stderr.strip()[-80:]!r}; another: exit 1 "
           f"{other.stderr.strip()[-70:]!r}; flipped in the header: exit 1 '... or its header is damaged' (or, "
           "where the stanza no longer parses, 'not an intact age file'); flipped in the middle or the end, and "
           "cut: exit 1 'not an intact age file'; the identity never printed")


def test_age_s_own_tool_opens_it_and_ssh_keys_work_too(make_service: Callable[..., Service], etcd: EtcdServer,
                                                         identity_file: Path, identity: x25519.Identity,
                                                         tmp_path: Path, report: Report) -> None:
    """What README promises: `age -d -i KEY FILE | tar xz` opens a backup; ssh keys are recipients and
    identities too (an ed25519 key pair in OpenSSH's format, as ssh-keygen writes it)."""
    private = ed25519.Ed25519PrivateKey.generate()
    ssh_key = tmp_path / "id_ed25519"
    ssh_key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    ssh_public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH).decode()
    written = put_keys(etcd, "/age-tool")
    service = make_service(encryption={"recipients": [str(identity.to_public()), ssh_public]})
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    path = tmp_path / name
    path.write_bytes(service.read_backup(name))
    for key in (identity_file, ssh_key):
        unpacked = tmp_path / f"unpacked-{key.name}"
        unpacked.mkdir()
        opened = subprocess.run(f"age -d -i {key} {path} | tar xz -C {unpacked}", shell=True, capture_output=True,
                                text=True, check=False)
        assert opened.returncode == 0, opened.stderr
        assert [item.name for item in unpacked.iterdir()] == [backups.member_name(name)]
        done = etcd_backup("verify", str(path), "--identity", str(key))
        assert done.returncode == 0, done.stderr
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], capture_output=True, check=True)
    refused = subprocess.run(["age", "-d", "-i", str(other), str(path)], capture_output=True, check=False)
    assert refused.returncode != 0 and b"no identity matched" in refused.stderr
    assert not any(value in path.read_bytes() for value in written.values())
    report("an encrypted backup (to an age key and an ssh-ed25519 key) opened with age's own tool",
           "`age -d -i KEY | tar xz` gives the one .db with either key, `etcd-backup verify --identity` takes "
           f"either; age with another key: {refused.stderr.decode().strip().splitlines()[-1][:60]!r}")


def test_turning_encryption_on_keeps_the_older_backups_listed_rotated_and_restorable(
        make_service: Callable[..., Service], identity: x25519.Identity, identity_file: Path, tmp_path: Path,
        redis_conn: redis.Redis) -> None:
    plain = make_service(rotate=3)
    older = [plain.client.post("/api/v1/backup").get_json()["filename"] for _ in range(2)]
    plain.stop_worker()
    encrypted = make_service(rotate=3, encryption=encryption(identity, identity_file))
    newer = [encrypted.client.post("/api/v1/backup").get_json()["filename"] for _ in range(2)]
    assert [backups.is_encrypted(name) for name in older + newer] == [False, False, True, True]
    # rotate 3 counts both kinds: the oldest plain one went.
    assert encrypted.client.get("/api/v1/backup").get_json() == older[1:] + newer
    assert encrypted.client.post(f"/api/v1/backup/{older[1]}/verify").status_code == 200
    assert fetch(encrypted, f"/api/v1/backup/{older[1]}").content_type == "application/gzip"
    drilled = run_drill(encrypted.config, redis_conn)
    assert drilled.passed and drilled.backup == newer[-1], drilled.reason
    with served_over_http(encrypted) as base:
        status, table = on_terminal("list", "--url", base)
    assert status == 0, table
    cells = [[cell.strip() for cell in row.split("  ") if cell.strip()] for row in table.splitlines()[1:]]
    assert [(row[0], row[4]) for row in cells] == [
        (older[1], "no"), (newer[0], "yes"), (newer[1], "yes")]


def test_a_worker_without_the_identity_says_why_it_cannot_verify_or_drill(
        make_service: Callable[..., Service], identity: x25519.Identity, redis_conn: redis.Redis,
        report: Report) -> None:
    service = make_service(encryption=encryption(identity))  # recipients only: the usual worker
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    answer = service.client.post(f"/api/v1/backup/{name}/verify")
    assert answer.status_code != 200 and "give the identity" in answer.get_json()["message"], answer.get_json()
    drilled = run_drill(service.config, redis_conn)
    assert not drilled.passed and "give the identity" in drilled.reason
    report("encryption with recipients only (no identity-file): POST .../verify, then the restore drill",
           f"verify {answer.status_code}: {answer.get_json()['message'][:90]!r}; drill failed: {drilled.reason[:90]!r}")


def test_bad_keys_are_one_line_naming_the_key_and_never_the_identity(tmp_path: Path, identity: x25519.Identity,
                                                                      report: Report) -> None:
    base: dict[str, Any] = {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}
    public = str(identity.to_public())
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# the backup team\n{public}\n\nnot-a-key\n")
    # 0600 both, as identity files must be: what is wrong here is what they hold.
    not_an_identity = write_private(tmp_path / "not-an-identity", f"{public}\n")  # a public key: the wrong half
    wrong_line = write_private(tmp_path / "wrong-line.key",
                               f"{identity}\nAGE-SECRET-KEY-1NOTREALLY{str(identity)[-20:]}\n")
    cases = {
        "no recipients": ({}, "encryption.recipients: give at least one public key"),
        "a recipient that is no key": ({"recipients": [public, "age1nope"]}, "encryption.recipients[1]: 'age1nope'"),
        "a recipients-file line": ({"recipients-file": str(recipients_file)},
                                   "encryption.recipients-file line 4: 'not-a-key'"),
        "a missing recipients-file": ({"recipients-file": str(tmp_path / "gone")}, "encryption.recipients-file: "),
        "an unknown key": ({"recipients": [public], "passphrase": "x"}, "encryption.passphrase: unknown key"),
        "a public key as identity": ({"recipients": [public], "identity-file": str(not_an_identity)},
                                     "encryption.identity-file: "),
        "a bad identity line": ({"recipients": [public], "identity-file": str(wrong_line)},
                                "line 2 is not an age identity"),
    }
    for case, (section, message) in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_config({**base, "encryption": section}, {})
        assert message in str(info.value), (case, str(info.value))
        assert str(identity) not in str(info.value) and "NOTREALLY" not in str(info.value)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({**base, "backup-dir": str(tmp_path / "b"),
                                      "encryption": {"recipients": [public], "identity-file": str(wrong_line)}}))
    done = etcd_backup("--config", str(config), "config", "check")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert str(identity) not in done.stderr + done.stdout
    report("bad encryption settings: no recipients, a bad recipient (inline and in recipients-file), a missing "
           "file, an unknown key, a public key as identity-file, a bad identity line",
           f"each a ConfigError naming the key; at start-up exit 2, one line: {done.stderr.strip()[-90:]!r}; "
           "no identity ever quoted")


def ssh_key_pair(path: Path) -> str:
    """Write an ed25519 private key in OpenSSH's format to `path` (0600, as ssh-keygen does); return its public key."""
    private = ed25519.Ed25519PrivateKey.generate()
    write_private(path, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def test_a_recipient_that_no_configured_identity_opens_is_refused(tmp_path: Path, identity: x25519.Identity,
                                                                  identity_file: Path) -> None:
    """A rotated or mistaken key passed start-up before, and every backup was then taken but could never be
    verified or drilled. With identity-file, each recipient must be one of its keys: an age key's public key
    is derived from it, an ssh key is tried on a probe. Without identity-file nothing is asked of them."""
    base: dict[str, Any] = {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}, "backup-dir": str(tmp_path / "b")}
    own, other = str(identity.to_public()), str(x25519.Identity.generate().to_public())
    ssh_key, other_ssh_key = tmp_path / "id_ed25519", tmp_path / "other_ed25519"
    ssh_public, other_ssh_public = ssh_key_pair(ssh_key), ssh_key_pair(other_ssh_key)
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# the backup team\n{own}\n{other}\n")
    refused = {
        "another age key": ({"recipients": [own, other], "identity-file": str(identity_file)},
                            "encryption.recipients[1]", other, identity_file),
        "a recipients-file line": ({"recipients-file": str(recipients_file), "identity-file": str(identity_file)},
                                   "encryption.recipients-file line 3", other, identity_file),
        "an ssh key, the identity an age one": ({"recipients": [own, ssh_public], "identity-file": str(identity_file)},
                                                "encryption.recipients[1]", ssh_public, identity_file),
        "another ssh key": ({"recipients": [other_ssh_public], "identity-file": str(ssh_key)},
                            "encryption.recipients[0]", other_ssh_public, ssh_key),
        "an age key, the identity an ssh one": ({"recipients": [ssh_public, own], "identity-file": str(ssh_key)},
                                                "encryption.recipients[1]", own, ssh_key),
    }
    for case, (section, key, recipient, opener) in refused.items():
        with pytest.raises(ConfigError) as info:
            parse_config({**base, "encryption": section}, {})
        assert str(info.value) == (
            f"{key}: {recipient[:80]!r}: no identity in encryption.identity-file ({opener}) opens it (another key, "
            "or a rotated one?): backups encrypted to it could not be verified"), case
        assert str(identity) not in str(info.value)
    for section in ({"recipients": [own, own.upper()], "identity-file": str(identity_file)},
                    {"recipients": [ssh_public], "identity-file": str(ssh_key)},
                    {"recipients": [own, other, ssh_public, other_ssh_public]},  # the API: no identity needed
                    {"recipients-file": str(recipients_file)}):
        parse_config({**base, "encryption": section}, {})


def test_config_check_shows_the_recipients_and_the_identity_file_not_the_identity(
        tmp_path: Path, identity: x25519.Identity, identity_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                                      "backup-dir": str(tmp_path / "b"),
                                      "encryption": encryption(identity, identity_file)}))
    caplog.set_level(logging.DEBUG)
    loaded = load_config(config)
    assert str(identity) not in repr(loaded)
    done = etcd_backup("--config", str(config), "config", "check")
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)["encryption"]
    assert shown == {"recipients": [str(identity.to_public())], "identity-file": str(identity_file)}
    assert str(identity) not in done.stdout + done.stderr + caplog.text
