"""One replica of an envProcess function: OpenFaaS's classic watchdog, as the function.

It runs *as the function* (its uid, inside its sandbox), never as root, so it imports
nothing but the standard library: the node copies this file into a folder of its own
that no function can write and starts it as ``python3 -I FILE`` with the interpreter the
function's uid may run (``-I``: no PYTHON* variable, no current folder on ``sys.path``,
no user site). Its settings arrive already checked by the node (faastwist.providers.
watchdogenv) as JSON in ``FAASTWIST_WATCHDOG``; the Http_* naming below is the same
contract as ``watchdogenv.header_env`` (this file cannot import it).

Per request it runs ``$fprocess`` with the body on stdin and the head as ``Http_*``
variables, and answers with its stdout; a non-zero exit is a 500 carrying the output,
the function's timeout a 504, ``exec_timeout``/``write_timeout`` a 500, ``max_inflight``
a 429. Log lines (``Forking fprocess.``, ``Wrote N Bytes - Duration: Xs``) go to stderr,
which the provider keeps as the function's log.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SETTINGS_VAR = "FAASTWIST_WATCHDOG"
MAX_BODY = 64 * 2**20
STOP_GRACE = 5.0


def log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def header_env(headers, method, target, content_length):
    """``Http_X_Name`` per header (values joined by commas), plus the request line's."""
    env = {}
    for name in headers.keys():
        key = "Http_" + "_".join(part.capitalize() for part in name.split("-"))
        env[key] = ",".join(headers.get_all(name) or [])
    path, _, query = target.partition("?")
    env["Http_Method"] = method
    env["Http_Path"] = path
    env["Http_Query"] = query
    env["Http_Host"] = headers.get("Host", "")
    env["Http_ContentLength"] = str(content_length)
    return env


class Watchdog:
    def __init__(self, settings, argv, env):
        self.settings = settings
        self.argv = argv
        self.env = env
        self.lock = threading.Lock()
        self.inflight = 0

    def admit(self):
        with self.lock:
            limit = self.settings.get("max_inflight", 0)
            if limit and self.inflight >= limit:
                return False
            self.inflight += 1
            return True

    def done(self):
        with self.lock:
            self.inflight -= 1

    def deadline(self):
        best = (self.settings["timeout"], "timeout")
        for key in ("exec_timeout", "write_timeout"):
            value = self.settings.get(key, 0)
            if value and value < best[0]:
                best = (value, key)
        return best

    def run(self, body, extra_env):
        """(status, output) of one run of fprocess."""
        settings = self.settings
        combine = settings.get("combine_output", True)
        env = dict(self.env)
        env.update(extra_env)
        log("Forking fprocess.")
        started = time.monotonic()
        try:
            child = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if combine else subprocess.PIPE, env=env,
                start_new_session=True)
        except OSError as exc:
            return 500, f"cannot start {self.argv[0]}: {exc}\n".encode()
        limit, why = self.deadline()
        timed_out = False
        try:
            output, errors = child.communicate(body, timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            log(f"Killing process: {why} of {limit:g}s exceeded")
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            output, errors = child.communicate()
        name = settings["name"]
        if errors and not combine:
            for line in errors.decode("utf-8", "replace").splitlines():
                log(line)
        status = 200
        if timed_out and why == "timeout":
            status, output = 504, f"function {name} timed out after {limit:g}s\n".encode()
        elif timed_out:
            status = 500
            output += f"function {name} killed: {why} of {limit:g}s exceeded\n".encode()
        elif child.returncode != 0:
            status = 500
            code = child.returncode
            how = f"exit code {code}" if code > 0 else f"signal {-code}"
            tail = b"" if combine else b"\n".join((errors or b"").splitlines()[-20:]) + b"\n"
            output += f"function {name} failed ({how})\n".encode() + tail
        if settings.get("write_debug"):
            log(output[:4096].decode("utf-8", "replace").rstrip("\n"))
        log(f"Wrote {len(output)} Bytes - Duration: {time.monotonic() - started:.6f}s")
        return status, output


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    watchdog: Watchdog

    def log_message(self, format, *args):   # the gate keeps the access log
        pass

    def _body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(1024)
                length = int(line.split(b";")[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                size += length
                if size > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(length))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _answer(self, status, data, content_type=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type or "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _serve(self):
        watchdog = self.watchdog
        try:
            body = self._body()
        except (ValueError, OSError):
            self.close_connection = True
            self._answer(400, b"cannot read the request body\n")
            return
        if not watchdog.admit():
            self._answer(429, (f"Concurrent request limit exceeded. Max concurrent "
                               f"requests: {watchdog.settings['max_inflight']}\n").encode())
            return
        try:
            status, output = watchdog.run(body, header_env(
                self.headers, self.command, self.path, len(body)))
        finally:
            watchdog.done()
        self._answer(status, output, watchdog.settings.get("content_type"))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve


def main():
    env = dict(os.environ)
    try:
        settings = json.loads(env.pop(SETTINGS_VAR))
        argv = shlex.split(env.get("fprocess", ""))
        port = int(env["PORT"])
        if not argv:
            raise ValueError("fprocess is empty")
    except (KeyError, ValueError) as exc:
        log(f"watchdog cannot start: {exc!r}")
        sys.exit(2)
    Handler.watchdog = Watchdog(settings, argv, env)
    Handler.timeout = settings.get("read_timeout") or None
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    log(f"Listening on port: {port}")
    server.serve_forever(poll_interval=0.5)
    server.server_close()
    deadline = time.monotonic() + STOP_GRACE
    while Handler.watchdog.inflight and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
