"""An adversary against point-in-time recovery: deltas planted or edited by whoever can write the store (with
and without encryption), hostile Redis values under the recovery window and /metrics, and the restore's
private work dirs (/dev/shm, the throwaway etcd's sockets) against another local user and SIGTERM.

Breaks are strict xfails (the fix flips them); attacks that hold are plain tests with a report row."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from pyrage import x25519

from common import etcd
from common.deltas import (
    PUT,
    Event,
    Fingerprint,
    Revision,
    decode_delta,
    delta_name,
    encode_delta,
    fingerprint,
)
from common.encryption import Recipient
from common.recovery_window import GAPS_KEY, LEASE_KEY, STATS_KEY
from common.storage import BackupStore
from harness.cli import COMMAND, etcd_backup
from harness.in_process import Service, served_over_http
from harness.report import Report
from recovery.pitr import Target, plan_restore, restore_to, revision_events
from recovery.restore import Member, RestoreError
from recovery.throwaway import member_flags
from recovery.workdir import SOCKET_PREFIX

NOBODY = "65534"
# One xdist process for the point-in-time restores that look at /dev/shm's apply dirs (tests/test_deltas.py too).
pytestmark = pytest.mark.xdist_group("point-in-time")


def base_revision(service: Service) -> int:
    """Take a full backup; return the revision the deltas after it start after (as plan_restore reads it)."""
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    metadata = service.store.read_metadata(name)
    assert metadata is not None
    return metadata.revision


def puts(first: int, count: int, prefix: bytes, value: bytes = b"v") -> list[Revision]:
    """`count` revisions from `first`, each one put of `prefix`<n>, seen now."""
    now = time.time()
    return [Revision(number, now, (Event(PUT, prefix + str(number).encode(), value),))
            for number in range(first, first + count)]


def plant(store: BackupStore, previous: Fingerprint, revisions: Sequence[Revision],
          recipients: Sequence[Recipient] = ()) -> str:
    """Store a delta as the watcher would; what anyone who can write backup-dir or the bucket can do."""
    name = str(delta_name(revisions, encrypted=bool(recipients)))
    store.put_delta(name, encode_delta(previous, revisions, recipients))
    return name


def replace(store: BackupStore, name: str, data: bytes) -> None:
    """Replace a stored delta's bytes (the store never overwrites one: delete, then write)."""
    store.delete_delta(name)
    store.put_delta(name, data)


def unknown_previous(revision: int) -> Fingerprint:
    """The previous fingerprint of a delta that follows a full backup (no revision before it to match)."""
    return Fingerprint(revision, bytes(32))


def backups_revision(service: Service, revision: int) -> Fingerprint:
    """The previous fingerprint the watcher gives the first delta after a backup at `revision`: that revision's
    events as etcd has them (what a restore checks against the restored backup)."""
    with etcd.connect(service.config.etcd) as member:
        return fingerprint(revision, revision_events(member, revision, revision).get(revision, []))


def plan(store: BackupStore, revision: int, identities: Sequence[x25519.Identity] = ()) -> int:
    """The revision a restore to `revision` would reach (RestoreError if it refuses)."""
    return plan_restore(store, Target(revision), datetime.now(UTC), list(identities)).revision


# --- what the deltas' checks hold against -----------------------------------------------------------------------


def test_a_bit_flipped_delta_is_refused_naming_how_far_it_reaches(service: Service, report: Report) -> None:
    base = base_revision(service)
    first = puts(base + 1, 5, b"/adv/a/")
    plant(service.store, unknown_previous(base), first)
    second = puts(base + 6, 5, b"/adv/a/")
    name = plant(service.store, fingerprint(first[-1].number, first[-1].events), second)
    damaged = bytearray(service.store.read_delta(name) or b"")
    damaged[len(damaged) // 2] ^= 0x01
    replace(service.store, name, bytes(damaged))
    with pytest.raises(RestoreError, match=f"reach revision {base + 5} "):
        plan(service.store, base + 10)
    report("one bit flipped in the second of two deltas; restore planned to its last revision",
           f"refused before restoring anything, naming revision {base + 5} as the furthest it can reach")


def test_a_delta_of_another_history_after_the_chain_is_never_chained(service: Service, report: Report) -> None:
    """A planted (or another cluster's) delta that follows the stored chain, but not etcd's revision before it."""
    base = base_revision(service)
    first = puts(base + 1, 3, b"/adv/b/")
    plant(service.store, unknown_previous(base), first)
    other = [Revision(base + 3, 0.0, (Event(PUT, b"/adv/b/other", b"x"),))]
    plant(service.store, fingerprint(base + 3, other[0].events), puts(base + 4, 3, b"/adv/b/planted-"))
    with pytest.raises(RestoreError, match="two histories, never chained"):
        plan(service.store, base + 6)
    assert plan(service.store, base + 3) == base + 3
    report("a delta whose previous-revision fingerprint is not the chain's, planted after the last delta",
           "restore past it refused ('two histories, never chained'); up to the chain's end it still restores")


def test_two_disagreeing_copies_of_a_revision_are_refused(service: Service, report: Report) -> None:
    base = base_revision(service)
    plant(service.store, unknown_previous(base), puts(base + 1, 4, b"/adv/c/"))
    plant(service.store, unknown_previous(base), puts(base + 1, 6, b"/adv/c/", value=b"planted"))
    with pytest.raises(RestoreError, match="disagree"):
        plan(service.store, base + 3)
    report("a planted delta overlapping a stored one (same revisions, other values, reaching further)",
           "restore refused, naming both deltas")


def test_an_encrypted_delta_cannot_be_read_without_the_identity(
        make_service: Callable[..., Service], identity: x25519.Identity, report: Report) -> None:
    service = make_service(encryption={"recipients": [str(identity.to_public())]})
    base = base_revision(service)
    plant(service.store, unknown_previous(base), puts(base + 1, 2, b"/adv/d/"), [identity.to_public()])
    with pytest.raises(RestoreError, match="give the identity"):
        plan(service.store, base + 2)
    assert plan(service.store, base + 2, [identity]) == base + 2
    report("encrypted delta, restore without --identity", "refused: 'give the identity that opens it'")


# --- breaks: what the checks do not hold against ------------------------------------------------------------------


@pytest.mark.parametrize("planted_encrypted", [False, True], ids=["plain", "age-to-public-recipient"])
@pytest.mark.parametrize("previous", ["unknown", "guessed"])
def test_a_planted_delta_right_after_a_backup_is_refused_on_an_encrypted_store(
        make_service: Callable[..., Service], identity: x25519.Identity, identity_file: Path, tmp_path: Path,
        planted_encrypted: bool, previous: str, report: Report) -> None:
    """Encryption on: the watcher's deltas are .age. The attacker removes them (or there are none yet) and plants
    one that grants itself a Secret; the recipient is public (the config, ?detail=true's metadata). The plan
    reads only the store; the restore ties the first delta to the restored backup before applying anything."""
    service = make_service(encryption={"recipients": [str(identity.to_public())]})
    base = base_revision(service)
    genuine = plant(service.store, unknown_previous(base), puts(base + 1, 3, b"/adv/e/"), [identity.to_public()])
    service.store.delete_delta(genuine)
    attack = [Revision(base + n, time.time(), (Event(PUT, b"/registry/secrets/kube-system/planted", b"x"),))
              for n in (1, 2, 3)]
    claimed = unknown_previous(base) if previous == "unknown" else Fingerprint(base, os.urandom(32))
    plant(service.store, claimed, attack, [identity.to_public()] if planted_encrypted else [])
    planned = plan_restore(service.store, Target(base + 3), datetime.now(UTC), [identity])
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    with pytest.raises(RestoreError, match="cannot be tied to|does not follow") as refused:
        restore_to(service.config, service.store, planned, tmp_path / "restored", Member(**member_flags()), work,
                   identity_file, lambda line: None)
    assert not (tmp_path / "restored").exists()
    report(f"encryption on: the first delta after a backup replaced by a planted one ({previous} previous "
           f"fingerprint, {'age to the public recipient' if planted_encrypted else 'plain'}) granting a Secret",
           f"the plan reads only names and checksums and takes it; the restore refuses before applying: "
           f"{str(refused.value)[:160]}")


def test_without_encryption_an_edit_with_its_sha256_recomputed_is_accepted(service: Service) -> None:
    """What README says: the SHA-256 detects damage, not tampering; a plain delta is as trusted as the store."""
    base = base_revision(service)
    first = puts(base + 1, 3, b"/adv/f/")
    name = plant(service.store, unknown_previous(base), first)
    plant(service.store, fingerprint(first[-1].number, first[-1].events), puts(base + 4, 3, b"/adv/f/"))
    edited = list(decode_delta(name, service.store.read_delta(name) or b"").revisions)
    edited[1] = Revision(edited[1].number, edited[1].seen, (Event(PUT, b"/adv/f/edited", b"by the attacker"),))
    replace(service.store, name, encode_delta(unknown_previous(base), edited))
    assert plan(service.store, base + 6) == base + 6


def test_with_encryption_a_delta_replaced_without_the_identity_is_refused(
        make_service: Callable[..., Service], identity: x25519.Identity) -> None:
    """The attacker cannot read the first delta, so cannot know the fingerprint of the revision the second follows:
    its replacement (encrypted to the public recipient) is never chained."""
    service = make_service(encryption={"recipients": [str(identity.to_public())]})
    recipient = [identity.to_public()]
    base = base_revision(service)
    first = puts(base + 1, 3, b"/adv/k/")
    plant(service.store, unknown_previous(base), first, recipient)
    second = plant(service.store, fingerprint(first[-1].number, first[-1].events), puts(base + 4, 3, b"/adv/k/"),
                   recipient)
    assert plan(service.store, base + 6, [identity]) == base + 6
    forged = puts(base + 4, 3, b"/registry/secrets/kube-system/planted-")
    replace(service.store, second, encode_delta(unknown_previous(base + 3), forged, recipient))
    with pytest.raises(RestoreError, match="two histories, never chained"):
        plan(service.store, base + 6, [identity])


def test_restore_to_a_time_past_a_missing_delta_refuses(service: Service) -> None:
    base = base_revision(service)
    first, lost = puts(base + 1, 3, b"/adv/g/"), puts(base + 4, 3, b"/adv/g/")
    third = [Revision(later.number, later.seen + 5, later.events) for later in puts(base + 7, 3, b"/adv/g/")]
    plant(service.store, unknown_previous(base), first)
    missing = plant(service.store, fingerprint(first[-1].number, first[-1].events), lost)
    plant(service.store, fingerprint(lost[-1].number, lost[-1].events), third)
    service.store.delete_delta(missing)
    with pytest.raises(RestoreError, match=rf"revision {base + 9}\).* no delta holds revision {base + 4} \(one is "
                       rf"missing\).*\(restore --to-revision {base + 3}\)"):
        plan_restore(service.store, Target(time=datetime.fromtimestamp(third[-1].seen + 1, UTC)), datetime.now(UTC), [])
    # A time before the third delta, after the missing one's revisions came: which of them came by then, no one can
    # tell (a restore to the revision before them would silently lose what etcd held at that time).
    before_third = datetime.fromtimestamp(third[0].seen - 1, UTC)
    with pytest.raises(RestoreError, match=rf"no delta holds revisions {base + 4} to {base + 6} .*"
                                           rf"restore --to-revision {base + 3} at most"):
        plan_restore(service.store, Target(time=before_third), datetime.now(UTC), [])


# --- hostile Redis under the recovery window and /metrics --------------------------------------------------------


HOSTILE_STATS = {"current_at": "zzz", "last_revision": "-1e400", "events": "nan", "bytes": "\xff", "gaps": "-",
                 "deltas": "-3", "last_fingerprint": "1:zz"}
HOSTILE_GAPS = ["not json", "[]", '{"from": "x", "to": null}', '{"from": 1e400, "to": -5, "reason": 7}',
                '{"from": 5, "to": 1, "reason": "' + "x" * 10000 + '"}', "\xff\xfe"]


@pytest.mark.parametrize("gaps_as_wrong_type", [False, True], ids=["garbage-entries", "gaps-key-a-string"])
def test_hostile_redis_values_never_500_the_window_or_metrics(
        service: Service, redis_conn: redis.Redis, report: Report, gaps_as_wrong_type: bool) -> None:
    base = base_revision(service)
    plant(service.store, unknown_previous(base), puts(base + 1, 2, b"/adv/h/"))
    redis_conn.hset(STATS_KEY, mapping=HOSTILE_STATS)
    if gaps_as_wrong_type:
        redis_conn.set(GAPS_KEY, "a string")
    else:
        redis_conn.rpush(GAPS_KEY, *HOSTILE_GAPS)
    window = service.client.get("/api/v1/recovery-window")
    metrics = service.client.get("/metrics")
    assert window.status_code == 200, window.get_data(as_text=True)
    assert window.get_json()["latest"]["revision"] == base + 2
    assert metrics.status_code == 200, metrics.get_data(as_text=True)
    assert "etcd_backup_deltas_stored 1" in metrics.get_data(as_text=True)
    report(f"etcd-backup:deltas with non-numbers, gaps {'a string key' if gaps_as_wrong_type else 'garbage'}",
           "/api/v1/recovery-window and /metrics answer 200, the store's part still right")


@pytest.mark.parametrize("path", ["/api/v1/recovery-window", "/metrics"])
def test_a_count_too_large_for_a_float_never_500s(service: Service, redis_conn: redis.Redis, path: str) -> None:
    base = base_revision(service)
    plant(service.store, unknown_previous(base), puts(base + 1, 2, b"/adv/i/"))
    redis_conn.hset(STATS_KEY, mapping={"deltas": "9" * 400, "events": "7"})
    answer = service.client.get(path)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    if path == "/metrics":  # only the bad value's own metric is left out
        scraped = answer.get_data(as_text=True)
        assert "etcd_backup_deltas_written_total" not in scraped and "etcd_backup_delta_events_total 7.0" in scraped


FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 58, tzinfo=UTC).timestamp()
HOSTILE_LEASE = "<script>alert(1)</script>\n\033[2Jcheck  OK"


def test_hostile_values_never_break_the_status_or_the_pages_window(
        service: Service, redis_conn: redis.Redis, tmp_path: Path, report: Report) -> None:
    """The status and the page show what Redis and the store say of the deltas: a planted lease holder (the page's
    markup, a terminal's escapes, a forged line), a planted gap carrying a reason of its own, current_at NaN, a last
    revision too large for a float, and a delta named in the far future (a clock ahead, or planted: it would make a
    stopped watcher's recovery point look new for ever). Nothing breaks, nothing is taken for markup or a line, and
    the point named in the future fails --max-recovery-age instead of passing it."""
    base = base_revision(service)
    plant(service.store, unknown_previous(base), puts(base + 1, 2, b"/adv/s/"))
    planted = Revision(base + 3, FAR_FUTURE, (Event(PUT, b"/adv/s/future", b"v"),))
    plant(service.store, Fingerprint(base + 2, bytes(32)), [planted])
    redis_conn.hset(STATS_KEY, mapping={"current_at": "nan", "last_revision": "9" * 400})
    redis_conn.set(LEASE_KEY, HOSTILE_LEASE, px=15000)
    redis_conn.rpush(GAPS_KEY, json.dumps({"from": base + 1, "to": base + 2, "time": 0,
                                           "reason": "<img src=x onerror=alert(1)>"}))
    with served_over_http(service) as url:
        shown = etcd_backup("status", "--url", url)
        checked = etcd_backup("status", "--url", url, "--max-recovery-age", "1h", "--json")
    local = etcd_backup("status", "--config", str(tmp_path / "config.yml"))
    page = service.client.get("/")
    html = page.get_data(as_text=True)

    for done in (shown, local):
        assert done.returncode == 0, done.stderr
        assert "\033" not in done.stdout and "<script>" in done.stdout  # on a terminal, text is text
        labels = [line.split("  ")[0] for line in done.stdout.splitlines()]
        assert labels == ["status of", "newest backup", "kept", "last failure", "drill", "queue", "recovery point",
                          "recovery window", "gaps", "delta watcher", "next backup", "next drill"], done.stdout
        point = [line for line in done.stdout.splitlines() if line.startswith("recovery point ")][0]
        assert f"revision {base + 3}, named 9999-12-31 23:59:58 UTC: in the future" in point, point
        assert "[2Jcheck OK" in done.stdout  # the planted holder, on its one line
    assert checked.returncode == 1
    document = json.loads(checked.stdout)
    assert document["recovery_window"]["recovery_point"]["age_seconds"] is None
    assert document["recovery_window"]["gaps"] == []  # the planted gap is in no window: its reason nowhere
    assert document["problems"] == ["the recovery point is named in the future (a clock ahead, or a planted delta): "
                                    "its age is unknown"]
    assert page.status_code == 200
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "onerror" not in html and "9999-12-31 23:59:58 UTC" in html
    report("a planted lease holder with markup and escapes, a gap with a reason, current_at NaN, a 400-digit "
           "last revision, a delta named in year 9999", "status (--url, --config) and the page answer, every value "
           "as text on its line; the future point fails --max-recovery-age")


# --- the restore's private places, against another local user and SIGTERM ----------------------------------------


def throwaway_etcd_of(restore: subprocess.Popen[str], timeout: float = 60) -> int:
    """The pid of the throwaway etcd `restore` started (setpriv execs etcd: a child of the restore itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert restore.poll() is None, f"the restore ended first: {restore.communicate()}"
        for children in Path(f"/proc/{restore.pid}/task").glob("*/children"):
            for pid in children.read_text().split():
                arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if Path(os.fsdecode(arguments[0])).name == "etcd" and b"--data-dir" in arguments:  # not etcdctl
                    return int(pid)
        time.sleep(0.05)
    raise AssertionError("the restore started no throwaway etcd")


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})


def is_gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


@dataclass
class LongRestore:
    """A point-in-time restore of 20,000 revisions, caught applying them."""

    process: subprocess.Popen[str]
    readable: Path
    """A 0755 dir in /tmp holding the restore's data dir: only the restore's own 0700 dirs protect it."""
    etcd_pid: int
    work: Path
    in_memory: Path
    socket_link: Path
    """The short dir in /tmp through which the restore reaches its etcd's socket."""
    base: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        subprocess.run(["rm", "-rf", str(self.readable)], check=False)


def socket_link_to(work: Path, timeout: float = 10) -> Path:
    """The short socket-link dir in /tmp whose `w` leads to the restore's `work` dir. Looked for until it is there:
    recovery.throwaway makes it just after it starts etcd, so a single look as soon as etcd runs can come first (a
    fresh-clone run's did)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [short for short in Path("/tmp").glob(f"{SOCKET_PREFIX}*")
                 if (short / "w").is_symlink() and (short / "w").resolve() == work.resolve()]
        if len(found) == 1 or time.monotonic() > deadline:
            assert len(found) == 1, (work, found, sorted(Path("/tmp").glob(f"{SOCKET_PREFIX}*")))
            return found[0]
        time.sleep(0.1)


def start_long_restore(service: Service, tmp_path: Path) -> LongRestore:
    base = base_revision(service)
    revisions = puts(base + 1, 20000, b"/adv/j/")
    plant(service.store, backups_revision(service, base), revisions)
    readable = Path(os.path.realpath("/tmp")) / f"adv-{tmp_path.name}"
    readable.mkdir(mode=0o755)
    readable.chmod(0o755)
    process = subprocess.Popen([COMMAND, "restore", "--config", str(tmp_path / "config.yml"), "--to-revision",
                                str(revisions[-1].number), "--data-dir", str(readable / "restored")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        etcd_pid = throwaway_etcd_of(process)
        work = Path(os.readlink(f"/proc/{etcd_pid}/cwd"))
        data = Path(os.fsdecode(Path(f"/proc/{etcd_pid}/cmdline").read_bytes().split(b"\0--data-dir\0")[1]
                                .split(b"\0")[0]))
        link = socket_link_to(work)
    except BaseException:
        LongRestore(process, readable, 0, Path(), Path(), Path(), base).stop()
        raise
    return LongRestore(process, readable, etcd_pid, work, data.parent, link, base)


@pytest.mark.slow
def test_the_throwaway_etcd_and_its_dev_shm_data_are_private_and_gone_after_sigterm(
        service: Service, tmp_path: Path, report: Report) -> None:
    """A restore applying 20,000 revisions: meanwhile uid 65534 can neither connect to its etcd (root can) nor
    list its /dev/shm data; SIGTERM then removes the /dev/shm dir, the work dir, and the etcd."""
    running = start_long_restore(service, tmp_path)
    restore, work, in_memory = running.process, running.work, running.in_memory
    try:
        assert in_memory.parent == Path("/dev/shm") and work.parent == running.readable, (in_memory, work)
        for private in (in_memory, work, running.socket_link):
            assert stat.S_IMODE(private.stat().st_mode) == 0o700, private
        endpoint = f"unix://{work}/client:1"
        query = ["etcdctl", "--endpoints", endpoint, "--dial-timeout=2s", "get", "/adv/j/", "--prefix",
                 "--keys-only", "--limit=1"]
        root = subprocess.run(query, capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})
        assert root.returncode == 0, root.stderr  # the socket answers: the refusal below is the permission's
        nobody = as_nobody(*query)
        assert nobody.returncode != 0 and "/adv/j/" not in nobody.stdout, nobody
        assert as_nobody("ls", str(in_memory)).returncode != 0
        assert restore.poll() is None, "the restore ended before SIGTERM: give it more revisions"
        restore.send_signal(signal.SIGTERM)
        out, err = restore.communicate(timeout=60)
        assert restore.returncode != 0, out
        assert not in_memory.exists() and not work.exists() and not running.socket_link.exists(), err
        assert not (running.readable / "restored").exists()
        wait_gone(running.etcd_pid)
    finally:
        running.stop()
    report("uid 65534 during a restore: etcdctl on the throwaway etcd's socket, ls of its /dev/shm data; then "
           "SIGTERM", f"refused ({nobody.stderr.strip().splitlines()[-1][:80]}); after SIGTERM (exit "
           f"{restore.returncode}) the /dev/shm dir, the work dir and the etcd are gone")


@pytest.mark.slow
def test_what_a_restore_killed_outright_leaves_the_next_restore_removes(
        service: Service, tmp_path: Path, report: Report) -> None:
    """kill -9 mid-apply cannot clean up: the database in clear stays in /dev/shm (memory, until reboot) and beside
    the data dir. The next restore, whatever it restores, removes them before it starts."""
    running = start_long_restore(service, tmp_path)
    try:
        running.process.kill()
        running.process.communicate()
        wait_gone(running.etcd_pid)  # PDEATHSIG
        left = [running.in_memory, running.work, running.socket_link]
        assert all(path.exists() for path in left), left
        next_one = subprocess.run([COMMAND, "restore", "--config", str(tmp_path / "config.yml"), "--to-revision",
                                   str(running.base), "--data-dir", str(running.readable / "next")],
                                  capture_output=True, text=True, timeout=120)
        assert next_one.returncode == 0, next_one.stderr
        assert [path for path in left if path.exists()] == [], next_one.stderr
        # The socket link dir is in /tmp, which any worker's start sweeps too (another test's, beside this one).
        assert all(f"removed {path}, left by a verify, drill or restore whose process died" in next_one.stderr
                   for path in left[:2]), next_one.stderr
    finally:
        running.stop()
    report("`etcd-backup restore --to-revision` killed -9 while applying 20,000 revisions (the database in clear in "
           "/dev/shm and beside the data dir)", "left behind, as nothing can clean up after kill -9; the next "
           "restore removed the /dev/shm dir, the work dir and the socket link dir before it began, and succeeded")


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while not is_gone(pid):
        assert time.monotonic() < deadline, f"the throwaway etcd {pid} outlived the restore"
        time.sleep(0.05)
