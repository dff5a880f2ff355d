"""The documents' console examples, run as written: a ```console block's `$ ` lines are commands (a trailing
`\\` continues one), the lines after each its expected output (stdout and stderr together). A `# on HOST` line
says where the commands after it run. Output is matched with every run of digits standing for any run of
digits (revisions, sizes, times and names differ from run to run) and a line `...` for any number of lines.
Every command must exit 0 (a page that shows a failure shows `$ COMMAND; echo "exit $?"`, and its `exit N` line
is matched as written: an exit status is the one number that must not differ); one that ends in `&` is
started in the background (a daemon as a service manager would run it), its output to a log, and stopped when
the runner ends.

Hashes and IDs (8 or more hex digits) stand for any such value. A number the page promises (the demo's 20 keys, not
an example's revision) is declared by its test (`DocsRunner.promise`) and must then be printed as written.

The documents speak of the operator's machines (10.0.0.1 ... 10.0.0.6, /etc/etcd-backup/config.yml,
/var/lib/etcd ...); a test maps each to a loopback port or a temporary path (`DocsRunner.map`, and
`map_on_host` for what differs from host to host, as each member's /var/lib/etcd), and maps the output back
before comparing it, so the page and the test read the same."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.cli import environment
from harness.processes import BIN_DIR, stop_process

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*).*$")
"""A fence (CommonMark): ``` or ~~~, then the block's language (its first word: ```console title="x" is console)."""


def _fence(line: str, opened: str) -> re.Match[str] | None:
    """`line` as a fence that opens a block (`opened` "": none is open) or closes the one `opened` began: a bare
    fence of the same character, no shorter."""
    match = FENCE.match(line)
    if match is None or not opened:
        return match
    fence = match.group(2)
    return match if fence[0] == opened[0] and len(fence) >= len(opened) and line.strip() == fence else None
HOST_LINE = re.compile(r"^# on (\S+)")
DEFAULT_HOST = "10.0.0.1"
DAEMON_START = 30.0


@dataclass
class Command:
    """One `$ ` command of a console block: where it runs, and what it should print."""

    text: str
    expected: list[str]
    host: str
    line: int  # in the document, for failure messages

    @property
    def background(self) -> bool:
        return self.text.rstrip().endswith("&")


@dataclass
class Block:
    """One ```console block and the section (the nearest heading above it) it belongs to."""

    document: str
    heading: str
    line: int
    commands: list[Command] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line} ({self.heading})"


def console_blocks(document: str) -> list[Block]:
    """Every ```console block of `document` (a path relative to the repository), in order."""
    blocks: list[Block] = []
    heading, fence, block, host, indent = "", None, None, DEFAULT_HOST, 0
    opened = ""  # the open fence's characters: only a fence of the same kind, no shorter and bare, closes it
    lines = (ROOT / document).read_text().splitlines()
    index = 0
    while index < len(lines):
        line, number = lines[index], index + 1
        index += 1
        if (match := _fence(line, opened)) is not None:
            if fence is None:
                fence, indent = match.group(3), len(match.group(1))  # a block in a list item is indented
                opened = match.group(2)
                if fence == "console":
                    block, host = Block(document, heading, number), DEFAULT_HOST
            else:
                if block is not None:
                    blocks.append(block)
                fence, block, opened = None, None, ""
            continue
        if fence is None:
            if line.startswith("#") or (index < len(lines) and re.fullmatch(r"-{3,}|={3,}", lines[index])):
                heading = line.lstrip("#").strip()
            continue
        if block is None:
            continue
        line = line[indent:] if line[:indent].isspace() else line.lstrip()
        if (on := HOST_LINE.match(line)) is not None:
            host = on.group(1)
        elif line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\") and index < len(lines):
                text = text[:-1] + " " + lines[index].strip()
                index += 1
            block.commands.append(Command(text, [], host, number))
        elif block.commands:
            block.commands[-1].expected.append(line.rstrip())
        elif line.strip():
            raise AssertionError(f"{document}:{number}: output before any command in a console block")
    return blocks


VARYING = {"hex": "[0-9a-f]{8,}", "digits": r"\d+"}
"""What stands for any value of its kind: a hash or an ID (8 or more hex digits), a number."""
EXIT_STATUS = re.compile(r"exit \d+")
"""`echo "exit $?"`'s line: the page's promise of a command's exit status, matched as written."""


def _tokens(line: str) -> Iterator[tuple[str, str]]:
    """`line` cut into literal text ("", text) and the values that differ from run to run (kind, text)."""
    end = 0
    for match in re.finditer(r"\b[0-9a-f]{8,}\b|\d+", line):
        yield "", line[end:match.start()]
        yield ("digits" if match.group().isdigit() else "hex"), match.group()
        end = match.end()
    yield "", line[end:]


def output_pattern(expected: list[str]) -> re.Pattern[str]:
    """The regular expression that `expected` stands for: numbers, hashes and IDs as any of their kind (and the
    word after a number in the singular or the plural), `...` lines as any lines, a `...` inside a line as any
    text; an `exit N` line as written."""
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        if EXIT_STATUS.fullmatch(line.strip()):
            parts.append(re.escape(line.strip()) + r"[ \t]*\n")
            continue
        pattern, after_number = "", False
        for kind, text in _tokens(line):
            if kind:
                pattern += VARYING[kind]
            else:
                pattern += _literal(text, after_number)
            after_number = kind == "digits"
        parts.append(pattern + r"[ \t]*\n")
    return re.compile("".join(parts))


def _literal(text: str, after_number: bool) -> str:
    """`text` as itself (a `...` in it as any text); right after a number, its first word in the singular or the
    plural (the number is any: "1 delta" and "3 deltas" are the same line)."""
    head = ""
    if after_number and (word := re.match(r" ([a-z]{2,})", text)) is not None:
        head = " " + re.escape(word.group(1).removesuffix("s")) + "s?"
        text = text[word.end():]
    return head + re.escape(text).replace(re.escape("..."), ".*")


def matches(expected: list[str], output: str) -> bool:
    text = "".join(line.rstrip() + "\n" for line in output.splitlines())
    return output_pattern(expected).fullmatch(text) is not None


class DocsRunner:
    """Runs commands as the documents write them, on this host, with the documents' names mapped to the test's."""

    def __init__(self, work: Path, env: dict[str, str] | None = None) -> None:
        self.work = work
        self.mapping: dict[str, str] = {}
        self.host_mapping: dict[str, dict[str, str]] = {}
        self.env = environment({"PATH": f"{BIN_DIR}:{os.environ['PATH']}", "ETCDCTL_API": "3", **(env or {})})
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.starting = False  # daemons were started since the last command
        self.promised: list[str] = []  # documented text printed as written wherever the page shows it (promise)

    def map(self, documented: str, actual: str) -> None:
        self.mapping[documented] = actual

    def map_on_host(self, host: str, documented: str, actual: str) -> None:
        self.host_mapping.setdefault(host, {})[documented] = actual

    def promise(self, documented: str) -> None:
        """`documented` (e.g. "20 user keys") is a promise, not an example: wherever an output the page shows has
        its shape (any number, then " user keys"), the page shows it as written and the command prints it, its
        numbers too (elsewhere any number stands for any number)."""
        self.promised.append(documented)

    def _pairs(self, host: str) -> list[tuple[str, str]]:
        pairs = {**self.mapping, **self.host_mapping.get(host, {})}
        return sorted(pairs.items(), key=lambda pair: -len(pair[0]))  # /var/lib/etcd-backup before /var/lib/etcd

    def to_actual(self, text: str, host: str) -> str:
        for documented, actual in self._pairs(host):
            text = text.replace(documented, actual)
        return text

    def to_documented(self, text: str, host: str) -> str:
        for documented, actual in sorted(self._pairs(host), key=lambda pair: -len(pair[1])):
            text = text.replace(actual, documented)
        return text

    def run_block(self, block: Block, timeout: float = 180) -> None:
        for command in block.commands:
            self.run(command, block, timeout)

    def run(self, command: Command, block: Block, timeout: float = 180) -> str:
        actual = self.to_actual(command.text, command.host)
        where = f"{block.document}:{command.line}"
        if command.background:
            assert not command.expected, f"{where}: a background command shows no output"
            log = (self.work / f"daemon-{len(self.daemons)}.log").open("wb")
            self.daemons.append(subprocess.Popen(["bash", "-c", f"exec {actual.rstrip().removesuffix('&')}"],
                                                 stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work,
                                                 start_new_session=True))
            log.close()
            self.starting = True
            return ""
        # The first command after daemons were started waits for them as an operator would: tried again until
        # it does what the page shows, for DAEMON_START seconds.
        deadline = time.monotonic() + (DAEMON_START if self.starting else 0)
        self.starting = False
        while True:
            done = subprocess.run(["bash", "-c", actual], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=self.env, cwd=self.work, timeout=timeout)
            output = self.to_documented(done.stdout, command.host)
            if (done.returncode == 0 and matches(command.expected, output)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if record := os.environ.get("DOCS_RECORD"):  # what each command printed, to paste into the page
            with open(record, "a") as file:
                file.write(f"--- {where}\n$ {command.text}\n{output}")
        assert done.returncode == 0, f"{where}: `{command.text}` exited {done.returncode}:\n{output}"
        assert matches(command.expected, output), (
            f"{where}: `{command.text}` printed:\n{output}\nthe document shows:\n" + "\n".join(command.expected))
        for promised in self.promised:
            # Wherever the page shows the promise's shape ("N user keys"), it shows the promise, and it was printed.
            shape = re.compile(r"(?<![\w.])" + "".join(VARYING[kind] if kind else re.escape(text)
                                                      for kind, text in _tokens(promised)))
            shown = [found.group() for line in command.expected for found in shape.finditer(line)]
            assert all(text == promised for text in shown), \
                f"{where}: the page shows {shown}, where the test promises {promised!r}"
            assert output.count(promised) >= len(shown), \
                f"{where}: the page promises {promised!r}; `{command.text}` printed:\n{output}"
        return output

    def stop(self) -> None:
        for daemon in self.daemons:
            stop_process(daemon)  # its whole process group (started in a session of its own)
        self.daemons.clear()


def unrun_examples(document: str) -> list[str]:
    """Where `document` shows a `$ ` command in a fenced block that is not a console block (```shell-session,
    ```bash ...): an example the tests would not run, though a reader takes it for one."""
    found, fence, opened = [], None, ""
    for number, line in enumerate((ROOT / document).read_text().splitlines(), 1):
        if (match := _fence(line, opened)) is not None:
            fence, opened = (match.group(3), match.group(2)) if fence is None else (None, "")
            start = number
        elif fence not in (None, "console") and line.lstrip().startswith("$ "):
            found.append(f"{document}:{start}")
    return list(dict.fromkeys(found))


def sections(document: str, *headings: str) -> Iterator[Block]:
    """The console blocks of `document` under headings that start with one of `headings`, in order."""
    return (block for block in console_blocks(document) if block.heading.startswith(headings))
