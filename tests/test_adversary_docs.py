"""An adversary on issue 27's promises (the README, docs/restore.md, the documentation tests that keep them true):
each test tries one way a page could lie, or a store or Redis writer could make the service say something false,
and fails if it gets through."""

from __future__ import annotations

import re

from harness.docs import console_blocks, matches


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
