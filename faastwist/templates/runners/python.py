"""faastwist's runner for OpenFaaS's ``python3-http`` and ``python3`` (classic) handlers.

It runs *as the function*, inside its sandbox, started as ``python3 -I index.py
CONTRACT`` from the build folder (``faastwist build`` copies this file there as
``index.py``): standard library only, ``-I`` so no PYTHON* variable or current folder
reaches ``sys.path``; the build's venv site-packages and the build folder (for ``from
function import handler``) are added here, explicitly. The handler is imported once per
replica; an HTTP server on 127.0.0.1:$PORT calls it per request.

Contracts (as OpenFaaS's templates document them):

* ``http``: ``handle(event, context)``; ``event.body`` (bytes), ``.headers``
  (case-insensitive), ``.method``, ``.query`` (first value per key, ``getlist``),
  ``.path``; ``context.hostname`` ($HOSTNAME, else the host name). It returns ``{"statusCode", "body", "headers"}``: a
  dict body is JSON (compact, sorted keys, a newline, ``application/json``), anything
  else ``str(body)`` as ``text/html; charset=utf-8`` unless the headers say otherwise;
  ``None`` is an empty 200; a str is the body of a 200.
* ``classic``: ``handle(req)`` with the body as text (stdin semantics); the answer is
  what it printed plus ``print(result)``; the request head is in ``Http_*`` variables
  while it runs, so calls take turns within a replica.

``--check`` imports the handler and exits: 0, or 3 with ``FILE, line N: problem`` on
stderr (``faastwist build`` shows it).
"""

import glob
import io
import json
import os
import site
import socket
import sys
import threading
import traceback
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

ROOT = os.path.dirname(os.path.abspath(__file__))
MAX_BODY = 64 * 2**20
METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE")
SIGNATURES = {"http": "handle(event, context)", "classic": "handle(req)"}


def log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def load_handler(contract):
    """Import ``function.handler`` with the venv on sys.path; (handler, None) or
    (None, "FILE, line N: problem")."""
    for folder in sorted(glob.glob(os.path.join(ROOT, "venv", "lib", "python*",
                                                "site-packages"))):
        site.addsitedir(folder)
    sys.path.insert(0, ROOT)
    try:
        from function import handler  # type: ignore[import-not-found]  # the user's, at run time
    except SyntaxError as exc:
        where = os.path.relpath(exc.filename or "function/handler.py", ROOT)
        return None, f"{where}, line {exc.lineno}: SyntaxError: {exc.msg}"
    except BaseException as exc:  # the handler's own import-time failure
        frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
                  if frame.filename.startswith(ROOT + os.sep)]
        where = (f"{os.path.relpath(frames[-1].filename, ROOT)}, line {frames[-1].lineno}"
                 if frames else "function/handler.py")
        return None, f"{where}: {type(exc).__name__}: {exc}"
    if not callable(getattr(handler, "handle", None)):
        return None, (f"function/handler.py: defines no function {SIGNATURES[contract]}")
    return handler, None


class Query(dict):
    """``request.args``: the first value of each key, and ``getlist`` for all."""

    def __init__(self, pairs):
        super().__init__()
        self._lists: dict[str, list[str]] = {}
        for key, value in pairs:
            self._lists.setdefault(key, []).append(value)
            self.setdefault(key, value)

    def get(self, key, default=None, type=None):
        """werkzeug's ``args.get(key, default, type=int)``: a value ``type`` cannot
        convert gives ``default``."""
        if key not in self:
            return default
        if type is None:
            return self[key]
        try:
            return type(self[key])
        except (TypeError, ValueError):
            return default

    def getlist(self, key):
        return list(self._lists.get(key, []))


class Event:
    def __init__(self, body, headers, method, query, path):
        self.body = body
        self.headers = headers
        self.method = method
        self.query = query
        self.path = path


class Context:
    def __init__(self):
        # a container's HOSTNAME; the sandbox's host name where none is set
        self.hostname = os.getenv("HOSTNAME") or socket.gethostname() or "localhost"


def http_response(result):
    """(status, headers, body bytes) of a python3-http handler's result."""
    if result is None:
        return 200, [], b""
    if isinstance(result, (str, bytes)):
        return 200, [], result.encode() if isinstance(result, str) else result
    if not isinstance(result, dict):
        raise TypeError(f"handle() returned {type(result).__name__}: expected a dict "
                        f"with statusCode, body and headers")
    status = int(result.get("statusCode", 200))
    headers = result.get("headers") or []
    headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
    body = result.get("body", "")
    if "body" not in result:
        data, default = b"", "text/html; charset=utf-8"
    elif isinstance(body, bytes):
        data, default = body, "application/octet-stream"
    elif type(body) is dict:
        data = (json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n").encode()
        default = "application/json"
    else:
        data, default = str(body).encode("utf-8", "surrogateescape"), \
            "text/html; charset=utf-8"
    if not any(str(key).lower() == "content-type" for key, _ in headers):
        headers.insert(0, ("Content-Type", default))
    return status, [(str(key), str(value)) for key, value in headers], data


def header_env(headers, method, target, length):
    """The classic watchdog's ``Http_*`` variables for one request."""
    env = {}
    for name in headers.keys():
        key = "Http_" + "_".join(part.capitalize() for part in name.split("-"))
        env[key] = ",".join(headers.get_all(name) or [])
    parts = urlsplit(target)
    env.update(Http_Method=method, Http_Path=parts.path, Http_Query=parts.query,
               Http_Host=headers.get("Host", ""), Http_ContentLength=str(length))
    return env


class Runner:
    def __init__(self, handler, contract):
        self.handler = handler
        self.contract = contract
        self.turn = threading.Lock()   # classic: the Http_* variables are per call

    def call(self, request, body):
        if self.contract == "http":
            parts = urlsplit(request.path)
            event = Event(body, request.headers, request.command,
                          Query(parse_qsl(parts.query, keep_blank_values=True)),
                          unquote(parts.path) or "/")
            return http_response(self.handler.handle(event, Context()))
        text = body.decode("utf-8", "surrogateescape")
        with self.turn:
            names = header_env(request.headers, request.command, request.path, len(body))
            saved = {key: os.environ.get(key) for key in names}
            os.environ.update(names)
            printed = io.StringIO()
            try:
                with redirect_stdout(printed):
                    result = self.handler.handle(text)
                    if result is not None:
                        print(result)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        content_type = (os.environ.get("content_type") or request.headers.get("Content-Type")
                        or "text/plain; charset=utf-8")
        return 200, [("Content-Type", content_type)], \
            printed.getvalue().encode("utf-8", "surrogateescape")


def make_handler(runner):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def version_string(self):
            return "faastwist-runner"

        def log_message(self, format, *args):   # the gate logs requests
            pass

        def _read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks: list[bytes] = []
                total = 0
                while True:
                    size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    total += size
                    if total > MAX_BODY:
                        raise OverflowError()
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline(1024)
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_BODY:
                raise OverflowError()
            return self.rfile.read(length)

        def _send(self, status, headers, body, head=False):
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and status not in (204, 304) and status >= 200:
                self.wfile.write(body)

        def _serve(self, head=False):
            try:
                body = self._read_body()
            except (OverflowError, ValueError):
                self.close_connection = True
                self._send(413, [("Content-Type", "text/plain")], b"request body too large\n")
                return
            try:
                status, headers, data = runner.call(self, body)
            except Exception:
                log(traceback.format_exc().rstrip())
                status, headers, data = 500, [("Content-Type", "text/html; charset=utf-8")], \
                    b"Internal Server Error\n"
            self._send(status, headers, data, head)

        def do_GET(self):
            self._serve()

        do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

        def do_HEAD(self):
            self._serve(head=True)

        def do_OPTIONS(self):
            self._send(200, [("Allow", ", ".join(("HEAD", "OPTIONS") + METHODS))], b"")

    return Handler


def main(argv):
    contract = argv[1] if len(argv) > 1 else "http"
    if contract not in SIGNATURES:
        log(f"unknown contract {contract!r}: expected http or classic")
        return 2
    handler, problem = load_handler(contract)
    if problem is not None:
        log(problem)
        return 3
    if "--check" in argv:
        return 0
    os.chdir(ROOT)   # OpenFaaS runs index.py from the folder that holds function/
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))),
                                 make_handler(Runner(handler, contract)))
    server.daemon_threads = True
    log(f"python3 {contract} runner listening on 127.0.0.1:{server.server_port}")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
