#!/usr/bin/env python3
"""A process-provider function for the async tests (standard library only).

Paths: ``/ok`` echoes the body (200, ``X-Fn: yes``); ``/flaky`` answers 500 twice per
call id, then 200; ``/fail`` always 500; ``/slow?ms=N`` sleeps N ms then 200;
``/healthz``. Every call appends its X-Call-Id to $STATE_DIR/calls.log, and the most
calls seen at once goes to $STATE_DIR/max-concurrent.
"""

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATE = os.environ["STATE_DIR"]
lock = threading.Lock()
running = [0, 0]  # now, most


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Fn", "yes")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, b"ok")
        self.do_POST()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        call_id = self.headers.get("X-Call-Id", "")
        with lock:
            running[0] += 1
            running[1] = max(running)
            with open(os.path.join(STATE, "max-concurrent"), "w") as f:
                f.write(str(running[1]))
            with open(os.path.join(STATE, "calls.log"), "a") as f:
                f.write(call_id + "\n")
        try:
            url = urlsplit(self.path)
            if url.path == "/flaky":
                marker = os.path.join(STATE, "flaky-" + call_id)
                with lock:
                    count = int(open(marker).read()) if os.path.exists(marker) else 0
                    open(marker, "w").write(str(count + 1))
                return self.answer(500 if count < 2 else 200, b"try %d" % (count + 1))
            if url.path == "/fail":
                return self.answer(500, b"always fails")
            if url.path == "/slow":
                time.sleep(int(parse_qs(url.query).get("ms", ["200"])[0]) / 1000)
            self.answer(200, b"echo:" + body)
        finally:
            with lock:
                running[0] -= 1


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
