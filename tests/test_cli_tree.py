"""The command tree as a newcomer meets it: every command is listed in `etcd-backup --help` with a summary,
has its own --help with examples and the exit statuses, and runs; --version; options belong to the
command that reads them; usage errors exit 2. Run through the installed console script."""

from __future__ import annotations

import argparse
import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser
from harness.cli import etcd_backup


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The commands `parser` takes (its subparsers), by name: what the code defines, whatever help says."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def every_command(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path in the tree, ("config", "check") included."""
    paths = []
    for name, child in commands_of(parser).items():
        paths.append((*path, name))
        paths.extend(every_command(child, (*path, name)))
    return paths


def listed_in_help(help_text: str) -> dict[str, str]:
    """The commands a --help lists under `commands:`, with their summary (its first line)."""
    section = help_text.split("\ncommands:\n", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^    (\S+)\s+(\S.*)$", section, re.MULTILINE))


TREE = every_command(build_parser())


def test_the_tree_has_the_commands_a_newcomer_looks_for() -> None:
    assert {path[0] for path in TREE} == {"serve", "worker", "scheduler", "deltas", "standby", "prune", "config",
                                          "status", "verify", "restore", "download", "list", "keygen"}
    assert ("config", "check") in TREE


@pytest.mark.parametrize("path", [(), *{path[:-1] for path in TREE if path[:-1]}], ids=" ".join)
def test_every_command_is_listed_with_a_summary_in_its_parents_help(path: tuple[str, ...]) -> None:
    done = etcd_backup(*path, "--help")
    assert done.returncode == 0, done.stderr
    listed = listed_in_help(done.stdout)
    parser = build_parser()
    for name in path:
        parser = commands_of(parser)[name]
    assert set(listed) == set(commands_of(parser)), done.stdout
    assert all(len(summary) > 15 for summary in listed.values()), listed


@pytest.mark.parametrize("path", TREE, ids=" ".join)
def test_every_command_has_its_own_help_with_examples_and_exit_statuses(path: tuple[str, ...]) -> None:
    done = etcd_backup(*path, "--help")
    assert done.returncode == 0, done.stderr
    command = " ".join(path)
    assert done.stdout.startswith(f"usage: etcd-backup {command} "), done.stdout
    examples = done.stdout.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ").splitlines()
    assert any(f"etcd-backup {command}" in example for example in examples), examples
    for example in examples:  # each parses as the command line it shows
        words = shlex.split(example, comments=True)
        words = words[:words.index("|")] if "|" in words else words
        while "=" in words[0]:  # an environment variable set for the command
            words.pop(0)
        assert words[0] == "etcd-backup", example
        parsed = build_parser().parse_args(words[1:])
        assert parsed.command == path[0] or (path == ("serve",) and parsed.command is None), example
    assert "exit status:\n  0 " in done.stdout and "\n  2  a usage error" in done.stdout


def test_every_command_runs_something() -> None:
    """Each command that is no group of commands has what runs it (a group, `config`, needs one of its own)."""
    for path in TREE:
        parser = build_parser()
        for name in path:
            parser = commands_of(parser)[name]
        if not commands_of(parser):
            assert callable(parser.get_default("run")), path


def test_version() -> None:
    done = etcd_backup("--version")
    assert done.returncode == 0 and done.stdout == f"etcd-backup {version('etcd-backup')}\n"


@pytest.mark.parametrize("args, error", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["--dry-run", "prune"], "unrecognized arguments: --dry-run"),  # prune's option, not the program's
    (["worker", "--dry-run"], "unrecognized arguments: --dry-run"),
    (["--config", "/etc/x.yml", "list"], "list takes no --config"),
    (["config"], "the following arguments are required: COMMAND"),
    (["status", "--max-age", "soon"], "argument --max-age: invalid duration value: 'soon'"),
    (["restore", "snapshot-20260101_000000.tar.gz"], "the following arguments are required: --data-dir"),
])
def test_usage_errors_exit_2(args: list[str], error: str) -> None:
    done = etcd_backup(*args)
    assert done.returncode == 2 and error in done.stderr, (done.returncode, done.stderr)
    assert done.stdout == ""


def test_the_config_before_the_command_is_the_commands(tmp_path: Path) -> None:
    """`etcd-backup --config FILE worker` (as the flat parser took it) reads FILE: here, one without Redis."""
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"backup-dir": str(tmp_path / "backups"),
                                      "etcd": {"endpoints": ["http://127.0.0.1:1"]}}))
    done = etcd_backup("--config", str(config), "worker", env={"REDIS_URL": ""})
    assert done.returncode == 2 and done.stderr == (
        "etcd-backup: redis-url: required when a worker runs apart from the API "
        "(set redis-url in the config or REDIS_URL)\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("rotate: -3\n")
    for args in (["--config", str(bad)], ["serve", "--config", str(bad)], ["--config", str(bad), "prune"]):
        done = etcd_backup(*args)
        assert done.returncode == 2 and done.stderr.startswith(f"etcd-backup: bad config {bad}: "), (args, done.stderr)


def test_shell_completion_completes_commands_and_their_options(tmp_path: Path) -> None:
    """argcomplete answers the shell (`eval "$(register-python-argcomplete etcd-backup)"`)."""
    answers = {}
    for line in ("etcd-backup st", "etcd-backup status --m", "etcd-backup config c"):
        out = tmp_path / "completions"
        done = etcd_backup(env={"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                                "_ARGCOMPLETE_STDOUT_FILENAME": str(out)})
        assert done.returncode == 0, done.stderr
        answers[line] = out.read_text().split()
    assert answers == {"etcd-backup st": ["standby", "status"],
                       "etcd-backup status --m": ["--max-age", "--max-recovery-age"],
                       "etcd-backup config c": ["check"]}
