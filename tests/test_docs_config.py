"""The operator's documents cannot drift from the code: every config key the loader accepts is in
docs/configuration.md's table and in examples/config.yml, the example loads with the real loader, the README's
Procfile block is the Procfile, the demo starts and stops cleanly on Ctrl+C, and the package installs quietly.

The keys come from the loader itself (common.config.validate's known-keys tables, one per section), never from a
list written here: a key added to the code without its documentation fails these tests."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import termios
import threading
import urllib.request
from pathlib import Path

import pytest

from common.config import validate
from harness.cli import etcd_backup
from harness.processes import BIN_DIR, ROOT, free_port, wait_until

CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
EXAMPLE_CONFIG = ROOT / "examples" / "config.yml"


def accepted_keys() -> set[str]:
    """Every key the config loader accepts, dotted below its section ("s3.part-size"): the top level's table
    (TOP_LEVEL_KEYS), and each section's (ETCD_KEYS for `etcd`, S3_KEYS for `s3`, ...) found by its name."""
    tables = {name.removesuffix("_KEYS").lower().replace("_", "-"): value for name, value in vars(validate).items()
              if name.endswith("_KEYS") and isinstance(value, frozenset)}
    top = tables.pop("top-level")
    keys = set(top)
    for section, known in tables.items():
        assert section in top, f"validate.{section.upper()}_KEYS is no section of the config's top level"
        keys |= {f"{section}.{key}" for key in known}
    return keys


def test_the_accepted_keys_are_read_from_the_loader() -> None:
    """The derivation above finds the loader's tables: the nested sections and a key of each."""
    keys = accepted_keys()
    assert {"backup-dir", "etcd", "etcd.tls-key-file", "s3.presign-downloads", "encryption.identity-file",
            "signing.verify-key", "retention.weekly", "read-token", "compact-after-revisions"} <= keys
    assert len(keys) > 60


def documented_keys(text: str) -> set[str]:
    """The keys of configuration.md's table under "## Every key": each row's first cell, `key` in backticks."""
    section = text.split("## Every key", 1)[1].split("\n## ", 1)[0]
    return {match for line in section.splitlines() if line.startswith("`")
            for match in re.findall(r"`([a-z0-9.-]+)`", line.split("|", 1)[0])}


def test_every_accepted_key_has_a_row_in_configuration_md() -> None:
    documented = documented_keys(CONFIGURATION_MD.read_text())
    assert not accepted_keys() - documented, "keys the loader accepts that docs/configuration.md's table lacks"
    assert not documented - accepted_keys(), "rows of docs/configuration.md for keys the loader refuses"


def test_every_environment_variable_of_the_config_is_documented() -> None:
    text = CONFIGURATION_MD.read_text()
    variables = {validate.REDIS_URL_ENV, *validate.TOKEN_ENV.values()}
    assert not {variable for variable in variables if f"`{variable}`" not in text}


KEY_LINE = re.compile(r"^(\s*)(?:#\s?)?(\s*)([a-z0-9-]+):(?:\s|$)")
"""A key in examples/config.yml, set or commented out (`# key: value`, its YAML indentation after the `# `)."""


def example_keys(text: str) -> set[str]:
    """The keys examples/config.yml shows, set or commented out, dotted below their section as the loader's."""
    keys: set[str] = set()
    section = None
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if match is None:
            continue
        indent, key = len(match.group(1)) + len(match.group(2)), match.group(3)
        if indent == 0:
            section = key
            keys.add(key)
        elif section is not None:
            keys.add(f"{section}.{key}")
    return keys


def test_every_accepted_key_is_in_the_example_config() -> None:
    assert not accepted_keys() - example_keys(EXAMPLE_CONFIG.read_text())


def test_the_example_config_loads_with_the_real_loader(tmp_path: Path) -> None:
    """`etcd-backup config check` (the command, in its own process) takes examples/config.yml as written, its
    backup-dir pointed at a tmp dir; the same file with one key misspelt is refused (the check can fail)."""
    text = EXAMPLE_CONFIG.read_text()
    assert re.search(r"^backup-dir: /var/lib/etcd-backup ", text, re.MULTILINE)
    pointed = text.replace("backup-dir: /var/lib/etcd-backup ", f"backup-dir: {tmp_path / 'backups'} ", 1)
    config = tmp_path / "config.yml"
    config.write_text(pointed)
    checked = etcd_backup("config", "check", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "compact-after-revisions: 100000" in checked.stdout and "delta-period: 10s" in checked.stdout
    config.write_text(pointed.replace("\nrotate:", "\nrotat:", 1))
    refused = etcd_backup("config", "check", "--config", str(config))
    assert refused.returncode == 2 and "rotat: unknown key" in refused.stderr


def procfile_blocks(text: str) -> list[str]:
    """The ```procfile blocks of a markdown text, each without the indentation of its fence (a list item's)."""
    blocks = re.findall(r"^( *)```procfile\n(.*?)^\1```$", text, re.MULTILINE | re.DOTALL)
    return ["".join(line.removeprefix(indent) for line in block.splitlines(keepends=True)) for indent, block in blocks]


def test_the_readme_procfile_block_is_the_procfile() -> None:
    """The README shows the Procfile in one ```procfile block, line for line (so does docs/deploying.md)."""
    procfile = (ROOT / "Procfile").read_text()
    readme = procfile_blocks((ROOT / "README.md").read_text())
    assert len(readme) == 1, "README.md needs exactly one ```procfile block"
    for block in readme + procfile_blocks((ROOT / "docs" / "deploying.md").read_text()):
        assert block.splitlines() == procfile.splitlines()


def _processes_naming(text: str) -> list[str]:
    """The command lines of the processes that hold `text` in theirs."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # not a process, or gone meanwhile
            continue
        if text in command:
            found.append(command)
    return found


class _Terminal:
    """A pseudo-terminal that `argv` runs on as its controlling terminal, as in a shell: Ctrl+C typed on it
    (ctrl_c) is the terminal's SIGINT to its foreground process group. Its output is read as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        leader, follower = pty.openpty()
        self.proc = subprocess.Popen(argv, env=env, stdin=follower, stdout=follower, stderr=follower,
                                     start_new_session=True,  # then the terminal is its controlling one:
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(follower)
        self._leader, self._output = leader, bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._leader, 65536)
            except OSError:  # EIO: every process of the terminal has closed it
                return
            if not chunk:
                return
            self._output += chunk

    def ctrl_c(self) -> None:
        os.write(self._leader, b"\x03")

    def output(self) -> str:
        self._reader.join(30)
        os.close(self._leader)
        return self._output.decode(errors="replace").replace("\r\n", "\n")


DEMO = str(ROOT / "examples" / "demo.sh")


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", ["make demo on a terminal", "SIGINT to its group"])  # demo.sh's two paths
def test_the_demo_backs_up_and_stops_cleanly_on_ctrl_c(tmp_path: Path, ctrl_c: str) -> None:
    """examples/demo.sh on free ports: a POST backs up its etcd; Ctrl+C stops etcd and the service, exit 0, no
    traceback. Typed on a terminal, under make as `make demo` runs it (make must not die of it, "Interrupt"); and
    without a terminal, SIGINT to its process group (demo.sh alone on a terminal and SIGINT to the script alone
    take the same two paths: they were tried when it was written, and left out for CI's time)."""
    ports = {"DEMO_PORT": free_port(), "DEMO_ETCD_PORT": free_port(), "DEMO_ETCD_PEER_PORT": free_port()}
    demo_dir = tmp_path / "demo"
    env = {**os.environ, **{key: str(port) for key, port in ports.items()}, "DEMO_DIR": str(demo_dir),
           "PATH": f"{BIN_DIR}:{os.environ['PATH']}"}
    terminal = None
    if ctrl_c == "make demo on a terminal":  # the Makefile's recipe, in a Makefile of the test's own
        (tmp_path / "Makefile").write_text(f".PHONY: demo\ndemo:\n\t{DEMO}\n")
        terminal = _Terminal(["make", "-s", "-C", str(tmp_path), "demo"], env)
    demo = terminal.proc if terminal is not None else subprocess.Popen(
        [DEMO], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        backup_url = f"http://127.0.0.1:{ports['DEMO_PORT']}/api/v1/backup"
        wait_until(lambda: urllib.request.urlopen(backup_url, timeout=2).status == 200, 60, "the demo", demo)
        with urllib.request.urlopen(urllib.request.Request(backup_url, method="POST"), timeout=60) as answer:
            assert b'"message":"backup successfully"' in answer.read()
        assert len(_processes_naming(str(demo_dir))) >= 2  # etcd and the service, before Ctrl+C
        if terminal is not None:
            terminal.ctrl_c()
        else:
            os.killpg(demo.pid, signal.SIGINT)
        if terminal is not None:
            demo.wait(timeout=60)
            output = terminal.output()
        else:
            output = demo.communicate(timeout=60)[0].decode()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert demo.returncode == 0, output
    assert "Traceback" not in output and "Error" not in output and "Interrupt" not in output, output
    assert f"export PATH={ROOT}/.venv/bin:$PATH" in output
    assert "demo: stopped etcd and the service" in output
    assert not _processes_naming(str(demo_dir)), "etcd or the service outlived the demo"
    assert list((demo_dir / "backups").glob("snapshot-*.tar.gz"))


@pytest.mark.slow
def test_the_demo_refuses_a_taken_port_in_one_line(tmp_path: Path) -> None:
    """With the service's port taken, the demo says so in one line and exits 1, having started nothing."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "DEMO_PORT": str(taken.getsockname()[1]), "DEMO_ETCD_PORT": str(free_port()),
               "DEMO_ETCD_PEER_PORT": str(free_port()), "DEMO_DIR": str(tmp_path / "demo")}
        ran = subprocess.run([str(ROOT / "examples" / "demo.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.count("\n") == 1 and "is taken: choose others, e.g. make demo DEMO_PORT=" in ran.stderr
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
@pytest.mark.parametrize("build", ["wheel", "editable"])
def test_the_package_builds_without_a_setuptools_warning(tmp_path: Path, build: str) -> None:
    """`pip wheel`, and the editable install as the Makefile runs it (`make demo`, `make test`), build the package
    (pyproject.toml's build backend, in pip's isolated environment) without a deprecation or packaging warning:
    the tracked files alone, copied, so that nothing is built in the tree."""
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    source = tmp_path / "source"
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    if build == "wheel":
        command = [str(BIN_DIR / "python"), "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "wheel"),
                   str(source)]
    else:
        editable = re.search(r"^EDITABLE := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
        assert editable is not None, "the Makefile's EDITABLE flags"
        python = str(tmp_path / "venv" / "bin" / "python")  # a venv as the Makefile makes it: pip upgraded (the
        subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)  # bundled one is quiet)
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, timeout=300)
        command = [python, "-m", "pip", "install", "--no-deps", *editable.group(1).split(), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    output = built.stdout + built.stderr
    assert not re.search(r"Warning|!!|\*\*\*\*", output), output
