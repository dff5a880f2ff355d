"""Timing helpers the benchmark's parts share."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

MB = 1 << 20


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def curl_download(url: str, expected_size: int) -> float:
    """Download `url` to /dev/null with curl; return MB/s."""
    output = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
                             url], check=True, capture_output=True, text=True, timeout=600).stdout
    status, size, seconds = output.split()
    if status != "200" or int(size) != expected_size:
        raise RuntimeError(f"GET {url}: status {status}, {size} of {expected_size} bytes")
    return expected_size / MB / float(seconds)


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}
