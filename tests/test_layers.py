"""The layers point one way: the API (api/) runs in gunicorn apart from the command line, and never imports the
command tree (cli/), neither itself nor through a module it imports. Read from the source (ast), so an import inside
a function, which runs only when that function does, counts as well."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "cli", "common", "recovery", "scheduler", "worker")
"""The project's own top-level packages: an import of another (the standard library, a dependency) is not followed."""


def module_file(name: str) -> Path | None:
    """The source file of project module `name`, None if it is not one."""
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_by(name: str) -> set[str]:
    """The project modules that module `name` imports anywhere in its source (each parent package too: importing
    a.b.c runs a/__init__.py and a/b/__init__.py)."""
    path = module_file(name)
    assert path is not None, name
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            # `from a import b`: b may be a module of a, or a name in it.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] in PACKAGES:
                found.update(prefix for index in range(1, len(parts) + 1)
                             if module_file(prefix := ".".join(parts[:index])) is not None)
    return found


def chains_to(start: list[str], forbidden: str) -> list[list[str]]:
    """For each module of package `forbidden` that `start`'s modules reach through their imports, the chain that
    reaches it first (breadth first)."""
    seen = {name: [name] for name in start}
    queue = list(start)
    chains = []
    while queue:
        name = queue.pop(0)
        if name.split(".")[0] == forbidden:
            chains.append(seen[name])
            continue
        for imported in sorted(imported_by(name)):
            if imported not in seen:
                seen[imported] = [*seen[name], imported]
                queue.append(imported)
    return chains


def test_no_api_module_imports_the_command_line() -> None:
    modules = sorted(f"api.{path.stem}" if path.stem != "__init__" else "api" for path in (ROOT / "api").glob("*.py"))
    assert "api.wsgi" in modules and "api.gunicorn_conf" in modules, modules
    chains = chains_to(modules, "cli")
    assert not chains, "api/ imports cli/:\n" + "\n".join(" -> ".join(chain) for chain in chains)


def test_the_walk_finds_an_import_inside_a_function() -> None:
    """The check itself: cli.main imports cli.recovery at its top and worker modules inside its functions."""
    reached = {chain[-1] for chain in chains_to(["cli.main"], "worker")}
    assert "worker.runner" in reached, reached
    assert chains_to(["cli.main"], "cli")[0] == ["cli.main"]
