"""Slow and hostile HTTP clients cannot starve the API, and every answer the server writes is JSON.

Against the all-in-one service (`etcd-backup --config`, as a user starts it, no proxy in front):
slow-header connections held past the request timeout, 100 POSTs waiting on a slow etcd, oversized and malformed
requests. Loopback only; every loop is bounded in time.
"""

from __future__ import annotations

import json
import multiprocessing
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from api.http_worker import REQUEST_TIMEOUT, SEND_TIMEOUT
from api.server import HTTP_THREADS
from common import queue
from common.config import load_config
from harness.deployment import Deployment
from harness.in_process import ConfigFactory, Service
from harness.processes import http, loopback_socket
from harness.report import Report
from harness.servers import EtcdServer, RedisServer

pytestmark = pytest.mark.slow

FAST = 1.0
"""Seconds within which /healthz and the GETs must answer while the API is under attack."""


class Prober:
    """Time GET requests against the service every `interval` seconds, on a thread, until stopped."""

    def __init__(self, base: str, paths: list[str], interval: float = 0.5) -> None:
        self.base, self.paths, self.interval = base, paths, interval
        self.seconds: dict[str, list[float]] = {path: [] for path in paths}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for path in self.paths:
                began = time.monotonic()
                try:
                    status, _, _ = http("GET", f"{self.base}{path}", timeout=10)
                except OSError as exc:
                    self.failures.append(f"{path}: {exc}")
                    continue
                self.seconds[path].append(time.monotonic() - began)
                if status not in (200, 503):
                    self.failures.append(f"{path}: {status}")

    def slowest(self) -> dict[str, float]:
        return {path: max(times) for path, times in self.seconds.items()}

    def summary(self) -> str:
        return ", ".join(f"{path} median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
                         f"({len(times)} requests)" for path, times in self.seconds.items())


class SlowLoris:
    """`count` connections that each send a request line, then one header line every `every` seconds,
    never finishing; a connection the server closes is opened again at once. Runs for `seconds`."""

    def __init__(self, port: int, count: int, every: float, seconds: float) -> None:
        self.port, self.count, self.every, self.seconds = port, count, every, seconds
        self.opened = 0
        self.closed_by_server = 0
        self.answers: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SlowLoris:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(self.seconds + 30)

    def _connect(self, selector: selectors.BaseSelector) -> None:
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        conn.sendall(b"GET /api/v1/backup HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ)
        self.opened += 1

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for _ in range(self.count):
            self._connect(selector)
        end = time.monotonic() + self.seconds
        next_line = time.monotonic() + self.every
        while time.monotonic() < end:
            for key, _ in selector.select(timeout=min(0.2, max(0.0, end - time.monotonic()))):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if data:
                    self.answers[data.split(b"\r\n", 1)[0].decode()] += 1
                selector.unregister(conn)
                conn.close()
                self.closed_by_server += 1
                self._connect(selector)
            if time.monotonic() >= next_line:
                next_line += self.every
                for key in list(selector.get_map().values()):
                    try:
                        key.fileobj.send(b"X-Slow: 1\r\n")  # type: ignore[union-attr]
                    except OSError:
                        pass
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()


@pytest.fixture(scope="module")
def all_in_one(tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer) -> Iterator[Deployment]:
    """One all-in-one service for the module's attacks (a start and a stop cost some 3 s each, 16 times): each attack
    ends with its connections, and each test checks that the server answers, in the same process, after its own."""
    deployment = Deployment(tmp_path_factory.mktemp("slow-clients") / "service", [etcd.url]).start()
    yield deployment
    deployment.stop()


def test_slow_header_connections_do_not_starve_the_api(all_in_one: Deployment, report: Report) -> None:
    # Past REQUEST_TIMEOUT by 8 s: every connection is answered 408 once and reopened, under the probes' eyes.
    attack = SlowLoris(all_in_one.port, count=200, every=5, seconds=REQUEST_TIMEOUT + 8).start()
    time.sleep(2)  # all 200 connected and sending
    with Prober(all_in_one.base, ["/healthz", "/api/v1/backup"]) as prober:
        time.sleep(5)
        began = time.monotonic()
        status, _, body = all_in_one.request("POST", "/api/v1/backup", timeout=60)
        post_seconds = time.monotonic() - began
        attack.join()
    assert status == 200, body
    assert not prober.failures, prober.failures
    assert all(seconds < FAST for seconds in prober.slowest().values()), prober.summary()
    # Each slow connection was answered 408 (JSON) when its time ran out, and came back.
    assert attack.answers.keys() == {"HTTP/1.1 408 Request Timeout"}, attack.answers
    assert attack.closed_by_server >= 200
    report(f"200 connections sending a header line every 5 s and never finishing, held for {attack.seconds:g} s "
           f"(reopened as soon as closed: {attack.opened} connections in all), all-in-one service, no proxy",
           f"{prober.summary()}; a POST during the attack: 200 in {post_seconds:.1f} s; each slow connection got "
           f"408 JSON after {REQUEST_TIMEOUT:g} s ({attack.closed_by_server} answered)")


class ThrottledProxy:
    """A TCP proxy to `target` that forwards at most `rate` bytes/s per connection towards the client:
    a slow network between the worker and etcd."""

    def __init__(self, target: tuple[str, int], rate: int) -> None:
        self.target, self.rate = target, rate
        self.listener, self.port = loopback_socket()
        self.listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target)
            for sock in (client, upstream):  # forward small gRPC frames at once, as a router would
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._pump, client, upstream, None)
            self._spawn(self._pump, upstream, client, self.rate)

    def _pump(self, source: socket.socket, sink: socket.socket, rate: int | None) -> None:
        source.settimeout(0.5)
        try:
            while not self._stop.is_set():
                try:
                    data = source.recv(16384)
                except TimeoutError:
                    continue
                if not data:
                    break
                sink.sendall(data)
                if rate is not None:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):  # ends the other direction's pump too
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            source.close()  # each socket is the source of exactly one pump

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.listener.close()


def _run_proxy(target: tuple[str, int], rate: int, ready: Connection) -> None:
    """A ThrottledProxy in a process of its own: the test's 100 client threads must not slow it down."""
    proxy = ThrottledProxy(target, rate)
    ready.send(proxy.port)
    threading.Event().wait()  # until terminated


@pytest.mark.parametrize("embedded", [True, False], ids=["embedded queue", "Redis"])
def test_every_http_thread_may_hold_a_redis_connection(write_config: ConfigFactory, redis_server: RedisServer,
                                                      embedded: bool) -> None:
    """redis-py 8 caps a connection pool at 100: with 96 POSTs waiting on their jobs, probes got 503 "Too many
    connections" (the test below, once). A process's pool has room for every HTTP thread, and the workers."""
    config = load_config(write_config(**({} if embedded else {"redis_url": redis_server.url})))
    assert queue.connect(config).connection_pool.max_connections >= HTTP_THREADS + 2


def test_a_hundred_posts_waiting_on_a_slow_etcd_do_not_starve_the_api(
    tmp_path: Path, big_etcd: EtcdServer, report: Report
) -> None:
    host, port = big_etcd.url.removeprefix("http://").split(":")
    context = multiprocessing.get_context("spawn")
    ready, ready_in_child = context.Pipe()
    # The 150 MB snapshot takes ~10 s through it.
    proxy = context.Process(target=_run_proxy, args=((host, int(port)), 15 << 20, ready_in_child), daemon=True)
    proxy.start()
    url = f"http://127.0.0.1:{ready.recv()}"
    ready.close()
    ready_in_child.close()
    deployment = Deployment(tmp_path / "service", [url], etcd={"endpoints": [url], "timeout": "5s"}).start()
    answers: list[int] = []

    def post() -> None:
        status, _, _ = deployment.request("POST", "/api/v1/backup", timeout=300)
        answers.append(status)

    try:
        posts = [threading.Thread(target=post) for _ in range(100)]
        with Prober(deployment.base, ["/healthz", "/readyz", "/api/v1/backup"]) as prober:
            for thread in posts:
                thread.start()
            time.sleep(8)  # the backups are still streaming
        for thread in posts:
            thread.join(300)
    finally:
        deployment.stop()
        proxy.terminate()
        proxy.join(10)
    statuses = Counter(answers)
    assert len(answers) == 100 and set(statuses) <= {200, 202}, statuses
    assert statuses[200] >= 1
    assert not prober.failures, prober.failures
    assert all(seconds < FAST for seconds in prober.slowest().values()), prober.summary()
    report("100 concurrent POSTs waiting on a slow etcd (a 150 MB snapshot through a 15 MB/s link), all-in-one "
           "service", f"while they waited: {prober.summary()}; the POSTs: {dict(statuses)} (at most 96 wait for "
           "their backup; the others get 202 and the job's Location at once)")


def raw_request(port: int, data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send `data` on a new connection; return the status line, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
        try:
            conn.sendall(data)
        except OSError:  # the server answered and closed before taking it all
            pass
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    return status, headers, body


HOSTILE_REQUESTS: dict[str, tuple[bytes, int]] = {
    "a 10 KB request line": (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    "a 100 KB request line, never ended": (b"GET /" + b"a" * 100_000, 414),
    "150 header fields": (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n",
                          431),
    "a 20 KB header field": (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n", 431),
    "a 100 KB request head, never ended": (b"GET /healthz HTTP/1.1\r\n" + b"X-Big: y\r\n" * 12_000, 431),
    "a 1 MB body announced": (b"POST /api/v1/backup HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1048576\r\n\r\n",
                              413),
    "a Content-Length of 5,000 digits": (b"GET /healthz HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
    "a malformed chunk size": (b"POST /api/v1/backup HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "a malformed request line": (b"GARBAGE\r\n\r\n", 400),
    "a malformed header": (b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", HOSTILE_REQUESTS)
def test_every_error_the_server_writes_is_json(all_in_one: Deployment, name: str, report: Report) -> None:
    data, expected = HOSTILE_REQUESTS[name]
    worker_pid = all_in_one.web_worker_pid()
    status, headers, body = raw_request(all_in_one.port, data)
    assert status.split(" ")[1] == str(expected), (status, body)
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"  # api.edges
    message = json.loads(body)["message"]
    assert isinstance(message, str) and message
    assert http("GET", f"{all_in_one.base}/healthz", timeout=5)[0] == 200  # the server is fine...
    assert all_in_one.web_worker_pid() == worker_pid  # ...in the same process: nothing crashed it
    report(f"{name}, sent on a raw connection to the all-in-one service", f"{status}, JSON: {message[:90]!r}")


STALLING_REQUESTS = {
    "a request head that stops half-way": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    "a chunked body whose chunk announces 4096 bytes, sends 6 and ends like a last chunk":
        b"POST /api/v1/backup HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\nx0\r\n\r\n",
    "a body shorter than its Content-Length": b"POST /api/v1/backup HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
}


@pytest.fixture(scope="module")
def stalled(all_in_one: Deployment) -> dict[str, tuple[str, dict[str, str], bytes, float]]:
    """Each of STALLING_REQUESTS sent on a connection of its own, all at once (each waits out REQUEST_TIMEOUT: one
    after the other they took three times as long); the answer to each, and the seconds it took."""
    answers: dict[str, tuple[str, dict[str, str], bytes, float]] = {}

    def send(name: str) -> None:
        began = time.monotonic()
        status, headers, body = raw_request(all_in_one.port, STALLING_REQUESTS[name])
        answers[name] = (status, headers, body, time.monotonic() - began)

    senders = [threading.Thread(target=send, args=(name,)) for name in STALLING_REQUESTS]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(REQUEST_TIMEOUT + 30)
    return answers


@pytest.mark.parametrize("name", STALLING_REQUESTS)
def test_a_request_that_stalls_gets_408_json(stalled: dict[str, tuple[str, dict[str, str], bytes, float]], name: str,
                                             report: Report) -> None:
    status, headers, body, seconds = stalled[name]
    assert status == "HTTP/1.1 408 Request Timeout" and headers["content-type"] == "application/json"
    assert REQUEST_TIMEOUT - 1 < seconds < REQUEST_TIMEOUT + 3
    report(name, f"{status} after {seconds:.1f} s, from the event loop (no thread waited for it): "
           f"{json.loads(body)['message']!r}")


def test_clients_that_never_read_their_answers_hold_threads_only_briefly(all_in_one: Deployment,
                                                                         report: Report) -> None:
    """140 connections (more than the server's threads) pipeline requests for a 25 KB answer and never
    read: each thread blocked in send() is freed after SEND_TIMEOUT, and the connection cut."""
    request = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 40
    conns = []
    for _ in range(140):
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", all_in_one.port))
        conn.setblocking(False)
        try:
            conn.send(request)
        except BlockingIOError:
            pass
        conns.append(conn)
    try:
        time.sleep(SEND_TIMEOUT + 5)  # every thread that was stuck sending has given up
        began = time.monotonic()
        status, _, _ = http("GET", f"{all_in_one.base}/healthz", timeout=10)
        seconds = time.monotonic() - began
        cut = 0
        for conn in conns:
            conn.setblocking(True)
            conn.settimeout(5)
            try:
                while conn.recv(1 << 20):  # drain what the server sent before it gave up
                    pass
                cut += 1  # an orderly close
            except ConnectionResetError:
                cut += 1
            except TimeoutError:
                pass
    finally:
        for conn in conns:
            conn.close()
    assert status == 200 and seconds < FAST, seconds
    assert cut == len(conns)
    report("140 connections pipelining 40 requests each for a 25 KB answer, never reading (4 KB receive "
           "buffers): more than the server's threads",
           f"each blocked send gave up after {SEND_TIMEOUT} s and the connection was cut ({cut} of 140); "
           f"{SEND_TIMEOUT + 5} s in, /healthz answered in {seconds * 1000:.0f} ms")


@pytest.mark.parametrize("ranges", ["bytes=0-1,5-6", "bytes=0-0,-1", "bytes=oops"])
def test_a_range_the_server_does_not_serve_gets_the_whole_file(service: Service, ranges: str) -> None:
    """RFC 9110: a server may ignore Range and send 200 with everything; 416 is for a range past the end."""
    name = service.client.post("/api/v1/backup").get_json()["filename"]

    def get(range_header: str | None) -> tuple[int, bytes]:
        answer = service.client.get(f"/api/v1/backup/{name}", headers={"Range": range_header} if range_header else {})
        try:
            return answer.status_code, answer.data
        finally:
            answer.close()

    _, whole = get(None)
    assert get(ranges) == (200, whole)
    assert get("bytes=0-1") == (206, whole[:2])
    assert get(f"bytes={len(whole) + 10}-")[0] == 416
