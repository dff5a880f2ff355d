"""Fixtures: a real etcd and a real Redis per session, a fresh config and backup-dir per test; and the
reliability report's hooks. What the fixtures are built from lives in the harness package."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pyrage import x25519

from common.config import load_config
from common.startup import prepare_backup_dir
from harness.files import write_config as write_config_file
from harness.fill import ETCD_FLAGS, fill
from harness.image import ContainerImage, built_image
from harness.in_process import ConfigFactory, Service
from harness.pki import make_tls_files
from harness.processes import free_port
from harness.report import REPORT_OPTION, Report, reliability_markdown
from harness.s3 import MotoServer, S3Server, SeaweedServer
from harness.servers import ETCD_RELEASES, EtcdServer, RedisServer, etcd_tools_path

REPORT_PROPERTY = "reliability-row"
"""A row rides on its test's report as a user property, so it reaches the process that writes the table
also when pytest-xdist ran the test in another one."""
_report_rows: list[tuple[str, str, str]] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(REPORT_OPTION, metavar="PATH", default=None,
                     help="write what the reliability tests tried and what the service did, as markdown")


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """Record one row of the reliability table: what a test tried and what the service did (measured)."""

    def add(tried: str, outcome: str) -> None:
        request.node.user_properties.append((REPORT_PROPERTY, (tried, outcome)))

    return add


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # its user properties hold every row the test added
        nodeid = ungrouped(report.nodeid)
        _report_rows.extend((nodeid, *row) for name, row in report.user_properties if name == REPORT_PROPERTY)


def ungrouped(nodeid: str) -> str:
    """`nodeid` without the "@group" that pytest-xdist's --dist loadgroup appends (a parameter's id may hold an @)."""
    return nodeid.rpartition("@")[0] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid


_LOST_GROUP = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, which appends the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --dist loadgroup, a test of an xdist_group whose node ID does not name it would be run in any process,
    silently: the image built once per process, the point-in-time restores beside each other. pytest-xdist 3.8
    names it by editing the node ID, which pytest 9.2 ignores (pytest-xdist#1386): such a test fails then."""
    if not getattr(config.option, "loadgroup", False):  # set in pytest-xdist's worker processes only
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and ungrouped(item.nodeid) == item.nodeid:
            item.stash[_LOST_GROUP] = (f"--dist loadgroup ignores its xdist_group with pytest {pytest.__version__} "
                                       "(pytest-xdist#1386): pyproject.toml's test extra pins one it works with")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if lost := item.stash.get(_LOST_GROUP, ""):
        pytest.fail(lost, pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption(REPORT_OPTION)
    if not path or not _report_rows or exitstatus != 0:  # only a run where every test passed
        return
    # By test, in a stable order whichever process ran which test first; a test's own rows keep theirs.
    rows = sorted(_report_rows, key=lambda row: row[0])
    Path(path).write_text(reliability_markdown(path, rows))


@pytest.fixture(scope="session")
def etcd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """The etcd the service backs up: Debian's 3.4; one of each release for a test that runs on every release
    (`@pytest.mark.parametrize("etcd", ETCD_VERSIONS, indirect=True)`; harness.servers.ETCD_RELEASES)."""
    release = ETCD_RELEASES[getattr(request, "param", "3.4")]
    server = EtcdServer(tmp_path_factory.mktemp(f"etcd-{release.version}") / "data", release=release).start()
    yield server
    server.stop()


@pytest.fixture
def etcd_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Return a function that makes `etcd`, `etcdctl` and `etcdutl` on the PATH the programs given (no etcdutl at
    all when None), for this test and the processes it starts: a host with those etcd tools installed."""

    def use(etcd: str, etcdctl: str, etcdutl: str | None) -> None:
        directory = tmp_path / f"etcd-tools-{len(list(tmp_path.glob('etcd-tools-*')))}"
        monkeypatch.setenv("PATH", etcd_tools_path(directory, etcd, etcdctl, etcdutl))

    return use


BIG_ETCD_BYTES = 150 << 20


@pytest.fixture(scope="session")
def big_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd filled with 150 MB of Kubernetes-like objects: its backup lasts long enough to be hit mid-stream."""
    server = EtcdServer(tmp_path_factory.mktemp("big-etcd") / "data", extra_args=ETCD_FLAGS).start()
    client = server.client()
    fill(client, BIG_ETCD_BYTES)
    client.close()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def container_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerImage]:
    """The Containerfile's image, built on a debootstrapped Debian base, mounted; removed after the session.

    The base is cached beside pytest's temp dirs (pytest-of-USER/), across runs: it depends only on the
    Debian release and mirror. The image itself is built from the working tree every session."""
    # pytest-of-USER/, which under pytest-xdist is one level further up than the session's own temp dir
    # (with --basetemp there is none: the base is made in that run's own).
    session_temp = tmp_path_factory.getbasetemp()
    runs = next((parent for parent in session_temp.parents if parent.name.startswith("pytest-of-")), session_temp)
    with built_image(tmp_path_factory.mktemp("image"), runs / "image-base") as image:
        print(f"image {image.name}: {image.size} bytes, built in", image.build_seconds)  # shown with -s
        yield image


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd member that serves TLS and requires a client certificate (harness.pki's)."""
    base = tmp_path_factory.mktemp("tls-etcd")
    server = EtcdServer(base / "data", tls=make_tls_files(base / "pki")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_conn(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client()
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def write_config(tmp_path: Path, backup_dir: Path, etcd: EtcdServer) -> ConfigFactory:
    """Return a function that writes a config file (the test's etcd, backup-dir) with overrides."""

    def write(etcd_overrides: dict[str, Any] | None = None, **overrides: Any) -> Path:
        document: dict[str, Any] = {
            "backup-dir": str(backup_dir),
            "listen": f"127.0.0.1:{free_port()}",
            "etcd": {"endpoints": [etcd.url], **(etcd_overrides or {})},
        }
        document.update({key.replace("_", "-"): value for key, value in overrides.items()})
        return write_config_file(tmp_path / "config.yml", document)

    return write


@pytest.fixture
def make_service(
    write_config: ConfigFactory, redis_server: RedisServer, redis_conn: redis.Redis
) -> Iterator[Callable[..., Service]]:
    """Return a function that builds a Service from config overrides (redis-url is the test's Redis)."""
    services: list[Service] = []

    def make(worker: bool = True, **overrides: Any) -> Service:
        overrides.setdefault("redis_url", redis_server.url)
        config = load_config(write_config(**overrides))
        prepare_backup_dir(config)  # as every process does at start-up (common.startup)
        service = Service(config, redis_conn)
        if worker:
            service.start_worker()
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop_worker()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_service(make_service: Callable[..., Service], seaweedfs: S3Server) -> Callable[..., Service]:
    """A function that builds a Service whose backup-dir is a fresh prefix of a shared SeaweedFS bucket."""

    def make(**overrides: Any) -> Service:
        return make_service(**seaweedfs.settings(*seaweedfs.place()), **overrides)
    return make


@pytest.fixture
def identity() -> x25519.Identity:
    """A fresh age identity (the private key): what encrypted backups are encrypted to, and opened with."""
    return x25519.Identity.generate()


@pytest.fixture
def identity_file(tmp_path: Path, identity: x25519.Identity) -> Path:
    """An identity file as `age-keygen -o` writes it: a comment, the public key, the secret key."""
    path = tmp_path / "backup.key"
    path.write_text(f"# created: 2026-11-27T12:00:00Z\n# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    return make_service()


@pytest.fixture(params=["local", "seaweedfs"])
def make_service_on_backend(request: pytest.FixtureRequest,
                            make_service: Callable[..., Service]) -> Callable[..., Service]:
    """make_service once per backend: the Service keeps its backups in a local backup-dir, then under a fresh
    prefix of a SeaweedFS bucket. For what the API promises wherever the backups are kept (a test reaches them
    through `service.store`). SeaweedFS stands for S3 here, as the distributed store a deployment would run;
    moto's stricter checks are the storage tests' (test_s3.py), where they cost no etcd snapshot."""
    if request.param == "local":
        return make_service
    s3_service: Callable[..., Service] = request.getfixturevalue("s3_service")
    return s3_service


@pytest.fixture
def service_on_backend(make_service_on_backend: Callable[..., Service]) -> Service:
    return make_service_on_backend()


@pytest.fixture
def backup(service: Service, etcd: EtcdServer) -> Path:
    """A real backup, taken after writing /recovery/key-0..9."""
    client = etcd.client()
    for number in range(10):
        client.put(f"/recovery/key-{number}", f"value-{number}")
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    return service.config.backup_dir / name


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of the test's own: its history is compared at old revisions, which no other test may compact."""
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


@pytest.fixture
def empty_etcd() -> Iterator[Any]:
    """A throwaway etcd (recovery.throwaway) on a new data dir: at revision 1."""
    import tempfile

    from recovery.throwaway import throwaway_etcd
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        work = Path(directory)
        work.chmod(0o700)
        with throwaway_etcd(work, work / "data", None, None) as connection:
            yield connection
