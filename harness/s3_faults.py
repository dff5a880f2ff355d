"""An object store that refuses parts: an HTTP proxy on loopback in front of a real S3 server (SeaweedFS)
that forwards every request unchanged, except the UploadPart requests it is told to refuse, which it
answers itself with an S3-shaped 500 (InternalError) or 503 (SlowDown). It counts the UploadPart
attempts it sees, refused or not, so that a test can tell how many times the client retried each part.

Requests go through byte for byte, Host header included: the client signed (SigV4) the Host it sent, the
proxy's, and the server checks the signature against the Host it receives. Bodies are streamed in
chunks both ways, never held whole."""

from __future__ import annotations

import http.client
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness.s3 import S3Server

CHUNK = 64 << 10
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect"}
"""Headers about one connection, not the request: not passed on. `Expect: 100-continue` is answered by the
proxy itself (and is not signed by SigV4)."""
S3_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
             503: ("SlowDown", "Please reduce your request rate.")}
"""What S3 answers with each status it gives for a part it refuses: its error code and message."""
UPSTREAM_TIMEOUT = 60


class PartRefusingProxy:
    """A proxy to `upstream` that refuses UploadPart (PUT ?partNumber=N&uploadId=U) when told to."""

    def __init__(self, upstream: S3Server) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.to_refuse: int | None = 0
        """How many of the next UploadParts to refuse; None: all of them."""
        self.status = 500
        self.attempts: Counter[tuple[str, int]] = Counter()
        """UploadPart requests seen since the last `refuse_parts`, refused or not, by (upload id, part number)."""
        self.refused = 0
        self.server = _ProxyServer(("127.0.0.1", 0), _Relay)
        self.server.proxy = self
        self.thread = threading.Thread(target=self.server.serve_forever, name="s3-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def settings(self, bucket: str, prefix: str) -> dict[str, Any]:
        """The config file's keys for a store under `prefix` in `bucket` on the upstream, reached through here."""
        settings = self.upstream.settings(bucket, prefix)
        return {**settings, "s3": {**settings["s3"], "endpoint": self.endpoint}}

    def refuse_parts(self, times: int | None, status: int = 500) -> None:
        """Refuse the next `times` UploadParts (None: every one from now on) with `status`, and count the
        attempts afresh."""
        if status not in S3_ERRORS:
            raise ValueError(f"no S3 error for status {status}: one of {sorted(S3_ERRORS)}")
        with self.lock:
            self.to_refuse, self.status = times, status
            self.attempts.clear()
            self.refused = 0

    def start(self) -> PartRefusingProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def judge(self, method: str, path: str) -> int | None:
        """Count an UploadPart; return the status to refuse this request with, or None to forward it."""
        query = parse_qs(urlsplit(path).query)
        if method != "PUT" or "partNumber" not in query or "uploadId" not in query:
            return None
        with self.lock:
            self.attempts[query["uploadId"][0], int(query["partNumber"][0])] += 1
            if self.to_refuse is not None:
                if self.to_refuse == 0:
                    return None
                self.to_refuse -= 1
            self.refused += 1
            return self.status


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True  # a client's idle keep-alive connection must not hold up stop()
    proxy: PartRefusingProxy


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: _ProxyServer

    def do_GET(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length is not None and not length.isdigit()):
            self._answer_error(501, "NotImplemented", "the test proxy takes bodies with a Content-Length only")
            return
        refusal = self.server.proxy.judge(self.command, self.path)
        try:
            if refusal is None:
                self._forward(int(length or 0))
            else:
                self._refuse(refusal, int(length or 0))
        except OSError:  # either side hung up: so does the proxy, as a broken store would
            self.close_connection = True

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def handle_expect_100(self) -> bool:
        """Say nothing yet: a refused part is answered before its body is sent (as S3 does), a forwarded
        one gets its 100 Continue in _forward."""
        return True

    def _expects_continue(self) -> bool:
        return self.headers.get("Expect", "").lower() == "100-continue"

    def _refuse(self, status: int, length: int) -> None:
        if not self._expects_continue():  # the body is on its way: read it, so that the answer is read
            self._discard(length)
        code, message = S3_ERRORS[status]
        self._answer_error(status, code, message)

    def _answer_error(self, status: int, code: str, message: str) -> None:
        request_id = uuid.uuid4().hex[:16].upper()
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<Resource>{urlsplit(self.path).path}</Resource><RequestId>{request_id}</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", request_id)
        # A body the client still holds back (Expect) or was cut short must not be read as the next request.
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _forward(self, length: int) -> None:
        upstream_url = urlsplit(self.server.proxy.upstream.endpoint)
        upstream = http.client.HTTPConnection(upstream_url.hostname or "127.0.0.1", upstream_url.port,
                                              timeout=UPSTREAM_TIMEOUT)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():  # Host among them: the one the client signed
                if name.lower() not in HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.endheaders()
            if self._expects_continue():
                self.send_response_only(100)
                self.end_headers()
            self._copy_body(length, upstream.send)
            response = upstream.getresponse()
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            if response.getheader("Content-Length") is None and self.command != "HEAD" and response.status not in (
                    204, 304):
                self.send_header("Connection", "close")  # no length (upstream chunked it): the close ends it
                self.close_connection = True
            self.end_headers()
            while chunk := response.read(CHUNK):
                self.wfile.write(chunk)
        finally:
            upstream.close()

    def _copy_body(self, length: int, send: Any) -> None:
        while length > 0:
            chunk = self.rfile.read(min(CHUNK, length))
            if not chunk:
                raise ConnectionError("the client's body ended early")
            send(chunk)
            length -= len(chunk)

    def _discard(self, length: int) -> None:
        self._copy_body(length, lambda _: None)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the tests look at the counts, not at an access log."""
