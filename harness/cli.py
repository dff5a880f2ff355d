"""The `etcd-backup` command run as an operator runs it: the installed console script, in a separate
process, with none of the test's ETCD_BACKUP_* variables; its output piped, or on a terminal (a pty)."""

from __future__ import annotations

import os
import subprocess

from harness.processes import BIN_DIR

COMMAND = str(BIN_DIR / "etcd-backup")


def environment(env: dict[str, str] | None) -> dict[str, str]:
    # _ARGCOMPLETE*: a completion request is the shell's, never a test's by accident; NO_COLOR: colours are tested.
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("ETCD_BACKUP_", "_ARGCOMPLETE")) and key != "NO_COLOR"}
    return {**clean, **(env or {})}


def etcd_backup(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `etcd-backup ARGS` with its output piped (not a terminal)."""
    return subprocess.run([COMMAND, *args], env=environment(env), capture_output=True, text=True, timeout=timeout)


def on_terminal(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run `etcd-backup ARGS` with its output on a terminal (a pty); return its exit status and output."""
    import pty

    leader, follower = pty.openpty()
    with subprocess.Popen([COMMAND, *args], stdout=follower, stderr=follower, env=environment(env)) as proc:
        os.close(follower)
        output = b""
        while chunk := _read(leader):
            output += chunk
        status = proc.wait(timeout=timeout)
    os.close(leader)
    return status, output.decode().replace("\r\n", "\n")  # the terminal's line discipline adds the \r


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the command ended and closed the terminal
        return b""
