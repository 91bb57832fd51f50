#!/usr/bin/env python3
"""An HTTP-mode function for the process provider, in Python's standard library only.

It answers every path and method like the seed's demo function: ``V3 Body is``, a
line break, then the request body. ``GET /healthz`` is its readiness probe. The
provider passes the port to listen on as $PORT; one line per request goes to stdout,
which the provider keeps as the function's log.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: the gate reuses its connections
    disable_nagle_algorithm = True  # headers and body go out as two writes
    server_version = "echo/1.0"

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def answer(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self) -> None:
        body = self.read_body()
        if self.command == "GET" and self.path == "/healthz":
            self.answer(200, b"ok\n")
            return
        self.answer(200, b"V3 Body is \n" + body,
                    self.headers.get("Content-Type", "text/plain"))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, format: str, *args: object) -> None:
        if self.path != "/healthz":
            print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else '-'}",
                  flush=True)


class Server(ThreadingHTTPServer):
    request_queue_size = 128   # socketserver's 5 drops a burst of new connections
    daemon_threads = True


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = Server(("127.0.0.1", port), Echo)
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
