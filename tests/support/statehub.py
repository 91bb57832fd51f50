"""Where test functions leave what they saw, now that they cannot write the host's files.

A function runs in its sandbox (its own /tmp, the host's file system read-only), so the
tests' functions report over loopback instead: ``POST {STATE_URL}/append/NAME`` (the
body is appended), ``/write/NAME`` (replaces), ``/incr/NAME`` (adds one, answers the
count before). The hub does the file operation in the test's own folder, so a test reads
``state / NAME`` as before. Names are single path segments: nothing outside the folder.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class StateHub:
    def __init__(self, root: Path) -> None:
        self.root = root
        lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or any(p in ("", ".", "..") for p in parts):
                    return self._answer(400, b"want /OP/FUNCTION/NAME")
                op, folder, name = parts
                path = hub.root / folder / name
                with lock:
                    path.parent.mkdir(exist_ok=True)
                    if op == "append":
                        with open(path, "ab") as f:
                            f.write(body)
                        return self._answer(200, b"")
                    if op == "write":
                        path.write_bytes(body)
                        return self._answer(200, b"")
                    if op == "incr":
                        count = int(path.read_text()) if path.exists() else 0
                        path.write_text(str(count + 1))
                        return self._answer(200, str(count).encode())
                self._answer(404, b"no such operation")

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
