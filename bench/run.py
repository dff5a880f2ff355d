"""The benchmark: etcd-backup against `etcdctl snapshot save`, by hand `tar czf`, and nginx.

One run starts a throwaway etcd and Redis on loopback and grows the etcd through the sizes it
needs, measuring at each size what is due there:

- tiny etcd: the POST round trip of both deployments (isolated requests, spaced apart), and the
  time of `GET /api/v1/backup` with many backups in the directory;
- each `--rss-sizes` size: the peak RSS of a fresh worker process over one backup;
- `--size`: the contenders, alternated round by round, then downloads from the API and nginx; where a
  backup's time goes, phase by phase (common.phases: plain, age, S3); `etcd-backup restore` against `tar xzf` +
  `etcdctl snapshot restore` of the same archive, with the restore's phases.

Machines are noisy: compare the ratios, which come from one run, rather than absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pyrage import x25519

from bench.deltas import DeltaBench
from bench.measure import MB, curl_download, summary, timed
from bench.s3 import S3Bench
from bench.sides import HERE, side, tar_and_etcdctl_restore
from common.backups import backup_name
from common.metadata import BackupMetadata
from common.storage import LocalStore
from harness.deployment import Deployment
from harness.fill import ETCD_FLAGS, fill
from harness.nginx import NGINX_BIN, Nginx
from harness.processes import http, peak_rss
from harness.servers import ETCD_BIN, ETCDCTL_BIN, REDIS_BIN, EtcdServer, RedisServer

TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    # measurement key: (target text, check)
    "embedded_vs_etcdctl": ("<= 0.85", lambda value: value <= 0.85),
    "redis_vs_etcdctl": ("<= 0.85", lambda value: value <= 0.85),
    "embedded_vs_etcdctl_tar": ("<= 0.5", lambda value: value <= 0.5),
    "redis_vs_etcdctl_tar": ("<= 0.5", lambda value: value <= 0.5),
    "worker_peak_rss_mb_at_size": ("< 150", lambda value: value < 150),
    "worker_rss_growth_mb": ("< 20", lambda value: value < 20),
    "encrypted_vs_etcdctl": ("<= 0.9", lambda value: value <= 0.9),
    "restore_vs_tar_etcdctl": ("<= 0.8", lambda value: value <= 0.8),
    "encrypted_worker_rss_over_plain_mb": ("< 10", lambda value: value < 10),
    "post_round_trip_ms_embedded": ("< 100", lambda value: value < 100),
    "post_round_trip_ms_redis": ("< 100", lambda value: value < 100),
    "download_vs_nginx": (">= 0.8", lambda value: value >= 0.8),
    "list_ms": ("< 20", lambda value: value < 20),
    "list_detail_ms": ("< 100", lambda value: value < 100),
    "s3_vs_etcdctl": ("<= 1.0", lambda value: value <= 1.0),
    "s3_vs_naive": ("<= 0.5", lambda value: value <= 0.5),
    "s3_download_vs_boto3": (">= 0.8", lambda value: value >= 0.8),
    "s3_list_ms": ("< 100", lambda value: value < 100),
    "s3_list_detail_ms": ("< 100", lambda value: value < 100),
    "s3_worker_peak_rss_mb_at_size": ("< 150", lambda value: value < 150),
    "s3_worker_rss_growth_mb": ("< 20", lambda value: value < 20),
    "deltas_recovery_point_over_period_s": ("< 2", lambda value: value < 2),
    "deltas_watcher_peak_rss_mb": ("< 100", lambda value: value < 100),
    "deltas_watcher_rss_growth_mb": ("< 10", lambda value: value < 10),
    "deltas_restore_events_per_s": (">= 5000", lambda value: value >= 5000),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300, help="etcd database size for the contenders, MB")
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=[100, 1000], metavar=("SMALL", "LARGE"),
                        help="database sizes at which to take the worker's peak RSS, MB")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each contender (medians are reported)")
    parser.add_argument("--round-trips", type=int, default=10, help="POSTs per deployment on the tiny etcd")
    parser.add_argument("--list-backups", type=int, default=1000, help="backups in the directory when listing")
    parser.add_argument("--delta-rate", type=int, default=1000, help="writes a second while the delta watcher runs")
    parser.add_argument("--delta-seconds", type=float, default=20, help="seconds of those writes")
    parser.add_argument("--delta-period", type=float, default=10, help="the watcher's delta-period, seconds")
    parser.add_argument("--output", type=Path, default=Path("bench/result.json"), help="where to write the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data) for a look")
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="etcd-backup-bench-"))
    try:
        result = Benchmark(work, options).run()
    finally:
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten to {options.output}")


class Benchmark:
    def __init__(self, work: Path, options: argparse.Namespace) -> None:
        self.work = work
        self.options = options
        self.etcd = EtcdServer(work / "etcd", extra_args=ETCD_FLAGS)
        self.redis = RedisServer(work / "redis")
        self.encrypted_redis = RedisServer(work / "redis-encrypted")
        self.measured: dict[str, float] = {}
        self.details: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        self.etcd.start()
        self.redis.start()
        client = self.etcd.client()
        embedded = Deployment(self.work / "embedded", [self.etcd.url], rotate=2)
        on_redis = Deployment(self.work / "redis-deployment", [self.etcd.url], self.redis, rotate=2,
                              delta_period=f"{self.options.delta_period:g}s")
        # The same as on_redis with encryption on; a Redis of its own, so that neither takes the other's jobs.
        encrypted = Deployment(self.work / "encrypted-deployment", [self.etcd.url], self.encrypted_redis, rotate=2,
                               encryption={"recipients": [str(x25519.Identity.generate().to_public())]})
        # The S3 contenders (bench.s3) on SeaweedFS, with a deployment of their own.
        s3 = S3Bench(self.work / "s3", self.etcd, self.options.rounds, self.log)
        try:
            self.encrypted_redis.start()
            embedded.start()
            on_redis.start()
            encrypted.start()
            s3.start()
            self.round_trips(embedded, on_redis)
            self.deltas(client, on_redis)
            self.listing()
            small, large = sorted(self.options.rss_sizes)
            for size in sorted({small, self.options.size, large}):
                self.log(f"filling etcd to {size} MB")
                db_size = fill(client, size * MB)
                worker = on_redis.replace_workers()  # a fresh process: its peak RSS is this size's
                if size == self.options.size:
                    encrypted_worker = encrypted.replace_workers()
                    self.contenders(embedded, on_redis, encrypted, db_size)
                    self.details["encrypted_worker_peak_rss_mb"] = peak_rss(encrypted_worker.pid) / MB
                    self.downloads(on_redis)
                    self.restores(on_redis)
                    self.backup_phases({"plain": on_redis, "age": encrypted, "S3": s3.deployment})
                    # etcdctl's times from this same run
                    s3.worker_peak_rss(size, lambda: s3.contenders(self.details["backup"]["seconds"]["etcdctl"]["all"]))
                else:
                    on_redis.post_backup()
                    s3.worker_peak_rss(size, s3.deployment.post_backup)
                self.details.setdefault("worker_peak_rss_mb", {})[str(size)] = peak_rss(worker.pid) / MB
            peaks = self.details["worker_peak_rss_mb"]
            self.measured["worker_peak_rss_mb_at_size"] = peaks[str(self.options.size)]
            self.measured["worker_rss_growth_mb"] = peaks[str(large)] - peaks[str(small)]
            self.measured["encrypted_worker_rss_over_plain_mb"] = (self.details["encrypted_worker_peak_rss_mb"]
                                                                   - peaks[str(self.options.size)])
            s3.rss_measured(self.options.size, small, large)
            s3.listing(self.options.list_backups)
            self.measured.update(s3.measured)
            self.details.update(s3.details)
        finally:
            embedded.stop()
            on_redis.stop()
            encrypted.stop()
            self.encrypted_redis.stop()
            s3.stop()
            client.close()
            self.redis.stop()
            self.etcd.stop()
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {key: (str(value) if isinstance(value, Path) else value)
                         for key, value in vars(self.options).items()},
            "measured": self.measured,
            "targets": {key: {"target": text, "met": check(self.measured[key])}
                        for key, (text, check) in TARGETS.items()},
            "details": self.details,
        }

    def round_trips(self, embedded: Deployment, on_redis: Deployment) -> None:
        """POSTs on the tiny etcd, one per deployment per second (backup names have one-second resolution)."""
        self.log(f"POST round trips on a tiny etcd, {self.options.round_trips} per deployment")
        times: dict[str, list[float]] = {"embedded": [], "redis": []}
        for _ in range(self.options.round_trips):
            began = time.monotonic()
            for key, service in (("embedded", embedded), ("redis", on_redis)):
                times[key].append(timed(service.post_backup) * 1000)
            time.sleep(max(0.0, 1.1 - (time.monotonic() - began)))
        for key, values in times.items():
            self.measured[f"post_round_trip_ms_{key}"] = statistics.median(values)
            self.details[f"post_round_trip_ms_{key}"] = summary(values)

    def deltas(self, client: Any, on_redis: Deployment) -> None:
        """The delta watcher (bench.deltas) beside the Redis deployment, on the still small etcd."""
        deltas = DeltaBench(self.work, on_redis, self.log)
        deltas.run(client, self.options.delta_rate, self.options.delta_seconds, self.options.delta_period)
        self.measured.update(deltas.measured)
        self.details.update(deltas.details)

    def listing(self) -> None:
        """GET /api/v1/backup, plain and ?detail=true, with many backups in the directory (empty archives:
        a listing reads names, a detail listing their metadata files)."""
        count = self.options.list_backups
        self.log(f"GET /api/v1/backup with {count} backups")
        lister = Deployment(self.work / "lister", [self.etcd.url], rotate=count)
        lister.backup_dir.mkdir(mode=0o700)
        store = LocalStore(lister.backup_dir)
        first = datetime(2026, 1, 1, tzinfo=UTC)
        for number in range(count):
            started = first + timedelta(hours=number)
            name = backup_name(started)
            (lister.backup_dir / name).write_bytes(b"\x1f")  # one byte: an empty file is no backup
            store.update_metadata(BackupMetadata(
                filename=name, filesize=0, cluster_id="cdf818194e3a8c32", member_id="8e9e05c52164694d",
                endpoint=self.etcd.url, revision=number + 1, etcd_version="3.4.23", db_size=0,
                db_sha256="0" * 64, started=started.isoformat(), duration=1.0))
        lister.start()
        try:
            for key, path in (("list_ms", "/api/v1/backup"), ("list_detail_ms", "/api/v1/backup?detail=true")):
                def get_list(path: str = path) -> None:
                    status, _, body = http("GET", f"{lister.base}{path}")
                    assert status == 200 and len(json.loads(body)) == count, (status, body[:200])

                get_list()  # warm-up
                values = [timed(get_list) * 1000 for _ in range(50)]
                self.measured[key] = statistics.median(values)
                self.details[key] = summary(values)
        finally:
            lister.stop()

    def contenders(self, embedded: Deployment, on_redis: Deployment, encrypted: Deployment, db_size: int) -> None:
        scratch = self.work / "scratch"
        scratch.mkdir(exist_ok=True)
        snapshot, archive = scratch / "snapshot.db", scratch / "snapshot.tar.gz"

        def etcdctl_save() -> None:
            subprocess.run([ETCDCTL_BIN, f"--endpoints={self.etcd.url}", "snapshot", "save", str(snapshot)],
                           env={"ETCDCTL_API": "3"}, check=True, capture_output=True)

        def etcdctl_save_and_tar() -> None:
            etcdctl_save()
            subprocess.run(["tar", "czf", str(archive), "-C", str(scratch), snapshot.name], check=True)

        contenders: dict[str, Callable[[], object]] = {
            "etcdctl": etcdctl_save,
            "etcdctl_tar": etcdctl_save_and_tar,
            "embedded": embedded.post_backup,
            "redis": on_redis.post_backup,
            "encrypted": encrypted.post_backup,
        }
        rounds = self.options.rounds
        self.log(f"contenders on a {db_size / MB:.0f} MB database: 1 warm-up round, {rounds} measured")
        times: dict[str, list[float]] = {key: [] for key in contenders}
        for number in range(-1, rounds):
            keys = list(contenders)
            keys = keys[number % len(keys):] + keys[: number % len(keys)]  # alternate who goes first
            for key in keys:
                if key in ("embedded", "redis", "encrypted"):
                    # Backup names have one-second resolution: a POST within the second of the previous
                    # backup waits for the next second, which is not the time of a backup.
                    time.sleep(1)
                seconds = timed(contenders[key])
                for leftover in (snapshot, archive):
                    leftover.unlink(missing_ok=True)
                if number >= 0:
                    times[key].append(seconds)
        medians = {key: statistics.median(values) for key, values in times.items()}
        self.measured["encrypted_vs_etcdctl"] = medians["encrypted"] / medians["etcdctl"]
        for key in ("embedded", "redis"):
            self.measured[f"{key}_vs_etcdctl"] = medians[key] / medians["etcdctl"]
            self.measured[f"{key}_vs_etcdctl_tar"] = medians[key] / medians["etcdctl_tar"]
        self.details["backup"] = {
            "db_mb": db_size / MB,
            "archive_mb": (on_redis.backup_dir / on_redis.backups()[-1]).stat().st_size / MB,
            "seconds": {key: summary(values) for key, values in times.items()},
        }

    def restores(self, on_redis: Deployment) -> None:
        """`etcd-backup restore` of the newest backup (the whole command, bench/side.py: a Python process starting,
        verifying, running etcd's restore) against `tar xzf` + `etcdctl snapshot restore` of it, alternated."""
        archive = on_redis.backup_dir / on_redis.backups()[-1]
        scratch = self.work / "restore-scratch"
        scratch.mkdir(mode=0o700, exist_ok=True)
        data_dir = scratch / "restored"

        def ours() -> dict[str, Any]:
            try:
                return side(HERE, "restore", str(archive), str(data_dir))
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)

        contenders: dict[str, Callable[[], dict[str, Any]]] = {
            "restore": ours, "tar_etcdctl": lambda: tar_and_etcdctl_restore(archive, scratch, data_dir)}
        self.log(f"restoring {archive.stat().st_size / MB:.0f} MB: 1 warm-up round, {self.options.rounds} measured")
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in contenders}
        for number in range(-1, self.options.rounds):
            for key in list(contenders)[:: 1 if number % 2 else -1]:
                result = contenders[key]()
                if number >= 0:
                    runs[key].append(result)
        medians = {key: statistics.median(run["seconds"] for run in values) for key, values in runs.items()}
        self.measured["restore_vs_tar_etcdctl"] = medians["restore"] / medians["tar_etcdctl"]
        self.details["restore"] = {
            "seconds": {key: summary([run["seconds"] for run in values]) for key, values in runs.items()},
            "phases": {key: median_phases(values) for key, values in runs.items()},
        }

    def backup_phases(self, deployments: dict[str, Deployment]) -> None:
        """Where a backup's time goes, phase by phase: `take_backup` in a process of its own (bench/side.py) with
        each deployment's config, on the same database, 3 times each (medians). The POSTs' own workers are
        other processes, whose phases are not reported: these are the same code's."""
        self.log("phases of a backup: plain, age, S3; 3 each")
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in deployments}
        for _ in range(3):
            for key, deployment in deployments.items():
                time.sleep(1)  # backup names have one-second resolution
                runs[key].append(side(HERE, "backup", str(deployment.config)))
        self.details["backup_phases"] = {key: {"seconds": statistics.median(run["inner_seconds"] for run in values),
                                               "phases": median_phases(values)} for key, values in runs.items()}

    def downloads(self, on_redis: Deployment) -> None:
        """The newest backup, from the API (gunicorn) and from nginx, alternated, with curl to /dev/null."""
        newest = on_redis.backup_dir / on_redis.backups()[-1]
        nginx = Nginx(self.work / "nginx", on_redis.backup_dir).start()
        self.log(f"downloading {newest.stat().st_size / MB:.0f} MB, {self.options.rounds} rounds")
        speeds: dict[str, list[float]] = {"api": [], "nginx": []}
        try:
            for number in range(-1, self.options.rounds):
                for key, base in (("api", on_redis.base), ("nginx", nginx.base))[:: 1 if number % 2 else -1]:
                    speed = curl_download(f"{base}/api/v1/backup/{newest.name}", newest.stat().st_size)
                    if number >= 0:
                        speeds[key].append(speed)
        finally:
            nginx.stop()
        self.measured["download_vs_nginx"] = statistics.median(speeds["api"]) / statistics.median(speeds["nginx"])
        self.details["download_mb_per_s"] = {key: summary(values) for key, values in speeds.items()}

    @staticmethod
    def log(message: str) -> None:
        print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def median_phases(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each phase's median over `runs` (a run without the phase counts 0)."""
    names = list(dict.fromkeys(name for run in runs for name in run["phases"]))
    return {name: statistics.median(run["phases"].get(name, 0.0) for run in runs) for name in names}


def machine() -> dict[str, str]:
    def version(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory_gb": f"{memory_kb / (1 << 20):.0f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": version([ETCD_BIN, "--version"]),
        "redis": version([REDIS_BIN, "--version"]),
        "nginx": version([NGINX_BIN, "-v"]),
    }


ROWS = [
    # (measurement key, what it is)
    ("embedded_vs_etcdctl", "POST (all-in-one, embedded queue) / `etcdctl snapshot save`"),
    ("redis_vs_etcdctl", "POST (gunicorn + Redis + worker) / `etcdctl snapshot save`"),
    ("embedded_vs_etcdctl_tar", "POST (all-in-one) / `etcdctl snapshot save` + `tar czf`"),
    ("redis_vs_etcdctl_tar", "POST (gunicorn + Redis + worker) / `etcdctl snapshot save` + `tar czf`"),
    ("worker_peak_rss_mb_at_size", "worker peak RSS at the contenders' size, MB"),
    ("worker_rss_growth_mb", "worker peak RSS growth, small to large database, MB"),
    ("encrypted_vs_etcdctl", "POST, encrypted (age; gunicorn + Redis + worker) / `etcdctl snapshot save`"),
    ("encrypted_worker_rss_over_plain_mb", "encrypting worker's peak RSS over the plain one's, at the same size, MB"),
    ("restore_vs_tar_etcdctl", "`etcd-backup restore` (the whole command) / `tar xzf` + `etcdctl snapshot restore`"),
    ("post_round_trip_ms_embedded", "POST round trip, tiny etcd, all-in-one, median ms"),
    ("post_round_trip_ms_redis", "POST round trip, tiny etcd, gunicorn + Redis + worker, median ms"),
    ("download_vs_nginx", "download throughput, API (gunicorn) / nginx sendfile"),
    ("list_ms", "GET /api/v1/backup with many backups, median ms"),
    ("list_detail_ms", "GET /api/v1/backup?detail=true with many backups, median ms"),
    ("s3_vs_etcdctl", "POST to S3 (SeaweedFS; gunicorn + Redis + worker) / `etcdctl snapshot save`"),
    ("s3_vs_naive", "POST to S3 / `etcdctl snapshot save` + `gzip -1` + boto3 `upload_file`"),
    ("s3_download_vs_boto3", "download throughput from S3, through the API / boto3 directly"),
    ("s3_list_ms", "GET /api/v1/backup with many backups in a bucket, median ms"),
    ("s3_list_detail_ms", "GET /api/v1/backup?detail=true with many backups in a bucket (metadata read before), "
                          "median ms"),
    ("s3_worker_peak_rss_mb_at_size", "S3 worker peak RSS at the contenders' size, MB"),
    ("s3_worker_rss_growth_mb", "S3 worker peak RSS growth, small to large database, MB"),
    ("deltas_recovery_point_over_period_s", "delta watcher, steady writes: recovery point (write to its delta "
                                            "stored, max) minus delta-period, s"),
    ("deltas_watcher_peak_rss_mb", "delta watcher's peak RSS under those writes, MB"),
    ("deltas_watcher_rss_growth_mb", "delta watcher's RSS, the last tenth's peak over the first half's, MB"),
    ("deltas_restore_events_per_s", "point-in-time restore of those writes, events/s (whole command)"),
]


def table(result: dict[str, Any]) -> str:
    details, settings = result["details"], result["settings"]
    seconds = details["backup"]["seconds"]
    lines = [
        f"etcd database {details['backup']['db_mb']:.0f} MB, archive {details['backup']['archive_mb']:.0f} MB, "
        f"{settings['rounds']} rounds; listing {settings['list_backups']} backups; "
        f"worker peak RSS measured at {', '.join(details['worker_peak_rss_mb'])} MB",
        "",
        "| contender | median s | min s | max s |",
        "|---|---|---|---|",
    ]
    names = {"etcdctl": "1. `etcdctl snapshot save`", "etcdctl_tar": "2. `etcdctl snapshot save` + `tar czf`",
             "embedded": "3. POST, all-in-one (embedded queue)", "redis": "4. POST, gunicorn + Redis + worker",
             "encrypted": "4b. POST, gunicorn + Redis + worker, encrypted (age)"}
    lines += [f"| {names[key]} | {value['median']:.2f} | {value['min']:.2f} | {value['max']:.2f} |"
              for key, value in seconds.items()]
    speeds = details["download_mb_per_s"]
    lines += [f"| 5. download: API {speeds['api']['median']:.0f} MB/s, nginx {speeds['nginx']['median']:.0f} MB/s "
              "(medians) | | | |"]
    restore_seconds = details["restore"]["seconds"]
    lines += [f"| 6. restore: `etcd-backup restore` {restore_seconds['restore']['median']:.2f} s, `tar xzf` + "
              f"`etcdctl snapshot restore` {restore_seconds['tar_etcdctl']['median']:.2f} s (medians) | | | |", "",
              *phase_tables(details), "", delta_line(details["deltas"]), "",
              "| measurement | result | target | met |", "|---|---|---|---|"]
    for key, what in ROWS:
        target = result["targets"][key]
        lines.append(f"| {what} | {result['measured'][key]:.2f} | {target['target']} | "
                     f"{'yes' if target['met'] else 'no'} |")
    machine_info = result["machine"]
    lines += ["", f"{result['date']}: {machine_info['cpu']}, {machine_info['cores']} cores, "
              f"{machine_info['memory_gb']} GB; {machine_info['etcd']}; Python {machine_info['python']}"]
    return "\n".join(lines)


def phase_tables(details: dict[str, Any]) -> list[str]:
    """Where the time goes: a backup's phases per store (the threads overlap: the phases of the stream add up to
    more than its wall-clock time), and a restore's, ours and by hand."""
    backups = details["backup_phases"]
    names = list(dict.fromkeys(name for side_phases in backups.values() for name in side_phases["phases"]))
    lines = ["A backup's phases, median s (`take_backup` in a process of its own; the stream's phases run on two "
             "threads and overlap):", "", f"| phase | {' | '.join(backups)} |", "|---|" + "---|" * len(backups)]
    lines += [f"| {name} | " + " | ".join(f"{side_phases['phases'].get(name, 0.0):.3f}"
                                           for side_phases in backups.values()) + " |" for name in names]
    lines.append("| **whole backup** | " + " | ".join(f"**{side_phases['seconds']:.3f}**"
                                                       for side_phases in backups.values()) + " |")
    restore = details["restore"]
    lines += ["", "A restore's phases, median s:", "", "| side | phase | s |", "|---|---|---|"]
    for key, what in (("restore", "`etcd-backup restore`"), ("tar_etcdctl", "by hand")):
        lines += [f"| {what} | {name} | {value:.3f} |" for name, value in restore["phases"][key].items()]
        lines.append(f"| {what} | **whole command** | **{restore['seconds'][key]['median']:.3f}** |")
    return lines


def delta_line(deltas: dict[str, Any]) -> str:
    metric = deltas["metric_recovery_point_max_s"]
    return (f"delta watcher: {deltas['writes']} writes at {deltas['writes_per_s']:.0f}/s, delta-period "
            f"{deltas['delta_period_s']:g} s: recovery point {deltas['recovery_point_s']:.2f} s (the API's "
            f"etcd_backup_recovery_point_seconds at most {'-' if metric is None else f'{metric:.2f}'} s), "
            f"{deltas['deltas_stored']} deltas; restore: {deltas['restore_events']} events in "
            f"{deltas['restore_seconds']:.2f} s")
