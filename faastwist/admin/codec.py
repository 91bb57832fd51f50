"""Wire formats of the admin API: request bodies, content negotiation, query parameters.

Kept apart from the routes so the parsing rules (which are about hostile input as much
as about formats) can be read and tested on their own. Everything here raises
``ApiError`` with a message that names the offending header, field or parameter.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl

import yaml
from yaml import events as yaml_events
from twisted.web.server import Request
from twisted.web.iweb import IRequest

from faastwist.model.fsm import FunctionStatus
from faastwist.store.base import FunctionRecord
from faastwist.util.times import format_rfc3339, parse_rfc3339
from faastwist.util.units import UnitError, parse_duration

#: Request bodies in these types are read as YAML (JSON is YAML too, but gets a JSON parser).
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/vnd.yaml")
JSON_TYPE = "application/json"
ACCEPTED_TYPES = YAML_TYPES + (JSON_TYPE,)
#: What an HTML form (or a cross-site ``fetch`` without a CORS preflight) can send, and
#: ``curl -d`` without ``-H``: never read as a spec, so another site cannot post one.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
#: Responses are YAML (RFC 9512's type) unless the client accepts JSON.
YAML_RESPONSE_TYPE = "application/yaml"
NDJSON_TYPE = "application/x-ndjson"

#: Deeper nesting than this is refused before the document is built: the C composer
#: recurses on the C stack and crashes the process on deep input (measured: 100k levels).
MAX_DEPTH = 64
#: Values a body may expand to, counting every use of a YAML alias (billion laughs).
MAX_NODES = 100_000
#: Bytes a body may expand to, counting every use of a YAML alias: at least what the
#: document would take written out without aliases (strings' UTF-8 bytes, numbers as
#: written, one byte per mapping, list, boolean or null). A body without aliases never
#: exceeds its own size, so this only refuses amplification (a 900 KiB body of aliases to a long
#: string was once 1.2 GiB of memory when the spec was stored).
MAX_EXPANDED_BYTES = 1 << 20
MAX_TAIL = 100_000
_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):
    """The safe loader, refusing a key that appears twice in one mapping (YAML says
    keys are unique; PyYAML keeps the last one, so a typo'd second ``command`` would
    silently win). Merge keys (``<<``) may still be overridden, as YAML intends."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue   # an unhashable key: the base constructor reports it
            if duplicate:
                mark = key_node.start_mark
                raise ApiError(400, f"{key}: duplicate key (line {mark.line + 1}, column "
                                    f"{mark.column + 1}); each key may appear once")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a key twice in one object is a 400 naming it."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ApiError(400, f"{key}: duplicate key; each key may appear once")
        document[key] = value
    return document



class ApiError(Exception):
    """An answer other than success: ``code`` and a message for the ``{code, message}`` body."""

    def __init__(self, code: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``text/yaml; charset=UTF-8`` -> ``("text/yaml", {"charset": "utf-8"})``."""
    if not value:
        return "", {}
    main, *raw_params = value.split(";")
    params: dict[str, str] = {}
    for raw in raw_params:
        key, _, val = raw.partition("=")
        if key.strip():
            params[key.strip().lower()] = val.strip().strip('"').lower()
    return main.strip().lower(), params


def header_text(request: IRequest, name: bytes) -> str | None:
    """A request header as text (latin-1, as HTTP/1.1 defines it), None when absent."""
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else value


def wants_json(accept: str | None) -> bool:
    """JSON when ``Accept`` names application/json at least as highly as any YAML type.

    A missing or unrelated Accept (``*/*``, ``text/html``) gets YAML; the API never
    answers 406, because an error body the client can read beats none.
    """
    if not accept:
        return False
    json_q = yaml_q = 0.0
    for part in accept.split(","):
        kind, params = media_type(part)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if kind == JSON_TYPE:
            json_q = max(json_q, q)
        elif kind in YAML_TYPES:
            yaml_q = max(yaml_q, q)
    return json_q > 0 and json_q >= yaml_q


#: libyaml's emitter when PyYAML was built with it: 20-50 times faster than the pure
#: Python one (a list of 10,000 functions: about 1 s instead of 40 s, measured)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def encode(data: Any, as_json: bool) -> tuple[bytes, str]:
    """The response body and its Content-Type."""
    if as_json:
        return json.dumps(data, indent=2).encode() + b"\n", JSON_TYPE
    text = yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=1 << 20)  # no folding: one message, one line
    return text.encode(), YAML_RESPONSE_TYPE


def error_body(code: int, message: str) -> dict[str, Any]:
    """The ``{code, message}`` body of every error on the admin port (API, ops, console)."""
    return {"code": code, "message": message}


def respond(request: IRequest, code: int, data: Any,
            headers: Mapping[str, str] | None = None, *, as_json: bool | None = None) -> bytes:
    """Set the status and headers for ``data`` and return its encoded body.

    YAML or JSON as the request's Accept prefers (``wants_json``); ``as_json`` forces
    the choice for endpoints that always answer one format (probes, the console).
    """
    if as_json is None:
        as_json = wants_json(header_text(request, b"accept"))
    body, content_type = encode(data, as_json)
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type.encode())
    request.setHeader(b"content-length", b"%d" % len(body))
    for name, value in (headers or {}).items():
        request.setHeader(name.encode(), value.encode())
    return body


def respond_error(request: IRequest, code: int, message: str,
                  headers: Mapping[str, str] | None = None, *,
                  as_json: bool | None = None) -> bytes:
    """A ``{code, message}`` answer (see ``respond`` for the format)."""
    return respond(request, code, error_body(code, message), headers, as_json=as_json)


# -- documents -----------------------------------------------------------------------

def status_document(status: FunctionStatus) -> dict[str, Any]:
    """A status as the API answers it: ``updated`` in RFC 3339 (the store keeps epoch
    seconds; a status that was never stamped has none)."""
    document = status.to_dict()
    document["updated"] = format_rfc3339(status.updated) if status.updated > 0 else None
    document["created"] = format_rfc3339(status.created) if status.created > 0 else None
    return document


def record_document(record: FunctionRecord) -> dict[str, Any]:
    """A function's spec and status as the API answers them."""
    return {"spec": record.spec.to_dict(), "status": status_document(record.status)}


# -- request bodies ------------------------------------------------------------------

class BoundedRequest(Request):
    """A Request that stops storing its body past ``max_body_size``.

    Without it Twisted spools any body, however large, to a temporary file before the
    handler runs. With it the excess is read and dropped and the handler answers 413.
    """

    max_body_size: int = 1 << 20
    body_too_large: bool = False
    _stored: int = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_size:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._stored += len(data)
        if self._stored > self.max_body_size:
            self.body_too_large = True
            if self.content is not None:  # gotLength made it
                self.content.seek(0)
                self.content.truncate()
            return
        super().handleContentChunk(data)


def bounded_request_factory(max_body_size: int) -> type[BoundedRequest]:
    """A request class for ``Site(requestFactory=...)`` with the given body limit."""
    return type("BoundedRequest", (BoundedRequest,), {"max_body_size": max_body_size})


def read_body(request: IRequest, max_body_size: int) -> bytes:
    """The request body, or 413: Content-Length first, then what actually arrived."""
    too_large = ApiError(413, f"request body is larger than the limit of {max_body_size} bytes")
    if isinstance(request, BoundedRequest) and request.body_too_large:
        raise too_large
    declared = request.getHeader(b"content-length")
    if declared is not None:
        try:
            if int(declared) > max_body_size:
                raise too_large
        except ValueError:
            raise ApiError(400, "Content-Length: not a number") from None
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(max_body_size + 1)
    if len(body) > max_body_size:
        raise too_large
    return body


def _check_depth(text: str) -> None:
    """Refuse deep nesting by walking the (iterative) parser's events before composing."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml_events.SequenceStartEvent, yaml_events.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ApiError(400, f"body is nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, (yaml_events.SequenceEndEvent, yaml_events.MappingEndEvent)):
            depth -= 1


def check_expansion(document: Any, max_bytes: int = MAX_EXPANDED_BYTES) -> None:
    """Refuse documents that expand to too many values or bytes (aliases count at every
    use); the walk stops as soon as either limit is passed."""
    stack = [document]
    seen = 0
    size = 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ApiError(400, f"body expands to more than {MAX_NODES} values "
                                f"(recursive or repeated YAML aliases?)")
        if isinstance(value, str):
            size += len(value.encode("utf-8", "surrogatepass"))
        elif isinstance(value, bytes):
            size += len(value)
        elif isinstance(value, dict):
            size += 1
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            size += 1
            stack.extend(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            size += len(repr(value))
        else:   # true, false, null: one byte at least; a timestamp: ten at least
            size += 1 if value is None or isinstance(value, bool) else 10
        if size > max_bytes:
            raise ApiError(400, f"body expands to more than {max_bytes} bytes, the limit "
                                f"for a spec (YAML aliases count at every use)")


def decode_body(body: bytes, content_type: str | None,
                max_expanded: int = MAX_EXPANDED_BYTES) -> Any:
    """The parsed document, or 415 for an unsupported type, 400 for a malformed body or
    one that expands past ``max_expanded`` bytes. Pure: the API runs it off the reactor."""
    kind, params = media_type(content_type)
    if kind in FORM_TYPES:
        raise ApiError(415, f"Content-Type {kind} is not read as a spec (HTML forms and other "
                            f"sites' pages can send it); send one of "
                            f"{', '.join(ACCEPTED_TYPES)}, e.g. curl -H "
                            f"'Content-Type: application/yaml' --data-binary @function.yaml")
    if kind and kind not in ACCEPTED_TYPES:
        raise ApiError(415, f"Content-Type {kind} is not supported; send one of "
                            f"{', '.join(ACCEPTED_TYPES)}")
    charset = params.get("charset", "utf-8")
    if charset not in _CHARSETS:
        raise ApiError(415, f"Content-Type charset {charset} is not supported; send utf-8")
    if not body.strip():
        raise ApiError(400, "request body is empty; send the function spec as YAML or JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8: {exc}") from None
    if kind == JSON_TYPE:
        try:
            document = json.loads(text, object_pairs_hook=_unique_pairs)
        except RecursionError:
            raise ApiError(400, "body is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
    else:
        try:
            _check_depth(text)
            document = yaml.load(text, Loader=_Loader)  # noqa: S506 (_Loader is a SafeLoader)
        except ApiError:
            raise
        except Exception as exc:  # any parser failure is the body's fault, not ours
            raise ApiError(400, f"body is not valid YAML: {_one_line(exc)}") from None
    check_expansion(document, max_expanded)
    return document


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- query parameters ----------------------------------------------------------------

def query_params(uri: bytes, known: Iterable[str], strict: bool = True) -> dict[str, str]:
    """The first value of each parameter of ``uri``; an unknown one is an error naming it
    (``strict``) or left out (OpenFaaS's API: its clients send parameters its gateway
    ignores, e.g. faas-cli's ``usage=1``).

    Parsed here rather than taken from ``request.args`` because Twisted drops a bare
    flag like ``?follow`` (no ``=``), which users of ``kubectl logs -f`` habits send.
    """
    known = tuple(known)
    _, _, query = uri.partition(b"?")
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "query parameters must be UTF-8") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in known:
            if not strict:
                continue
            raise ApiError(400, f"{key}: unknown query parameter (known: {', '.join(known)})")
        out.setdefault(key, value)
    return out


def parse_tail(value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 7) or int(value) > MAX_TAIL:
        raise ApiError(400, f"tail: must be a number of lines from 0 to {MAX_TAIL}, "
                            f"got {value!r}")
    return int(value)


def parse_flag(name: str, value: str | None) -> bool:
    """A boolean query parameter: absent is false, a bare ``?name`` is true."""
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("", "true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name}: must be true or false, got {value!r}")


def parse_follow(value: str | None) -> bool:
    return parse_flag("follow", value)


def parse_since(value: str | None, now: float) -> float | None:
    """Seconds since the epoch from an RFC3339 timestamp or a Go duration before ``now``."""
    if value is None:
        return None
    try:
        stamp = parse_rfc3339(value)
    except ValueError as exc:
        raise ApiError(400, f"since: {exc}, got {value!r}") from None
    if stamp is not None:
        return stamp
    try:
        return now - parse_duration(value.strip())
    except UnitError:
        raise ApiError(400, f"since: expected an RFC3339 timestamp like 2024-05-01T10:00:00Z "
                            f"or a duration like 5m, got {value!r}") from None


# -- paging: limit + continue, as Kubernetes lists do ---------------------------------------

MAX_LIMIT = 1000


def parse_limit(value: str | None, default: int) -> int:
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 5) or not (
            1 <= int(value) <= MAX_LIMIT):
        raise ApiError(400, f"limit: must be a number of functions from 1 to {MAX_LIMIT}, "
                            f"got {value!r}")
    return int(value)


def encode_continue(after: str, revision: int, prefix: str) -> str:
    """An opaque token: where the next page starts, and the revision of the first."""
    raw = json.dumps({"a": after, "r": revision, "p": prefix}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[str, int, str]:
    """(after, revision, prefix) of a token from ``encode_continue``; 400 otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after, revision, prefix = data["a"], data["r"], data["p"]
        if not (isinstance(after, str) and isinstance(prefix, str) and type(revision) is int
                and revision > 0 and len(after) <= 63 and len(prefix) <= 63):
            raise ValueError
    except Exception:
        raise ApiError(400, "continue: not a token from this API (pass the "
                            "metadata.continue of the previous page as is)") from None
    return after, revision, prefix
