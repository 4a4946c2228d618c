"""A fault-injecting TCP proxy on 127.0.0.1 for storage tests: real network failures between a client and a
server on loopback (here moto's S3 server), not mocks of our code.

- ``outage(seconds)``: every open connection is reset (RST) at once, and every new one is accepted and reset until
  the time is up: the client sees "connection reset" / "could not connect", as when a server restarts.
- ``trigger=rb"GET /bucket/key"``: the first request whose bytes match starts an outage of ``outage_s``; that
  request is never forwarded.
- ``cut=rb"PUT /bucket/..."``: the first ``cut_times`` matching requests are forwarded up to half of their body, then
  both sides are reset: an upload dies midway.
- ``throttle(n)``: the next ``n`` requests are answered ``503 SlowDown`` (S3's throttling answer) without reaching
  the server.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from typing import Optional

SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n%s")
SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                  b"<Message>Please reduce your request rate.</Message></Error>")
REQUEST_LINE = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE) ")


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class FlakyProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target_port``, with the faults described in the module doc.
    Counters: ``resets`` (connections reset by a fault), ``throttled`` (503 answers), ``requests`` (request lines
    seen)."""

    def __init__(self, target_port: int, trigger: Optional[bytes] = None, outage_s: float = 3.0,
                 cut: Optional[bytes] = None, cut_times: int = 1):
        self.target = ("127.0.0.1", target_port)
        self.trigger = re.compile(trigger) if trigger else None
        self.cut = re.compile(cut) if cut else None
        self.outage_s = outage_s
        self.cuts_left = cut_times
        self.fired = threading.Event()
        self.resets = 0
        self.throttled = 0
        self.requests = 0
        self._throttle_left = 0
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True, name="flaky-proxy").start()

    # ------------------------------------------------------------------------------------------------ faults
    def outage(self, seconds: float) -> None:
        """Reset every open connection and refuse (accept + reset) new ones for ``seconds``."""
        with self._lock:
            self._down_until = time.monotonic() + seconds
            conns, self._conns = list(self._conns), set()
            self.resets += len(conns) // 2
        for sock in conns:
            _reset(sock)

    def throttle(self, n: int) -> None:
        """Answer the next ``n`` requests with 503 SlowDown."""
        with self._lock:
            self._throttle_left = n

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self.outage(0)

    def __enter__(self) -> "FlakyProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- plumbing
    def _down(self) -> bool:
        return time.monotonic() < self._down_until

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self._down():
                with self._lock:
                    self.resets += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _fault(self, data: bytes, client: socket.socket, upstream: socket.socket) -> bool:
        """Apply a fault to a request chunk; True if the connection is done for."""
        if REQUEST_LINE.match(data):
            self.requests += 1
            with self._lock:
                throttled = self._throttle_left > 0
                self._throttle_left -= int(throttled)
            if throttled:
                self.throttled += 1
                client.sendall(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))
                client.close()
                upstream.close()
                return True
        if self.trigger and not self.fired.is_set() and self.trigger.search(data):
            self.fired.set()
            with self._lock:
                self.resets += 1
            self.outage(self.outage_s)
            _reset(client)
            _reset(upstream)
            return True
        if self.cut and self.cuts_left > 0 and self.cut.search(data):
            self.cuts_left -= 1
            self.fired.set()
            head, sep, _ = data.partition(b"\r\n\r\n")
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            allowed = len(head) + len(sep) + (int(match.group(1)) // 2 if match else 0)  # headers + half the body
            while data and allowed > 0:
                upstream.sendall(data[:allowed])
                allowed -= len(data[:allowed])
                data = client.recv(1 << 16) if allowed > 0 else b""
            time.sleep(0.2)
            with self._lock:
                self.resets += 1
            _reset(upstream)
            _reset(client)
            return True
        return False

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if from_client and self._fault(data, src, dst):
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
