"""Before and after: a backup and a restore by an older commit's code and by this tree's, on the same etcd,
beside `etcdctl snapshot save` and `tar xzf` + `etcdctl snapshot restore`, alternated round by round.

`python -m bench.sides [--before REV] [--size MB] [--rounds N]` extracts REV's tree (`git archive`, default:
where this branch left main) and HEAD's into a temp dir, starts a throwaway etcd on loopback, fills it with
Kubernetes-like objects, then runs in each round, in an order that rotates:

- backup: `worker.backup.take_backup` of each side (bench/side.py, a process of its own with that side's
  code on its path), into a local backup-dir; `etcdctl snapshot save`;
- restore: `etcd-backup restore ARCHIVE --data-dir NEW` of each side, the same archive for both, timed as
  the whole command (a Python process starting); `tar xzf` + `etcdctl snapshot restore`.

It prints the medians, the ratios, the CPU seconds, and the phases (common.phases) of the sides that
record them. The first round warms the page cache and is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import MB, summary
from harness.fill import ETCD_FLAGS, fill
from harness.servers import ETCDCTL_BIN, EtcdServer

HERE = Path(__file__).resolve().parent.parent
SIDE = Path(__file__).resolve().parent / "side.py"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sides", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=None, help="the older commit (default: git merge-base HEAD main)")
    parser.add_argument("--size", type=int, default=300, help="etcd database size, MB")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (medians are reported)")
    options = parser.parse_args(argv)
    before = options.before or _git("merge-base", "HEAD", "main")
    with tempfile.TemporaryDirectory(prefix="bench-sides-") as directory:
        result = run(Path(directory), before, options.size, options.rounds)
    print(json.dumps(result, indent=1))
    print(report(result))


def run(work: Path, before: str, size_mb: int, rounds: int) -> dict[str, Any]:
    # Both committed trees, extracted: what is measured does not change while it runs.
    trees = {"before": _extract_tree(before, work / "before-tree"), "after": _extract_tree("HEAD", work / "after-tree")}
    etcd = EtcdServer(work / "etcd", extra_args=ETCD_FLAGS).start()
    try:
        client = etcd.client()
        db_size = fill(client, size_mb * MB)
        client.close()
        backup_dirs = {side: work / f"{side}-backups" for side in trees}
        for backup_dir in backup_dirs.values():
            backup_dir.mkdir(mode=0o700)
        scratch = work / "scratch"
        scratch.mkdir(mode=0o700)
        measured: dict[str, list[dict[str, Any]]] = {}

        def side_backup(which: str) -> Callable[[], dict[str, Any]]:
            document = {"etcd": {"endpoints": [etcd.url]}, "backup-dir": str(backup_dirs[which]), "rotate": 2}
            return lambda: side(trees[which], "backup", json.dumps(document))

        def etcdctl_save() -> dict[str, Any]:
            return _timed_command([ETCDCTL_BIN, f"--endpoints={etcd.url}", "snapshot", "save",
                                   str(scratch / "saved.db")], clean=[scratch / "saved.db"])

        backups = {"backup_before": side_backup("before"), "backup_after": side_backup("after"),
                   "etcdctl_save": etcdctl_save}
        for number in range(-1, rounds):
            _round(backups, number, measured)
        archive = backup_dirs["after"] / sorted(name for name in os.listdir(backup_dirs["after"])
                                                if name.endswith(".tar.gz"))[-1]
        data_dir = scratch / "restored"

        def side_restore(which: str) -> Callable[[], dict[str, Any]]:
            def restore() -> dict[str, Any]:
                try:
                    return side(trees[which], "restore", str(archive), str(data_dir))
                finally:
                    shutil.rmtree(data_dir, ignore_errors=True)
            return restore

        restores = {"restore_before": side_restore("before"), "restore_after": side_restore("after"),
                    "tar_etcdctl_restore": lambda: tar_and_etcdctl_restore(archive, scratch, data_dir)}
        for number in range(-1, rounds):
            _round(restores, number, measured)
    finally:
        etcd.stop()
    medians = {key: statistics.median(entry["seconds"] for entry in entries) for key, entries in measured.items()}
    return {
        "before": before, "after": _git("rev-parse", "HEAD"), "db_mb": round(db_size / MB), "rounds": rounds,
        "archive_mb": round(archive.stat().st_size / MB),
        "seconds": {key: summary([entry["seconds"] for entry in entries]) for key, entries in measured.items()},
        "cpu_seconds_median": {key: statistics.median(entry["cpu"] for entry in entries)
                               for key, entries in measured.items() if entries[0]["cpu"] is not None},
        "phases_median": {key: _phase_medians(entries) for key, entries in measured.items()},
        "ratios": {
            "backup_after_over_before": medians["backup_after"] / medians["backup_before"],
            "backup_before_over_etcdctl": medians["backup_before"] / medians["etcdctl_save"],
            "backup_after_over_etcdctl": medians["backup_after"] / medians["etcdctl_save"],
            "restore_after_over_before": medians["restore_after"] / medians["restore_before"],
            "restore_before_over_tar_etcdctl": medians["restore_before"] / medians["tar_etcdctl_restore"],
            "restore_after_over_tar_etcdctl": medians["restore_after"] / medians["tar_etcdctl_restore"],
        },
    }


def _round(contenders: dict[str, Callable[[], dict[str, Any]]], number: int,
           measured: dict[str, list[dict[str, Any]]]) -> None:
    """Each contender once, starting with a different one each round; round -1 is the warm-up."""
    keys = list(contenders)
    keys = keys[number % len(keys):] + keys[:number % len(keys)]
    for key in keys:
        time.sleep(1)  # backup names have one-second resolution
        result = contenders[key]()
        print(f"round {number}: {key} {result['seconds']:.2f} s", file=sys.stderr, flush=True)
        if number >= 0:
            measured.setdefault(key, []).append(result)


def side(tree: Path, *arguments: str, environment: dict[str, str] | None = None) -> dict[str, Any]:
    """bench/side.py's backup or restore by `tree`'s code: its `seconds` are the whole command's (a Python
    starting, importing, then working: what an operator waits for), `inner_seconds` the work alone."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, str(SIDE), *arguments], capture_output=True, text=True, check=False,
                          env={**os.environ, **(environment or {}), "PYTHONPATH": str(tree)}, cwd=tree)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{tree} {arguments[0]} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "inner_seconds": result["seconds"], "seconds": seconds}


def tar_and_etcdctl_restore(archive: Path, scratch: Path, data_dir: Path) -> dict[str, Any]:
    """What an operator would do by hand: `tar xzf` the archive, then `etcdctl snapshot restore` its .db."""
    extracted = scratch / "extracted"
    extracted.mkdir()
    try:
        began = time.perf_counter()
        subprocess.run(["tar", "xzf", str(archive), "-C", str(extracted)], check=True)
        untarred = time.perf_counter()
        db = next(extracted.iterdir())
        subprocess.run([ETCDCTL_BIN, "snapshot", "restore", str(db), "--data-dir", str(data_dir)],
                       env={"ETCDCTL_API": "3"}, check=True, capture_output=True)
        ended = time.perf_counter()
        return {"seconds": ended - began, "cpu": None,
                "phases": {"tar xzf": untarred - began, "etcdctl snapshot restore": ended - untarred}}
    finally:
        shutil.rmtree(extracted, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def _timed_command(command: list[str], clean: list[Path]) -> dict[str, Any]:
    began = time.perf_counter()
    subprocess.run(command, env={"ETCDCTL_API": "3"}, check=True, capture_output=True)
    seconds = time.perf_counter() - began
    for path in clean:
        path.unlink(missing_ok=True)
    return {"seconds": seconds, "cpu": None, "phases": {}}


def _phase_medians(entries: list[dict[str, Any]]) -> dict[str, float]:
    names = {name for entry in entries for name in entry["phases"]}
    return {name: statistics.median(entry["phases"].get(name, 0.0) for entry in entries) for name in sorted(names)}


def _extract_tree(revision: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(HERE), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(into)], input=archive, check=True)
    return into


def _git(*arguments: str) -> str:
    return subprocess.run(["git", "-C", str(HERE), *arguments], check=True, capture_output=True,
                          text=True).stdout.strip()


def report(result: dict[str, Any]) -> str:
    """The medians, ratios and phases as Markdown tables."""
    seconds, cpu = result["seconds"], result["cpu_seconds_median"]
    lines = [f"etcd database {result['db_mb']} MB, archive {result['archive_mb']} MB, {result['rounds']} rounds; "
             f"before {result['before'][:10]}, after {result['after'][:10]}", "",
             "| contender | median s | min s | max s | CPU s (median) |", "|---|---|---|---|---|"]
    lines += [f"| {key} | {value['median']:.2f} | {value['min']:.2f} | {value['max']:.2f} | "
              f"{cpu[key]:.2f} |" if key in cpu else
              f"| {key} | {value['median']:.2f} | {value['min']:.2f} | {value['max']:.2f} | - |"
              for key, value in seconds.items()]
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {key} | {value:.3f} |" for key, value in result["ratios"].items()]
    for key, phases in result["phases_median"].items():
        if phases:
            lines += ["", f"{key}, phases (median s; threads overlap):", "",
                      "| phase | s |", "|---|---|"] + [f"| {name} | {value:.3f} |" for name, value in phases.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
