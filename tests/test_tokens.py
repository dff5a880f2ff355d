"""Scoped tokens over real HTTP: the read-token reads, the backup-token also takes and verifies backups,
the download-token also downloads them, the api-token does everything; each refused where it may not go,
and nothing a refused request asked for is done."""

from __future__ import annotations

import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from api import auth, create_app
from api.meta import OPENAPI_PATH
from common.clock import redis_clock
from common.config import ConfigError, effective_config, parse_config
from harness.cli import etcd_backup
from harness.in_process import Service, served_over_http
from harness.report import Report

TOKENS = {
    "api-token": "api-token-0123456789abcdef",
    "read-token": "read-token-0123456789abcdef",
    "backup-token": "backup-token-0123456789abcdef",
    "download-token": "download-token-0123456789abcdef",
}
JOB = "0" * 32
BACKUP = "snapshot-20240101_000000.tar.gz"  # replaced by a real backup's name in `served`

# (method, path, the right it needs): every route the API has (test_every_route_has_a_right keeps it so).
ROUTES = [
    ("GET", "/", "read"), ("GET", "/api/v1/status", "read"), ("GET", "/metrics", "read"),
    ("GET", "/readyz", "read"), ("GET", "/api/v1/openapi.json", "read"), ("GET", "/api/v1/backup", "read"),
    ("GET", "/api/v1/backup?detail=true", "read"), ("GET", f"/api/v1/jobs/{JOB}", "read"),
    ("GET", "/api/v1/recovery-window", "read"),
    ("GET", "/api/v1/backup/{backup}", "download"), ("HEAD", "/api/v1/backup/{backup}", "download"),
    ("POST", "/api/v1/backup/{backup}/verify", "backup"), ("POST", "/api/v1/backup", "backup"),
]
MAY = {"api-token": {"read", "backup", "download"}, "read-token": {"read"},
       "backup-token": {"read", "backup"}, "download-token": {"read", "download"}}


def call(base: str, method: str, path: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(base + path, method=method,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def served(make_service: Callable[..., Service]) -> Iterator[tuple[Service, str, str]]:
    """A service with all four tokens, over real HTTP, holding one real backup (taken with the backup-token)."""
    service = make_service(**TOKENS)
    with served_over_http(service) as base:
        status, body = call(base, "POST", "/api/v1/backup", TOKENS["backup-token"])
        assert status == 200, body
        yield service, base, _newest(service)


def _newest(service: Service) -> str:
    return service.store.list_backups(redis_clock(service.connection)())[-1]


@pytest.mark.parametrize("name", TOKENS)
def test_each_token_may_do_what_its_row_says_and_no_more(served: tuple[Service, str, str], name: str,
                                                         report: Report) -> None:
    service, base, backup = served
    before = _newest(service)
    for method, template, right in ROUTES:
        path = template.format(backup=backup)
        status, body = call(base, method, path, TOKENS[name])
        if right in MAY[name]:
            assert status not in (401, 403), (name, method, path, status, body)
        else:
            assert status == 403, (name, method, path, status, body)
            if method == "HEAD":  # no body to say why
                continue
            message = body.decode()
            assert f"the {name} may not" in message and f"{'backup' if right == 'backup' else 'download'}-token" \
                in message and "api-token" in message, message
            assert TOKENS[name] not in message
        if (method, right) == ("GET", "download") and right in MAY[name]:
            assert status == 200 and body == service.read_backup(backup)
    # What a refused POST asked for was not done: no new backup.
    if "backup" not in MAY[name]:
        assert _newest(service) == before
    report(f"the {name} on every route over real HTTP ({len(ROUTES)} requests)",
           f"allowed: {', '.join(sorted(MAY[name]))}; every other route 403 naming the token it needs")


def test_no_token_or_a_wrong_one_is_401_everywhere_but_healthz(served: tuple[Service, str, str]) -> None:
    _, base, backup = served
    for token in (None, "x" * 30, TOKENS["read-token"] + "x", TOKENS["read-token"][:-1]):
        for method, template, _ in [*ROUTES, ("GET", "/nowhere", "")]:
            status, body = call(base, method, template.format(backup=backup), token)
            assert status == 401, (token, method, template, status, body)
    assert call(base, "GET", "/healthz", None) == (200, b'{"status":"ok"}\n')


def test_every_route_has_a_right(make_service: Callable[..., Service]) -> None:
    """A route added without a right in api.auth.ENDPOINT_RIGHTS fails here (and only the api-token may use it)."""
    app: Flask = make_service(worker=False).client.application  # type: ignore[assignment]
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints - set(auth.ENDPOINT_RIGHTS) == set()
    assert {auth.ENDPOINT_RIGHTS[endpoint] for endpoint in endpoints} <= {None, *auth.RIGHTS}


def test_a_route_without_a_right_is_only_the_api_tokens(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, **TOKENS)
    app = create_app(service.config, service.connection)
    app.add_url_rule("/api/v1/new", "new", lambda: "new")  # added after create_app: no right given
    client = app.test_client()
    for name in ("read-token", "backup-token", "download-token"):
        response = client.get("/api/v1/new", headers={"Authorization": f"Bearer {TOKENS[name]}"})
        assert response.status_code == 403, name
    assert client.get("/api/v1/new", headers={"Authorization": f"Bearer {TOKENS['api-token']}"}).status_code == 200


def test_only_a_read_token_still_closes_everything(make_service: Callable[..., Service]) -> None:
    """A read-token alone (no api-token): nobody may POST or download, and no token is no access."""
    service = make_service(worker=False, read_token=TOKENS["read-token"])
    auth_header = {"Authorization": f"Bearer {TOKENS['read-token']}"}
    assert service.client.get("/metrics").status_code == 401
    assert service.client.get("/metrics", headers=auth_header).status_code == 200
    response = service.client.post("/api/v1/backup", headers=auth_header)
    assert response.status_code == 403
    assert response.get_json()["message"].startswith("the read-token may not take or verify backups")
    assert service.client.post("/api/v1/backup").status_code == 401


ENVIRONMENT = {"read-token": "ETCD_BACKUP_READ_TOKEN", "backup-token": "ETCD_BACKUP_BACKUP_TOKEN",
               "download-token": "ETCD_BACKUP_DOWNLOAD_TOKEN", "api-token": "ETCD_BACKUP_API_TOKEN"}


@pytest.mark.parametrize("key", ENVIRONMENT)
def test_tokens_from_the_config_or_environment_at_least_16_characters(key: str) -> None:
    raw = {"etcd": {}, "backup-dir": "/tmp/unused"}
    attribute = key.replace("-", "_")
    assert getattr(parse_config({**raw, key: TOKENS[key]}, {}), attribute) == TOKENS[key]
    config = parse_config(raw, {ENVIRONMENT[key]: TOKENS[key]})
    assert getattr(config, attribute) == TOKENS[key] and TOKENS[key] not in repr(config)
    with pytest.raises(ConfigError, match=f"^{key}: must be at least 16 characters long$"):
        parse_config({**raw, key: "short"}, {})
    with pytest.raises(ConfigError, match=f"^{ENVIRONMENT[key]}: must be at least 16 characters long$"):
        parse_config(raw, {ENVIRONMENT[key]: "short"})
    assert effective_config(config)[key] == "***"


def test_two_equal_tokens_are_refused_naming_the_key() -> None:
    raw = {"etcd": {}, "backup-dir": "/tmp/unused", "api-token": TOKENS["api-token"]}
    with pytest.raises(ConfigError) as info:
        parse_config({**raw, "download-token": TOKENS["api-token"]}, {})
    assert str(info.value) == "download-token: is the same as api-token: give each token its own value"
    with pytest.raises(ConfigError, match="^ETCD_BACKUP_READ_TOKEN: is the same as api-token"):
        parse_config(raw, {"ETCD_BACKUP_READ_TOKEN": TOKENS["api-token"]})


def test_metrics_readyz_status_and_page_say_which_tokens_are_on(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, read_token=TOKENS["read-token"], download_token=TOKENS["download-token"])
    headers = {"Authorization": f"Bearer {TOKENS['read-token']}"}
    metrics = service.client.get("/metrics", headers=headers).get_data(as_text=True)
    for name, on in (("api-token", 0), ("read-token", 1), ("backup-token", 0), ("download-token", 1)):
        assert f'etcd_backup_api_token_configured{{token="{name}"}} {on}.0' in metrics, metrics
    assert "etcd_backup_api_auth_enabled 1.0" in metrics
    shown = [service.client.get(path, headers=headers).get_data(as_text=True)
             for path in ("/metrics", "/readyz", "/api/v1/status", "/")]
    detail = "a token required: read-token (read), download-token (read, download)"
    assert service.client.get("/readyz", headers=headers).get_json()["checks"]["api-auth"]["detail"] == detail
    assert service.client.get("/api/v1/status", headers=headers).get_json()["api_auth"] == detail
    assert detail in shown[3]
    assert not any(token in text for text in shown for token in TOKENS.values())


def test_the_openapi_description_gives_each_operation_its_right(make_service: Callable[..., Service]) -> None:
    adapter = make_service(worker=False).client.application.url_map.bind("localhost")
    for path, operations in json.loads(OPENAPI_PATH.read_text())["paths"].items():
        concrete = path.replace("{filename}", BACKUP).replace("{job_id}", JOB)
        for method, operation in operations.items():
            if method == "parameters":
                continue
            endpoint, _ = adapter.match(concrete, method.upper())
            assert operation.get("x-required-right") == auth.ENDPOINT_RIGHTS[endpoint], (path, method)


def test_the_recovery_commands_need_the_download_token(served: tuple[Service, str, str], tmp_path: Path,
                                                       report: Report) -> None:
    service, base, backup = served
    url = f"{base}/api/v1/backup/{backup}"
    listed = etcd_backup("list", "--url", base, "--token", TOKENS["read-token"])
    assert listed.returncode == 0 and backup in listed.stdout, listed.stderr
    for command in (["download", backup, "--url", base, "--output-dir", str(tmp_path)], ["verify", url]):
        refused = etcd_backup(*command, "--token", TOKENS["read-token"])
        assert refused.returncode != 0
        assert "403 the read-token may not download backups: send the download-token or the api-token" \
            in refused.stderr, refused.stderr
    assert not (tmp_path / backup).exists()
    verified = etcd_backup("verify", url, "--token", TOKENS["download-token"])
    assert verified.returncode == 0 and "good" in verified.stdout, verified.stderr
    report("`etcd-backup download` and `verify URL` with the read-token, then `verify URL` with the download-token",
           f"refused (exit {refused.returncode}: \"403 the read-token may not download backups: send the "
           "download-token or the api-token\"), nothing written; with the download-token: good")


def test_every_token_is_compared_whichever_matches(make_service: Callable[..., Service],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time taken does not tell which token matched (each comparison is constant-time,
    of SHA-256 digests, so not of the tokens' lengths either)."""
    service = make_service(worker=False, **TOKENS)
    compared: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for offered in (TOKENS["api-token"], TOKENS["download-token"], "not-a-token-at-all-but-long", "x"):
        compared.clear()
        service.client.get("/api/v1/backup", headers={"Authorization": f"Bearer {offered}"})
        assert compared == [(32, 32)] * len(TOKENS), offered
