"""Templates without a node: the Python runner's contract (its response rules in-process,
then the runner as a real process on a port), stack.yml reading and the spec it gives,
the build's digest and file rules."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from faastwist.cli.templatecmd import spec_for
from faastwist.templates import TEMPLATES, template_for
from faastwist.templates.build import BuildError, BuildResult, _files, digest_of
from faastwist.templates.stack import (StackError, add_function, deployment, environment,
                                       load_stack)
from faastwist.util.ports import free_port

RUNNER = Path(TEMPLATES["python3-http"].runner_path)


def runner_module():
    spec = importlib.util.spec_from_file_location("faastwist_runner_test", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_http_response_follows_the_python3_http_contract() -> None:
    r = runner_module()
    assert r.http_response(None) == (200, [], b"")
    status, headers, body = r.http_response({"statusCode": 201, "body": {"b": 1, "a": "é"},
                                             "headers": {"X-A": "1"}})
    # Flask's jsonify: compact, sorted keys, ASCII escapes, a newline
    assert (status, body) == (201, b'{"a":"\\u00e9","b":1}\n')
    assert headers == [("Content-Type", "application/json"), ("X-A", "1")]
    status, headers, body = r.http_response({"body": [1, 2]})
    assert (status, body, headers[0][1]) == (200, b"[1, 2]", "text/html; charset=utf-8")
    _, headers, _ = r.http_response({"body": {"x": 1}, "headers": {"content-type": "a/b"}})
    assert headers == [("content-type", "a/b")]   # the handler's own type wins
    assert r.http_response({"statusCode": 204})[2] == b""
    assert r.http_response("text") == (200, [], b"text")
    with pytest.raises(TypeError):
        r.http_response(42)


def test_query_keeps_first_values_and_lists() -> None:
    query = runner_module().Query([("a", "1"), ("b", "2"), ("a", "3")])
    assert query == {"a": "1", "b": "2"} and query["a"] == "1"
    assert query.getlist("a") == ["1", "3"] and query.getlist("z") == []
    assert query.get("a", type=int) == 1 and query.get("z", 7) == 7
    assert query.get("b", -1, type=lambda v: int(v) * 10) == 20
    assert type(query)([("n", "x")]).get("n", 5, type=int) == 5   # not a number: default


def _serve(tmp_path: Path, handler: str, contract: str):
    root = tmp_path / "build"
    (root / "function").mkdir(parents=True)
    shutil.copy(RUNNER, root / "index.py")
    (root / "function" / "handler.py").write_text(handler)
    port = free_port()
    process = subprocess.Popen(["/usr/bin/python3", "-I", str(root / "index.py"), contract],
                               env={"PORT": str(port), "PATH": "/usr/bin:/bin",
                                    "HOSTNAME": "box"},
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(process.stderr.read().decode()) from None
            time.sleep(0.05)
    return process, port


def _request(port: int, method: str, target: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, target, body, headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


@pytest.mark.process
def test_python3_http_runner_serves_a_handler(tmp_path: Path) -> None:
    process, port = _serve(tmp_path, (
        "import json\n"
        "loaded = []\n"
        "loaded.append(1)\n"
        "def handle(event, context):\n"
        "    if event.path == '/boom':\n"
        "        raise ValueError('secret detail')\n"
        "    return {'statusCode': 200, 'body': {'m': event.method, 'p': event.path,\n"
        "            'q': event.query.getlist('t'), 'h': event.headers.get('x-a'),\n"
        "            'b': event.body.decode(), 'host': context.hostname,\n"
        "            'loads': len(loaded)}}\n"), "http")
    try:
        status, headers, body = _request(port, "PUT", "/x%20y?t=1&t=2", b"hi", {"X-A": "v"})
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"m": "PUT", "p": "/x y", "q": ["1", "2"], "h": "v",
                                    "b": "hi", "host": "box", "loads": 1}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.putrequest("POST", "/")   # a chunked body
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert json.loads(connection.getresponse().read())["b"] == "abcde"
        connection.close()
        status, _, body = _request(port, "GET", "/boom")
        assert status == 500 and b"secret" not in body   # the traceback goes to the log
        assert _request(port, "POST", "/", b"x" * 10, {"Content-Length": str(2**30)})[0] == 413
        assert _request(port, "TRACE", "/")[0] == 501
    finally:
        process.kill()
        process.wait()
    assert b"ValueError: secret detail" in process.stderr.read()


@pytest.mark.process
def test_python3_classic_runner_prints_and_sets_http_variables(tmp_path: Path) -> None:
    process, port = _serve(tmp_path, (
        "import os\n"
        "def handle(req):\n"
        "    print('method', os.environ['Http_Method'], os.environ['Http_X_Name'])\n"
        "    return req.upper()\n"), "classic")
    try:
        status, headers, body = _request(port, "POST", "/p?q=1", b"abc",
                                         {"X-Name": "n", "Content-Type": "text/x"})
        assert (status, body) == (200, b"method POST n\nABC\n")
        assert headers["Content-Type"] == "text/x"
        assert _request(port, "POST", "/", b"", {"X-Name": "m"})[1]["Content-Type"] == \
            "text/plain; charset=utf-8"
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


@pytest.mark.process
@pytest.mark.parametrize("handler, problem", [
    ("def handle(event, context):\n  return {\n", "function/handler.py, line 2: SyntaxError"),
    ("x = 1\nimport no_such_module_here\n",
     "function/handler.py, line 2: ModuleNotFoundError: No module named"),
    ("def other():\n    pass\n", "function/handler.py: defines no function handle(event, "
                                 "context)"),
])
def test_runner_check_names_file_and_line(tmp_path: Path, handler: str, problem: str) -> None:
    root = tmp_path / "b"
    (root / "function").mkdir(parents=True)
    shutil.copy(RUNNER, root / "index.py")
    (root / "function" / "handler.py").write_text(handler)
    done = subprocess.run(["/usr/bin/python3", "-I", str(root / "index.py"), "http",
                           "--check"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 3 and problem in done.stderr, done.stderr


def _stack(tmp_path: Path, entry: dict, **files: str) -> Path:
    path = tmp_path / "stack.yml"
    path.write_text(yaml.safe_dump({"version": 1.0, "provider": {"name": "openfaas",
                                                                 "gateway": "http://x"},
                                    "functions": {"fn": entry}}))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return path


def test_stack_entry_becomes_an_openfaas_style_spec(tmp_path: Path) -> None:
    path = _stack(tmp_path, {
        "lang": "python3-http", "handler": "./fn", "image": "fn:latest",
        "environment": {"A": 1, "B": True}, "environment_file": ["env.yml"],
        "labels": {"com.openfaas.scale.min": "2", "com.openfaas.scale.max": "4"},
        "annotations": {"team": "x"}, "limits": {"memory": "128Mi", "cpu": "500m"},
        "secrets": ["api-key"], "build_options": ["dev"]},
        **{"env.yml": "environment:\n  A: from-file\n  C: c\n"})
    stack = load_stack(str(path))
    function = stack.functions[0]
    assert function.handler == str(tmp_path / "fn")
    assert environment(stack, function) == {"A": "1", "B": "true", "C": "c"}
    result = BuildResult("fn", "python3-http", "d" * 64, "/b/fn/x",
                         ("/usr/bin/python3", "-I", "/b/fn/x/index.py", "http"), False)
    spec = spec_for(stack, function, result)
    assert spec["command"] == list(result.command)
    assert (spec["minReplica"], spec["maxReplica"]) == (2, 4)
    assert (spec["limitMemory"], spec["limitCPU"]) == ("128Mi", "500m")
    assert spec["env"] == {"A": "1", "B": "true", "C": "c"}
    assert spec["secrets"] == ["api-key"]
    assert spec["annotations"] == {"team": "x", "faastwist.io/lang": "python3-http",
                                   "faastwist.io/digest": "d" * 64}
    assert deployment(stack, function)["service"] == "fn"


@pytest.mark.parametrize("entry, problem", [
    ({"lang": "cobol", "handler": "./fn"}, "functions.fn.lang: 'cobol' is not a template"),
    ({"lang": "python3"}, "functions.fn.handler: must name the handler folder"),
    ({"lang": "python3", "handler": "./fn", "limitz": 1}, "functions.fn.limitz: unknown key"),
    ({"lang": "python3", "handler": "./fn", "environment": ["A=1"]},
     "functions.fn.environment: must be a mapping"),
])
def test_stack_errors_name_the_key(tmp_path: Path, entry: dict, problem: str) -> None:
    path = _stack(tmp_path, entry)
    with pytest.raises(StackError) as caught:
        stack = load_stack(str(path))
        environment(stack, stack.functions[0])
    assert problem in str(caught.value)


def test_add_function_creates_then_appends(tmp_path: Path) -> None:
    path = str(tmp_path / "stack.yml")
    add_function(path, "one", "python3", "http://127.0.0.1:10083")
    add_function(path, "two", "node", "http://ignored")
    data = yaml.safe_load(Path(path).read_text())
    assert data["provider"] == {"name": "openfaas", "gateway": "http://127.0.0.1:10083"}
    assert data["functions"]["two"] == {"lang": "node", "handler": "./two",
                                        "image": "two:latest"}
    with pytest.raises(StackError, match="functions.one: already exists"):
        add_function(path, "one", "python3", "http://x")


def test_digest_follows_content_and_links_are_refused(tmp_path: Path) -> None:
    template = template_for("python3-http")
    folder = tmp_path / "fn"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "handler.py").write_text("a")
    (folder / "__pycache__" / "x.pyc").write_text("ignored")
    first = digest_of(template, "/usr/bin/python3", _files(str(folder)))
    assert [rel for rel, _ in _files(str(folder))] == ["handler.py"]
    assert digest_of(template, "/usr/bin/python3", _files(str(folder))) == first
    (folder / "handler.py").write_text("b")
    assert digest_of(template, "/usr/bin/python3", _files(str(folder))) != first
    assert digest_of(template_for("python3"), "/usr/bin/python3",
                     _files(str(folder))) != digest_of(template, "/usr/bin/python3",
                                                       _files(str(folder)))
    (folder / "key.pem").write_text("secret")
    os.chmod(folder / "key.pem", 0o600)
    with pytest.raises(BuildError, match="key.pem: mode 0600 keeps it from other users"):
        _files(str(folder))
    os.unlink(folder / "key.pem")
    os.symlink("/etc/shadow", folder / "data.txt")
    with pytest.raises(BuildError, match="data.txt: is a symbolic link"):
        _files(str(folder))


@pytest.mark.process
@pytest.mark.sandbox
def test_two_builds_of_one_function_take_turns(tmp_path: Path) -> None:
    """Two ``faastwist build`` runs at once (two terminals, a CI retry): one builds, the
    other finds the finished build; neither sees the other's half-made folder."""
    import tempfile
    import threading

    from faastwist.templates.build import Builder

    root = Path(tempfile.mkdtemp(prefix="faastwist-builds-", dir="/tmp"))
    os.chmod(root, 0o711)
    try:
        (tmp_path / "fn").mkdir()
        (tmp_path / "fn" / "handler.py").write_text("def handle(event, context):\n  pass\n")
        path = _stack(tmp_path, {"lang": "python3-http", "handler": "./fn"})
        stack = load_stack(str(path))
        results, errors = [], []

        def build() -> None:
            try:
                results.append(Builder(str(root)).build(stack, stack.functions[0]))
            except Exception as exc:   # reported below
                errors.append(exc)

        threads = [threading.Thread(target=build) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sorted(r.skipped for r in results) == [False, True]
        assert results[0].folder == results[1].folder
        assert os.path.isfile(os.path.join(results[0].folder, "build.json"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_go_mod_is_adapted_to_the_installed_go() -> None:
    from faastwist.templates.golang import adapt_go_mod

    data, asked = adapt_go_mod(b"module handler/function\n\ngo 1.24.0\n\ntoolchain go1.24.2\n"
                               b"\nrequire x.org/y v1.0.0\n", (1, 19))
    assert asked == "1.24.0"
    assert data == b"module handler/function\n\ngo 1.19\n\n\nrequire x.org/y v1.0.0\n"
    assert adapt_go_mod(b"module m\n\ngo 1.18\n", (1, 19)) == (b"module m\n\ngo 1.18\n", None)
    assert adapt_go_mod(b"module m\ngo 1.22\ntoolchain go1.22.1\n", (1, 22)) == \
        (b"module m\ngo 1.22\ntoolchain go1.22.1\n", None)


@pytest.mark.parametrize("lang, output, expected", [
    ("golang-middleware", "# handler/function\n./handler.go:7:2: undefined: nope\n",
     "fn/handler.go:7:2: undefined: nope"),
    ("golang-middleware", "# handler/function/faastwist_main\nfaastwist_main/"
     "contract_middleware.go:12:35: undefined: function.Handle\n",
     "fn/handler.go: package function defines no func Handle(w http.ResponseWriter, "
     "r *http.Request)"),
    ("golang-http", "# handler/function/faastwist_main\nfaastwist_main/contract_http.go:36:"
     "17: cannot use req (variable of type handler.Request) as string value in argument",
     "fn/handler.go: Handle does not fit the golang-http template, which calls func "
     "Handle(req handler.Request) (handler.Response, error) (cannot use req"),
    ("golang-middleware", "faastwist_main/contract_middleware.go:12:35: cannot use "
     "function.Handle (value of type func(w http.ResponseWriter)) as http.HandlerFunc value "
     "in variable declaration", "fn/handler.go: Handle is func(w http.ResponseWriter); the "
     "golang-middleware template calls func Handle(w http.ResponseWriter, r *http.Request)"),
    ("golang-middleware", "go: example.com/x@v1.0.0: module lookup disabled by GOPROXY=off",
     "go: example.com/x@v1.0.0: module lookup disabled by GOPROXY=off"),
])
def test_go_build_output_names_the_developers_file(tmp_path: Path, monkeypatch, lang: str,
                                                   output: str, expected: str) -> None:
    from faastwist.templates.golang import problem
    from faastwist.templates.stack import StackFunction

    monkeypatch.chdir(tmp_path)
    function = StackFunction("fn", lang, str(tmp_path / "fn"), {})
    assert expected in problem(template_for(lang), function, output)


GO_RUNNER_HANDLER = """package function

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

func Handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/slow" {
		fmt.Fprintln(os.Stderr, "slow call started")
		time.Sleep(time.Second)
		w.Write([]byte("done"))
		return
	}
	data, err := os.ReadFile("./static/file.txt")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Write(data)
}
"""


@pytest.mark.process
@pytest.mark.golang
def test_go_runner_serves_from_the_handler_folder_and_drains_on_sigterm(
        tmp_path: Path) -> None:
    """The runner alone (built here as the test's user, no sandbox): it listens on
    $PORT, works from the handler folder (./static as on OpenFaaS) and, on SIGTERM,
    answers the call it has before it exits 0."""
    import signal
    import threading

    from faastwist.templates.golang import BINARY, MAIN

    template = template_for("golang-middleware")
    folder = tmp_path / "function"
    (folder / "static").mkdir(parents=True)
    (folder / "static" / "file.txt").write_text("static data")
    (folder / "go.mod").write_text("module handler/function\n\ngo 1.19\n")
    (folder / "handler.go").write_text(GO_RUNNER_HANDLER)
    (folder / MAIN).mkdir()
    for rel, path in template.runner_files():
        shutil.copy(path, folder / MAIN / rel)
    done = subprocess.run(["/usr/bin/go", "build", "-o", BINARY, f"./{MAIN}"], cwd=folder,
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "GOCACHE": str(tmp_path / "cache"), "GOFLAGS": "-mod=mod",
                               "GOPATH": str(tmp_path / "gopath"), "GOPROXY": "off",
                               "GOTOOLCHAIN": "local"})
    assert done.returncode == 0, done.stderr
    port = free_port()
    process = subprocess.Popen([str(folder / BINARY)], cwd="/",
                               env={"PORT": str(port), "PATH": "/usr/bin:/bin"},
                               stderr=subprocess.PIPE, text=True)
    try:
        assert "golang-middleware listening on 127.0.0.1:" in process.stderr.readline()
        assert _request(port, "GET", "/")[0::2] == (200, b"static data")
        answers: list[tuple[int, dict, bytes]] = []
        caller = threading.Thread(target=lambda: answers.append(_request(port, "GET",
                                                                         "/slow")))
        caller.start()
        assert process.stderr.readline().strip() == "slow call started"
        process.send_signal(signal.SIGTERM)
        caller.join(30)
        assert [(status, body) for status, _, body in answers] == [(200, b"done")]
        assert process.wait(30) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()
