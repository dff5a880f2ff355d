"""The reliability report (`pytest --reliability-report=PATH`): what the fault and hostile-input
tests tried and what the service did, as a markdown table, each row measured by the test it names."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

Report = Callable[[str, str], None]
"""conftest's `report` fixture: records (what the test tried, what the service did) as one row."""

REPORT_OPTION = "--reliability-report"


def reliability_markdown(path: str, rows: Sequence[tuple[str, str, str]]) -> str:
    """The report written to `path`, from rows of (test node id, what it tried, what the service did)."""
    lines = [
        "# Reliability: faults and hostile input tried, and what the service did",
        "",
        f"Written by `pytest {REPORT_OPTION}={path}` (`make reliability-report`) from the suite's own run",
        f"on {datetime.now(UTC):%Y-%m-%d}, {platform.system()} {platform.machine()}, {os.cpu_count()} cores. Every "
        "outcome is measured by the test named in the last column, which fails if the service does otherwise.",
        "",
        "| tried | what the service did | test |",
        "|---|---|---|",
    ]
    lines += [f"| {tried} | {outcome} | `{nodeid}` |" for nodeid, tried, outcome in rows]
    return "\n".join(lines) + "\n"
