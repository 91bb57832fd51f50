"""A real upstream HTTP/1.1 server for the gate's integration tests (run as a process).

Like many function servers it is Python's ``http.server`` (threads, keep-alive). It
echoes what it received, streams slowly, sends or swallows large bodies without
holding them, and counts connections, so tests can see keep-alive reuse and aborts.

    python tests/support/upstream.py         # prints the port it listens on, then serves

Paths: ``/stats``; ``/bytes/{n}`` (n bytes with Content-Length); ``/stream/{chunks}/
{delay_ms}`` (chunked, one chunk per delay); ``/sleep/{ms}``; ``/hold`` (a byte every
50 ms for 10 s, counting aborts); ``/status/{code}``; ``/close`` (Connection: close);
``/garbage`` (not HTTP); ``/truncate`` (closes 90 bytes short);
anything else: a JSON echo of method, path, Host, headers, body length and sha256.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"connections": 0, "requests": 0, "aborted": 0, "chunked_requests": 0}
LOCK = threading.Lock()


def bump(key: str) -> None:
    with LOCK:
        STATS[key] += 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms)

    def setup(self) -> None:
        super().setup()
        bump("connections")

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def read_body(self) -> tuple[int, str, bool]:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            bump("chunked_requests")
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    piece = self.rfile.read(min(remaining, 65536))
                    if not piece:
                        raise ConnectionError("short chunk")
                    digest.update(piece)
                    total += len(piece)
                    remaining -= len(piece)
                self.rfile.readline()
            return total, digest.hexdigest(), True
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            piece = self.rfile.read(min(remaining, 65536))
            if not piece:
                break
            digest.update(piece)
            total += len(piece)
            remaining -= len(piece)
        return total, digest.hexdigest(), False

    def send_json(self, code: int, payload: object, close: bool = False) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self) -> None:
        bump("requests")
        length, sha, chunked = self.read_body()
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[0] == "stats":
            with LOCK:
                self.send_json(200, dict(STATS))
            return
        if parts[0] == "bytes":
            n = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"x" * 65536
            while n > 0:
                self.wfile.write(block[:min(n, len(block))])
                n -= len(block)
            return
        if parts[0] == "stream":
            chunks, delay = int(parts[1]), int(parts[2]) / 1000
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index in range(chunks):
                data = b"chunk %d\n" % index
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(delay)
            self.wfile.write(b"0\r\n\r\n")
            return
        if parts[0] == "sleep":
            time.sleep(int(parts[1]) / 1000)
            self.send_json(200, {"slept_ms": int(parts[1])})
            return
        if parts[0] == "hold":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"1\r\n.\r\n")
                    self.wfile.flush()
                    time.sleep(0.05)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                bump("aborted")
                self.close_connection = True
            return
        if parts[0] == "garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            self.close_connection = True
            return
        if parts[0] == "truncate":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
            self.close_connection = True
            return
        if parts[0] in ("clte", "twocl"):
            # framing a proxy could read two ways: a length and chunked, two lengths
            framing = (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
                       if parts[0] == "clte" else b"Content-Length: 5\r\nContent-Length: 30\r\n")
            self.wfile.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n5\r\nhello\r\n0\r\n\r\n"
                             + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
            return
        if parts[0] in ("headbody", "nocontent"):
            # a function that breaks HTTP: a body after a HEAD answer or a 204, shaped
            # like a whole second response (it must never reach anyone as one)
            smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
            if parts[0] == "nocontent":
                self.wfile.write(b"HTTP/1.1 204 No Content\r\n\r\n" + smuggled)
                return
            if self.command == "HEAD":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                                 + smuggled)
                return
        if parts[0] == "status":
            self.send_json(int(parts[1]), {"status": int(parts[1])})
            return
        self.send_json(200, {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body_length": length,
            "body_sha256": sha,
            "chunked": chunked,
        }, close=parts[0] == "close")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return  # a connection the gate dropped is part of the tests


def main() -> None:
    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
