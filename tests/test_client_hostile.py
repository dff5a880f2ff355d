"""The recovery client (`etcd-backup list|download|verify|restore`) against a hostile or broken server,
a tiny fake HTTP server on 127.0.0.1, and against a hostile local directory: the command runs in its own
process, as an operator runs it, with umask 000 so that only the client's own modes count."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.storage import LocalStore
from harness.deployment import Deployment
from harness.in_process import Service
from harness.processes import BIN_DIR, free_port
from harness.report import Report
from harness.servers import EtcdServer
from recovery.verify import CannotVerify, verify_file

NAME = "snapshot-20260101_000000.tar.gz"
BODY = os.urandom(300_000)
SHA256 = hashlib.sha256(BODY).hexdigest()
TOKEN = "a-token-only-the-service-may-see"

Answer = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append((self.path, dict(self.headers)))
        answer = self.server.routes.get(self.path) or self.server.fallback
        try:
            answer(self)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: what some tests want
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, free_port()), Handler)
        self.routes: dict[str, Answer] = {}
        self.fallback: Answer = send_json({"message": "not found"}, 404)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stopping = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    yield from _serve()


@pytest.fixture
def other_host() -> Iterator[FakeServer]:
    """A second server: where a hostile redirect points."""
    yield from _serve()


def _serve() -> Iterator[FakeServer]:
    fake = FakeServer()
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.stopping.set()
    fake.shutdown()
    fake.server_close()


def send_json(document: object, status: int = 200, raw: bytes | None = None) -> Answer:
    def answer(handler: Handler) -> None:
        body = raw if raw is not None else json.dumps(document).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def send_file(data: bytes = BODY, length: int | None = len(BODY), sent: int | None = None,
              headers: dict[str, str] | None = None) -> Answer:
    """Answer 200 with `data`, announcing `length` (None: no Content-Length) and sending `sent` bytes of it."""

    def answer(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/gzip")
        if length is not None:
            handler.send_header("Content-Length", str(length))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data[:sent])
        handler.close_connection = True

    return answer


def trickle(data: bytes, content_type: str = "application/gzip") -> Answer:
    """Announce `data`, then send it a byte every 0.1 s: never idle long enough for a read timeout."""

    def answer(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        for byte in data:
            if handler.server.stopping.wait(0.1):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    return answer


def redirect(location: str) -> Answer:
    def answer(handler: Handler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def etcd_backup(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `etcd-backup` command as an operator would, with umask 000."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD_BACKUP_")}
    return subprocess.run(["sh", "-c", 'umask 000 && exec "$0" "$@"', str(BIN_DIR / "etcd-backup"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_failure(done: subprocess.CompletedProcess[str], command: str, status: int | set[int] = 1) -> str:
    """Check that the command failed with `status` and one line on stderr naming itself; return that line."""
    error = done.stderr.strip()
    assert done.returncode in ({status} if isinstance(status, int) else status), (done.returncode, done.stderr)
    assert "\n" not in error and "Traceback" not in error and error.startswith(f"etcd-backup {command}"), error
    return error


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below `root` with its mode and size (symlinks as themselves)."""
    found = {}
    for path in root.rglob("*"):
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_mode, st.st_size)
    return found


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The operator's current directory, two levels down: a name with ../../ would land in tmp_path."""
    path = tmp_path / "a" / "b"
    path.mkdir(parents=True)
    (tmp_path / "abs").mkdir()
    return path


def hostile_names(tmp_path: Path) -> dict[str, object]:
    return {
        "traversal": "../../escaped.tar.gz",
        "traversal after a good name": f"{NAME}/../../../escaped.tar.gz",
        "absolute": str(tmp_path / "abs" / NAME),
        "huge": "snapshot-" + "9" * 100_000 + ".tar.gz",
        "NUL": f"{NAME}\x00.txt",
        "newline": f"{NAME}\nsnapshot-20260101_000001.tar.gz",
        "terminal escape": f"\x1b]0;owned\x07{NAME}",
        "not a string": 42,
        "impossible time (month 13)": "snapshot-20261301_000000.tar.gz",
    }


HOSTILE_NAME_KINDS = list(hostile_names(Path("/")))


@pytest.mark.slow
@pytest.mark.parametrize("kind", HOSTILE_NAME_KINDS)
def test_names_from_the_server_are_checked_before_use(server: FakeServer, work: Path, tmp_path: Path, kind: str,
                                                      report: Report) -> None:
    bad = hostile_names(tmp_path)[kind]
    server.routes["/api/v1/backup"] = send_json([NAME, bad])
    server.fallback = send_file()  # a hostile server serves whatever name it is asked for
    before = files_under(tmp_path)
    outcomes = []
    for command in (["download", "latest"], ["list"]):
        done = etcd_backup(*command, "--url", server.base, cwd=work)
        error = one_line_failure(done, command[0])
        assert "not a backup name" in error and len(error) < 400, error
        assert done.stdout == ""
        outcomes.append(error)
    assert files_under(tmp_path) == before  # nothing written, anywhere
    assert [path for path, _ in server.requests] == ["/api/v1/backup"] * 2  # nothing asked for under that name
    report(f"a server lists a backup name that is {kind}; `etcd-backup download latest` and `list`",
           f"exit 1, nothing written, nothing requested under the name: \"{outcomes[0]}\"")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../../escaped.tar.gz", "/tmp/snapshot-20260101_000000.tar.gz",
                                  "snapshot-20260101_000000.tar.gz\n", "notes.txt"])
def test_names_on_the_command_line_are_checked(server: FakeServer, work: Path, tmp_path: Path, name: str) -> None:
    server.fallback = send_file()
    before = files_under(tmp_path)
    done = etcd_backup("download", name, "--url", server.base, cwd=work)
    assert "not a backup name" in one_line_failure(done, "download", status=2)
    assert files_under(tmp_path) == before and server.requests == []


@pytest.mark.slow
def test_redirects_stay_on_the_service_and_name_backups(server: FakeServer, other_host: FakeServer, work: Path,
                                                        report: Report) -> None:
    elsewhere = f"http://localhost:{other_host.server_address[1]}"
    other_host.routes["/api/v1/backup"] = send_json([NAME])
    other_host.fallback = send_file()
    server.routes["/api/v1/backup"] = redirect(f"{elsewhere}/api/v1/backup")
    server.routes[f"/api/v1/backup/{NAME}"] = redirect(f"{elsewhere}/api/v1/backup/{NAME}")
    server.routes["/api/v1/backup/snapshot-20260101_000001.tar.gz"] = redirect("/api/v1/backup/../../escaped.tar.gz")
    server.fallback = send_file()
    errors = []
    for command in (["list"], ["download", NAME], ["verify", f"{server.base}/api/v1/backup/{NAME}"],
                    ["download", "snapshot-20260101_000001.tar.gz"]):
        url = [] if command[0] == "verify" else ["--url", server.base]
        done = etcd_backup(*command, *url, "--token", TOKEN, cwd=work)
        errors.append(one_line_failure(done, command[0]))
        assert "redirect" in errors[-1], errors[-1]
    assert other_host.requests == []  # the token never left for another host
    assert files_under(work) == {}
    assert not any(path.endswith("escaped.tar.gz") for path, _ in server.requests)
    report("a server redirects list, download and verify to another host, and a download to a traversal name",
           f"each refused with exit 1, the other host never contacted (no token sent), nothing written: "
           f"\"{errors[0]}\"; \"{errors[-1]}\"")


def _digest_headers(sha256: str) -> dict[str, str]:
    return {"X-Backup-Sha256": sha256}


def _repr_digest(data: bytes) -> dict[str, str]:
    return {"Repr-Digest": f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"}


BAD_DOWNLOADS: dict[str, tuple[Answer, str, bool]] = {
    # what the server does, words the error has, whether a .part is kept to resume
    "cut short (Content-Length 300000, 150000 sent)": (send_file(sent=150_000), "150000 of 300000 bytes", True),
    "no Content-Length": (send_file(length=None), "no Content-Length", False),
    "a Content-Length of '\u00b2' (a digit to str.isdigit, not to int)": (
        send_file(length=None, headers={"Content-Length": "\u00b2"}), "no Content-Length", False),
    "a wrong X-Backup-Sha256": (send_file(headers=_digest_headers("0" * 64)), "SHA-256", False),
    "a wrong Repr-Digest": (send_file(headers=_repr_digest(b"other bytes")), "SHA-256", False),
    "an X-Backup-Sha256 that is no SHA-256": (send_file(headers=_digest_headers("zz")), "X-Backup-Sha256", False),
    "HTTP 500 with a two-line message": (send_json({"message": "disk on fire\nsecond line"}, 500),
                                         "500 disk on fire", False),
    "HTTP 500 with an HTML body": (send_json(None, 500, raw=b"<html>\n<h1>oops</h1>\n</html>"), "500", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", BAD_DOWNLOADS)
def test_download_checks_what_it_got(server: FakeServer, work: Path, kind: str, report: Report) -> None:
    answer, words, keeps_part = BAD_DOWNLOADS[kind]
    server.routes[f"/api/v1/backup/{NAME}"] = answer
    error = one_line_failure(etcd_backup("download", NAME, "--url", server.base, cwd=work), "download")
    assert words in error, error
    assert not (work / NAME).exists()
    part = work / f"{NAME}.part"
    assert part.exists() == keeps_part
    if keeps_part:
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
    report(f"`etcd-backup download` from a server that sends {kind}",
           f"exit 1, no file under the backup's name{', the .part kept (0600) to resume' if keeps_part else ''}: "
           f"\"{error}\"")


@pytest.mark.slow
def test_download_is_0600_and_checked_with_the_digest(server: FakeServer, work: Path, tmp_path: Path) -> None:
    server.routes[f"/api/v1/backup/{NAME}"] = send_file(headers={**_digest_headers(SHA256), **_repr_digest(BODY)})
    done = etcd_backup("download", NAME, "--url", server.base, "--output-dir", str(tmp_path / "abs"), cwd=work)
    assert done.returncode == 0, done.stderr
    final = tmp_path / "abs" / NAME
    assert done.stdout.strip() == str(final) and final.read_bytes() == BODY
    assert stat.S_IMODE(final.stat().st_mode) == 0o600  # under umask 000
    assert files_under(work) == {}
    # --verify: the bytes match the digest, but they are no backup: not kept.
    done = etcd_backup("download", NAME, "--url", server.base, "--verify", cwd=work)
    assert "not an intact .tar.gz" in one_line_failure(done, "download")
    assert files_under(work) == {}


@pytest.mark.slow
@pytest.mark.parametrize("at", ["part", "final"])
def test_a_planted_symlink_does_not_redirect_the_download(server: FakeServer, work: Path, tmp_path: Path, at: str,
                                                          report: Report) -> None:
    server.routes[f"/api/v1/backup/{NAME}"] = send_file()
    victim = tmp_path / "victim"
    victim.write_text("an operator's file\n")
    planted = work / (f"{NAME}.part" if at == "part" else NAME)
    planted.symlink_to(victim)
    error = one_line_failure(etcd_backup("download", NAME, "--url", server.base, cwd=work), "download")
    assert victim.read_text() == "an operator's file\n"
    assert planted.is_symlink() and not (work / (NAME if at == "part" else f"{NAME}.part")).exists()
    report(f"a symlink planted at the download's {'.part' if at == 'part' else 'final'} name, pointing elsewhere",
           f"exit 1, the target untouched, nothing written: \"{error}\"")


@pytest.mark.slow
def test_a_planted_fifo_does_not_hang_the_download(server: FakeServer, work: Path) -> None:
    server.routes[f"/api/v1/backup/{NAME}"] = send_file()
    os.mkfifo(work / f"{NAME}.part")
    error = one_line_failure(etcd_backup("download", NAME, "--url", server.base, cwd=work, timeout=20), "download")
    assert "not a regular file" in error


@pytest.mark.slow
def test_every_failure_is_one_line_naming_the_cause(server: FakeServer, work: Path, tmp_path: Path,
                                                    report: Report) -> None:
    """list, download, verify URL and restore URL, against each way a server can fail them."""
    dead = f"http://127.0.0.1:{free_port()}"
    every = ["list", "download", "verify", "restore"]
    cases: list[tuple[str, Answer | None, list[str], str]] = [
        ("connection refused", None, every, "Connection refused"),
        ("garbage instead of the JSON list", send_json(None, raw=b"{not json"), ["list", "download"], "not JSON"),
        ("a JSON object instead of the list", send_json({"names": [NAME]}), ["list", "download"], "not a list"),
        ("HTTP 500", send_json({"message": "boom"}, 500), every, "500 boom"),
        ("a trickle (a byte every 0.1 s, --deadline 2s)", trickle(b"x" * 100_000), every, "deadline"),
    ]
    for what, answer, commands, words in cases:
        base = dead if answer is None else server.base
        if answer is not None:
            server.routes["/api/v1/backup"] = server.fallback = answer
        url = f"{base}/api/v1/backup/{NAME}"
        arguments = {"list": ["list", "--url", base], "download": ["download", "latest", "--url", base],
                     "verify": ["verify", url], "restore": ["restore", url, "--data-dir", str(tmp_path / "restored")]}
        started = time.monotonic()
        errors = []
        statuses = []
        # The commands of a case run at once (each waits out the trickle's deadline, 8 s one after the other).
        with ThreadPoolExecutor(len(commands)) as pool:
            runs = list(pool.map(lambda args: etcd_backup(*args, "--deadline", "2s", cwd=work),
                                 [arguments[command] for command in commands]))
        for command, done in zip(commands, runs, strict=True):
            # verify and restore may say "no verdict" (3) for a transfer that failed midway (recovery.verify).
            errors.append(one_line_failure(done, command, {1, 3} if command in ("verify", "restore") else 1))
            statuses.append(f"{command} {done.returncode}")
            assert words in errors[-1], (what, errors[-1])
        seconds = time.monotonic() - started
        assert seconds < 10 * len(commands), (what, seconds)
        assert files_under(work) == {}
        report(f"a server that answers with {what}: `etcd-backup {'`, `'.join(commands)}` (URL)",
               f"each failed in one line ({', '.join(statuses)}), {len(commands)} commands in {seconds:.1f} s: "
               f"\"{errors[-1]}\"")
    done = etcd_backup("download", NAME, "--url", dead, "--output-dir", str(tmp_path / "missing"), cwd=work)
    assert "does not exist" in one_line_failure(done, "download")


def test_verify_extracts_0600_and_never_through_a_symlink(service: Service, tmp_path: Path, report: Report) -> None:
    archive = service.config.backup_dir / service.client.post("/api/v1/backup").get_json()["filename"]
    work = tmp_path / "verify"
    work.mkdir()
    umask = os.umask(0)
    try:
        verified = verify_file(archive, work)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(verified.db_path.stat().st_mode) == 0o600
    verified.db_path.unlink()
    victim = tmp_path / "victim"
    victim.write_text("an operator's file\n")
    verified.db_path.symlink_to(victim)
    with pytest.raises(CannotVerify) as refused:  # this host's work dir is at fault, not the backup
        verify_file(archive, work)
    assert victim.read_text() == "an operator's file\n"
    report("verify (and restore, which extracts through it) under umask 000, then with a symlink planted at the "
           "snapshot's name in its work dir",
           f"extracted 0600; then refused, the target untouched: \"{refused.value}\"")


@pytest.mark.slow
def test_download_verify_from_the_service(tmp_path: Path, etcd: EtcdServer, report: Report) -> None:
    """`download latest --verify` against the real service: the digest it sends, and the full verify."""
    out = tmp_path / "out"
    out.mkdir()
    deployment = Deployment(tmp_path / "service", [etcd.url]).start()
    try:
        name = deployment.post_backup()["filename"]
        status, headers, body = deployment.request("GET", f"/api/v1/backup/{name}")
        done = etcd_backup("download", "latest", "--url", deployment.base, "--verify", cwd=out)
    finally:
        deployment.stop()
    metadata = LocalStore(deployment.backup_dir).read_metadata(name)
    digest = hashlib.sha256(body)
    assert status == 200 and metadata is not None
    assert headers["X-Backup-Sha256"] == digest.hexdigest() == metadata.archive_sha256
    assert headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"
    assert done.returncode == 0, done.stderr
    assert f"{name}: good: revision " in done.stdout and f"sha256 {metadata.db_sha256}" in done.stdout
    assert (out / name).read_bytes() == body and stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert sorted(os.listdir(out)) == [name]
    report("`etcd-backup download latest --verify` from the service, umask 000",
           f"the service sent X-Backup-Sha256 and Repr-Digest (the archive's SHA-256, recorded at backup time); the "
           f"client checked them and the full verify passed: \"{done.stdout.strip().splitlines()[-1]}\"; file 0600")
