"""The API's edges over real HTTP (api.edges): the Host allowlist against DNS rebinding (421), the
origin check against cross-site POSTs (403), before the token check; the security headers and no-store
on every answer; `allowed-hosts` in the config. The same attacks from a real browser: test_edges_browser.py."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.config import ConfigError, load_config
from common.config.effective import effective_config
from harness.in_process import Service, served_over_http

TOKEN = "edges-token-0123456789abc"
ATTACKER = "attacker.example"


Answer = tuple[int, dict[str, str], Any]
"""Status, headers (lower-case names), and the body (JSON decoded when it is JSON)."""


class Client:
    """Requests to a service served over real HTTP on `port`, with exactly the headers given (http.client
    sends no Host of its own: the default is the address it connects to, as a browser's would be)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __call__(self, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body: Any = response.read()
        connection.close()
        if body and response.getheader("Content-Type") == "application/json":
            body = json.loads(body)
        return response.status, {name.lower(): value for name, value in response.getheaders()}, body


@contextmanager
def served(service: Service) -> Iterator[Client]:
    with served_over_http(service) as base:
        yield Client(int(base.rsplit(":", 1)[1]))


def directives(policy: str) -> dict[str, str]:
    """A Content-Security-Policy as {directive: its sources}."""
    pairs = (directive.strip().partition(" ") for directive in policy.split(";") if directive.strip())
    return {name: sources for name, _, sources in pairs}


def backups_of(service: Service) -> list[str]:
    listed: list[str] = service.client.get("/api/v1/backup", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    return listed


# --- Host: DNS rebinding ----------------------------------------------------------------------------------

REFUSED_HOSTS = [f"{ATTACKER}:{{port}}", ATTACKER, "localhost.attacker.example", "127.0.0.1.nip.io:{port}",
                 "backup.example.com.attacker.example", "evil", "x", "localhost.", "a b", "[::1", "host:0"]
ANSWERED_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "localhost:9999", "localhost",
                  "[::1]:{port}", "10.1.2.3:8080", "10.1.2.3", "[fd00::5]:8080", "backup.example.com",
                  "backup.example.com:8443", "proxy.example:1234"]


@pytest.mark.parametrize("path", ["/api/v1/backup", "/", "/api/v1/status", "/metrics", "/readyz"])
def test_a_host_that_is_not_the_services_gets_421(make_service: Callable[..., Service], path: str) -> None:
    service = make_service(worker=False, allowed_hosts=["backup.example.com", "proxy.example:1234"])
    with served(service) as ask:
        for host in REFUSED_HOSTS:
            host = host.format(port=ask.port)
            status, headers, body = ask("GET", path, {"Host": host})
            assert status == 421, (host, status, body)
            assert headers["content-type"] == "application/json"
            assert repr(host) in body["message"] and "allowed-hosts" in body["message"]
        status, _, body = ask("GET", path, {"Host": "a" * 5000 + ".example"})  # quoted, not echoed whole
        assert status == 421 and len(body["message"]) < 300 and "aaa'...; " in body["message"]
        for host in ANSWERED_HOSTS:
            host = host.format(port=ask.port)
            status, _, body = ask("GET", path, {"Host": host})
            assert status in (200, 503), (host, status, body)  # 503: /readyz, which this setup may fail
        # allowed-hosts "proxy.example:1234" is that port only
        assert ask("GET", path, {"Host": "proxy.example:80"})[0] == 421


def test_a_rebound_name_gets_neither_the_list_nor_a_download_nor_a_backup(make_service: Callable[..., Service]
                                                                          ) -> None:
    service = make_service(rotate=3)
    names = [service.client.post("/api/v1/backup").get_json()["filename"] for _ in range(3)]
    with served(service) as ask:
        host = f"{ATTACKER}:{ask.port}"
        for method, path in [("GET", "/api/v1/backup"), ("GET", f"/api/v1/backup/{names[0]}"),
                             ("HEAD", f"/api/v1/backup/{names[0]}"), ("GET", "/api/v1/backup?detail=true"),
                             ("POST", "/api/v1/backup"), ("POST", f"/api/v1/backup/{names[0]}/verify")]:
            status, _, body = ask(method, path, {"Host": host})
            assert status == 421, (method, path, status)
            assert all(name not in repr(body) for name in names)
        assert ask("GET", f"/api/v1/backup/{names[0]}")[0] == 200  # by its address: answered
    assert service.client.get("/api/v1/backup").get_json() == names


def test_healthz_answers_any_host(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, api_token=TOKEN)
    with served(service) as ask:
        for host in (f"{ATTACKER}:{ask.port}", "10.244.1.7:8080", "etcd-backup.backup.svc:8080"):
            status, headers, body = ask("GET", "/healthz", {"Host": host})
            assert status == 200, (host, body)


def test_a_name_listen_address_is_answered(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, listen="backup-host.internal:8080")
    with served(service) as ask:
        assert ask("GET", "/api/v1/backup", {"Host": "backup-host.internal:8080"})[0] == 200
        assert ask("GET", "/api/v1/backup", {"Host": "other-host.internal:8080"})[0] == 421


def test_a_proxy_that_rewrites_host_is_checked_by_its_x_forwarded_host(make_service: Callable[..., Service]) -> None:
    """A proxy that sends its upstream's address as Host and the browser's as X-Forwarded-Host (Apache's default,
    nginx with `proxy_set_header X-Forwarded-Host $http_host`): a rebound name there is refused as it would be in
    Host, whichever entry of a chain of proxies it is; the proxy's own name is answered, and so is every client
    that sends no X-Forwarded-Host."""
    service = make_service(worker=False, api_token=TOKEN, allowed_hosts=["backup.example.com"])
    auth = {"Authorization": f"Bearer {TOKEN}"}  # the proxy adds it
    with served(service) as ask:
        for forwarded in (f"{ATTACKER}:8081", ATTACKER, f"backup.example.com, {ATTACKER}:8081",
                          f"{ATTACKER}, backup.example.com", "backup.example.com,", "", "a b"):
            status, _, body = ask("GET", "/api/v1/backup", {**auth, "X-Forwarded-Host": forwarded})
            assert status == 421, (forwarded, status, body)
            assert "X-Forwarded-Host" in body["message"] and "allowed-hosts" in body["message"], body
        for forwarded in ("backup.example.com:8081", "backup.example.com", "localhost:8081",
                          "backup.example.com, 127.0.0.1:8080", "backup.example.com,10.0.0.5"):
            status, _, body = ask("GET", "/api/v1/backup", {**auth, "X-Forwarded-Host": forwarded})
            assert status == 200, (forwarded, status, body)
        assert ask("GET", "/healthz", {"X-Forwarded-Host": ATTACKER})[0] == 200


def test_the_host_is_refused_before_the_token_is_looked_at(make_service: Callable[..., Service]) -> None:
    """Same answer with the right token, a wrong one, or none: a rebinding page learns nothing of a token
    that a proxy in front of the browser adds."""
    service = make_service(worker=False, api_token=TOKEN)
    with served(service) as ask:
        answers = [ask("GET", "/api/v1/backup", {"Host": f"{ATTACKER}:{ask.port}", **auth})
                   for auth in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                                {"Authorization": f"Bearer {TOKEN}"})]
        assert {status for status, _, _ in answers} == {421}
        assert len({json.dumps(body) for _, _, body in answers}) == 1
        assert all("www-authenticate" not in headers for _, headers, _ in answers)


# --- Origin and Sec-Fetch-Site: cross-site request forgery ------------------------------------------------

CROSS_SITE = [
    {"Origin": f"http://{ATTACKER}"},
    {"Origin": f"http://{ATTACKER}", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "null"},
    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of the same host is another origin
    {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"},
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "http://localhost:{port}"},  # the service under another name is another origin
    {"Origin": "https://127.0.0.1:{port}.attacker.example"},
    {"Origin": "http://127.0.0.1:{port}/path"},
    {"Origin": "file://"},
    {"Origin": "http://backup.example.com.attacker.example"},
    # Another port of an allowed-hosts name (another application on the proxy's host) is another origin: an
    # entry without a port is its scheme's default port for Origin, an entry with one that port only
    {"Origin": "http://backup.example.com:8443"},
    {"Origin": "https://backup.example.com:80"},
    {"Origin": "http://proxy.example"},
    {"Origin": "https://proxy.example:8444"},
]


def test_cross_site_posts_are_refused_and_change_nothing(make_service: Callable[..., Service]) -> None:
    """With rotate: 3, each of these, sent four times, would have rotated out every backup."""
    service = make_service(rotate=3, api_token=TOKEN, allowed_hosts=["backup.example.com", "proxy.example:8443"])
    auth = {"Authorization": f"Bearer {TOKEN}"}  # as through the README's proxy that adds the token
    names = [service.client.post("/api/v1/backup", headers=auth).get_json()["filename"] for _ in range(3)]
    with served(service) as ask:
        for headers in CROSS_SITE:
            headers = {name: value.format(port=ask.port) for name, value in headers.items()}
            for path in ("/api/v1/backup", f"/api/v1/backup/{names[0]}/verify"):
                for _ in range(4 if path == "/api/v1/backup" else 1):
                    status, answer_headers, body = ask("POST", path, {**auth, **headers,
                                                                       "Content-Type": "text/plain"})
                    assert status == 403, (headers, status, body)
                    assert answer_headers["content-type"] == "application/json"
                    assert body["message"].startswith("cross-site request refused: "), body
            # Without the token too: the same 403, before the token check
            assert ask("POST", "/api/v1/backup", headers)[0] == 403
    assert backups_of(service) == names


def test_same_origin_and_non_browser_posts_are_taken(make_service: Callable[..., Service]) -> None:
    service = make_service(rotate=10, allowed_hosts=["backup.example.com", "proxy.example:8443"])
    with served(service) as ask:
        same_origin = [
            {},  # curl, a CronJob, etcd-backup backup: no Origin, no Sec-Fetch-*
            {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},  # the page's button
            {"Origin": "http://127.0.0.1:{port}"},  # a browser without Sec-Fetch-*
            {"Sec-Fetch-Site": "same-origin"},
            {"Sec-Fetch-Site": "none"},
            # behind a proxy at backup.example.com (on its scheme's default port) or at proxy.example:8443
            # that passes its own upstream Host (127.0.0.1:port)
            {"Origin": "https://backup.example.com", "Sec-Fetch-Site": "same-origin"},
            {"Origin": "http://backup.example.com"},
            {"Origin": "https://backup.example.com:443"},  # browsers leave the default port out; same origin
            {"Origin": "http://proxy.example:8443"},
        ]
        taken = []
        for headers in same_origin:
            headers = {name: value.format(port=ask.port) for name, value in headers.items()}
            status, _, body = ask("POST", "/api/v1/backup", headers)
            assert status == 200 and body["message"] == "backup successfully", (headers, body)
            taken.append(body["filename"])
        status, _, body = ask("POST", f"/api/v1/backup/{taken[0]}/verify",
                              {"Origin": f"http://127.0.0.1:{ask.port}", "Sec-Fetch-Site": "same-origin"})
        assert status in (200, 202), body
    assert service.client.get("/api/v1/backup").get_json() == taken


def test_curl_posts_as_the_original_api_documents(make_service: Callable[..., Service]) -> None:
    """`curl -XPOST http://host/api/v1/backup` (and `curl -fsS -XPOST` from a CronJob, and a curl -d form
    body) sends no Origin: it works exactly as before."""
    service = make_service()
    with served_over_http(service) as base:
        for command in (["curl", "-s", "-XPOST", f"{base}/api/v1/backup"],
                        ["curl", "-fsS", "-XPOST", f"{base}/api/v1/backup"],
                        ["curl", "-s", "-d", "", f"{base}/api/v1/backup"]):
            answer = json.loads(subprocess.run(command, check=True, capture_output=True, timeout=120).stdout)
            assert answer["message"] == "backup successfully", (command, answer)
    assert len(service.client.get("/api/v1/backup").get_json()) == 3


# --- Headers ----------------------------------------------------------------------------------------------

def test_every_answer_carries_the_security_headers(make_service: Callable[..., Service]) -> None:
    service = make_service(api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    name = service.client.post("/api/v1/backup", headers=auth).get_json()["filename"]
    with served(service) as ask:
        answers = {
            "page": ask("GET", "/", auth), "list": ask("GET", "/api/v1/backup", auth),
            "download": ask("GET", f"/api/v1/backup/{name}", auth),
            "download, HEAD": ask("HEAD", f"/api/v1/backup/{name}", auth),
            "download, a range": ask("GET", f"/api/v1/backup/{name}", {**auth, "Range": "bytes=0-9"}),
            "status": ask("GET", "/api/v1/status", auth), "metrics": ask("GET", "/metrics", auth),
            "401": ask("GET", "/api/v1/backup"), "404": ask("GET", "/nothing", auth),
            "421": ask("GET", "/", {**auth, "Host": ATTACKER}),
            "403": ask("POST", "/api/v1/backup", {**auth, "Origin": "null"}),
            "healthz": ask("GET", "/healthz"),
        }
    expected = {"download, a range": 206, "401": 401, "404": 404, "421": 421, "403": 403}
    for what, (status, headers, _) in answers.items():
        assert status == expected.get(what, 200), (what, status)
        assert headers["x-content-type-options"] == "nosniff", what
        assert headers["x-frame-options"] == "DENY", what
        assert headers["referrer-policy"] == "same-origin", what
        assert headers["cache-control"] == "no-store", (what, headers["cache-control"])
        policy = directives(headers["content-security-policy"])
        assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'", what
        assert policy["base-uri"] == "'none'", what
    page_policy = directives(answers["page"][1]["content-security-policy"])
    assert page_policy["form-action"] == "'self'" and page_policy["connect-src"] == "'self'"
    page = answers["page"][2].decode()
    for kind in ("style", "script"):  # exactly the page's own inline element, by its digest
        assert page.count(f"<{kind}") == 1
        content = page.split(f"<{kind}>", 1)[1].split(f"</{kind}>", 1)[0]
        digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
        assert page_policy[f"{kind}-src"] == f"'sha256-{digest}'"
    assert " style=" not in page


def test_the_page_says_when_it_was_rendered_and_refreshes(make_service: Callable[..., Service]) -> None:
    from api.page import REFRESH_SECONDS

    service = make_service(worker=False)
    page = service.client.get("/").get_data(as_text=True)
    assert f'<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS}"></noscript>' in page
    as_of = page.split('<p id="as-of">', 1)[1].split("</p>", 1)[0]
    assert "As of <time datetime=\"20" in as_of and " UTC</time>" in as_of
    assert f"refreshes every {REFRESH_SECONDS} s" in as_of


# --- allowed-hosts in the config --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "problem"), [
    ("http://backup.example.com", "is not a host or host:port"),
    (["backup.example.com/path"], "is not a host or host:port"),
    (["*.example.com"], "is not a host or host:port"),
    (["backup.example.com:99999"], "expected a port in 1-65535"),
    (["backup.example.com:"], "expected a port in 1-65535"),
    (["[::1"], "is not a host or host:port"),
    (["a" * 300], "a 300-character entry"),
    ([""], "is not a host or host:port"),
    ([], "expected a non-empty list of strings"),
    ([8080], "expected a non-empty list of strings"),
    ({"host": "x"}, "expected a non-empty list of strings"),
])
def test_allowed_hosts_is_checked_at_load(tmp_path: Path, value: Any, problem: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"etcd": {}, "backup-dir": str(tmp_path / "b"), "allowed-hosts": value}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert message.startswith("allowed-hosts: ") and problem in message and "\n" not in message, message


def test_allowed_hosts_in_config_check(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"etcd": {}, "backup-dir": str(tmp_path / "b"),
                                    "allowed-hosts": ["Backup.Example.com", "[FD00::1]:8443", "10.0.0.5"]}))
    config = load_config(path)
    assert config.allowed_hosts == ("backup.example.com", "[fd00::1]:8443", "10.0.0.5")
    assert effective_config(config)["allowed-hosts"] == ["backup.example.com", "[fd00::1]:8443", "10.0.0.5"]
    # what config check prints loads again, the same
    path.write_text(yaml.safe_dump({**effective_config(config), "etcd": {}, "backup-dir": str(tmp_path / "b")}))
    assert load_config(path).allowed_hosts == config.allowed_hosts
