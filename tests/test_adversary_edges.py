"""Adversary tests for the API's edges (issue 25): Host and Origin checks, scoped tokens, the queue's bounds,
forged success, start-up refusals and security headers, attacked with other inputs than tests/test_edges*.py,
test_tokens.py, test_start_refusals.py and the flood test try.

Each test attacks one promise of the README (Security, API tokens, allowed-hosts, max-queued-jobs) on a
real server or real processes. A test here that fails is a break the adversary found (listed in its report):
etcd TLS and key files that are pipes, /dev/zero or huge (start-up hangs or runs out of memory); DNS rebinding
through a proxy for browsers that forwards nginx's default Host; an Origin on another port of an allowed-hosts
name (chromium's form POSTs rotate every backup out); a 4 KiB planted report of etcd that makes /metrics and the
recovery window 500; a forged published meta or result naming an old backup (a POST's 200 without a backup),
also with the API's own Redis ACL user, which may also delete the queue; a presigned download without no-store.
The passing ones add coverage the other tests lack (Host spellings and cross-site beacons, text/plain forms and
307 hops against gunicorn)."""

from __future__ import annotations

import http.client
import json
import os
import resource
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from pyrage import x25519
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from selenium.webdriver.support.ui import WebDriverWait

from common.clock import redis_clock
from common.config import load_config
from common.etcd_seen import SEEN_KEY
from common.queue import PENDING_KEY, PUBLISHED_META, job_queue
from common.recovery_window import CURRENT_SLACK_SECONDS, STATS_KEY
from common.redis_tools import text
from common.startup import prepare_backup_dir
from harness.browser import chromium
from harness.cli import COMMAND, environment
from harness.deployment import Deployment
from harness.files import write_config
from harness.in_process import Service, served_over_http
from harness.keys import encryption
from harness.nginx import TokenProxy, readme_proxy_config, server_blocks
from harness.processes import free_port, wait_until
from harness.s3 import S3Server
from tests import test_redis_acl
from tests.test_edges_browser import ATTACKER as BROWSER_ATTACKER
from tests.test_edges_browser import ATTACKS, NAMES, attacker_site, body_text
from tests.test_redis_acl import ADMIN, ShippedRedis

# test_redis_acl's fixtures: redis.yaml's own redis-server on redis-users.acl (passwords set, an admin user added)
passwords, acl_file, shipped_redis = test_redis_acl.passwords, test_redis_acl.acl_file, test_redis_acl.shipped_redis

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # never reached: the config is refused (or hangs) first
MEMORY_LIMIT = 1 << 30
"""The address space a start-up gets here: a file read whole into memory shows as MemoryError, not as
this machine swapping."""
START_TIMEOUT = 10
"""Seconds a start-up has to refuse a config: it reads a few small files."""


# --- Config: files that are no file -----------------------------------------------------------------------

def config_check(path: Path) -> subprocess.CompletedProcess[str] | None:
    """`etcd-backup config check --config path` with MEMORY_LIMIT; None if it did not end in START_TIMEOUT."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    try:
        return subprocess.run([COMMAND, "config", "check", "--config", str(path)], env=environment(None),
                              capture_output=True, text=True, timeout=START_TIMEOUT, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        return None


def base(tmp_path: Path, **keys: Any) -> dict[str, Any]:
    backup_dir = tmp_path / "b"
    backup_dir.mkdir(mode=0o700, exist_ok=True)
    return {"backup-dir": str(backup_dir), "listen": f"127.0.0.1:{free_port()}", "etcd": {},
            "redis-url": UNREACHABLE_REDIS, **keys}


def fifo(tmp_path: Path) -> str:
    """A named pipe no one writes to, 0600: what a path typo, or a hostile local user's link, may name."""
    path = tmp_path / "pipe"
    if not path.exists():
        os.mkfifo(path, 0o600)
    return str(path)


def huge_file(tmp_path: Path) -> str:
    """A 3 GiB file (sparse: it takes no disk), 0600: a disk image or a log where a PEM was meant."""
    path = tmp_path / "huge.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.ftruncate(fd, 3 << 30)
    os.close(fd)
    return str(path)


def link_to_dev_zero(tmp_path: Path) -> str:
    """A symlink to /dev/zero named like a PEM: a Kubernetes Secret's files are symlinks too."""
    path = tmp_path / "ca.pem"
    path.symlink_to("/dev/zero")
    return str(path)


NOT_A_FILE: dict[str, Any] = {
    # etcd's TLS files: read by Section.get_pem with f.read(), no size bound and no regular-file check.
    "etcd.tls-ca-file: a named pipe": (lambda t: {"etcd": {"tls-ca-file": fifo(t)}}, "etcd.tls-ca-file"),
    "etcd.tls-ca-file: /dev/zero": (lambda t: {"etcd": {"tls-ca-file": "/dev/zero"}}, "etcd.tls-ca-file"),
    "etcd.tls-ca: a symlink to /dev/zero": (lambda t: {"etcd": {"tls-ca": link_to_dev_zero(t)}}, "etcd.tls-ca"),
    "etcd.tls-ca-file: a 3 GiB file": (lambda t: {"etcd": {"tls-ca-file": huge_file(t)}}, "etcd.tls-ca-file"),
    "etcd.tls-cert-file: a named pipe": (lambda t: {"etcd": {"tls-cert-file": fifo(t), "tls-key-file": fifo(t)}},
                                         "etcd.tls-cert-file"),
    # key files: bounded reads (MAX_KEY_FILE), but open() on a pipe blocks before any read.
    "signing.key-file: a named pipe": (lambda t: {"signing": {"key-file": fifo(t)}}, "signing.key-file"),
    "encryption.identity-file: a named pipe": (
        lambda t: {"encryption": {**encryption(x25519.Identity.generate()), "identity-file": fifo(t)}},
        "encryption.identity-file"),
}


@pytest.mark.parametrize("case", [pytest.param(case, marks=[pytest.mark.slow] if "pipe" in case else [])
                                  for case in NOT_A_FILE])  # a pipe takes all of START_TIMEOUT to fail
def test_a_key_or_tls_file_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, case: str) -> None:
    """README, Security, Config: "TLS files that do not parse ... are refused by every process at start-up".
    A pipe, /dev/zero (or a symlink to it, as a Secret's files are symlinks) or a huge file is no PEM: the start-up
    must say so in a line naming the key, not hang for ever (a pipe) or read until memory runs out (/dev/zero,
    3 GiB)."""
    keys, key = NOT_A_FILE[case]
    path = write_config(tmp_path / "config.yml", base(tmp_path, **keys(tmp_path)))
    result = config_check(path)
    assert result is not None, f"config check with {case} still running after {START_TIMEOUT} s (blocked on the file)"
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr[-1500:]
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    assert result.stderr.startswith(f"etcd-backup: bad config {path}: {key}: "), result.stderr[-1500:]


# --- Host: DNS rebinding through the README's proxy for browsers ------------------------------------------

TOKEN = "adversary-token-0123456789"
PROXY_NAME = "backup.proxy.test"  # as tests/test_edges_browser.py maps it to 127.0.0.1 (NAMES)
ATTACKER = "attacker.test"


HOST_LINE = "proxy_set_header Host $http_host;"
"""The README's proxy config: the line that passes the browser's Host on."""


def proxy_configs() -> dict[str, tuple[str, str]]:
    """The README's nginx config for browsers, as written and with each of its two defences alone, as
    {case: (config, who refuses a rebound name)}. Each defence must hold alone, so a README that drops either
    fails here: its default server refuses every other name (nginx answers 421 itself), and its Host line passes
    the browser's Host on (the API answers 421). With neither, by nginx's defaults, the API gets its own address
    as Host, and nothing tells the rebound request from curl's; with neither but the browser's Host in
    X-Forwarded-Host (Apache's default), the API refuses it from there."""
    config = readme_proxy_config()
    default_server, own_server = server_blocks(config)
    assert "default_server" in default_server and "return 421;" in default_server, default_server
    assert "backup.example.com" in own_server and own_server.count(HOST_LINE) == 1, own_server
    nginx_default_host = own_server.replace(HOST_LINE, "")
    return {
        "as the README writes it": (config, "nginx"),
        "its default server alone (nginx's default Host)": (config.replace(HOST_LINE, ""), "nginx"),
        "its Host line alone (no default server)": (own_server, "the API"),
        "neither, with X-Forwarded-Host": (nginx_default_host.replace(
            "proxy_set_header Authorization", "proxy_set_header X-Forwarded-Host $http_host;\n"
                                              "        proxy_set_header Authorization"), "the API"),
    }


def refused_by_the_api(body: bytes) -> bool:
    """Whether `body` is the API's 421 (nginx's own is an HTML page)."""
    try:
        return str(json.loads(body)["message"]).startswith("misdirected request: ")
    except (ValueError, TypeError, KeyError):
        return False


def get(port: int, path: str, host: str, **headers: str) -> tuple[int, bytes]:
    """GET `path` from 127.0.0.1:`port` with exactly `host` as Host, as a browser sends it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", host)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


@pytest.mark.parametrize("case", ["as the README writes it", "its default server alone (nginx's default Host)",
                                  "its Host line alone (no default server)", "neither, with X-Forwarded-Host"])
def test_a_rebound_name_cannot_read_backups_through_the_proxy_for_browsers(make_service: Callable[..., Service],
                                                                          tmp_path: Path, case: str) -> None:
    """README, Security: "Another site's page cannot use the operator's browser against the service. DNS
    rebinding ... every path but /healthz answers only a Host that is an IP address ..., else 421", and the
    README's setup for browsers is a proxy that adds the token, the nginx config it shows, with the proxy's name
    in allowed-hosts.

    The attack: the operator's browser opens http://attacker.test:<proxy port>/; attacker.test then re-resolves
    to the proxy's address; the page's same-origin fetch("/api/v1/backup/<name>") goes to the proxy with
    `Host: attacker.test:<port>`. Were the proxy to forward it with `Host: 127.0.0.1:<api port>` (nginx's
    default), an IP literal the API answers, adding the token, the page would read every Secret. The README's
    config is run as the README writes it (harness.nginx.TokenProxy reads it there), and with each of its
    defences alone (proxy_configs)."""
    config, refuser = proxy_configs()[case]
    service = make_service(api_token=TOKEN, allowed_hosts=[PROXY_NAME])
    name = service.client.post("/api/v1/backup", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()["filename"]
    with served_over_http(service) as upstream:
        proxy = TokenProxy(tmp_path / "nginx", upstream, TOKEN, PROXY_NAME, config=config).start()
        try:
            # The operator's own use works through it, with the token it adds.
            status, body = get(proxy.port, "/api/v1/backup", f"{PROXY_NAME}:{proxy.port}")
            assert (status, json.loads(body)) == (200, [name]), body[:200]
            # The rebound page: same-origin to itself, so Chromium sends Sec-Fetch-Site: same-origin.
            status, body = get(proxy.port, f"/api/v1/backup/{name}", f"{ATTACKER}:{proxy.port}",
                               **{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
        finally:
            proxy.stop()
    assert status == 421, f"{case}: the rebound name got {status} and {len(body)} bytes of {name} (every Secret)"
    assert refused_by_the_api(body) == (refuser == "the API"), f"{case}: refused by {refuser}? {body[:200]!r}"


# --- Redis: the workers' reports of etcd, read by the API -------------------------------------------------

def hostile_reports(now: float) -> dict[str, bytes]:
    """Reports of etcd a Redis writer plants, each well under MAX_REPORT_BYTES (4 KiB)."""
    fresh = {"reporter": "worker@pod:1", "endpoint": "https://etcd:2379", "version": "3.5.0", "revision": 7}
    return {
        # 400 digits: a JSON number Python reads as an int, too large for a float (math.isfinite raises
        # OverflowError, which the report's parser does not take for "not a report").
        "a time of 400 digits": json.dumps({**fresh, "at": 10 ** 400}).encode(),
        # 2,000 nested arrays in 4,000 bytes: json.loads raises RecursionError.
        "arrays nested 2,000 deep": b"[" * 2000 + b"]" * 2000,
    }


@pytest.mark.parametrize("case", ["a time of 400 digits", "arrays nested 2,000 deep"])
def test_a_planted_report_of_etcd_never_makes_an_endpoint_fail(make_service: Callable[..., Service],
                                                              redis_conn: redis.Redis, case: str) -> None:
    """README, Health: /readyz reads the workers' report of etcd "as untrusted input (bounded, every field
    checked)", and Security: a Redis writer "cannot ... [only] make /readyz say ready". A report of 4 KiB at most
    that is no report must be "not a report" (as tests/test_health.py's hostile reports are), and the recovery
    window and /metrics, which read the same report when the watcher's current_at is past the store's latest
    revision (a Redis writer sets it too), must still answer."""
    service = make_service()
    assert service.client.post("/api/v1/backup").status_code == 200
    service.stop_worker()  # its reporter would overwrite the plant within 5 s
    now = redis_clock(redis_conn)().timestamp()
    redis_conn.set(SEEN_KEY, hostile_reports(now)[case])
    # current_at past the newest backup by more than CURRENT_SLACK_SECONDS: the report is asked.
    claimed = now + 2 * CURRENT_SLACK_SECONDS  # past the slack after the newest backup's time, not after `now`
    redis_conn.hset(STATS_KEY, mapping={"current_at": str(claimed), "last_revision": "1"})
    time.sleep(claimed + 0.5 - now)

    ready = service.client.get("/readyz").get_json()
    window = service.client.get("/api/v1/recovery-window")
    metrics = service.client.get("/metrics")
    answers = {"/readyz's etcd check": ready["checks"]["etcd"]["error"][:120],
               "/api/v1/recovery-window": window.status_code, "/metrics": metrics.status_code}
    assert answers == {"/readyz's etcd check": "no worker has reported etcd answering in 30 s (is a worker running?)",
                       "/api/v1/recovery-window": 200, "/metrics": 200}, answers


# --- Redis: forged success --------------------------------------------------------------------------------

def forge_published(connection: redis.Redis, job_id: str, old: dict[str, object]) -> None:
    """What a Redis writer does to the backup job a POST waits on: record the old backup as the job's published
    one (the meta a worker writes once its backup is listed), take the job off the queue so that no worker runs
    it, and mark it failed so that the POST stops waiting."""
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    job.meta[PUBLISHED_META] = old
    job.save_meta()  # type: ignore[no-untyped-call]
    connection.lrem(job_queue(connection).key, 0, job_id)
    job.set_status(JobStatus.FAILED)


def forge_result(connection: redis.Redis, job_id: str, old: dict[str, object]) -> None:
    """The same with a successful result naming the old backup, as a worker stores its return value."""
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    connection.lrem(job_queue(connection).key, 0, job_id)
    job.set_status(JobStatus.FINISHED)
    Result.create(job, Result.Type.SUCCESSFUL, ttl=600, return_value=old)


@pytest.mark.parametrize("forge", [forge_published, forge_result], ids=["published meta", "successful result"])
def test_a_post_never_answers_200_with_a_backup_taken_before_it(make_service: Callable[..., Service],
                                                               redis_conn: redis.Redis,
                                                               forge: Callable[[redis.Redis, str, dict[str, object]],
                                                                               None]) -> None:
    """README, POST /api/v1/backup: "a POST never gets a backup whose snapshot started before the POST arrived";
    Security: a Redis writer can "forge what the API reports about jobs ... (but not a backup's success: a 200
    names a backup the store holds ...)". Issue 25, item 4: no 200 while no backup is taken (a `curl -f` CronJob
    stays green). The check the API makes (the store holds the name, at that size) passes for any old backup: a
    Redis writer who names the newest old one in the job a POST waits on gets that POST a 200, and no backup is
    taken."""
    service = make_service(backup_timeout="30s")
    old = service.client.post("/api/v1/backup").get_json()
    old = {"filename": old["filename"], "filesize": old["filesize"]}
    service.stop_worker()  # busy with another job, or stopped by RQ's worker command (a Redis writer may send it)

    answer: list[Any] = []
    post = threading.Thread(target=lambda: answer.append(service.client.post("/api/v1/backup")))
    post.start()
    wait_until(lambda: redis_conn.get(PENDING_KEY) is not None, 10, "the POST's job to be queued")
    forge(redis_conn, text(redis_conn.get(PENDING_KEY) or b""), old)
    post.join(60)

    [response] = answer
    backups = service.client.get("/api/v1/backup").get_json()
    assert not (response.status_code == 200 and response.get_json()["filename"] == old["filename"]), (
        f"POST /api/v1/backup answered {response.status_code} {response.get_json()}: a backup taken before it, "
        f"and the store still holds only {backups}")


# --- Host and Origin on the Procfile deployment (gunicorn), in the forms a browser or a rebinding name may take

NOT_THE_SERVICE = ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.0.0.1.nip.io", "localhost.",
                   "LOCALHOST.", "a@127.0.0.1", "127.0.0.1@attacker.test", "attacker.test#@127.0.0.1",
                   "localhost.attacker.test", "xn--lcalhost-xxa", "127.0.0.1%00.attacker.test"]
"""Hosts that are names (or no host at all) to this service's check. A browser turns the numeric forms into
127.0.0.1 itself (it never sends them), so answering them would not open anything; refusing them is the safe
side, and what matters is that none of them is taken for an IP literal or localhost."""


def test_hosts_in_other_spellings_are_refused_by_gunicorn(etcd: Any, redis_server: Any, tmp_path: Path) -> None:
    """README, Security: every path but /healthz answers only a Host that is an IP address, localhost, the listen
    host or an allowed-hosts entry, else 421. Tried on the Procfile's gunicorn (tests/test_edges.py serves with
    werkzeug), with a token the attacker's proxy would add; two Host headers are refused by gunicorn itself."""
    deployment = Deployment(tmp_path / "deployment", [etcd.url], redis_server, api_token=TOKEN).start()
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        statuses = {host: get(deployment.port, "/api/v1/backup", host, **auth)[0] for host in NOT_THE_SERVICE}
        assert statuses == dict.fromkeys(NOT_THE_SERVICE, 421), statuses
        assert get(deployment.port, "/api/v1/backup", f"[::ffff:127.0.0.1]:{deployment.port}", **auth)[0] == 200
        twice = http.client.HTTPConnection("127.0.0.1", deployment.port, timeout=30)
        twice.putrequest("GET", "/api/v1/backup", skip_host=True)
        twice.putheader("Host", f"127.0.0.1:{deployment.port}")
        twice.putheader("Host", ATTACKER)
        twice.putheader("Authorization", f"Bearer {TOKEN}")
        twice.endheaders()
        assert twice.getresponse().status == 400
        twice.close()
    finally:
        deployment.stop()


# --- Origin: another origin on the host of an allowed-hosts entry ------------------------------------------

@pytest.mark.slow
def test_a_page_on_another_port_of_the_proxys_host_cannot_post(make_service: Callable[..., Service]) -> None:
    """README, Security: a POST is refused "when the browser says it comes from another origin (... an `Origin`
    that is neither the request's `Host` nor in `allowed-hosts`)"; allowed-hosts lists the name browsers reach
    the service (its proxy) by, "`host` (any port)". An Origin is scheme, host and port: a page at
    http://backup.proxy.test:<another port> (another app on the proxy's host: a dashboard, a port-forward) is
    another origin. Chromium sends no Sec-Fetch-Site to a plain-http name that is not loopback, so only the Origin
    tells, and an allowed-hosts entry without a port takes the other port's Origin for the service's own: its form
    POSTs take backups until rotation has erased every good one."""
    service = make_service(rotate=3, allowed_hosts=[PROXY_NAME])
    names = [service.client.post("/api/v1/backup").get_json()["filename"] for _ in range(3)]
    with served_over_http(service) as base, attacker_site(f"http://{PROXY_NAME}:{base.rsplit(':', 1)[1]}"
                                                          "/api/v1/backup") as page, chromium(NAMES) as driver:
        page_on_the_proxys_host = page.replace(BROWSER_ATTACKER, PROXY_NAME)
        target = f"http://{PROXY_NAME}:{base.rsplit(':', 1)[1]}/api/v1/backup"
        for _ in range(ATTACKS):
            driver.get(page_on_the_proxys_host)
            driver.execute_script("document.getElementById('forged').submit()")
            WebDriverWait(driver, 60).until(lambda d: "cross-site request refused" in body_text(d)
                                            or "backup successfully" in body_text(d))
            shown = body_text(driver)
            if "backup successfully" in shown:
                time.sleep(1)  # backups are named to the second
        listed = service.client.get("/api/v1/backup").get_json()
    assert listed == names, (f"{target} took forged POSTs from {page_on_the_proxys_host}: the backups taken before "
                             f"{names} are now {listed}; last answer: {shown[:200]}")


# --- Redis: what the API's own ACL user (the pods that face the network) may do ------------------------------

def forge_published_as_the_api(connection: redis.Redis, job_id: str, old: dict[str, object]) -> None:
    """forge_published with only what redis-users.acl grants etcd-backup-api: HSET on rq:job:* (it writes the job
    hashes it queues), no LREM: the job stays on the queue, for a worker that is busy (or stopped)."""
    job_key = Job.key_for(job_id)
    connection.hset(job_key, mapping={"meta": json.dumps({PUBLISHED_META: old}),  # JSONSerializer's encoding
                                      "status": JobStatus.FAILED.value})


def test_the_apis_redis_user_cannot_forge_a_backups_success(shipped_redis: ShippedRedis, passwords: dict[str, str],
                                                            write_config: Any) -> None:
    """README, Security: with redis-users.acl, "the API's user cannot write the lock, the counters or etcd's
    report" (and is refused XADD to rq:results: it cannot store a job's result); Redis writers cannot forge "a
    backup's success". The API's user (its password is in every API pod, the pods that face the network) writes
    job hashes, so it writes a job's `published` meta: the POST a CronJob waits on answers 200 with the previous
    backup, and no backup is taken while the workers are busy."""
    admin = shipped_redis.client()
    config = load_config(write_config(redis_url=shipped_redis.user_url(ADMIN, passwords[ADMIN]), backup_timeout="30s"))
    prepare_backup_dir(config)
    service = Service(config, admin)
    service.start_worker()
    try:
        old = service.client.post("/api/v1/backup").get_json()
    finally:
        service.stop_worker()
    old = {"filename": old["filename"], "filesize": old["filesize"]}
    api_user = redis.Redis.from_url(shipped_redis.user_url("etcd-backup-api", passwords["etcd-backup-api"]))

    answer: list[Any] = []
    post = threading.Thread(target=lambda: answer.append(service.client.post("/api/v1/backup")))
    post.start()
    wait_until(lambda: admin.get(PENDING_KEY) is not None, 10, "the POST's job to be queued")
    forge_published_as_the_api(api_user, text(admin.get(PENDING_KEY) or b""), old)
    post.join(60)
    [response] = answer
    assert not (response.status_code == 200 and response.get_json()["filename"] == old["filename"]), (
        f"with the API's Redis user, a POST answered {response.status_code} {response.get_json()}")


def test_the_apis_redis_user_cannot_drop_the_queued_backups(shipped_redis: ShippedRedis,
                                                           passwords: dict[str, str]) -> None:
    """deploy/kubernetes/procfile/redis.yaml: each user is "allowed only the commands and keys its processes use".
    The API uses DEL (its pending markers) and the queue's key (LPUSH), never DEL on the queue: granted both, its
    user (an API pod's password) deletes the queue, and with it every backup the scheduler queued. Redis 7's
    selectors can grant DEL on the markers alone."""
    admin = shipped_redis.client()
    admin.rpush("rq:queue:etcd-backup", "a-queued-backup-job")
    api_user = redis.Redis.from_url(shipped_redis.user_url("etcd-backup-api", passwords["etcd-backup-api"]))
    # redis-py raises Redis' NOPERM as NoPermissionError, its message without the "NOPERM" code.
    with pytest.raises(redis.exceptions.NoPermissionError):
        api_user.delete("rq:queue:etcd-backup")
    assert admin.lrange("rq:queue:etcd-backup", 0, -1) == [b"a-queued-backup-job"]


# --- Headers: a presigned download -------------------------------------------------------------------------

@pytest.mark.parametrize("server_name", ["seaweedfs", "moto"])
def test_a_presigned_download_is_no_store_too(make_service: Callable[..., Service], request: pytest.FixtureRequest,
                                              server_name: str) -> None:
    """README, Security: every answer carries "`Cache-Control: no-store` (downloads included)"; a backup is every
    Secret of the cluster, which no browser or proxy cache may keep. With s3.presign-downloads, the API's answer is
    a 302 (no-store) and the download itself is the store's answer to the presigned URL: it must say no-store too
    (S3's response-cache-control parameter, signed into the URL), or a browser keeps the backup in its disk cache
    (heuristically: it has a Last-Modified)."""
    server: S3Server = request.getfixturevalue(server_name)
    settings = server.settings(*server.place())
    service = make_service(**{**settings, "s3": {**settings["s3"], "presign-downloads": True}})
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    redirect = service.client.get(f"/api/v1/backup/{name}")
    assert redirect.status_code == 302 and "no-store" in redirect.headers["Cache-Control"]
    with urllib.request.urlopen(redirect.headers["Location"], timeout=10) as fetched:
        headers = dict(fetched.headers)
    assert "no-store" in headers.get("Cache-Control", ""), f"the download of {name} from the store: {headers}"


# --- Cross-site POSTs by other means than a form or fetch, in chromium ---------------------------------------

class RedirectingAttacker(BaseHTTPRequestHandler):
    """Another site: a page that posts with navigator.sendBeacon and with an enctype=text/plain form, and a form
    that posts to its own /hop, which answers 307 to the API (the browser repeats the POST there, body included)."""

    target = ""
    beacons_received = 0
    """Beacons the page sent to this server itself: proof that headless chromium sends them at all."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = f"""<!doctype html><title>more cats</title>
<form id="plain" method="post" enctype="text/plain" action="{self.target}"><input name="x" value="1"></form>
<form id="hop" method="post" action="/hop"><input name="x" value="1"></form>
<script>function beacon(url) {{ return navigator.sendBeacon(url, "x=1"); }}</script>""".encode()
        self._answer(200, body, "text/html")

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/beacon":
            type(self).beacons_received += 1
            self._answer(204, b"", "text/plain")
            return
        self.send_response(307)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, status: int, body: bytes, media_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.mark.slow
def test_beacons_text_plain_forms_and_307_hops_are_refused_by_gunicorn(etcd: Any, redis_server: Any,
                                                                      tmp_path: Path) -> None:
    """README, Security: a cross-site POST is refused with 403 (test_edges_browser.py tries a form and a no-cors
    fetch against werkzeug). Here, against the Procfile deployment (gunicorn, Redis, a worker) with rotate: 3: a
    sendBeacon, an enctype=text/plain form, and a form whose POST another site redirects (307) to the API (the
    browser sends Origin: null after a cross-origin hop). None takes a backup; the refusals are 403s."""
    deployment = Deployment(tmp_path / "deployment", [etcd.url], redis_server, rotate=3).start()
    RedirectingAttacker.target = f"{deployment.base}/api/v1/backup"
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), RedirectingAttacker)
    thread = threading.Thread(target=attacker.serve_forever, name="attacker", daemon=True)
    thread.start()
    try:
        before = [deployment.post_backup()["filename"] for _ in range(1)]
        page = f"http://{BROWSER_ATTACKER}:{attacker.server_port}/"
        with chromium(NAMES) as driver:
            for form in ("plain", "hop"):
                driver.get(page)
                driver.execute_script(f"document.getElementById('{form}').submit()")
                WebDriverWait(driver, 60).until(lambda d: "cross-site request refused" in body_text(d))
            driver.get(page)
            assert driver.execute_script("return beacon(arguments[0])", f"{page}beacon") is True
            wait_until(lambda: RedirectingAttacker.beacons_received == 1, 30, "the control beacon")
            assert driver.execute_script("return beacon(arguments[0])", RedirectingAttacker.target) is True
            time.sleep(2)  # the beacon is sent after the call returns; its answer is never seen
        assert deployment.backups() == before
    finally:
        attacker.shutdown()
        thread.join()
        attacker.server_close()
        deployment.stop()
