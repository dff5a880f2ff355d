"""GET /: the status page, for a person in a browser. The same facts as `etcd-backup status`
(common.status; the recovery window in the same words: common.recovery_text), the backups in a table
with download links, a chart of their size and duration, and a "Back up now" button. Rendered on the
server (api/templates/status.html), no framework, nothing from another site: readable without
JavaScript, which only the button needs. The API's token rules apply.

It says when it was rendered ("as of") and refreshes itself every REFRESH_SECONDS: with JavaScript by
fetching itself again (a backup under way is not cut off), without by a meta refresh; when a refresh
fails, it says that what it shows is stale. Its Content-Security-Policy allows its own inline style and
script (by their SHA-256: a nonce would differ in the copy of the page the script fetches to refresh, and
chromium reports that copy's style as blocked), requests to itself, and nothing else (api.edges sets the
rest).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, Response, make_response, render_template

from api.meta import auth_detail
from api.state import state
from common import backups, present, recovery_text, status
from common.clock import redis_clock
from common.storage import BackupStore

bp = Blueprint("page", __name__)

SHOWN_BACKUPS = 100
"""The newest backups the page's table and chart show: each costs a metadata read (a GET on S3)."""
REFRESH_SECONDS = 30
"""How often the page renders itself again: a tab left open shows facts at most this old (and says so)."""
PAGE_CSP = ("default-src 'none'; style-src {style}; script-src {script}; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
"""Only the page's own inline style and script run; the script reaches this service alone; the form posts
only here; no site frames the page (clickjacking of "Back up now")."""
INLINE = re.compile(r"<(style|script)>(.*?)</\1>", re.DOTALL)
"""The page's own style and script elements: whatever else the page shows is escaped, so none of its text
can open one."""
CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 400, 120, 6
"""The chart's coordinates (its viewBox: it scales to the page's width)."""


@dataclass(frozen=True)
class Row:
    """One backup as the table shows it."""

    filename: str
    completed: datetime
    filesize: int
    revision: int | None
    duration: float | None
    drill: str
    """The last drill of this backup: "passed", "failed" or "" (none)."""


@dataclass(frozen=True)
class Chart:
    """A line over time, as SVG coordinates in a CHART_WIDTH x CHART_HEIGHT box."""

    title: str
    points: str
    """`x,y x,y ...`, oldest first, for <polyline points>."""
    dots: list[tuple[float, float, str]]
    """Each point and its label (time and value), for a <circle> with a <title>."""
    low: str
    high: str


@bp.get("/")
def status_page() -> Response:
    current = state()
    now = redis_clock(current.queue.connection)()
    facts = status.gather(current.config, current.store, current.queue, now)
    rows = _rows(current.store, current.store.list_backups(now), now)
    charts = [_chart("Archive size", [(row.completed, row.filesize) for row in rows], present.size),
              _chart("Duration", [(row.completed, row.duration) for row in rows if row.duration is not None],
                     lambda seconds: f"{seconds:.3f} s")]
    recovery = [(label[:1].upper() + label[1:], text, tone)
                for label, text, tone in recovery_text.lines(facts["recovery_window"])]
    html = render_template("status.html", facts=facts, rows=rows[::-1], now=now, present=present, recovery=recovery,
                           api_auth=auth_detail(current.config),
                           charts=[chart for chart in charts if chart is not None], shown=SHOWN_BACKUPS,
                           width=CHART_WIDTH, height=CHART_HEIGHT, refresh_seconds=REFRESH_SECONDS)
    response = make_response(html)
    response.headers["Content-Security-Policy"] = _policy(html)
    return response


def _policy(html: str) -> str:
    """PAGE_CSP allowing exactly the inline style and script elements of `html`, by their digests."""
    sources: dict[str, list[str]] = {"style": [], "script": []}
    for kind, content in INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
        sources[kind].append(f"'sha256-{digest}'")
    return PAGE_CSP.format(**{kind: " ".join(found) or "'none'" for kind, found in sources.items()})


def _rows(store: BackupStore, names: list[str], now: datetime) -> list[Row]:
    """The newest SHOWN_BACKUPS backups of `names` (oldest first; none named in the future), as table rows."""
    rows = []
    for name in [name for name in names if not backups.is_future(name, now)][-SHOWN_BACKUPS:]:
        metadata = store.read_metadata(name)
        if metadata is not None:
            drill = str((metadata.drill or {}).get("outcome", ""))
            rows.append(Row(name, metadata.completed(now), metadata.filesize, metadata.revision, metadata.duration,
                            drill if drill in ("passed", "failed") else ""))
            continue
        # Taken before metadata was recorded: its name's time, and what the store tells.
        stored, named = store.stat(name), backups.backup_time(name)
        if stored is not None and named is not None:  # else deleted since the listing
            rows.append(Row(name, named, stored.size, None, None, ""))
    return rows


def _chart(title: str, values: list[tuple[datetime, float]], label: Callable[[float], str]) -> Chart | None:
    """`values` (time, value; oldest first) as a line scaled to the chart's box; None with fewer than two."""
    if len(values) < 2:
        return None
    first, last = values[0][0].timestamp(), values[-1][0].timestamp()
    # From zero: a size that moves by a few bytes is drawn as the flat line it is.
    low, high = 0.0, max(value for _, value in values)
    span_x, span_y = (last - first) or 1.0, high or 1.0
    inner_width, inner_height = CHART_WIDTH - 2 * CHART_MARGIN, CHART_HEIGHT - 2 * CHART_MARGIN
    dots = []
    for when, value in values:
        x = CHART_MARGIN + (when.timestamp() - first) / span_x * inner_width
        y = CHART_MARGIN + (1 - (value - low) / span_y) * inner_height  # SVG's y grows downwards
        dots.append((round(x, 1), round(y, 1), f"{present.when(when.isoformat())}: {label(value)}"))
    return Chart(title, " ".join(f"{x},{y}" for x, y, _ in dots), dots, label(low), label(high))
