"""Redis' users as deploy/kubernetes/procfile ships them: redis-server started by redis.yaml's own command, on
redis-users.acl itself (only its placeholder passwords replaced), runs the whole Procfile deployment (a backup
POST, a verify, a drill, the schedule, list, download, deltas) with no command refused; and each user is refused
what it does not need: FLUSHALL, CONFIG, ACL, KEYS, DEBUG, a backup lock deleted by the API, ..."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from common import backups
from common.etcd_seen import SEEN_KEY
from common.queue import LOCK_KEY
from common.recovery_window import STATS_KEY
from harness.deployment import Deployment, procfile
from harness.processes import ROOT, stop_process, wait_until
from harness.report import Report
from harness.servers import REDIS_BIN, EtcdServer, RedisServer
from harness.writer import current_revision

pytestmark = pytest.mark.slow

PROCFILE_SET = ROOT / "deploy" / "kubernetes" / "procfile"
ACL_FILE = PROCFILE_SET / "redis-users.acl"
EVERY_5_SECONDS = "* * * * * */5"
"""The scheduler's ticks and drills (croniter's sixth field: seconds): both run within the test, not at the next
minute."""
PLACEHOLDERS = {"etcd-backup-api": "REPLACE-ME-API-PASSWORD", "etcd-backup-worker": "REPLACE-ME-WORKER-PASSWORD"}
ADMIN = "test-admin"
"""A user of the test's own, added to the shipped file, to read ACL LOG and CONFIG: the manifest has none."""


def redis_container() -> dict[str, Any]:
    manifest = next(item for item in yaml.safe_load_all((PROCFILE_SET / "redis.yaml").read_text())
                    if item["kind"] == "Deployment")
    container: dict[str, Any] = manifest["spec"]["template"]["spec"]["containers"][0]
    return container


class ShippedRedis(RedisServer):
    """redis.yaml's container command, run here: its users file and data dir in the test's directory."""

    def __init__(self, work_dir: Path, acl_file: Path, password: str) -> None:
        super().__init__(work_dir, acl_file, ADMIN, password)

    @property
    def log(self) -> Path:
        return self.work_dir / "redis.log"

    def start(self) -> ShippedRedis:
        container = redis_container()
        assert container["command"] == ["sh", "-c"], container["command"]
        mount = next(mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] == "users")
        script: str = container["args"][0]
        script = script.replace(f"{mount}/users.acl", str(self.acl_file))
        script = script.replace("--dir /data", f"--dir {self.work_dir}")
        script = script.replace("exec redis-server", f"exec {REDIS_BIN}").rstrip("\n")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["sh", "-c", f"{script} --port {self.port} --bind 127.0.0.1"],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: bool(self.client().ping()), 15, f"redis at {self.port}", self.proc)
        return self


@pytest.fixture
def passwords() -> dict[str, str]:
    return {user: secrets.token_hex(16) for user in [*PLACEHOLDERS, ADMIN]}


@pytest.fixture
def acl_file(tmp_path: Path, passwords: dict[str, str]) -> Path:
    text = ACL_FILE.read_text()
    for user, placeholder in PLACEHOLDERS.items():
        assert text.count(placeholder) == 1, placeholder
        text = text.replace(placeholder, passwords[user])
    path = tmp_path / "users.acl"
    path.write_text(text + f"user {ADMIN} on >{passwords[ADMIN]} ~* &* +@all\n")
    return path


@pytest.fixture
def shipped_redis(tmp_path: Path, acl_file: Path, passwords: dict[str, str]) -> Any:
    server = ShippedRedis(tmp_path / "redis", acl_file, passwords[ADMIN]).start()
    yield server
    server.stop()


def test_redis_refuses_to_start_on_the_placeholder_passwords(tmp_path: Path) -> None:
    unedited = tmp_path / "users.acl"
    unedited.write_text(ACL_FILE.read_text())
    server = ShippedRedis(tmp_path / "redis", unedited, "unused")
    with pytest.raises(RuntimeError, match="process exited with status 1"):
        server.start()
    assert "redis-users.acl still holds a REPLACE-ME password" in server.log.read_text()


def refused(admin: redis.Redis, connection: redis.Redis, user: str, *command: object) -> bool:
    """Whether Redis' ACL denies `command` to `user` (ACL DRYRUN, asked as the test's admin), and trying it on
    `connection` (that user's) fails too."""
    if admin.execute_command("ACL", "DRYRUN", user, *command) in (b"OK", "OK"):
        return False
    try:
        connection.execute_command(*command)
    except redis.ResponseError:  # NOPERM (or, for DEBUG, also disabled in Redis 7 by default)
        return True
    return False


def test_every_process_runs_on_its_own_user_and_nothing_is_refused(
        shipped_redis: ShippedRedis, passwords: dict[str, str], etcd: EtcdServer, tmp_path: Path,
        report: Report) -> None:
    admin = shipped_redis.client()
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert int(admin.config_get("maxmemory")["maxmemory"]) > 0
    api_url = shipped_redis.user_url("etcd-backup-api", passwords["etcd-backup-api"])
    worker_url = shipped_redis.user_url("etcd-backup-worker", passwords["etcd-backup-worker"])
    urls = {"web": api_url, "worker": worker_url, "scheduler": worker_url, "deltas": worker_url,
            "standby": worker_url}
    assert set(procfile()) == set(urls)
    deployment = Deployment(tmp_path / "deploy", [etcd.url], shipped_redis,
                            environments={name: {"REDIS_URL": url} for name, url in urls.items()}, deltas=True,
                            delta_period="1s", schedule=EVERY_5_SECONDS, drill=EVERY_5_SECONDS,
                            compact_after_revisions=100)
    others = []
    try:
        deployment.start()
        others = [deployment.start_process(procfile()[name], name) for name in ("scheduler", "deltas", "standby")]
        client = etcd.client()
        for number in range(20):
            client.put(f"/acl/key-{number}", f"value-{number}")
        answer = deployment.post_backup()
        name = answer["filename"]
        status, _, listing = deployment.request("GET", "/api/v1/backup")
        assert status == 200 and name in json.loads(listing)
        status, _, data = deployment.request("GET", f"/api/v1/backup/{name}")
        assert status == 200 and len(data) == answer["filesize"]
        status, _, body = deployment.request("POST", f"/api/v1/backup/{name}/verify")
        assert status == 200 and json.loads(body)["message"] == "backup verified", body
        wait_until(lambda: deployment.request("GET", "/readyz")[0] == 200, 30, "/readyz 200")
        for path in ("/metrics", "/api/v1/status", "/api/v1/recovery-window", "/"):
            assert deployment.request("GET", path)[0] == 200, path
        for number in range(100):  # the delta watcher stores them, the standby compacts them
            client.put(f"/acl/after-{number}", "x")
        end = current_revision(etcd.url)
        wait_until(lambda: int(admin.hget(STATS_KEY, "last_revision") or 0) >= end, 60, "a delta stored")
        # The standby compacts the 100 puts' deltas (compact-after-revisions 100) under the backup lock.
        wait_until(lambda: any(backups.is_compacted(name) for name in deployment.backups()), 90,
                   "the standby's compacted backup")
        # The scheduler's tick (a backup) and the drill, within seconds.
        wait_until(lambda: json.loads(deployment.request("GET", "/api/v1/status")[2]).get("drill") is not None,
                   150, "the drill to run", deployment.web)
        status_body = json.loads(deployment.request("GET", "/api/v1/status")[2])
        assert status_body["drill"]["passed"] is True, status_body["drill"]
        metrics = deployment.request("GET", "/metrics")[2].decode()
        assert "etcd_backup_redis_maxmemory_bytes" in metrics and "etcd_backup_redis_used_memory_bytes" in metrics
    finally:
        for process in others:
            stop_process(process, timeout=30)
        deployment.stop()
    refused = [(entry["username"], entry["reason"], entry["object"]) for entry in admin.acl_log(count=100)]
    assert refused == [], refused
    memory = admin.info("memory")
    report("the Procfile deployment on redis.yaml's own redis-server and redis-users.acl (API user, worker "
           "user, default off)", "POST 200, verify 200, list, download, deltas, the standby's compacted backup, "
           "a drill that passed, /readyz 200; "
           f"ACL LOG empty; Redis used {memory['used_memory'] / 2**20:.1f} MiB of maxmemory "
           f"{memory['maxmemory'] / 2**20:.0f} MiB")


API_REFUSED: list[tuple[object, ...]] = [
    ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "maxmemory", "0"), ("CONFIG", "GET", "*"), ("ACL", "LIST"),
    ("KEYS", "*"), ("SCAN", "0"), ("DEBUG", "SLEEP", "0"), ("SHUTDOWN", "NOSAVE"), ("MODULE", "LIST"),
    ("EVAL", "return 1", "0"), ("SCRIPT", "FLUSH"), ("SUBSCRIBE", "rq:pubsub:x"), ("CLIENT", "KILL", "ID", "1"),
    ("DEL", LOCK_KEY), ("SET", LOCK_KEY, "mine"), ("SET", SEEN_KEY, "{}"), ("HSET", STATS_KEY, "current_at", "1"),
    ("HINCRBY", "etcd-backup:metrics:outcomes", "success", "1"), ("DEL", "rq:queue:etcd-backup:intermediate"),
    ("XADD", "rq:results:x", "*", "a", "b"), ("SET", "another-app:key", "x"), ("GET", "another-app:key"),
    # It pushes jobs onto the queue and sets and deletes its pending markers (a Redis 7 selector): nothing more.
    ("DEL", "rq:queue:etcd-backup"), ("SET", "rq:queue:etcd-backup", "x"), ("DEL", "rq:queues"),
    ("DEL", "rq:job:0123"), ("SET", "rq:job:0123", "x"), ("SET", "etcd-backup:pending-anything", "x"),
    ("SET", "etcd-backup:pending-verify:snapshot-20261207_060000.tar.gz-and-more", "x"),
]
WORKER_REFUSED: list[tuple[object, ...]] = [
    ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "maxmemory", "0"), ("CONFIG", "GET", "*"), ("ACL", "LIST"),
    ("ACL", "SETUSER", "etcd-backup-worker", "+@all"), ("KEYS", "*"), ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"), ("MODULE", "LIST"), ("EVAL", "return 1", "0"), ("SCRIPT", "FLUSH"),
    ("CLIENT", "KILL", "ID", "1"), ("MONITOR",), ("SET", "another-app:key", "x"), ("GET", "another-app:key"),
    ("SUBSCRIBE", "another-app"),
]


def test_each_user_is_refused_what_it_does_not_need(shipped_redis: ShippedRedis, passwords: dict[str, str],
                                                    report: Report) -> None:
    admin = shipped_redis.client()
    admin.set(LOCK_KEY, "a worker's", px=60_000)
    api = redis.Redis.from_url(shipped_redis.user_url("etcd-backup-api", passwords["etcd-backup-api"]))
    worker = redis.Redis.from_url(shipped_redis.user_url("etcd-backup-worker", passwords["etcd-backup-worker"]))
    allowed = {"api": [command for command in API_REFUSED if not refused(admin, api, "etcd-backup-api", *command)],
               "worker": [command for command in WORKER_REFUSED
                          if not refused(admin, worker, "etcd-backup-worker", *command)]}
    assert allowed == {"api": [], "worker": []}
    assert admin.get(LOCK_KEY) == b"a worker's" and admin.dbsize() == 1
    # The API still reads what it shows, and queues jobs.
    assert api.get(LOCK_KEY) == b"a worker's" and api.set("etcd-backup:pending-job", "x") is True
    for backup in ("snapshot-20261207_060000.stale.tar.gz.age", "snapshot-20261207_060000.compacted.tar.gz",
                   "snapshot-20261207_060000.compacted.tar.gz.age"):  # every kind of backup the API can verify
        assert api.set(f"etcd-backup:pending-verify:{backup}", "x") is True
    anonymous = redis.Redis(port=shipped_redis.port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=shipped_redis.port, username="default", password="").ping()
    report("Redis as shipped: the API's user and the workers' user try FLUSHALL, CONFIG, ACL, KEYS, DEBUG, "
           "SHUTDOWN, EVAL, another app's keys; the API deletes the backup lock, forges etcd's report",
           f"all refused (NOPERM): {len(API_REFUSED)} for the API, {len(WORKER_REFUSED)} for the workers; "
           "no connection without a user")
