"""One backup or one restore by the code of one tree, timed: what bench.sides runs once per side and round.

`python bench/side.py backup CONFIG` (a config file, or a config document as JSON) or
`python bench/side.py restore ARCHIVE DATA_DIR`, run with
PYTHONPATH set to the tree whose code is measured (an older commit's, extracted by bench.sides, or this
one's). It prints one JSON line: the wall-clock seconds, the process' CPU seconds, and the phases
(common.phases) when that tree records them. It imports nothing of bench/, which an older tree may lack.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
    action, *arguments = argv
    phases = _new_phases()
    began, cpu_before = time.perf_counter(), _cpu_seconds()
    if action == "backup":
        _backup(arguments[0], phases)
    elif action == "restore":
        _restore(arguments[0], arguments[1], phases)
    else:
        raise SystemExit(f"unknown action {action}")
    print(json.dumps({"seconds": time.perf_counter() - began, "cpu": _cpu_seconds() - cpu_before,
                      "phases": phases.seconds if phases is not None else {}}))


def _new_phases() -> Any:
    try:
        return importlib.import_module("common.phases").Phases()
    except ImportError:  # a tree from before per-phase timings
        return None


def _backup(config_given: str, phases: Any) -> None:
    from common.config import load_config, parse_config
    from common.storage import open_store
    from worker.backup import take_backup

    config = parse_config(json.loads(config_given), {}) if config_given.startswith("{") else load_config(config_given)
    takes_phases = phases is not None and "phases" in inspect.signature(take_backup).parameters
    keywords = {"phases": phases} if takes_phases else {}
    take_backup(config, open_store(config), "bench", **keywords)


def _restore(archive: str, data_dir: str, phases: Any) -> None:
    from cli.main import main as cli_main

    recording = importlib.import_module("common.phases").recording(phases) if phases is not None else None
    with recording or contextlib.nullcontext(), contextlib.redirect_stdout(io.StringIO()):
        cli_main(["restore", archive, "--data-dir", data_dir])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main(sys.argv[1:])
