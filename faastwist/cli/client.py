"""Blocking HTTP clients for the CLI: the admin REST API and the gate.

The CLI is not the reactor, so plain ``http.client`` is enough; it also ignores
``http_proxy`` (the admin API is normally on loopback) and lets ``logs --follow``
drop the read timeout once the stream is open.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlencode, urlsplit

import attrs
import click
import yaml

DEFAULT_SERVER = "http://127.0.0.1:2381"
DEFAULT_CONTROLLER = "faascontroller"
DEFAULT_GATE_PORT = 10083
API_PREFIX = "/apis/v2/faas"
CONFIG_KEYS = ("server", "controller", "token", "gate", "timeout", "cacert")


class CommandFailed(click.ClickException):
    """The server refused (its ``{code, message}``), could not be reached, or a wait timed
    out: the command prints ``Error: ...`` and exits 1."""

    exit_code = 1

    def __init__(self, message: str, status: int | None = None, code: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class InputError(click.UsageError):
    """A problem with what the user gave us locally (a file, a flag value): exit 2."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


@attrs.frozen
class Settings:
    """Where to talk to, after flags, environment and the config file are merged."""

    server: str = DEFAULT_SERVER
    controller: str | None = None   # None: ask the server (/apis/v2/faas/info)
    token: str = ""
    gate: str = ""                  # "": the server's host on the gate's default port
    timeout: float = 30.0
    cacert: str = ""                # PEM file of CAs to trust for https:// (else the system's)

    @property
    def gate_url(self) -> str:
        if self.gate:
            return self.gate.rstrip("/")
        host = urlsplit(self.server).hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{DEFAULT_GATE_PORT}"


def config_path(env: Mapping[str, str]) -> Path:
    if env.get("FAASTWIST_CONFIG"):
        return Path(env["FAASTWIST_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "faastwist" / "config.yaml"


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file's keys; a missing file is empty, a broken one an InputError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: must be a mapping of {', '.join(CONFIG_KEYS)}")
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise InputError(f"{path}: {key}: unknown key (known: {', '.join(CONFIG_KEYS)})")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InputError(f"{path}: {key}: must be a string, got {value!r}")
    return data


def check_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{what}: must be an http:// or https:// URL, got {value!r}")
    try:
        _ = parts.port  # a bad port raises ValueError only when read
    except ValueError:
        raise InputError(f"{what}: bad port in {value!r}") from None
    return value.rstrip("/")


def load_settings(server: str | None, controller: str | None, token: str | None,
                  gate: str | None, timeout: float | None,
                  env: Mapping[str, str] = os.environ) -> Settings:
    """Flags win over FAASTWIST_* variables, which win over the config file."""
    path = config_path(env)
    file = read_config_file(path)

    def pick(flag: Any, var: str, key: str, default: Any) -> tuple[Any, str]:
        if flag is not None:
            return flag, f"--{key}"
        if env.get(var):
            return env[var], var
        if key in file:
            return file[key], f"{path}: {key}"
        return default, key

    server_value, server_from = pick(server, "FAASTWIST_SERVER", "server", DEFAULT_SERVER)
    gate_value, gate_from = pick(gate, "FAASTWIST_GATE", "gate", "")
    controller_value, _ = pick(controller, "FAASTWIST_CONTROLLER", "controller", None)
    token_value, _ = pick(token, "FAASTWIST_TOKEN", "token", "")
    if not token_value:
        from faastwist.cli.token import token_from_node

        token_value = token_from_node(env)
    timeout_value, timeout_from = pick(timeout, "FAASTWIST_TIMEOUT", "timeout", 30.0)
    try:
        timeout_seconds = parse_seconds(timeout_value)
    except ValueError as exc:
        raise InputError(f"{timeout_from}: {exc}") from None
    cacert_value, cacert_from = pick(None, "FAASTWIST_CACERT", "cacert", "")
    cacert = os.path.expanduser(str(cacert_value)) if cacert_value else ""
    if cacert and not os.path.isfile(cacert):
        raise InputError(f"{cacert_from}: no such file: {cacert}")
    return Settings(
        server=check_url(str(server_value), server_from),
        controller=str(controller_value) if controller_value else None,
        token=str(token_value),
        gate=check_url(str(gate_value), gate_from) if gate_value else "",
        timeout=timeout_seconds,
        cacert=cacert,
    )


def parse_seconds(value: Any) -> float:
    from faastwist.util.units import UnitError, parse_duration

    try:
        seconds = parse_duration(value)
    except UnitError as exc:
        raise ValueError(str(exc)) from None
    if seconds <= 0:
        raise ValueError(f"must be more than 0s, got {value!r}")
    return seconds


@attrs.frozen
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float

    def data(self) -> Any:
        return decode(self.body)


def decode(body: bytes) -> Any:
    """JSON, or YAML when a server ignored our Accept header; raw text as a last resort."""
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_TAG = re.compile(r"<[^>]*>")
_TITLE = re.compile(r"<title>(.*?)</title>", re.I | re.S)
_PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.I | re.S)


def error_message(reply: Reply) -> tuple[str, Any]:
    """The server's ``{code, message}``; else an HTML page's title and first paragraph;
    else the body's first 2000 characters; else the status line."""
    data = reply.data()
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"]), data.get("code")
    text = reply.body.decode("utf-8", errors="replace").strip()
    reason = http.client.responses.get(reply.status, "")
    title = _TITLE.search(text) if text.startswith("<") else None
    if title is not None:
        parts = [title.group(1)]
        paragraph = _PARAGRAPH.search(text)
        if paragraph:
            parts.append(paragraph.group(1))
        text = ": ".join(" ".join(_TAG.sub("", part).split()) for part in parts)
    return (text[:2000] or f"HTTP {reply.status} {reason}".strip()), reply.status


class HTTPClient:
    """One base URL; each call opens a connection (the CLI makes a handful)."""

    def __init__(self, base: str, timeout: float, headers: Mapping[str, str] | None = None,
                 what: str = "server", cafile: str = "") -> None:
        self.base = base.rstrip("/")
        parts = urlsplit(self.base)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.what = what
        self.cafile = cafile

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.https:
            import ssl

            context = ssl.create_default_context(cafile=self.cafile or None)
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def open(self, method: str, path: str, body: bytes | None = None,
             headers: Mapping[str, str] | None = None, timeout: float | None = None
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request and return the open response (for streaming)."""
        all_headers = {**self.headers, **(headers or {})}
        connection = self._connect(timeout or self.timeout)
        try:
            connection.request(method, self.prefix + path, body=body, headers=all_headers)
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise CommandFailed(f"cannot reach the {self.what} at {self.base}: {_reason(exc)}") from None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, timeout: float | None = None) -> Reply:
        started = time.monotonic()
        connection, response = self.open(method, path, body, headers, timeout)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise CommandFailed(f"the {self.what} at {self.base} broke off: {_reason(exc)}") from None
        finally:
            connection.close()
        return Reply(response.status, response.headers, data, time.monotonic() - started)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is faasgate running?)"
    return str(exc) or type(exc).__name__


class AdminClient:
    """The admin REST API of one controller, answering in JSON."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        headers = {"Accept": "application/json", "User-Agent": "faastwist-cli"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self.http = HTTPClient(settings.server, settings.timeout, headers, "faastwist admin API",
                               cafile=settings.cacert)
        self._controller = settings.controller

    @property
    def controller(self) -> str:
        """The flag/env/config value, else the one the server says it runs."""
        if self._controller is None:
            reply = self.http.request("GET", f"{API_PREFIX}/info")
            data = reply.data() if reply.status == 200 else None
            found = data.get("controller") if isinstance(data, dict) else None
            self._controller = str(found) if found else DEFAULT_CONTROLLER
        return self._controller

    def path(self, name: str = "", action: str = "", query: Mapping[str, Any] | None = None) -> str:
        out = f"{API_PREFIX}/{quote(self.controller, safe='')}"
        if name:
            out += f"/{quote(name, safe='')}"
        if action:
            out += f"/{action}"
        if query:
            out += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return out

    def check(self, reply: Reply) -> Any:
        if reply.status >= 400:
            message, code = error_message(reply)
            raise CommandFailed(message, reply.status, code)
        return reply.data()

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        return self.check(self.http.request(method, path, body, headers))

    def stream_lines(self, path: str, follow: bool) -> Iterator[bytes]:
        """The body's lines as they arrive; no read timeout while following."""
        connection, response = self.http.open("GET", path)
        try:
            if response.status >= 400:
                body = response.read()
                self.check(Reply(response.status, response.headers, body, 0.0))
            if follow and connection.sock is not None:
                connection.sock.settimeout(None)
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise CommandFailed(f"the log stream broke off: {_reason(exc)}") from None
                if not line:
                    return
                yield line
        finally:
            connection.close()


class CliContext:
    """The click context object: the global flags, turned into settings and a client
    only when a command needs them (``completion`` and ``--help`` need neither)."""

    def __init__(self, flags: dict[str, Any]) -> None:
        self.flags = flags
        self._client: AdminClient | None = None

    @property
    def settings(self) -> Settings:
        return self.client.settings

    @property
    def client(self) -> AdminClient:
        if self._client is None:
            self._client = AdminClient(load_settings(**self.flags))
        return self._client
