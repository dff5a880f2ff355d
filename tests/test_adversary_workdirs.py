"""An adversary against the sweep of abandoned work dirs (recovery.workdir): another local user (uid 65534) next to
root's restore, trying to make root's sweep remove, or stop, what is not an abandoned work dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import etcd_backup
from harness.report import Report
from recovery.workdir import RESTORE_PREFIX, private_workdir

NOBODY = 65534

ABANDON = f"""
import os, signal, sys
from pathlib import Path
from recovery.workdir import private_workdir
with private_workdir({RESTORE_PREFIX!r}, Path(sys.argv[1])) as work:
    (work / "snapshot.db").write_bytes(b"every Secret, in clear")
    print(work, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
"""A restore killed outright: its work dir beside the data dir, locked once and abandoned."""

SWAP_ON_LOCK = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
first, second = (os.fsencode(name) for name in sys.argv[1:3])
print("watching", flush=True)
while True:
    for line in open("/proc/locks"):  # world-readable: who holds which flock
        fields = line.split()
        if fields[1] != "FLOCK":
            continue
        try:
            command = open(f"/proc/{fields[4]}/cmdline", "rb").read()
        except OSError:
            continue
        if b"etcd-backup\\0restore" in command:  # root's sweep has just locked the abandoned dir
            if libc.renameat2(AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE) != 0:
                sys.exit(os.strerror(ctypes.get_errno()))
            print("swapped", flush=True)
            sys.exit(0)
"""
"""uid 65534's attack: once root's restore holds a flock (its sweep locked the abandoned dir, /proc/locks says so),
swap the abandoned dir and another of root's dirs in the same directory, atomically (renameat2 RENAME_EXCHANGE:
allowed to anyone who may write the directory when it has no sticky bit, whoever owns the two)."""


def as_nobody_in_background(*command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the sweep must be root's, the attacker another user")
def test_a_swap_during_the_sweep_never_makes_it_remove_or_stop_another_dirs_own(tmp_path: Path,
                                                                                 report: Report) -> None:
    """Restores into a directory every local user may write (no sticky bit), where a restore killed outright left
    its work dir and root keeps another directory (an old data dir, a shell in it). uid 65534 swaps the two while
    the next restore sweeps: the sweep must remove only the abandoned dir's files, and stop nothing else."""
    shared = Path(os.path.realpath("/tmp")) / f"adv-{tmp_path.name}"
    shared.mkdir()
    shared.chmod(0o777)
    attempts, swaps = 10, 0
    try:
        for attempt in range(attempts):
            for entry in shared.iterdir():
                shutil.rmtree(entry)
            abandoned = Path(subprocess.run([sys.executable, "-c", ABANDON, str(shared)], capture_output=True,
                                            text=True, timeout=60).stdout.strip())
            old = shared / "etcd-old"
            old.mkdir(mode=0o700)
            (old / "member-db").write_bytes(b"root's own data")
            shell = subprocess.Popen(["sleep", "600"], cwd=old)
            attacker = as_nobody_in_background(sys.executable, "-c", SWAP_ON_LOCK, str(abandoned), str(old))
            try:
                assert attacker.stdout is not None and attacker.stdout.readline() == "watching\n"
                etcd_backup("restore", str(tmp_path / "no-such-backup.db"), "--data-dir", str(shared / "new"))
                attacker.kill()
                swapped = "swapped" in attacker.communicate(timeout=30)[0]
                swaps += swapped
                kept = [path for path in shared.rglob("member-db") if path.read_bytes() == b"root's own data"]
                assert kept, f"attempt {attempt + 1} (swapped: {swapped}): root's etcd-old/member-db was removed"
                assert shell.poll() is None, f"attempt {attempt + 1}: root's process in etcd-old was killed"
            finally:
                attacker.kill()
                attacker.wait()
                shell.kill()
                shell.wait()
    finally:
        shutil.rmtree(shared)
    report("uid 65534 swaps (RENAME_EXCHANGE) an abandoned restore dir with root's etcd-old in a 0777 parent as the "
           f"next restore sweeps, {attempts} times", f"swapped {swaps} times; etcd-old's file and the process in it "
           "were never touched")



SWAP_NOW = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.renameat2(-100, os.fsencode(sys.argv[1]), -100, os.fsencode(sys.argv[2]), 2) != 0:  # RENAME_EXCHANGE
    raise OSError(ctypes.get_errno(), "renameat2")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the work dir must be root's, the attacker another user")
def test_a_swap_while_in_use_never_makes_the_owner_remove_another_dirs_files(tmp_path: Path, report: Report) -> None:
    """uid 65534 swaps a live work dir (in a parent every user may write, no sticky bit) with another directory of
    root's: when its process is done, it removes its own files, whatever they are named now, and not the other's."""
    shared = Path(os.path.realpath("/tmp")) / f"adv-owner-{tmp_path.name}"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        old = shared / "etcd-old"
        old.mkdir(mode=0o700)
        (old / "member-db").write_bytes(b"root's own data")
        with private_workdir(RESTORE_PREFIX, shared) as work:
            (work / "snapshot.db").write_bytes(b"every Secret, in clear")
            swap = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                   sys.executable, "-c", SWAP_NOW, str(work), str(old)],
                                  capture_output=True, text=True, timeout=30)
            assert swap.returncode == 0, swap.stderr
            assert (work / "member-db").exists()  # the swap took place: the work dir's name is root's other dir
        kept = [path for path in shared.rglob("member-db") if path.read_bytes() == b"root's own data"]
        assert kept, "root's etcd-old/member-db was removed with the work dir"
        assert not list(shared.rglob("snapshot.db")), "the work dir's database outlived it"
    finally:
        shutil.rmtree(shared)
    report("uid 65534 swaps (RENAME_EXCHANGE) a live restore work dir with root's etcd-old in a 0777 parent",
           "when the restore is done it removes its own database (now named etcd-old) and leaves root's file")
