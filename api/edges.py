"""The API's edges against the operator's own browser: which Host it answers (DNS rebinding), which
origin may change anything (cross-site request forgery), and the headers every answer carries.

Both checks run before the token check (api.auth), so a request they refuse learns nothing about its
token: a page that rebinds a name to the service, or posts to it from another site, gets the same
answer whether the browser (or a proxy in front of it) adds a valid token or not.

**Host (DNS rebinding, 421).** A page on attacker.example whose name later resolves to 127.0.0.1 (or to
the service's address) is, to the browser, still attacker.example: it may read what the service
answers, token-less loopback setups included (`make demo`, `kubectl port-forward`, a loopback listener
behind an authenticating proxy). What gives it away is the Host it sends, its own name. So a Host is
answered only when it is
- an IP literal, of any address and port: rebinding needs a domain name that re-resolves, while a page
  loaded from an IP address is served by whoever has that address. This keeps what Kubernetes sends
  working without knowing the pod IP (it is not in the config): the kubelet's probes and Prometheus'
  scrapes name the pod IP, and a listen address of 0.0.0.0 answers on addresses the config never names;
- `localhost` (any port: `kubectl port-forward 9999:8080` makes it localhost:9999), which the browser
  resolves itself and no one else can point elsewhere;
- the listen address' host, when it is a name;
- an entry of `allowed-hosts` (a name alone: any port; name:port: that port only), the names clients
  reach the service by: a proxy's public name, a Service's DNS name for in-cluster clients. Any port,
  because the Host check is about the name: rebinding needs a name whose DNS the attacker controls, and
  a listed name is the operator's on every port (`kubectl port-forward`, a Service's port, a NodePort
  each reach it on another one, which the config would otherwise have to know).
Anything else gets 421 Misdirected Request (the request reached a server that does not serve that
name) saying which Host and which key to set. /healthz answers any Host: a liveness probe reads nothing.
A request with no Host at all (HTTP/1.0) is not from a browser, and is answered.

Behind a proxy, the Host the API sees is the proxy's to choose. The README's proxy for browsers passes
the browser's Host on and refuses other names itself. One that sends its upstream's address instead
(nginx's default) hides the rebound name: that Host is an IP literal, answered, and nothing here can
tell it from curl's. Some such proxies (Apache's mod_proxy by default, nginx told to) say the browser's
Host in X-Forwarded-Host: every one of its comma-separated entries (a chain of proxies appends to it,
and a page may have sent the first entry itself) must then be a Host this service answers, else 421
as well. Clients that send no X-Forwarded-Host, every one that is not a proxy, are not affected, and a
proxy that sets it for a name the API answers loses nothing; a client that forges one can only be
refused. (RFC 7239's Forwarded header, which no common proxy sends by default, is not read.)

**Origin (cross-site request forgery, 403).** A page of another site can make the operator's browser
send a POST (a form, or `fetch(url, {method: "POST", mode: "no-cors"})`) and can never read the
answer, but with `rotate: 3` four such POSTs rotate out every good backup. Every current browser tells
where a request comes from: Sec-Fetch-Site (same-origin, same-site, cross-site or none: typed by the
user), and Origin on every POST. So a request of any method but GET, HEAD and OPTIONS is refused when
- Sec-Fetch-Site is there and is neither `same-origin` nor `none` (`same-site` is another port or a
  sibling name: another origin all the same);
- Origin is `null` (a sandboxed frame, a data: URL, a redirect across origins: no one vouches for it);
- Origin is another origin: its host[:port] is neither this request's Host (the same origin) nor an
  entry of `allowed-hosts` (behind a proxy that rewrites Host, the browser's origin is the proxy's public
  name, which the operator lists there). Here an entry without a port is that name on its scheme's
  default port only (http 80, https 443: the Origin a browser sends omits it), not on any port as for
  Host: an origin is scheme, host and port, and a page on another port of the proxy's host (another
  application, a port-forward) is another origin whose forms must not post backups. Chromium sends no
  Sec-Fetch-Site to a plain-http name that is not loopback, so the Origin is all there is to tell.
A request with neither header is not from a current browser (browsers send Origin on every POST, since
Firefox 70 in 2019 the last of them): it is curl, a CronJob, `etcd-backup backup`, and is answered as
the original API answered it. Requiring more from it, a custom header or a JSON content type, would
break `curl -XPOST http://host/api/v1/backup`, the original API's documented call, and the status
page's button without JavaScript (a form can send neither), while protecting only browsers too old to
send Origin. The page's own button sends Origin and Sec-Fetch-Site: same-origin, with and without
JavaScript, which is why the page's Referrer-Policy is `same-origin` and not `no-referrer`: under
no-referrer, Chromium sends `Origin: null` on the page's own form POST.

**Headers.** Every answer: a Content-Security-Policy that allows nothing (the status page sets its own,
api.page), frame-ancestors 'none' and X-Frame-Options DENY (the button cannot be framed and clicked
through), nosniff, and `Cache-Control: no-store` unless the answer set its own: every answer is either a
backup (every Secret of the cluster), or live state that must not be kept by a browser or a proxy.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from flask import Flask, Response, request

from api.errors import error_response
from common.config import Config
from common.config.schema import split_host, split_listen

OPEN_TO_ANY_HOST = frozenset({"/healthz"})
"""Answered whatever the Host: a liveness probe reads nothing, and some send names the config cannot know."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing here: every other one is checked for its origin."""
SAME_ORIGIN_FETCHES = frozenset({"same-origin", "none"})
"""Sec-Fetch-Site values of a request this service's own page (or the user, typing) made."""
LOOPBACK_NAMES = frozenset({"localhost"})
DEFAULT_PORTS = {"http": 80, "https": 443}
"""The port of an Origin without one: browsers leave the scheme's default out."""
SHOWN_CHARACTERS = 100
"""A refused header's value is quoted in the answer up to this many characters (it may be 64 KiB)."""

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""JSON and files: nothing in them runs, loads or may be framed."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors' older spelling, for browsers without CSP level 2
    "Referrer-Policy": "same-origin",  # not no-referrer: see the module docstring (Origin: null)
}
FIXED_HEADERS = (("Content-Security-Policy", API_CSP), *SECURITY_HEADERS.items(), ("Cache-Control", "no-store"))
"""What every answer carries that is written before Flask (api.http_worker's errors): the same as
_security_headers gives a JSON answer."""


class HostRule:
    """Which Host values (and which Origins, beside the request's own Host) the API answers, from `config`."""

    def __init__(self, config: Config) -> None:
        listen_host, _ = split_listen(config.listen)
        self.names = set(LOOPBACK_NAMES)
        if not _is_ip(listen_host):  # 0.0.0.0 and :: are IP literals: any address is answered
            self.names.add(listen_host.lower())
        self.allowed: list[tuple[str, int | None]] = [split_host(entry) for entry in config.allowed_hosts]

    def answers(self, host_header: str) -> bool:
        """Whether a request with `Host: host_header` is for this service."""
        try:
            host, port = split_host(host_header)
        except ValueError:
            return False
        return _is_ip(host) or host in self.names or self.listed(host, port)

    def listed(self, host: str, port: int | None) -> bool:
        """Whether `host` (with `port`) is an entry of allowed-hosts, as a Host: an entry without a port is
        the name on any port (see the module docstring)."""
        return any(host == name and (wanted is None or port == wanted) for name, wanted in self.allowed)

    def listed_origin(self, scheme: str, host: str, port: int | None) -> bool:
        """Whether the origin scheme://host[:port] is an entry of allowed-hosts: an entry without a port is
        the name on the scheme's default port only, the port a browser leaves out of Origin."""
        port = DEFAULT_PORTS[scheme] if port is None else port
        return any(host == name and port == (DEFAULT_PORTS[scheme] if wanted is None else wanted)
                   for name, wanted in self.allowed)


def init_app(app: Flask, config: Config) -> None:
    """Install the checks (before api.auth's: call this first) and the headers."""
    rule = HostRule(config)

    def check_host() -> tuple[Response, int] | None:
        if request.path in OPEN_TO_ANY_HOST:
            return None
        host = request.environ.get("HTTP_HOST")
        if host is not None and not rule.answers(host):
            return _misdirected("Host", host)
        forwarded = request.environ.get("HTTP_X_FORWARDED_HOST")  # a proxy's word for the browser's Host
        if forwarded is not None and not all(rule.answers(entry.strip()) for entry in forwarded.split(",")):
            return _misdirected("X-Forwarded-Host", forwarded)
        return None

    def check_origin() -> tuple[Response, int] | None:
        if request.method in SAFE_METHODS:
            return None
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None and fetch_site not in SAME_ORIGIN_FETCHES:
            return _cross_site("the browser says it comes from another site "
                               f"(Sec-Fetch-Site: {_shown(fetch_site)})")
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not from a browser: see the module docstring
        if origin == "null":
            return _cross_site("it comes from an origin the browser hides (Origin: null)")
        if _same_origin(origin, request.environ.get("HTTP_HOST"), rule):
            return None
        return _cross_site(f"it comes from another origin ({_shown(origin)}) than the one it is sent to; if that "
                           "is this service behind a proxy, add the proxy's name to allowed-hosts in the config")

    app.before_request(check_host)
    app.before_request(check_origin)
    app.after_request(_security_headers)


def _same_origin(origin: str, host_header: str | None, rule: HostRule) -> bool:
    """Whether `origin` (scheme://host[:port]) is the request's own Host, or an allowed-hosts entry."""
    try:
        parts = urlsplit(origin)
        host, port = split_host(parts.netloc)
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or parts.path or parts.query or parts.fragment:
        return False
    if host_header is not None and parts.netloc.lower() == host_header.lower():
        return True
    return rule.listed_origin(parts.scheme, host, port)


def _misdirected(header: str, value: str) -> tuple[Response, int]:
    return error_response(421, f"misdirected request: this service does not answer for {header} {_shown(value)}; "
                               "if clients reach it by that name, add it to allowed-hosts in the config")


def _cross_site(why: str) -> tuple[Response, int]:
    return error_response(403, f"cross-site request refused: {why}. Only this service's own pages, and "
                               "clients that are not browsers (curl, etcd-backup), may change anything")


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if "Cache-Control" not in response.headers:
        response.cache_control.no_store = True
    return response


def _shown(value: str) -> str:
    """A header's value as the answers quote it: repr (control characters escaped), cut short."""
    return repr(value[:SHOWN_CHARACTERS]) + ("..." if len(value) > SHOWN_CHARACTERS else "")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
