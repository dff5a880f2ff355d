"""The benchmark's smoke run: a few MB, one round, so that `make bench` keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import ROWS, TARGETS
from harness.processes import ROOT

pytestmark = pytest.mark.slow


def test_bench_smoke_run_measures_every_contender(tmp_path: Path) -> None:
    output = tmp_path / "result.json"
    # The larger RSS size is the contenders' own: each of the bench's two paths through its sizes runs once (the
    # contenders' at 4 MB, a lone backup at 2), with no third fill, worker restarts and backups (8 MB) on top.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "4", "--rss-sizes", "2", "4", "--rounds", "1",
         "--round-trips", "2", "--list-backups", "30", "--delta-seconds", "2", "--delta-period", "1",
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(output.read_text())
    assert set(result["measured"]) == set(TARGETS) == {key for key, _ in ROWS}
    # Growths and differences can be zero, or below zero by noise.
    growths = [result["measured"].pop(key) for key in ("worker_rss_growth_mb", "s3_worker_rss_growth_mb",
                                                        "encrypted_worker_rss_over_plain_mb",
                                                        "deltas_watcher_rss_growth_mb",
                                                        "deltas_recovery_point_over_period_s")]
    assert all(value > 0 for value in result["measured"].values()), result["measured"]
    assert all(abs(growth) < 100 for growth in growths), growths  # can be zero, or below zero by noise
    seconds = result["details"]["backup"]["seconds"]
    assert set(seconds) == {"etcdctl", "etcdctl_tar", "embedded", "redis", "encrypted"}
    assert result["details"]["backup"]["db_mb"] >= 4
    assert set(result["details"]["worker_peak_rss_mb"]) == set(result["details"]["s3_worker_peak_rss_mb"]) == {
        "2", "4"}
    assert "| 4. POST, gunicorn + Redis + worker |" in done.stdout
    deltas = result["details"]["deltas"]
    # Up to 1,000 writes/s for 2 s: each writer stops at the end of the time, so under load fewer (CI saw 1,635);
    # every write answered is in the restore.
    assert 0 < deltas["writes"] <= 2000 and deltas["restore_events"] >= deltas["writes"] \
        and deltas["deltas_stored"] >= 2, deltas
    # The last write waits for the next delta-period at most (and the store's write).
    assert 0 < deltas["recovery_point_s"] < 1 + 5, deltas
