"""The container image: built from the Containerfile on a debootstrapped Debian, its programs run as
its user (UID 10000) on its read-only root file system, against a real etcd and a real Redis."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.utils import canonicalize_name
from rq import Worker

from harness.deployment import procfile, wait_for_api
from harness.image import ContainerImage, Mount, added_files
from harness.in_process import Service
from harness.lock import ENVIRONMENT_SCRIPT, LOCK, read
from harness.processes import ROOT, free_port, http, stop_process, wait_until
from harness.servers import ETCD_RELEASES, EtcdServer, RedisServer, restored_keys

# One group: pytest-xdist runs them in one process, which builds the image once (container_image).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("image")]

IMAGE_UID = 10000
CONFIG = "/etc/etcd-backup/config.yml"
MAX_IMAGE_BYTES = 300_000_000
"""A bound that an accidental compiler, pip cache or apt list would cross (the image is about 244 MB)."""
README_HEALTH_URL = "http://127.0.0.1:8080/healthz"


def readme_health_check(url: str) -> list[str]:
    """The README's `docker run --health-cmd '...'` (Python's own: the image has no curl), asking `url`."""
    command = re.search(r"--health-cmd '([^']+)'", (ROOT / "docs" / "deploying.md").read_text())
    assert command is not None and README_HEALTH_URL in command.group(1)
    return [url if word == README_HEALTH_URL else word for word in shlex.split(command.group(1))]


def owned_by_image_user(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def service_mounts(work: Path, **settings: Any) -> tuple[list[Mount], Path]:
    """The volumes the service runs with: its config dir (read-only) and its backup dir (the image's user's)."""
    config_dir = work / "config"
    config_dir.mkdir(parents=True)
    document = {"backup-dir": "/etcd-backup", **{key.replace("_", "-"): value for key, value in settings.items()}}
    (config_dir / "config.yml").write_text(yaml.safe_dump(document))
    backup_dir = owned_by_image_user(work / "backups")
    return [Mount(config_dir, "/etc/etcd-backup"), Mount(backup_dir, "/etcd-backup", writable=True)], backup_dir


@pytest.fixture(scope="module")
def all_in_one(container_image: ContainerImage, etcd: EtcdServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[Mount]]]:
    """`etcd-backup --config ...` from the image (the embedded queue), on /image/key-0..4 in etcd."""
    client = etcd.client()
    for number in range(5):
        client.put(f"/image/key-{number}", f"value-{number}")
    work = tmp_path_factory.mktemp("all-in-one")
    port = free_port()
    mounts, backup_dir = service_mounts(work, listen=f"127.0.0.1:{port}", etcd={"endpoints": [etcd.url]})
    proc = container_image.start(["etcd-backup", "--config", CONFIG], work / "server.log", mounts)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_api(base, proc)
        yield base, backup_dir, mounts
    finally:
        stop_process(proc)
    print((work / "server.log").read_text()[-3000:])  # shown when a test of this module fails


def test_image_runs_as_its_user_and_has_every_command(container_image: ContainerImage) -> None:
    assert container_image.user == f"{IMAGE_UID}:{IMAGE_UID}"
    assert container_image.run(["id", "-u"]).stdout.strip() == str(IMAGE_UID)
    overview = container_image.run(["etcd-backup", "--help"])
    assert overview.returncode == 0 and "scheduler" in overview.stdout, overview
    for role, line in procfile().items():
        answer = container_image.run([*shlex.split(line), "--help"])
        assert answer.returncode == 0 and "usage:" in answer.stdout, (role, answer)
    # verify and restore read snapshots with etcdctl (etcd 3.4 has no etcdutl; it restores etcd 3.5's snapshots too:
    # test_the_images_etcd_3_4_verifies_restores_and_drills_a_backup_of_etcd_3_5); the drill starts etcd.
    assert "etcdctl version: 3.4" in container_image.run(["etcdctl", "version"]).stdout
    assert "etcd Version: 3.4" in container_image.run(["etcd", "--version"]).stdout


def test_image_has_no_build_tools_and_is_small(container_image: ContainerImage) -> None:
    for tool in ("gcc", "cc", "make", "pip", "pip3"):
        assert container_image.run(["sh", "-c", f"command -v {tool}"]).returncode != 0, f"{tool} is in the image"
    assert not list((container_image.root / "var/lib/apt/lists").iterdir())
    assert container_image.size < MAX_IMAGE_BYTES, container_image.size


BUILD_LEFTOVERS = ["/etc/pip.conf", "/etc/ssl/host-ca.crt", "/run/secrets", "/src", "/root/.cache", "/tmp/*"]
"""What a build writes only to reach the package index or to build: pip's config and CA, the secret mounts, the
build context, pip's cache (an earlier build of this image left an empty /etc/pip.conf and /etc/ssl/host-ca.crt)."""
ADDED_ON_PURPOSE = {  # fnmatch patterns: * matches across / too
    "the Containerfile": ["/etc/dpkg/dpkg.cfg.d/etcd-backup-nodoc", "/etc/etcd-backup", "/etcd-backup",
                          "/opt/etcd-backup", "/opt/etcd-backup/*"],
    "useradd's backups of the account files": ["/etc/gshadow-", "/etc/shadow-", "/etc/subgid-", "/etc/subuid-"],
    "dpkg's and apt's own records": ["/var/lib/dpkg/info/*", "/var/lib/apt/extended_states"],
    "the packages' maintainer scripts (etcd-server's service links and data dir, python3's byte code)": [
        "/etc/inputrc", "/etc/python3", "/etc/python3/debian_config", "/etc/rc[0-6].d/[KS]01etcd",
        "/etc/systemd/system/etcd2.service", "/etc/systemd/system/multi-user.target.wants/etcd.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/*", "/var/lib/etcd", "/var/lib/python",
        "/var/lib/python/python3.11_installed", "/usr/local/lib/python3.11", "/usr/local/lib/python3.11/dist-packages",
        "/usr/lib/python3*/__pycache__", "/usr/lib/python3*/__pycache__/*.pyc", "/usr/share/python3/*__pycache__",
        "/usr/share/python3/*__pycache__/*.pyc"],
    # podman's chroot isolation mounts the host's /etc/hosts there for each RUN; a runtime mounts its own.
    "the build runtime's mount point": ["/etc/hosts"],
}


def test_the_build_leaves_nothing_behind(container_image: ContainerImage) -> None:
    """Every file the build added to its Debian base is a packaged file or on the list above, with its reason."""
    for path in BUILD_LEFTOVERS:
        assert not list(container_image.root.glob(path.lstrip("/"))), f"{path} is in the image"
    patterns = [pattern for reason in ADDED_ON_PURPOSE.values() for pattern in reason]
    added = added_files(container_image)
    unexplained = sorted(path for path in added if not any(fnmatch.fnmatchcase(path, p) for p in patterns))
    assert unexplained == []
    assert "/opt/etcd-backup/bin/python3" in added  # what the list is taken from: the venv is found


def test_installed_packages_are_the_locked_versions(container_image: ContainerImage) -> None:
    """The venv holds exactly requirements.lock's pins for the image's Python and platform, and the project."""
    answer = container_image.run(["python3", "-c", ENVIRONMENT_SCRIPT])
    assert answer.returncode == 0, answer.stderr
    seen = json.loads(answer.stdout)
    installed = {canonicalize_name(name): version for name, version in seen["installed"].items()}
    locked = {name: pin.version for name, pin in read(LOCK).items() if pin.applies(seen["environment"])}
    assert installed == {**locked, "etcd-backup": "0.1.0"}


def test_only_tmp_and_volumes_are_writable(container_image: ContainerImage, tmp_path: Path) -> None:
    """What the other tests run on: a root file system that refuses every write (as --read-only does)."""
    backups = owned_by_image_user(tmp_path / "backups")
    writes = "touch /tmp/ok /etcd-backup/ok; for dir in / /var/tmp /opt/etcd-backup /etc; do touch $dir/x; done"
    answer = container_image.run(["sh", "-c", writes], [Mount(backups, "/etcd-backup", writable=True)])
    refused = [line for line in answer.stderr.splitlines() if line.endswith("Read-only file system")]
    assert len(refused) == 4, answer.stderr
    assert (backups / "ok").stat().st_uid == IMAGE_UID
    assert "/tmp/ok" not in answer.stderr


def test_all_in_one_backs_up_lists_and_serves(container_image: ContainerImage,
                                              all_in_one: tuple[str, Path, list[Mount]]) -> None:
    base, backup_dir, _ = all_in_one
    assert container_image.run(readme_health_check(f"{base}/healthz")).returncode == 0
    assert container_image.run(readme_health_check(f"{base}/nothing-here")).returncode != 0
    status, _, body = http("POST", f"{base}/api/v1/backup")
    assert status == 200, body
    name = json.loads(body)["filename"]
    assert json.loads(http("GET", f"{base}/api/v1/backup")[2]) == [name]
    status, _, data = http("GET", f"{base}/api/v1/backup/{name}")
    assert status == 200 and data == (backup_dir / name).read_bytes()
    assert (backup_dir / name).stat().st_uid == IMAGE_UID


def test_verify_and_restore_from_the_image(container_image: ContainerImage, all_in_one: tuple[str, Path, list[Mount]],
                                           tmp_path: Path) -> None:
    base, backup_dir, mounts = all_in_one
    status, _, body = http("POST", f"{base}/api/v1/backup")
    assert status == 200, body
    name = json.loads(body)["filename"]
    verified = container_image.run(["etcd-backup", "verify", f"/etcd-backup/{name}"], mounts)
    assert verified.returncode == 0, verified
    restore_dir = owned_by_image_user(tmp_path / "restore")
    # restore from the service's URL: the image's client downloads, verifies and restores with etcdctl.
    restored = container_image.run(["etcd-backup", "restore", f"{base}/api/v1/backup/{name}", "--data-dir",
                                    "/mnt/data"], [Mount(restore_dir, "/mnt", writable=True)])
    assert restored.returncode == 0, restored
    assert restored_keys(restore_dir / "data", "/image/") == {f"/image/key-{n}": f"value-{n}".encode()
                                                               for n in range(5)}


def test_procfile_web_and_worker_on_redis(container_image: ContainerImage, etcd: EtcdServer,
                                          redis_server: RedisServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    port = free_port()
    mounts, backup_dir = service_mounts(tmp_path, listen=f"127.0.0.1:{port}", etcd={"endpoints": [etcd.url]},
                                        redis_url=redis_server.url)
    commands = procfile()
    web = container_image.start(shlex.split(commands["web"]), tmp_path / "web.log", mounts)
    worker = container_image.start(shlex.split(commands["worker"]), tmp_path / "worker.log", mounts)
    try:
        wait_for_api(f"http://127.0.0.1:{port}", web)
        # The image's worker is the only one on this Redis: the web process takes no backups itself.
        wait_until(lambda: len(Worker.all(connection=redis_conn)) == 1, 30, "the image's worker", worker)
        status, _, body = http("POST", f"http://127.0.0.1:{port}/api/v1/backup")
        assert status == 200, body
        name = json.loads(body)["filename"]
        assert (backup_dir / name).stat().st_uid == IMAGE_UID
    finally:
        stop_process(web)
        stop_process(worker)
    assert name in (tmp_path / "worker.log").read_text()


DRILL = ("import json; from common.config import load_config; from worker.drill import run_drill; "
         f"result = run_drill(load_config({CONFIG!r})); print(json.dumps([result.passed, result.reason]))")
"""The restore drill, as a worker of the image runs it (an RQ job calls run_drill)."""


@pytest.mark.parametrize("etcd", ["3.5"], indirect=True)
def test_the_images_etcd_3_4_verifies_restores_and_drills_a_backup_of_etcd_3_5(
        container_image: ContainerImage, service: Service, etcd: EtcdServer, tmp_path: Path) -> None:
    """The image ships Debian's etcd 3.4 only, and that restores every tested version: a backup of etcd 3.5 is
    verified and restored by its etcdctl, and drilled on its etcd; the data dir it restores starts on etcd 3.5."""
    client = etcd.client()
    written = {f"/image-35/key-{number}": f"value-{number}".encode() for number in range(5)}
    for key, value in written.items():
        client.put(key, value)
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    mounts, backup_dir = service_mounts(tmp_path / "service", etcd={"endpoints": [etcd.url]})
    for file in (name, f"{name}.json"):
        shutil.copy(service.config.backup_dir / file, backup_dir / file)
        os.chown(backup_dir / file, IMAGE_UID, IMAGE_UID)
    verified = container_image.run(["etcd-backup", "verify", f"/etcd-backup/{name}"], mounts)
    assert verified.returncode == 0 and "good: revision" in verified.stdout, verified
    restore_dir = owned_by_image_user(tmp_path / "restore")
    restored = container_image.run(["etcd-backup", "restore", f"/etcd-backup/{name}", "--data-dir", "/mnt/data"],
                                   [*mounts, Mount(restore_dir, "/mnt", writable=True)])
    assert restored.returncode == 0 and "running: /usr/bin/etcdctl snapshot restore" in restored.stdout, restored
    assert restored_keys(restore_dir / "data", "/image-35/", ETCD_RELEASES["3.5"]) == written
    drilled = container_image.run(["python3", "-c", DRILL], mounts)
    assert drilled.returncode == 0, drilled
    passed, reason = json.loads(drilled.stdout.splitlines()[-1])
    assert passed and reason.startswith("on etcd 3.4.") and "keys, as recorded" in reason, reason
