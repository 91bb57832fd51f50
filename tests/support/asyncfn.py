#!/usr/bin/env python3
"""A process-provider function for the async tests (standard library only).

Paths: ``/ok`` echoes the body (200, ``X-Fn: yes``); ``/flaky`` answers 500 twice per
call id, then 200; ``/fail`` always 500; ``/slow?ms=N`` sleeps N ms then 200;
``/healthz``. Every call appends its X-Call-Id to ``calls.log``, and the most calls seen
at once goes to ``max-concurrent``: through the tests' state hub at $STATE_URL
(tests/support/statehub.py), since a function cannot write the host's files.
"""

import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

STATE = os.environ["STATE_URL"]   # {hub}/{op}/{function}/{name} once completed


def state(op, name, body=b""):
    url = STATE.replace("/OP/", "/" + op + "/") + "/" + name
    with urllib.request.urlopen(urllib.request.Request(url, body, method="POST"),
                                timeout=10) as answer:
        return answer.read()
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
            state("write", "max-concurrent", str(running[1]).encode())
            state("append", "calls.log", (call_id + "\n").encode())
        try:
            url = urlsplit(self.path)
            if url.path == "/flaky":
                count = int(state("incr", "flaky-" + call_id))
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
