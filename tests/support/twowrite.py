"""A function server as many are written: Python's ``http.server``, unbuffered, with
Nagle's algorithm on (the standard library's default), run as a process.

    python tests/support/twowrite.py two|one     # prints its port, then serves

``two``: the head and the body go out in two sends (``end_headers`` flushes the head,
then ``wfile.write`` the body), so the body waits for the gate's ACK of the head;
``one``: head and body in one send. A path ``/gap/{ms}`` sleeps that long between the
head and the body (the gate then surely reads the head alone). Every answer is the
17 bytes ``hello from demo10``. Used by tests/gate/test_upstream_sockets.py and
bench/gate.py (``--only two-write``).
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"hello from demo10"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    one_write = False

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def do_GET(self) -> None:
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                % len(BODY))
        if self.one_write:
            self.wfile.write(head + BODY)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()          # the first send: the head
        if self.path.startswith("/gap/"):
            time.sleep(int(self.path.split("/")[2]) / 1000)
        self.wfile.write(BODY)      # the second send: the body


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return


def main() -> None:
    Handler.one_write = sys.argv[1:2] == ["one"]
    server = Server(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
