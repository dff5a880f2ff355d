"""Hostile input and access: the OpenAPI contract under schemathesis, fuzzed file names, the API token,
TLS on the API, and jobs that are not JSON."""

from __future__ import annotations

import json
import pickle
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from api.meta import OPENAPI_PATH
from common.config import API_TOKEN_ENV, ConfigError, parse_config
from common.queue import QUEUE_NAME
from common.startup import prepare_backup_dir
from harness.deployment import Deployment, start
from harness.in_process import Service
from harness.pki import make_tls_files
from harness.processes import BIN_DIR, wait_until
from harness.report import Report
from harness.servers import EtcdServer

TOKEN = "a-token-long-enough-to-be-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_openapi_description_is_served_as_kept_in_the_repo(service: Service) -> None:
    response = service.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(OPENAPI_PATH.read_text())
    assert response.get_json()["openapi"].startswith("3.")


@pytest.mark.slow
def test_schemathesis_finds_no_undocumented_answer(tmp_path: Path, etcd: EtcdServer, report: Report) -> None:
    """Every operation, with generated valid and invalid input (and the token), answers as documented."""
    deployment = Deployment(tmp_path / "service", [etcd.url], api_token=TOKEN).start()
    # A valid Range past the archive's end is rightly 416 (documented): not a valid request "rejected".
    settings = tmp_path / "schemathesis.toml"
    settings.write_text('[checks.positive_data_acceptance]\n'
                        'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "416", "429", "5xx"]\n')
    try:
        done = subprocess.run(
            [str(BIN_DIR / "schemathesis"), "--config-file", str(settings), "run",
             f"{deployment.base}/api/v1/openapi.json", "--checks", "all",
             "--max-examples", "40", "--header", f"Authorization: Bearer {TOKEN}", "--generation-deterministic",
             # The stateful phase chains POST -> download; each POST waits for a fresh second (names
             # have one-second resolution), so it takes minutes: it is run by hand, not in CI.
             "--phases", "examples,coverage,fuzzing",
             "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=600,
        )
    finally:
        deployment.stop()
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert summary is not None, done.stdout[-2000:]
    report("schemathesis (all checks, 40 examples per operation, valid and invalid input) against the live "
           "all-in-one service with an API token",
           f"{summary.group(1)} test cases, {summary.group(2)} passed: no 5xx, no answer outside the OpenAPI "
           "description")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(
    st.text(alphabet=st.sampled_from(list("./\\%0123456789abcdefnprstwxz_-:~\x00 ")), max_size=60),
    st.from_regex(r"(\.\./|%2e%2e%2f|/|%2f|\.\.%5c)*(etc/passwd|outside\.txt|snapshot-2024010[12]_000000\.tar\.gz)",
                  fullmatch=True),
))
def test_fuzzed_file_names_never_read_outside_backup_dir(fuzz_service: Service, name: str) -> None:
    assume(name != "")  # "/api/v1/backup/" is the list
    response = fuzz_service.client.get(f"/api/v1/backup/{name}")
    body = response.get_data()
    response.close()
    assert response.status_code in (200, 400, 404, 405), (name, response.status_code)
    assert b"OUTSIDE" not in body and b"root:" not in body
    if response.status_code == 200:
        assert name == "snapshot-20240101_000000.tar.gz" and body == b"the only backup"


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer) -> Service:
    """A service (no worker) whose backup-dir holds one backup, next to a file that must never be served."""
    base = tmp_path_factory.mktemp("fuzz")
    (base / "outside.txt").write_text("OUTSIDE backup-dir")
    config = parse_config({"backup-dir": str(base / "backups"), "etcd": {"endpoints": [etcd.url]}}, {})
    prepare_backup_dir(config)
    (config.backup_dir / "snapshot-20240101_000000.tar.gz").write_bytes(b"the only backup")
    (config.backup_dir / "snapshot-20240102_000000.tar.gz").symlink_to(base / "outside.txt")
    return Service(config, redis.Redis.from_url("redis://127.0.0.1:1"))  # GETs never touch Redis


def test_fuzzing_report(fuzz_service: Service, report: Report) -> None:
    assert fuzz_service.client.get("/api/v1/backup").get_json() == ["snapshot-20240101_000000.tar.gz"]
    report("400 fuzzed file names (hypothesis: traversal, encoded slashes, NUL, backslashes) plus a symlink "
           "planted in backup-dir",
           "only 400/404 (and 200 for the one real backup); no byte from outside backup-dir; the symlink is "
           "neither listed nor served")


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v1/backup"), ("POST", "/api/v1/backup"), ("GET", "/api/v1/backup/snapshot-20240101_000000.tar.gz"),
    ("HEAD", "/api/v1/backup/snapshot-20240101_000000.tar.gz"), ("GET", "/api/v1/jobs/" + "0" * 32),
    ("GET", "/api/v1/openapi.json"), ("GET", "/readyz"), ("GET", "/metrics"),
    ("GET", "/nowhere"),
])
def test_api_token_is_required_everywhere_but_healthz(make_service: Callable[..., Service], method: str,
                                                      path: str) -> None:
    service = make_service(worker=False, api_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        response = service.client.open(path, method=method, headers=headers)
        assert response.status_code == 401, (headers, response.status_code)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="etcd-backup"'
        if method != "HEAD":
            assert response.get_json()["message"].startswith("missing or wrong API token")
    assert service.client.get("/healthz").get_json() == {"status": "ok"}
    if path == "/api/v1/backup" and method == "GET":
        assert service.client.get(path, headers=AUTH).status_code == 200


def test_api_token_from_the_environment_and_too_short(report: Report) -> None:
    raw = {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}
    assert parse_config(raw, {API_TOKEN_ENV: TOKEN}).api_token == TOKEN
    assert TOKEN not in repr(parse_config(raw, {API_TOKEN_ENV: TOKEN}))
    with pytest.raises(ConfigError, match="api-token: must be at least 16 characters long"):
        parse_config({**raw, "api-token": "short"}, {})
    report("api-token set: requests without it, with a wrong one, with another scheme (every endpoint)",
           "401 {\"message\": ...} with WWW-Authenticate: Bearer; /healthz stays open; the right token passes; "
           "a token under 16 characters is refused at start-up")


@pytest.mark.slow
def test_api_over_tls(tmp_path: Path, etcd: EtcdServer, report: Report) -> None:
    pki = make_tls_files(tmp_path / "pki")
    deployment = Deployment(tmp_path / "service", [etcd.url], api_tls_cert=str(pki.server_cert),
                            api_tls_key=str(pki.server_key))
    deployment.base = deployment.base.replace("http://", "https://")
    context = ssl.create_default_context(cafile=str(pki.ca))

    def get(url: str) -> int:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return int(response.status)

    deployment.web = start(f"etcd-backup --config {deployment.config}", deployment.config,
                           deployment.work / "web.log", REDIS_URL="")
    try:
        wait_until(lambda: get(f"{deployment.base}/healthz") == 200, 30, "the API over TLS", deployment.web)
        request = urllib.request.Request(f"{deployment.base}/api/v1/backup", method="POST")
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            assert json.loads(response.read())["message"] == "backup successfully"
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{deployment.port}/healthz", timeout=5)
    finally:
        deployment.stop()
    report("api-tls-cert / api-tls-key set", "the API answers over HTTPS (certificate checked against the test "
           "CA, POST 200); plain HTTP on the same port gets no answer")


class _Exploit:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_a_pickled_job_is_never_run(make_service: Callable[..., Service], tmp_path: Path, report: Report) -> None:
    """Whoever can write to Redis must not be able to run code in a worker: jobs are JSON."""
    service = make_service()
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(("os.system", None, (_Exploit(marker),), {}))
    connection = service.connection
    connection.hset("rq:job:evil", mapping={"data": payload, "status": "queued", "origin": QUEUE_NAME,
                                            "created_at": "2026-01-01T00:00:00.000000Z"})
    connection.rpush(f"rq:queue:{QUEUE_NAME}", "evil")
    wait_until(lambda: connection.llen(f"rq:queue:{QUEUE_NAME}") == 0, 30, "the worker to take the job")
    time.sleep(1)
    assert not marker.exists()
    response = service.client.post("/api/v1/backup")  # the worker is still alive and works
    assert response.status_code == 200, response.get_json()
    assert not marker.exists()
    _, _, (opened,), _ = pickle.loads(payload)  # the control: unpickled, this payload does run its code
    opened.close()
    assert marker.exists()
    report("a pickled job pushed straight into the Redis queue (its unpickling would create a file)",
           "not unpickled (jobs are JSON): no code ran; the worker went on and the next POST took a backup")
