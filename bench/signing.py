"""What signing costs (common.signing): a backup and a restore of the same etcd, signed and unsigned, alternated
round by round in one run.

`python -m bench.signing [--size MB] [--rounds N]` starts a throwaway etcd on loopback, fills it with
Kubernetes-like objects, then times in each round, in alternating order:

- backup: worker.backup.take_backup into a store with `signing` (the metadata signed, the listing that names the
  backup verified) and into one without;
- restore: what `restore --to-revision <the backup>` does with a full backup: read the metadata through the
  store, verify the archive (with signing: also its SHA-256 against the signed metadata) and run etcd's restore
  into a new data dir; and, as before signing, the unsigned side without the archive's SHA-256 checked.

It prints the medians and the ratios signed/unsigned and signed/before (the target: at most 1.02).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import MB, summary, timed
from common.config import Config, parse_config
from common.storage import open_store
from harness.fill import ETCD_FLAGS, fill
from harness.keys import signing
from harness.servers import EtcdServer
from recovery.restore import Member, restore
from recovery.verify import verify_stored
from worker.backup import take_backup


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.signing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300, help="etcd database size, MB")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each side (medians are reported)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as directory:
        print(json.dumps(run(Path(directory), options.size, options.rounds), indent=1))


def run(work: Path, size_mb: int, rounds: int) -> dict[str, Any]:
    etcd = EtcdServer(work / "etcd", extra_args=ETCD_FLAGS).start()
    try:
        client = etcd.client()
        db_size = fill(client, size_mb * MB)
        client.close()
        configs = {side: _config(work, etcd, side) for side in ("unsigned", "signed")}
        times: dict[str, list[float]] = {f"{step}_{side}": [] for step in ("backup", "restore") for side in configs}
        times["restore_before"] = []
        for round_number in range(rounds + 1):  # the first round warms up the page cache and is not counted
            sides = list(configs) if round_number % 2 else list(reversed(configs))
            for side in sides:
                config = configs[side]
                backup_seconds = timed(functools.partial(_backup, config))
                restore_seconds = timed(functools.partial(_restore, config, work / "restored"))
                if round_number:
                    times[f"backup_{side}"].append(backup_seconds)
                    times[f"restore_{side}"].append(restore_seconds)
            before = timed(functools.partial(_restore, configs["unsigned"], work / "restored", check_archive=False))
            if round_number:
                times["restore_before"].append(before)
        medians = {key: statistics.median(values) for key, values in times.items()}
        return {
            "db_mb": round(db_size / MB), "rounds": rounds, "seconds": {key: summary(values) for key, values in
                                                                         times.items()},
            "backup_signed_over_unsigned": medians["backup_signed"] / medians["backup_unsigned"],
            "restore_signed_over_unsigned": medians["restore_signed"] / medians["restore_unsigned"],
            "restore_signed_over_before": medians["restore_signed"] / medians["restore_before"],
        }
    finally:
        etcd.stop()


def _config(work: Path, etcd: EtcdServer, side: str) -> Config:
    (work / side).mkdir(mode=0o700)
    document: dict[str, Any] = {"etcd": {"endpoints": [etcd.url]}, "backup-dir": str(work / side / "backups"),
                                "rotate": 2}
    if side == "signed":
        document["signing"] = signing(work / side)
    config = parse_config(document, {})
    open_store(config).prepare()
    return config


def _backup(config: Config) -> None:
    take_backup(config, open_store(config), "bench")


def _restore(config: Config, data_dir: Path, check_archive: bool = True) -> None:
    store = open_store(config)
    name = store.list_backups()[-1]
    metadata = store.read_metadata(name)
    if not check_archive:  # as before signing: the metadata's archive SHA-256 was not checked
        metadata = dataclasses.replace(metadata, archive_sha256=None) if metadata is not None else None
    work = data_dir.parent / "restore-work"
    work.mkdir(mode=0o700)
    try:
        verified = verify_stored(store, name, work, metadata)
        restore(verified.db_path, data_dir, Member())
    finally:
        shutil.rmtree(work)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
