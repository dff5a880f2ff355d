"""The image's Python dependency locks, read and checked against pyproject.toml without the network.

requirements.lock pins pyproject.toml's runtime dependencies and everything they need, each at one version with
the hash of every file PyPI has for it; requirements-build.lock pins the build backend (pyproject.toml's
build-system.requires). `make lock` writes both with `uv pip compile --universal --generate-hashes
--annotation-style line`, whose `# via A, B` comment under each pin names what requires it (`etcd-backup
(pyproject.toml)` for a dependency pyproject.toml names itself). The Containerfile installs them with
`pip install --require-hashes --no-deps`, so a lock that disagrees with pyproject.toml builds an image that
does not run what the project declares: `disagreements` says where.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.processes import ROOT

LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
PYPROJECT = ROOT / "pyproject.toml"
FROM_PYPROJECT = "etcd-backup (pyproject.toml)"
"""How a `# via` comment names pyproject.toml itself."""


@dataclass(frozen=True)
class Pin:
    """One package of a lock: its exact version, the environments it is for, its hashes, what requires it."""

    name: str
    """Canonical (PEP 503): what pip and importlib.metadata compare."""
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]
    via: frozenset[str]

    def applies(self, environment: Mapping[str, str]) -> bool:
        """Whether pip installs it in `environment` (PEP 508 marker variables; missing ones are this Python's)."""
        return self.marker is None or self.marker.evaluate(dict(environment))


class LockError(ValueError):
    """A lock line that is not a pin, a hash or a comment of the shape `make lock` writes."""


def read_lock(text: str) -> dict[str, Pin]:
    """The pins of a lock file's text, by canonical name."""
    pins: dict[str, Pin] = {}
    entries: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip().removesuffix("\\").strip()
        if not stripped or (stripped.startswith("#") and not line[:1].isspace()):
            continue  # blank, or the header
        if not line[:1].isspace():
            entries.append((stripped, []))
        elif entries:
            entries[-1][1].append(stripped)
        else:
            raise LockError(f"line {number}: an indented line before any pin: {line!r}")
    for requirement_text, details in entries:
        requirement = Requirement(requirement_text)
        exact = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if len(exact) != 1 or len(requirement.specifier) != 1:
            raise LockError(f"{requirement_text}: not pinned to one version with ==")
        hashes = tuple(detail.removeprefix("--hash=") for detail in details if detail.startswith("--hash="))
        via = [detail.removeprefix("# via").strip() for detail in details if detail.startswith("# via")]
        name = canonicalize_name(requirement.name)
        pins[name] = Pin(name, exact[0], requirement.marker, hashes,
                         frozenset(part.strip() for line in via for part in line.split(",") if part.strip()))
    return pins


def read(path: Path) -> dict[str, Pin]:
    """The pins of the lock file at `path`, by canonical name."""
    return read_lock(path.read_text())


def pyproject() -> dict[str, Any]:
    with open(PYPROJECT, "rb") as file:
        return tomllib.load(file)


def disagreements(project: Mapping[str, Any], lock: Mapping[str, Pin], build_lock: Mapping[str, Pin]) -> list[str]:
    """Where the locks and pyproject.toml (parsed: `project`) disagree; [] when they agree.

    A dependency missing from the lock or locked outside pyproject.toml's range; a pin without a hash; a pin the
    lock has from pyproject.toml that pyproject.toml no longer names, or that nothing pyproject.toml names
    needs (its `# via` chain does not lead back to pyproject.toml); the same for the build backend."""
    found = _against(project["project"]["dependencies"], lock, "requirements.lock")
    for name, pin in lock.items():
        if FROM_PYPROJECT in pin.via and name not in _names(project["project"]["dependencies"]):
            found.append(f"{name}: requirements.lock has it from pyproject.toml, which no longer names it")
    needed = _reachable(lock, _names(project["project"]["dependencies"]))
    found += [f"{name}: in requirements.lock, but nothing pyproject.toml names needs it (via {sorted(pin.via)})"
              for name, pin in lock.items() if name not in needed]
    build_requires = project["build-system"]["requires"]
    found += _against(build_requires, build_lock, "requirements-build.lock")
    found += [f"{name}: in requirements-build.lock, but not in pyproject.toml's build-system.requires"
              for name in build_lock if name not in _names(build_requires)]
    return found


def _names(requirements: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _against(requirements: Iterable[str], lock: Mapping[str, Pin], lock_name: str) -> list[str]:
    """Each of pyproject.toml's `requirements` pinned in `lock` inside its range; every pin hashed."""
    found = []
    for text in requirements:
        requirement = Requirement(text)
        pin = lock.get(canonicalize_name(requirement.name))
        if pin is None:
            found.append(f"{requirement.name}: pyproject.toml requires {text!r}, {lock_name} does not have it")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            found.append(f"{pin.name}=={pin.version} in {lock_name} is outside pyproject.toml's {text!r}")
    found += [f"{pin.name}=={pin.version} in {lock_name} has no hash" for pin in lock.values() if not pin.hashes]
    return found


def _reachable(lock: Mapping[str, Pin], direct: set[str]) -> set[str]:
    """The pins that pyproject.toml's dependencies (`direct`) need, following `# via` from them down."""
    reached = direct & set(lock)
    while True:
        more = {name for name, pin in lock.items() if name not in reached and pin.via & reached}
        if not more:
            return reached
        reached |= more


ENVIRONMENT_SCRIPT = """import importlib.metadata, json, os, platform, sys
implementation = sys.implementation
environment = {
    "implementation_name": implementation.name,
    "implementation_version": ".".join(map(str, implementation.version[:3])),
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(), "python_version": ".".join(platform.python_version_tuple()[:2]),
    "platform_python_implementation": platform.python_implementation(), "sys_platform": sys.platform}
installed = {dist.metadata["Name"]: dist.version for dist in importlib.metadata.distributions()}
print(json.dumps({"environment": environment, "installed": installed}))
"""
"""Python source that prints, as JSON, the PEP 508 marker variables of the Python that runs it and its installed
distributions ({name: version}): for a Python without `packaging` (the image's)."""
