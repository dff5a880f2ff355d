"""`etcd-backup list`: a table for a person on a terminal; the names, one a line, for a pipe (as before)."""

from __future__ import annotations

from collections.abc import Callable

import redis

from common import present
from harness.cli import etcd_backup, on_terminal
from harness.in_process import Service, served_over_http
from worker.drill import run_drill


def test_list_is_a_table_on_a_terminal_and_names_in_a_pipe(make_service: Callable[..., Service],
                                                           redis_conn: redis.Redis) -> None:
    service = make_service()
    older = service.client.post("/api/v1/backup").get_json()
    newest = service.client.post("/api/v1/backup").get_json()
    archive = service.config.backup_dir / newest["filename"]
    data = bytearray(archive.read_bytes())
    data[-8] ^= 0xFF  # the gzip CRC-32: the drill of the newest fails
    archive.write_bytes(bytes(data))
    assert not run_drill(service.config, redis_conn).passed
    detail = {entry["filename"]: entry for entry in service.client.get("/api/v1/backup?detail=true").get_json()}

    with served_over_http(service) as base:
        piped = etcd_backup("list", "--url", base)
        status, table = on_terminal("list", "--url", base)
    assert piped.returncode == 0 and piped.stdout == f"{older['filename']}\n{newest['filename']}\n"
    assert status == 0, table
    header, *rows = table.splitlines()
    assert header.split() == ["NAME", "AGE", "SIZE", "REVISION", "ENCRYPTED", "DRILL"]
    assert [row.split()[0] for row in rows] == [older["filename"], newest["filename"]]  # oldest first
    for row, taken in zip(rows, (older, newest), strict=True):
        cells = [cell.strip() for cell in row.split("  ") if cell.strip()]
        assert cells[2] == present.size(taken["filesize"]) and cells[3] == str(detail[taken["filename"]]["revision"])
        assert cells[1].endswith(" s") or cells[1].endswith(" min"), cells  # taken moments ago
        assert cells[4] == "no"  # tests/test_encryption.py has the encrypted ones
    assert rows[0].rstrip().endswith(" -")  # never drilled
    drill_time = present.when(detail[newest["filename"]]["drill"]["time"])
    assert rows[1].rstrip().endswith(f"failed {drill_time}")
