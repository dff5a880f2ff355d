"""An adversary on issue 27's promises (the README, docs/restore.md, the documentation tests that keep them true):
each test tries one way a page could lie, or a store or Redis writer could make the service say something false,
and fails if it gets through."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from cli.recovery import moment
from common.deltas import DeltaName
from common.etcd_seen import SEEN_KEY
from common.recovery_window import STATS_KEY
from harness.cli import etcd_backup
from harness.docs import (
    DEFAULT_HOST,
    ROOT,
    Block,
    Command,
    DocsRunner,
    console_blocks,
    matches,
    sections,
    unrun_examples,
)
from harness.in_process import Service, served_over_http
from harness.keys import signing
from harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server
from harness.servers import EtcdServer
from harness.writer import current_revision
from recovery.client import UsageError
from tests.test_deltas import deltas_during_writes
from tests.test_restore_latest import backup_and_a_newer_unsigned_copy
from tests.test_status import field, status_json


def test_a_documented_exit_status_is_matched_as_written_not_as_any_number() -> None:
    """docs/restore.md shows each refusal's exit status (`; echo "exit $?"`): with every number standing for any
    number, a page showing `exit 2` would pass against a command that exits 1 (or 0)."""
    assert matches(["refused", "exit 2"], "refused\nexit 2\n")
    assert not matches(["refused", "exit 2"], "refused\nexit 1\n")
    assert not matches(["exit 1"], "exit 0\n")
    shown = [command for document in ("README.md", "docs/restore.md") for block in console_blocks(document)
             for command in block.commands if "echo \"exit $?\"" in command.text]
    assert shown and all(re.fullmatch(r"exit \d+", command.expected[-1]) for command in shown), \
        "the pages show exit statuses as `exit N` on the last line"


def test_the_readmes_check_shows_a_revision_its_restore_printed() -> None:
    """Step 4 says "check that etcd serves the revision the restore printed": the revision its example shows is one
    that a restore above it printed (numbers stand for any number when the examples run, so only this reads it)."""
    blocks = list(sections("README.md", "etcd lost its data? Restore now"))
    printed = {int(number) for block in blocks[:-1] for command in block.commands for line in command.expected
               for number in re.findall(r"(?:etcd is at|to) revision (\d+)", line)}
    check = blocks[-1].commands[-1]
    assert "endpoint status" in check.text
    shown = {int(number) for line in check.expected for number in re.findall(r'"revision":(\d+)', line)}
    assert printed and shown and shown <= printed, (shown, printed)


def test_a_delta_named_in_the_future_does_not_make_the_recovery_point_fresh(
        make_service: Callable[..., Service], tmp_path: Path) -> None:
    """Whoever can write an unsigned store (or a watcher host whose clock is a year ahead) names one delta after the
    newest backup's revision with a time a year ahead: the window is read from names alone, and the recovery
    point, clamped to now, would read "0 s ago" for a year, so that --max-recovery-age passes while no watcher
    stores anything. A name in the future cannot be when the watcher received it: as a backup's, it is ignored."""
    service = make_service(deltas=True)
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    metadata = service.store.read_metadata(name)
    assert metadata is not None
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(days=365)
    planted = str(DeltaName(metadata.revision + 1, metadata.revision + 1000, ahead, ahead, encrypted=False))
    service.plant(planted, b"not a delta")
    time.sleep(2.1)  # the backup, the newest data the store holds, is 2 s old
    with served_over_http(service) as base:
        checked = etcd_backup("status", "--url", base, "--max-recovery-age", "1s")
        document = status_json("--url", base)
    assert checked.returncode == 1, checked.stdout
    assert field(checked.stdout, "check").startswith("FAILED: "), checked.stdout
    point = document["recovery_window"]["recovery_point"]
    assert point is None or point["age_seconds"] is None, point


@pytest.mark.slow  # about 16 s: SeaweedFS, a backup, a verify and a restore
def test_an_s3_object_read_without_the_config_says_its_signature_was_not_checked(
        s3_service: Callable[..., Service], seaweedfs: S3Server, tmp_path: Path) -> None:
    """`verify`/`restore s3://BUCKET/KEY` without --config has no signing key to check with: whoever can write the
    bucket plants a backup of their own (here an unsigned copy under a newer name, in a signing service's bucket),
    and it verifies good. The operator, who may believe the page's "verify checks ... its signature", is told on
    the line that says good that no signature was checked; with the config, it is refused."""
    service = s3_service(signing=signing(tmp_path))
    name, planted = backup_and_a_newer_unsigned_copy(service)
    s3 = service.config.s3
    assert s3 is not None
    aws = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": seaweedfs.endpoint,
           "AWS_DEFAULT_REGION": "us-east-1"}

    read = etcd_backup("verify", f"s3://{s3.bucket}/{s3.prefix}{planted}", env=aws, timeout=120)
    assert read.returncode == 0 and read.stderr == "", read
    assert read.stdout.startswith(f"{planted} in s3://{s3.bucket}/{s3.prefix} at {seaweedfs.endpoint} (signature not "
                                  "checked: no --config): good: revision"), read.stdout
    data_dir = tmp_path / "restored"
    done = etcd_backup("restore", f"s3://{s3.bucket}/{s3.prefix}{planted}", "--data-dir", str(data_dir), env=aws,
                       timeout=120)
    assert done.returncode == 0 and done.stderr == "", done
    assert f"{planted} in s3://{s3.bucket}/{s3.prefix} at {seaweedfs.endpoint} (signature not checked: no --config): " \
           "good: revision" in done.stdout, done.stdout


@pytest.mark.parametrize(("given", "meant"), [
    ("2026-12-07t03:00:00z", datetime(2026, 12, 7, 3, tzinfo=UTC)),  # RFC 3339 (5.6) allows t and z in lowercase
    ("2026-12-07T03:00:00-00:00", datetime(2026, 12, 7, 3, tzinfo=UTC)),
    ("2026-12-07T03:00:00.999999999Z", datetime(2026, 12, 7, 3, 0, 0, 999999, tzinfo=UTC)),  # never past it
    ("2026-12-08T03:00:00+14:00", datetime(2026, 12, 7, 13, tzinfo=UTC)),
])
def test_to_time_takes_each_zoned_form_as_the_moment_it_names(given: str, meant: datetime) -> None:
    assert moment(given) == meant


@pytest.mark.parametrize("given", ["2026-12-07", "2026-W49-1", "2026-12-07T03:00", "2026-12-07T24:00:00Z",
                                   "2026-12-31T23:59:60Z", "-1", "99999999999999", "yesterday",
                                   "2026-12-07T03:00:00+25:00"])
def test_to_time_refuses_what_names_no_moment_in_one_line_with_the_forms(given: str) -> None:
    with pytest.raises(UsageError) as refused:
        moment(given)
    assert "\n" not in str(refused.value) and "Unix seconds" in str(refused.value), refused.value


def test_a_promised_number_on_a_page_is_checked_as_written(tmp_path: Path) -> None:
    """The README's quick start shows verify's "20 user keys" for the demo's 20 keys (issue 27: it once said 24). Any
    number standing for any number, a count gone wrong again would pass; the test promises it, and then it must be
    printed as written."""
    block = Block("README.md", "Quick start", 1)
    block.commands.append(Command("echo 'x.tar.gz: good: revision 21, 24 user keys'",
                                  ["x.tar.gz: good: revision 21, 20 user keys"], DEFAULT_HOST, 2))
    runner = DocsRunner(tmp_path)
    runner.run_block(block)  # an example's numbers: any
    runner.promise("20 user keys")
    with pytest.raises(AssertionError, match="promises '20 user keys'"):
        runner.run_block(block)
    block.commands[0] = replace(block.commands[0], text="echo 'x.tar.gz: good: revision 9, 20 user keys'")
    runner.run_block(block)
    # The page itself showing another count (its output then printed as the page shows it) is caught too.
    block.commands[0] = replace(block.commands[0], text="echo 'x.tar.gz: good: revision 9, 120 user keys'",
                                expected=["x.tar.gz: good: revision 21, 120 user keys"])
    with pytest.raises(AssertionError, match="where the test promises '20 user keys'"):
        runner.run_block(block)


def test_a_console_example_fenced_otherwise_is_caught_by_the_guard(tmp_path: Path) -> None:
    """test_every_console_block_is_run sees ```console blocks only: the same example fenced ```shell-session, ~~~
    or ```console with a title (GitHub shows them all alike) would be an example no test runs, and the README's
    quick start test, which runs whatever blocks its section has, would pass without it. (```console with a title
    also put the reader out of step: every block after it was missed.)"""
    page = tmp_path / "page.md"
    page.write_text("Quick start\n-----------\n\n"
                    "```shell-session\n$ etcd-backup list --url http://localhost:8080\nsnapshot-1.tar.gz\n```\n\n"
                    "~~~console\n$ etcd-backup verify snapshot-1.tar.gz\n~~~\n\n"
                    "```console title=\"restore\"\n$ etcd-backup restore snapshot-1.tar.gz\n```\n\n"
                    "```sh\nsystemctl stop etcd\n```\n\n"
                    "```console\n$ etcd-backup status\n```\n")
    assert [where.rsplit(":", 1)[1] for where in unrun_examples(str(page))] == ["4"]
    assert [block.line for block in console_blocks(str(page))] == [9, 13, 21]  # run, whichever the fence
    for document in ("README.md", "docs/restore.md"):
        assert unrun_examples(document) == [], document


def test_verify_of_a_file_that_is_not_there_is_a_usage_error_not_a_bad_backup(tmp_path: Path) -> None:
    """restore.md: `verify` exits 1 when the backup is not good. A mistyped file name is no verdict on any backup: a
    script that moves on to an older backup on 1 would skip a good one. It is a usage error (2), in one line, and
    restore refuses it before touching the data dir."""
    missing = tmp_path / "snapshot-20261207_030000.tar.gz"
    verified = etcd_backup("verify", str(missing))
    assert verified.returncode == 2 and verified.stdout == "", verified
    assert verified.stderr.strip() == f"etcd-backup verify {missing}: no such file: {missing}", verified.stderr
    restored = etcd_backup("restore", str(missing), "--data-dir", str(tmp_path / "etcd"))
    assert restored.returncode == 2 and "no such file" in restored.stderr, restored
    assert not (tmp_path / "etcd").exists()


def test_to_time_at_the_ends_of_the_calendar_is_restored_or_refused_in_one_line(
        make_service: Callable[..., Service], tmp_path: Path) -> None:
    """Times that Python holds but that are not in UTC's range (year 10000 in UTC, year 0 in UTC): the newest data,
    said to be past; nothing before the first backup, in one line; never a traceback."""
    service = make_service()
    service.client.post("/api/v1/backup")
    config = str(tmp_path / "config.yml")  # conftest's write_config
    future = etcd_backup("restore", "--config", config, "--to-time", "9999-12-31T23:59:59-14:00", "--data-dir",
                         str(tmp_path / "future"), timeout=120)
    assert future.returncode == 0 and future.stderr == "", future
    assert "--to-time 9999-12-31T23:59:59-14:00 is past the newest data" in future.stdout, future.stdout
    past = etcd_backup("restore", "--config", config, "--to-time", "0001-01-01T00:00:00+14:00", "--data-dir",
                       str(tmp_path / "past"), timeout=120)
    assert past.returncode == 1 and past.stdout == "" and len(past.stderr.splitlines()) == 1, past
    assert "no full backup (with its metadata) was taken at or before time 0001-01-01" in past.stderr, past.stderr
    assert not (tmp_path / "past").exists()


@pytest.mark.parametrize("key", ["zzz/../prefix/", "./prefix/", "prefix/x/../", "prefix//", "/prefix/"])
def test_an_s3_key_with_a_dot_or_empty_segment_is_a_usage_error_before_any_request(key: str) -> None:
    """`s3://BUCKET/a/../p/NAME`: S3 keys are literal (AWS takes a/../p/NAME as its own key; SeaweedFS answered 400
    Bad Request, exit 1, "cannot read ...": a verdict-like status for a typo), and a proxy that normalizes the path
    would read another object than the line names. Refused as the config's backup-dir is, in one line, exit 2."""
    url = f"s3://etcd-backups/{key}snapshot-20261207_030000.tar.gz"
    done = etcd_backup("verify", url, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                                           "AWS_SECRET_ACCESS_KEY": "y"})
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.strip().endswith("has an empty, . or .. path segment: the key is taken as written, so name "
                                        "it without them"), done.stderr


def test_a_redis_writer_who_forges_etcds_report_too_can_hide_a_growing_recovery_point(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """security.md's table said a Redis writer cannot "hide a growing recovery point". The watcher's current_at is
    believed past the store's time when a worker's report of etcd (also in Redis) shows etcd at the store's latest
    revision: a Redis writer who stops the workers (which it can) and writes both keeps the point fresh while etcd
    takes writes that no delta holds. The page now says so; this test holds it to what it says (and fails when the
    recovery point no longer trusts Redis this far: then the page should say it cannot be hidden again)."""
    service = make_service(delta_period="100ms")
    _, end = deltas_during_writes(service, etcd, redis_conn, f"/hidden-{tmp_path.name}/", seconds=0.3)
    service.stop_worker()  # its reporter would tell the truth within 5 s
    etcd.client().put(f"/hidden-{tmp_path.name}/unstored", "a write no delta holds")
    time.sleep(3)
    now = time.time()
    redis_conn.set(SEEN_KEY, json.dumps({"reporter": "worker/forged", "at": now, "endpoint": etcd.url,
                                         "version": "3.4.23", "revision": end}))
    redis_conn.hset(STATS_KEY, "current_at", now)
    window = service.client.get("/api/v1/recovery-window").get_json()
    assert current_revision(etcd.url) > end
    assert window["watcher"]["recovery_point_seconds"] < 2, window  # fresh: the 3 s old write is hidden
    row = next(line for line in (ROOT / "docs" / "security.md").read_text().splitlines()
               if line.startswith("Whoever can write Redis |"))
    _, can, cannot = row.split(" | ")
    assert "keep the recovery point current" in can and "growing recovery point" not in cannot, row
