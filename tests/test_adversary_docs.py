"""An adversary on issue 27's promises (the README, docs/restore.md, the documentation tests that keep them true):
each test tries one way a page could lie, or a store or Redis writer could make the service say something false,
and fails if it gets through."""

from __future__ import annotations

import re

from harness.docs import console_blocks, matches, sections


def test_a_documented_exit_status_is_matched_as_written_not_as_any_number() -> None:
    """docs/restore.md shows each refusal's exit status (`; echo "exit $?"`): with every number standing for any
    number, a page showing `exit 2` would pass against a command that exits 1 (or 0)."""
    assert matches(["refused", "exit 2"], "refused\nexit 2\n")
    assert not matches(["refused", "exit 2"], "refused\nexit 1\n")
    assert not matches(["exit 1"], "exit 0\n")
    shown = [command for document in ("README.md", "docs/restore.md") for block in console_blocks(document)
             for command in block.commands if "echo \"exit $?\"" in command.text]
    assert shown and all(re.fullmatch(r"exit \d+", command.expected[-1]) for command in shown), \
        "the pages show exit statuses as `exit N` on the last line"


def test_the_readmes_check_shows_a_revision_its_restore_printed() -> None:
    """Step 4 says "check that etcd serves the revision the restore printed": the revision its example shows is one
    that a restore above it printed (numbers stand for any number when the examples run, so only this reads it)."""
    blocks = list(sections("README.md", "etcd lost its data? Restore now"))
    printed = {int(number) for block in blocks[:-1] for command in block.commands for line in command.expected
               for number in re.findall(r"(?:etcd is at|to) revision (\d+)", line)}
    check = blocks[-1].commands[-1]
    assert "endpoint status" in check.text
    shown = {int(number) for line in check.expected for number in re.findall(r'"revision":(\d+)', line)}
    assert printed and shown and shown <= printed, (shown, printed)
