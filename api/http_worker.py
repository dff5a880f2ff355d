"""gunicorn's gthread worker, made safe against slow clients: a thread serves a request only once the
whole request has arrived.

gthread gives a connection to one of its threads as soon as its first byte arrives, and the thread
then reads the rest with no deadline: 66 clients that send a header line every 20 s held every
thread, and `/healthz` stopped answering. Here the worker's event loop reads each request itself,
without a thread, until its head (and the small body this API would ever get) is complete, within
`REQUEST_TIMEOUT` for all of it; only then does a thread parse and serve it. Slow or idle clients cost
a file descriptor each, never a thread. TLS handshakes are done the same way, in the event loop.

Every answer the server itself writes (a request too large, too slow, malformed) is JSON, like the
API's own errors.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

from gunicorn import http, util
from gunicorn import sock as gunicorn_sock
from gunicorn.workers.gthread import TConn, ThreadWorker

from api.edges import FIXED_HEADERS

REQUEST_TIMEOUT = 10.0
"""Seconds a client has, from connecting (or from its previous answer), to send a whole request."""
MAX_HEAD_BYTES = 64 << 10
"""A request head larger than this is refused (431, or 414 when its first line alone is longer)."""
MAX_BODY_BYTES = 64 << 10
"""No endpoint takes a body: one larger than this is refused (413) rather than read."""
SEND_TIMEOUT = 10
"""Seconds a client may take no byte of its answer before its connection is cut (SO_SNDTIMEO): a
client that stops reading holds a thread this long, not for ever."""
RECV_BYTES = 64 << 10

_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.IGNORECASE | re.MULTILINE)
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def json_error(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 error answer with the API's JSON shape; the connection is closed after it."""
    body = json.dumps({"message": message}).encode()
    security = "".join(f"{name}: {value}\r\n" for name, value in FIXED_HEADERS)
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{security}Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    util.write_nonblock(sock, json_error(status_int, reason, f"{reason}: {mesg}" if mesg else reason))


# gunicorn answers the errors it finds itself (a malformed request, a request line over its limit,
# too many headers) through this function, with an HTML page. Every answer of this service is JSON;
# the function is replaced for the whole process, which is a gunicorn worker of ours.
util.write_error = _write_json_error


@dataclass(eq=False)  # compared by identity: one per connection
class _Incoming:
    """A connection whose request is still arriving."""

    conn: TConn
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    handshaken: bool = False


class RequestFirstWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, except that a connection gets a thread only with a complete request in hand."""

    def init_process(self) -> None:
        self._incoming: deque[_Incoming] = deque()  # oldest first: all share one timeout
        super().init_process()

    def accept(self, listener: Any) -> None:
        try:
            client, address = listener.accept()
        except BlockingIOError:
            return
        except OSError:  # the client went away before we took it (ECONNABORTED), or no fds left
            self.log.debug("accept failed", exc_info=True)
            return
        self.nr_conns += 1
        # In a thread the socket blocks: a send that moves nothing for SEND_TIMEOUT fails instead.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT, 0))
        conn = TConn(self.cfg, client, address, listener.getsockname())  # non-blocking from here
        if self.cfg.is_ssl:  # the handshake is done by the event loop, not on connect
            conn.sock = gunicorn_sock.ssl_wrap_socket(conn.sock, self.cfg)
        self._await_request(conn, b"", handshaken=not self.cfg.is_ssl)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        # A kept-alive connection is sending its next request: read it like a new one.
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_request(conn, b"", handshaken=True)

    def enqueue_req(self, conn: TConn) -> None:
        # gunicorn calls this itself only for a kept-alive connection whose client already sent (part
        # of) its next request behind the last one: read the rest of it before giving it a thread.
        self._await_request(conn, conn.parser.unreader.take_buffered(), handshaken=True)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self._incoming and self._incoming[0].deadline <= now:
            incoming = self._incoming[0]
            if incoming.received:
                self._refuse(incoming, 408, "Request Timeout",
                             f"the request did not arrive whole within {REQUEST_TIMEOUT:g} s")
            else:  # an idle connection: nothing to answer
                self._close(incoming)

    def _await_request(self, conn: TConn, received: bytes, handshaken: bool) -> None:
        conn.sock.setblocking(False)
        incoming = _Incoming(conn, time.monotonic() + REQUEST_TIMEOUT, bytearray(received), handshaken)
        self._incoming.append(incoming)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, incoming))
        if received:
            self._on_readable(incoming, conn.sock)

    def _on_readable(self, incoming: _Incoming, _sock: Any) -> None:
        try:
            self._receive(incoming)
        except Exception:  # an exception here would end the worker process and every request in it
            self.log.exception("dropped a connection from %s on an unexpected error", incoming.conn.client)
            self._close(incoming)

    def _receive(self, incoming: _Incoming) -> None:
        conn = incoming.conn
        try:
            if not incoming.handshaken:
                conn.sock.do_handshake()
                incoming.handshaken = True
            while len(incoming.received) <= MAX_HEAD_BYTES + MAX_BODY_BYTES:
                data = conn.sock.recv(RECV_BYTES)
                if not data:  # the client closed its side before its request was whole
                    self._close(incoming)
                    return
                incoming.received += data
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # all there is for now
        except (OSError, ssl.SSLError):
            self._close(incoming)
            return
        self._serve_when_complete(incoming)

    def _serve_when_complete(self, incoming: _Incoming) -> None:
        received = incoming.received
        head_end = received.find(_HEAD_END)
        if head_end < 0:
            if len(received) > MAX_HEAD_BYTES:
                if b"\r\n" not in received[:MAX_HEAD_BYTES]:
                    self._refuse(incoming, 414, "URI Too Long", f"the request line is over {MAX_HEAD_BYTES} bytes")
                else:
                    self._refuse(incoming, 431, "Request Header Fields Too Large",
                                 f"the request head is over {MAX_HEAD_BYTES} bytes")
            return
        head, body = bytes(received[:head_end]), bytes(received[head_end + len(_HEAD_END):])
        if _CHUNKED.search(head):
            state = _chunked_body_state(body)
            if state == "malformed":
                self._refuse(incoming, 400, "Bad Request", "the chunked request body is malformed")
                return
            complete = state == "whole"
            too_large = len(body) > MAX_BODY_BYTES
        else:
            lengths = _CONTENT_LENGTH.findall(head)
            # Several or no lengths: gunicorn's parser decides (a 400, or no body). A length of more
            # digits than any body we take is not even parsed (int() refuses over 4,300 digits).
            digits = lengths[0] if len(lengths) == 1 else b"0"
            too_large = len(digits) > 18 or int(digits) > MAX_BODY_BYTES
            complete = too_large or len(body) >= int(digits)
        if too_large:
            self._refuse(incoming, 413, "Content Too Large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        elif complete:
            self._serve(incoming)

    def _serve(self, incoming: _Incoming) -> None:
        """Hand the complete request to a thread: gunicorn's parser reads it from what was received."""
        self._forget(incoming)
        conn = incoming.conn
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True  # connected (and TLS set up) here: gunicorn's init() would redo it
        conn.parser.unreader.unread(bytes(incoming.received))
        conn.data_ready = True
        super().enqueue_req(conn)

    def _refuse(self, incoming: _Incoming, status: int, reason: str, message: str) -> None:
        try:  # best effort, without blocking: a short answer fits in the socket's buffer
            incoming.conn.sock.send(json_error(status, reason, message))
        except (OSError, ssl.SSLError):
            pass
        self.log.warning("refused a request from %s: %s %s", incoming.conn.client, status, message)
        self._close(incoming)

    def _close(self, incoming: _Incoming) -> None:
        self._forget(incoming)
        self.nr_conns -= 1
        incoming.conn.close()

    def _forget(self, incoming: _Incoming) -> None:
        self.poller.unregister(incoming.conn.sock)
        self._incoming.remove(incoming)


def _chunked_body_state(body: bytes) -> Literal["whole", "partial", "malformed"]:
    """How much of a chunked body (RFC 9112 7.1) has arrived: whole (last chunk and trailers included),
    partial, or malformed. Each chunk's declared size is honoured, so a chunk that merely contains
    the bytes of a last chunk does not end the body."""
    position = 0
    while True:
        line_end = body.find(_CRLF, position)
        if line_end < 0:
            return "partial"
        size_text = body[position:line_end].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 8 or not _HEX_DIGITS.issuperset(size_text):
            return "malformed"
        size = int(size_text, 16)
        position = line_end + len(_CRLF)
        if size == 0:
            break
        if len(body) < position + size + len(_CRLF):
            return "partial"
        if body[position + size:position + size + len(_CRLF)] != _CRLF:
            return "malformed"
        position += size + len(_CRLF)
    while True:  # the trailer section: header lines, then an empty line
        line_end = body.find(_CRLF, position)
        if line_end < 0:
            return "partial"
        if line_end == position:
            return "whole"
        position = line_end + len(_CRLF)
