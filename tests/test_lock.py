"""The image's Python dependency locks agree with pyproject.toml (offline: the locks' own `# via` comments say
what requires each pin), and the Containerfile installs nothing that is not hash-checked from them. That the
image holds exactly the locked versions is tests/test_image.py's (it builds the image)."""

from __future__ import annotations

import copy
import re
import shlex
from typing import Any

import pytest

from harness.lock import BUILD_LOCK, LOCK, disagreements, pyproject, read, read_lock
from harness.processes import ROOT


def test_the_locks_agree_with_pyproject() -> None:
    assert disagreements(pyproject(), read(LOCK), read(BUILD_LOCK)) == []


def test_every_pin_has_a_sha256_of_each_file_and_the_header_names_the_command() -> None:
    for path in (LOCK, BUILD_LOCK):
        assert path.read_text().splitlines()[1].strip() == "#    make lock", path
        for pin in read(path).values():
            assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", digest) for digest in pin.hashes), pin


def lock_without(name: str) -> str:
    """requirements.lock's text without `name`'s pin (its line, its hashes and its `# via`)."""
    return re.sub(rf"(?ms)^{re.escape(name)}==.*?(?=^\S)", "", LOCK.read_text())


def with_dependencies(*dependencies: str, dropped: str = "") -> dict[str, Any]:
    project = copy.deepcopy(pyproject())
    kept = [text for text in project["project"]["dependencies"] if not dropped or not text.startswith(dropped)]
    project["project"]["dependencies"] = kept + list(dependencies)
    return project


@pytest.mark.parametrize(("project", "lock_text", "expected"), [
    pytest.param(pyproject(), lock_without("gunicorn"),
                 "gunicorn: pyproject.toml requires 'gunicorn>=25.1', requirements.lock does not have it",
                 id="a dependency missing from the lock"),
    pytest.param(pyproject(), re.sub(r"(?m)^gunicorn==\S+", "gunicorn==25.0.0", LOCK.read_text()),
                 "gunicorn==25.0.0 in requirements.lock is outside pyproject.toml's 'gunicorn>=25.1'",
                 id="a version outside the range"),
    pytest.param(with_dependencies("requests>=2"), LOCK.read_text(),
                 "requests: pyproject.toml requires 'requests>=2', requirements.lock does not have it",
                 id="a dependency added to pyproject.toml only"),
    pytest.param(with_dependencies(dropped="croniter"), LOCK.read_text(),
                 "croniter: requirements.lock has it from pyproject.toml, which no longer names it",
                 id="a dependency dropped from pyproject.toml only"),
    pytest.param(with_dependencies(dropped="boto3"), LOCK.read_text(),
                 "s3transfer: in requirements.lock, but nothing pyproject.toml names needs it (via ['boto3'])",
                 id="what only a dropped dependency needed"),
    pytest.param(pyproject(), LOCK.read_text() + f"leftpad==1.0 \\\n    --hash=sha256:{'0' * 64}\n    # via nothing\n",
                 "leftpad: in requirements.lock, but nothing pyproject.toml names needs it (via ['nothing'])",
                 id="a package nothing needs"),
    pytest.param(pyproject(), re.sub(r"(?ms)^(redis==\S+ \\\n)(?:\s+--hash=\S+(?: \\)?\n)+", r"\1",
                                     LOCK.read_text()),
                 "redis==", id="a pin without a hash"),
])
def test_a_lock_that_disagrees_is_caught(project: dict[str, Any], lock_text: str, expected: str) -> None:
    found = disagreements(project, read_lock(lock_text), read(BUILD_LOCK))
    assert any(line.startswith(expected) for line in found), found


def test_a_build_lock_that_disagrees_is_caught() -> None:
    project = copy.deepcopy(pyproject())
    assert disagreements(project, read(LOCK), {}) == [
        "setuptools: pyproject.toml requires 'setuptools>=77', requirements-build.lock does not have it"]
    project["build-system"]["requires"] = ["setuptools>=999"]
    found = disagreements(project, read(LOCK), read(BUILD_LOCK))
    assert found[0].endswith("outside pyproject.toml's 'setuptools>=999'"), found


def pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in the Containerfile (its RUN lines joined)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Containerfile").read_text())
    return [shlex.split(command.split("pip install", 1)[1]) for line in text.splitlines()
            if not line.lstrip().startswith("#") for command in line.split("&&") if "pip install" in command]


def test_the_containerfile_installs_only_from_the_locks_with_hashes() -> None:
    """Every pip install either takes a lock with --require-hashes, or the project's own source without
    fetching anything (no dependencies, no isolated build environment of unchecked setuptools)."""
    installs = pip_installs()
    locks = [args[args.index("-r") + 1] for args in installs if "-r" in args]
    assert locks == ["/src/requirements-build.lock", "/src/requirements.lock"]
    for args in installs:
        assert "--no-deps" in args, args
        if "-r" in args:
            assert "--require-hashes" in args, args
        else:
            assert args[-1] == "/src" and "--no-build-isolation" in args, args
    ignored = (ROOT / ".containerignore").read_text().splitlines()
    assert {f"!{LOCK.name}", f"!{BUILD_LOCK.name}"} <= set(ignored), "the locks must reach the build context"
