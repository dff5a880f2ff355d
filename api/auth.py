"""The optional API tokens, and what each may do. With any token set, every request but /healthz needs one as
a Bearer token: none (or one that is no token) is 401, a token without the route's right is 403.

- `read-token`: read the service's state (the page, status, metrics, probes, the list, jobs), no backup's content;
- `backup-token`: that, and take or verify backups (the POSTs);
- `download-token`: that, and download backups (their content: every Secret of the cluster);
- `api-token`: every right (what the one token always meant).

ENDPOINT_RIGHTS gives each route its right, in this one place; a route left out of it is the api-token's only
(tests/test_tokens.py fails until it is given one).
"""

from __future__ import annotations

import hashlib
import hmac

from flask import Flask, Response, request

from api.errors import error_response
from api.state import state

OPEN_PATHS = frozenset({"/healthz"})
"""Answered without the token: a liveness probe carries no credentials."""

READ, BACKUP, DOWNLOAD = "read", "backup", "download"
RIGHTS = (READ, BACKUP, DOWNLOAD)
EVERY_RIGHT = frozenset(RIGHTS)
RIGHT_WORDS = {READ: "read the service's state", BACKUP: "take or verify backups", DOWNLOAD: "download backups"}
TOKEN_RIGHTS = {
    "read-token": frozenset({READ}),
    "backup-token": frozenset({READ, BACKUP}),
    "download-token": frozenset({READ, DOWNLOAD}),
    "api-token": EVERY_RIGHT,
}
"""What each token may do (the README's table of tokens says the same). A token of EVERY_RIGHT may also use a
route that has none assigned."""

ENDPOINT_RIGHTS: dict[str, str | None] = {
    "meta.healthz": None,  # open (OPEN_PATHS)
    "static": READ,  # Flask's /static/<file>: the page's assets, if it has any
    "meta.readyz": READ,
    "meta.openapi": READ,
    "metrics.metrics": READ,
    "status.show_status": READ,
    "page.status_page": READ,
    "window.show_recovery_window": READ,
    "backups.list_backups": READ,  # names and metadata, no content
    "jobs.show_job": READ,
    "backups.create_backup": BACKUP,
    "backups.verify_backup": BACKUP,
    "backups.download_backup": DOWNLOAD,  # GET and HEAD
}
"""The right each route (Flask endpoint) needs."""


def init_app(app: Flask) -> None:
    app.before_request(_require_token)


def _require_token() -> tuple[Response, int] | None:
    tokens = state().config.tokens
    if not tokens or request.path in OPEN_PATHS:
        return None
    matched = _matching_token(tokens)
    if matched is None:
        response, status = error_response(401, "missing or wrong API token: send 'Authorization: Bearer <token>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="etcd-backup"'
        return response, status
    if request.url_rule is None:  # no route (404) or not this method (405): any token may learn that
        return None
    needed = ENDPOINT_RIGHTS.get(str(request.endpoint), "unassigned")
    if needed is None or needed in TOKEN_RIGHTS[matched] or TOKEN_RIGHTS[matched] == EVERY_RIGHT:
        return None
    granting = [name for name, rights in TOKEN_RIGHTS.items() if needed in rights]
    words = RIGHT_WORDS.get(needed, "use this route (it has no right assigned)")
    return error_response(403, f"the {matched} may not {words}: send the {' or the '.join(granting or ['api-token'])}")


def _matching_token(tokens: dict[str, str]) -> str | None:
    """The key of the token the request's Bearer credential is, if any. Each is compared in constant time,
    as digests (equal lengths: the time tells nothing of a token's length either), and all of them are
    compared whatever matched: the time does not tell which one did."""
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    offered_digest = hashlib.sha256(offered.strip().encode(errors="surrogateescape")).digest()
    matched = None
    for name, token in tokens.items():
        if hmac.compare_digest(offered_digest, hashlib.sha256(token.encode()).digest()):
            matched = name
    return matched if scheme.lower() == "bearer" else None
