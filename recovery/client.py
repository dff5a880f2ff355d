"""A small client of the API: list backups, download one (resuming an interrupted download with Range)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

from common import backups

CHUNK = 1 << 20
PART_SUFFIX = ".part"


class ClientError(Exception):
    """The service refused or could not be reached; the message says which and why."""


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def open(self, path: str, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(f"{self.base_url}{path}", headers=dict(headers or {}))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                message = json.loads(body)["message"]
            except (ValueError, KeyError, TypeError):
                message = body[:200].decode(errors="replace")
            raise ClientError(f"GET {path}: {error.code} {message}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ClientError(f"cannot reach {self.base_url}: {getattr(error, 'reason', error)}") from None

    def list(self) -> list[str]:
        with self.open("/api/v1/backup") as response:
            names: list[str] = json.loads(response.read())
            return names

    def resolve(self, name: str) -> str:
        """`latest` is the newest backup's name; any other name is itself."""
        if name != "latest":
            return name
        names = self.list()
        if not names:
            raise ClientError(f"{self.base_url} has no backup yet")
        # The service lists backups named in the future first, so the last is the newest; if even the
        # last is in the future (all are, or an older service), which is the newest is unknown.
        if backups.is_future(names[-1], datetime.now(UTC)):
            raise ClientError(f"the newest backup listed, {names[-1]}, is named in the future (a clock was ahead): "
                              "give the name of the backup to download")
        return names[-1]

    def download(self, name: str, directory: Path, progress: TextIO | None = sys.stderr) -> Path:
        """Download backup `name` into `directory`; resume a `.part` file left by an interrupted run."""
        name = self.resolve(name)
        final = directory / name
        part = directory / (name + PART_SUFFIX)
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.open(f"/api/v1/backup/{name}", headers) as response:
            if response.status == 206:
                total = have + int(response.headers["Content-Length"])
                mode = "ab"
            else:  # 200: the whole file (the server ignored the range, or there was nothing to resume)
                have, total, mode = 0, int(response.headers["Content-Length"]), "wb"
            with open(part, mode) as out:
                _copy(response, out, have, total, name, progress)
        if part.stat().st_size != total:
            raise ClientError(f"{name}: got {part.stat().st_size} of {total} bytes; run again to resume")
        part.rename(final)
        return final


def _copy(source: IO[bytes], out: IO[bytes], done: int, total: int, name: str, progress: TextIO | None) -> None:
    shown = 0.0
    while chunk := source.read(CHUNK):
        out.write(chunk)
        done += len(chunk)
        if progress is not None and (time.monotonic() - shown > 0.5 or done == total):
            shown = time.monotonic()
            width = 30
            filled = width * done // max(total, 1)
            progress.write(f"\r{name} [{'#' * filled}{'.' * (width - filled)}] {done >> 20}/{total >> 20} MiB")
            progress.flush()
    if progress is not None:
        progress.write("\n")
