"""OpenFaaS-style templates end to end on a real node (root, bubblewrap): ``faastwist
new`` -> a handler written as OpenFaaS's docs write them -> ``up`` -> calls through
``/function/NAME`` -> a change -> ``up`` again -> ``remove``; and builds that fail with
an error a developer can act on while the running version keeps serving.

Dependencies come from the machine's local package index (``file:///opt/pypi/simple``,
named in requirements.txt), so no test needs the network; the tests that need it
(marker ``localindex``), Debian's nodejs (``nodejs``) or Debian's Go (``golang``) are
deselected with the reason
in the report header where it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.cli import cli_env, wait_for
from tests.support.facilities import LOCAL_INDEX
from tests.support.node import FaasNodeProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.sandbox]


# python3-http, in the style of OpenFaaS's docs: JSON in and out, status codes, headers,
# the query string, a dependency
HTTP_HANDLER_V1 = '''
import json
import six


def handle(event, context):
    if event.method == "GET":
        return {
            "statusCode": 200,
            "body": {"name": event.query.get("name", "world"),
                     "tags": event.query.getlist("tag"), "path": event.path,
                     "six": six.__name__, "host": context.hostname},
            "headers": {"X-Version": "1"},
        }
    try:
        data = json.loads(event.body)
    except ValueError:
        return {"statusCode": 400, "body": "not JSON: " + event.headers.get("content-type", "")}
    return {
        "statusCode": 201,
        "body": {"sum": sum(data["numbers"]), "agent": event.headers.get("x-agent")},
        "headers": {"Location": "/things/1"},
    }
'''

HTTP_HANDLER_V2 = '''
def handle(event, context):
    return {"statusCode": 202, "body": "version 2", "headers": {"Content-Type": "text/plain"}}
'''

CLASSIC_HANDLER = '''
import os

calls = []


def handle(req):
    calls.append(req)
    print("query=" + os.environ.get("Http_Query", ""))
    return "hello " + req.strip() + " #" + str(len(calls))
'''


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaasNodeProcess]:
    node = FaasNodeProcess(tmp_path_factory.mktemp("templates-node"), provider="process",
                           controller="tplctl")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture()
def project(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A project folder and a build folder every function uid can pass through (the
    pytest folders under /tmp are 0700)."""
    builds = Path(tempfile.mkdtemp(prefix="faastwist-builds-", dir="/tmp"))
    os.chmod(builds, 0o711)
    project = tmp_path / "project"
    project.mkdir()
    try:
        yield project, builds
    finally:
        shutil.rmtree(builds, ignore_errors=True)


def cli(node: FaasNodeProcess | None, project: Path, *args: str,
        timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    home = project.parent / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "faastwist.cli", *args], cwd=project,
                          env=cli_env(node, home, **extra), capture_output=True, text=True,
                          timeout=timeout)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout}{done.stderr}"
    return done.stdout


def call(node: FaasNodeProcess, name: str, path: str = "", method: str = "GET",
         body: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict, bytes]:
    return http(method, f"{node.gate_url}/function/{name}{path}", body, headers, timeout=30)


def wait_answer(node: FaasNodeProcess, name: str, status: int, path: str = "") -> None:
    def check() -> bool:
        return call(node, name, path)[0] == status
    wait_for(check, timeout=90, interval=0.3)


@pytest.mark.localindex
def test_python3_http_template_new_up_change_remove(node: FaasNodeProcess,
                                                     project: tuple[Path, Path]) -> None:
    folder, builds = project
    out = ok(cli(node, folder, "new", "tpl-http", "--lang", "python3-http"))
    assert "tpl-http" in out
    stack = (folder / "stack.yml").read_text()
    assert "lang: python3-http" in stack and "handler: ./tpl-http" in stack
    assert "image: tpl-http:latest" in stack   # faas-cli needs one
    (folder / "tpl-http" / "handler.py").write_text(HTTP_HANDLER_V1)
    (folder / "tpl-http" / "requirements.txt").write_text(
        f"--index-url file://{LOCAL_INDEX}\nsix\n")

    out = ok(cli(node, folder, "up", "--build-dir", str(builds)))
    assert "tpl-http: built" in out and "function tpl-http created" in out
    wait_answer(node, "tpl-http", 200, "/?name=ada")

    status, headers, body = call(node, "tpl-http", "/items/7?name=ada&tag=a&tag=b")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Version"] == "1"
    assert json.loads(body) == {"name": "ada", "tags": ["a", "b"], "path": "/items/7",
                                "six": "six", "host": "function"}
    assert body.endswith(b"\n")   # Flask's jsonify ends with a newline

    status, headers, body = call(node, "tpl-http", method="POST",
                                 body=b'{"numbers": [1, 2, 3.5]}',
                                 headers={"Content-Type": "application/json",
                                          "X-Agent": "tests"})
    assert status == 201, body
    assert headers["Location"] == "/things/1"
    assert json.loads(body) == {"sum": 6.5, "agent": "tests"}

    status, headers, body = call(node, "tpl-http", method="POST", body=b"nope",
                                 headers={"Content-Type": "text/plain"})
    assert (status, body) == (400, b"not JSON: text/plain")
    assert headers["Content-Type"] == "text/html; charset=utf-8"

    record = node.json("GET", "/tpl-http")[1]
    annotations = record["spec"]["annotations"]
    assert annotations["faastwist.io/lang"] == "python3-http"
    first_digest = annotations["faastwist.io/digest"]
    assert record["spec"]["command"][1:] == ["-I", record["spec"]["command"][2], "http"]

    out = ok(cli(node, folder, "up", "--build-dir", str(builds)))   # nothing changed
    assert "tpl-http: unchanged" in out and "function tpl-http unchanged" in out

    # the new version rolls out under load: every call answers, old or new
    (folder / "tpl-http" / "handler.py").write_text(HTTP_HANDLER_V2)
    seen: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            seen.append(call(node, "tpl-http")[0])

    caller = threading.Thread(target=load)
    caller.start()
    try:
        out = ok(cli(node, folder, "up", "--build-dir", str(builds)))
        assert "tpl-http: built" in out and "function tpl-http updated" in out
        wait_answer(node, "tpl-http", 202)
    finally:
        stop.set()
        caller.join()
    assert set(seen) <= {200, 202} and 200 in seen, sorted(set(seen))
    status, headers, body = call(node, "tpl-http")
    assert (status, body, headers["Content-Type"]) == (202, b"version 2", "text/plain")
    assert node.json("GET", "/tpl-http")[1]["spec"]["annotations"][
        "faastwist.io/digest"] != first_digest

    out = ok(cli(node, folder, "remove", "--build-dir", str(builds)))
    assert "function tpl-http removed" in out
    assert not (builds / "tpl-http").exists()   # its builds go with it
    wait_answer(node, "tpl-http", 404)
    assert cli(node, folder, "remove").returncode == 1   # nothing left to remove


def test_python3_classic_template(node: FaasNodeProcess, project: tuple[Path, Path]) -> None:
    folder, builds = project
    ok(cli(node, folder, "new", "tpl-classic", "--lang", "python3"))
    (folder / "tpl-classic" / "handler.py").write_text(CLASSIC_HANDLER)
    out = ok(cli(node, folder, "up", "-f", "stack.yml", "--build-dir", str(builds)))
    assert "function tpl-classic created" in out
    wait_answer(node, "tpl-classic", 200)
    status, headers, body = call(node, "tpl-classic", "?x=1", "POST", b"ada\n",
                                 {"Content-Type": "text/plain"})
    assert status == 200
    # what it printed, then print(result); imported once per replica: the count goes on
    assert body.startswith(b"query=x=1\nhello ada #")
    count = int(body.decode().rsplit("#", 1)[1])
    status, _, body = call(node, "tpl-classic", "", "POST", b"bob")
    assert body == f"query=\nhello bob #{count + 1}\n".encode()
    assert headers["Content-Type"] == "text/plain"   # the caller's, as the watchdog does
    ok(cli(node, folder, "remove", "--filter", "tpl-classic"))
    wait_answer(node, "tpl-classic", 404)


# node, in the style of OpenFaaS's docs: JSON in and out, status, headers, query; a
# dependency from package.json (a file: package, so npm needs no registry)
NODE_HANDLER_V1 = """'use strict'
const greet = require('greet')

module.exports = async (event, context) => {
  if (event.method === 'POST') {
    if (!Array.isArray(event.body.numbers)) {
      return context.status(422).fail('numbers must be a list')
    }
    const sum = event.body.numbers.reduce((a, b) => a + b, 0)
    return context
      .status(201)
      .headers({ 'Content-Type': 'application/json', 'X-Agent': event.headers['x-agent'] })
      .succeed({ sum })
  }
  return { greeting: greet(event.query.name || 'world'), path: event.path, body: event.body }
}
"""

NODE_HANDLER_V2 = """module.exports = async (event, context) => {
  return context.status(200).headers({ 'Content-Type': 'text/plain' }).succeed('version 2')
}
"""


@pytest.mark.nodejs
def test_node_template_new_up_change_remove(node: FaasNodeProcess,
                                            project: tuple[Path, Path]) -> None:
    folder, builds = project
    ok(cli(node, folder, "new", "tpl-node", "--lang", "node"))
    handler = folder / "tpl-node"
    library = handler / "lib" / "greet"
    library.mkdir(parents=True)
    (library / "package.json").write_text('{"name": "greet", "version": "1.0.0"}')
    (library / "index.js").write_text("module.exports = (name) => 'hello ' + name\n")
    package = json.loads((handler / "package.json").read_text())
    package["dependencies"] = {"greet": "file:./lib/greet"}
    (handler / "package.json").write_text(json.dumps(package))
    (handler / "handler.js").write_text(NODE_HANDLER_V1)

    out = ok(cli(node, folder, "up", "--build-dir", str(builds)))
    assert "tpl-node: built" in out and "function tpl-node created" in out
    wait_answer(node, "tpl-node", 200)
    status, headers, body = call(node, "tpl-node", "/a/b?name=ada")
    assert status == 200
    # an object answer is JSON.stringify'd and sent as a string (Express: text/html)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert json.loads(body) == {"greeting": "hello ada", "path": "/a/b", "body": {}}
    status, headers, body = call(node, "tpl-node", "", "POST", b'{"numbers": [2, 3]}',
                                 {"Content-Type": "application/json", "X-Agent": "t"})
    assert (status, json.loads(body)) == (201, {"sum": 5})
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-Agent"] == "t"
    status, _, body = call(node, "tpl-node", "", "POST", b'{"numbers": 1}',
                           {"Content-Type": "application/json"})
    assert (status, body) == (422, b"numbers must be a list")

    (handler / "handler.js").write_text("module.exports = async (event, context) => {\n")
    done = cli(node, folder, "up", "--build-dir", str(builds))
    assert done.returncode == 1
    assert "tpl-node/handler.js, line 2: SyntaxError" in done.stderr, done.stderr

    (handler / "handler.js").write_text(NODE_HANDLER_V2)
    out = ok(cli(node, folder, "up", "--build-dir", str(builds)))
    assert "function tpl-node updated" in out
    wait_answer(node, "tpl-node", 200)
    def updated() -> bool:
        return call(node, "tpl-node")[2] == b"version 2"
    wait_for(updated, timeout=60)
    ok(cli(node, folder, "remove"))
    wait_answer(node, "tpl-node", 404)


@pytest.mark.localindex
def test_build_failures_name_the_problem_and_keep_the_version_serving(
        node: FaasNodeProcess, project: tuple[Path, Path]) -> None:
    folder, builds = project
    ok(cli(node, folder, "new", "tpl-fail", "--lang", "python3-http"))
    handler = folder / "tpl-fail" / "handler.py"
    ok(cli(node, folder, "up", "--build-dir", str(builds)))
    wait_answer(node, "tpl-fail", 200)
    serving = call(node, "tpl-fail")[2]

    handler.write_text("def handle(event, context):\n    return {'body': 1\n")
    done = cli(node, folder, "up", "--build-dir", str(builds))
    assert done.returncode == 1
    assert "tpl-fail/handler.py, line 2: SyntaxError" in done.stderr, done.stderr

    handler.write_text("def handler(event, context):\n    return {}\n")
    done = cli(node, folder, "build", "--build-dir", str(builds))
    assert done.returncode == 1
    assert "defines no function handle(event, context)" in done.stderr, done.stderr

    handler.write_text("import json\nraise RuntimeError('no config')\n")
    done = cli(node, folder, "build", "--build-dir", str(builds))
    assert "tpl-fail/handler.py, line 2: RuntimeError: no config" in done.stderr, done.stderr

    handler.write_text("def handle(event, context):\n    return {'body': 'new'}\n")
    (folder / "tpl-fail" / "requirements.txt").write_text(
        f"--index-url file://{LOCAL_INDEX}\nno-such-package-faastwist-test==1.0\n")
    done = cli(node, folder, "up", "--build-dir", str(builds))
    assert done.returncode == 1
    assert ("pip could not install no-such-package-faastwist-test==1.0 (from "
            "tpl-fail/requirements.txt)") in done.stderr, done.stderr
    assert "No matching distribution found" in done.stderr   # pip's own last lines
    # no half-built folder is left, and the running version still answers
    assert [p.name for p in (builds / "tpl-fail").iterdir()
            if not p.name.startswith(".")] == [Path(node.json(
                "GET", "/tpl-fail")[1]["spec"]["command"][2]).parent.name]
    status, _, body = call(node, "tpl-fail")
    assert (status, body) == (200, serving)
    ok(cli(node, folder, "remove"))


# golang-middleware, as OpenFaaS's README writes it: the handler reads the body, the
# query, headers, answers JSON with a status and headers; init() runs once per replica.
# Its dependency is a module of its own folder (a replace directive), so the build needs
# no network: the test builds with GOPROXY=off.
GO_HANDLER_V1 = """package function

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"example.com/greet"
)

var loads int

func init() {
	loads++
}

type sumRequest struct {
	Numbers []float64 `json:"numbers"`
}

func Handle(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		query := r.URL.Query()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Version", "1")
		w.WriteHeader(http.StatusOK)
		json.NewEncoder(w).Encode(map[string]interface{}{
			"greeting": greet.Hello(query.Get("name")),
			"tags":     query["tag"],
			"path":     r.URL.Path,
			"loads":    loads,
		})
		return
	}
	var input []byte
	if r.Body != nil {
		defer r.Body.Close()
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		input = body
	}
	var req sumRequest
	if err := json.Unmarshal(input, &req); err != nil {
		http.Error(w, fmt.Sprintf("not JSON: %s", r.Header.Get("Content-Type")),
			http.StatusBadRequest)
		return
	}
	sum := 0.0
	for _, n := range req.Numbers {
		sum += n
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Location", "/things/1")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(map[string]interface{}{"sum": sum, "agent": r.Header.Get("X-Agent")})
}
"""

GO_MOD = """module handler/function

go 1.19

require example.com/greet v0.0.0

replace example.com/greet => ./greet
"""

GO_HANDLER_V2 = """package function

import "net/http"

func Handle(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusAccepted)
	w.Write([]byte("version 2"))
}
"""


@pytest.mark.golang
def test_golang_middleware_template_new_up_change_remove(node: FaasNodeProcess,
                                                         project: tuple[Path, Path]) -> None:
    folder, builds = project
    out = ok(cli(node, folder, "new", "tpl-go", "--lang", "golang-middleware"))
    assert "tpl-go/handler.go" in out
    assert "lang: golang-middleware" in (folder / "stack.yml").read_text()
    handler = folder / "tpl-go"
    (handler / "greet").mkdir()
    (handler / "greet" / "go.mod").write_text("module example.com/greet\n\ngo 1.19\n")
    (handler / "greet" / "greet.go").write_text(
        'package greet\n\nfunc Hello(name string) string {\n\tif name == "" {\n'
        '\t\tname = "world"\n\t}\n\treturn "hello " + name\n}\n')
    (handler / "go.mod").write_text(GO_MOD)
    (handler / "handler.go").write_text(GO_HANDLER_V1)

    out = ok(cli(node, folder, "up", "--build-dir", str(builds), GOPROXY="off"))
    assert "tpl-go: built" in out and "function tpl-go created" in out
    wait_answer(node, "tpl-go", 200)

    status, headers, body = call(node, "tpl-go", "/items/7?name=ada&tag=a&tag=b")
    assert status == 200, body
    assert (headers["Content-Type"], headers["X-Version"]) == ("application/json", "1")
    assert json.loads(body) == {"greeting": "hello ada", "tags": ["a", "b"],
                                "path": "/items/7", "loads": 1}
    # the same function through the gate's routing header
    status, _, body = http("GET", f"{node.gate_url}/other/path?name=bob",
                           headers={"X-FaaS-Func-Name": "tpl-go"}, timeout=30)
    assert status == 200 and json.loads(body)["greeting"] == "hello bob"
    assert json.loads(body)["path"] == "/other/path"

    status, headers, body = call(node, "tpl-go", method="POST",
                                 body=b'{"numbers": [1, 2, 3.5]}',
                                 headers={"Content-Type": "application/json",
                                          "X-Agent": "tests"})
    assert status == 201, body
    assert headers["Location"] == "/things/1"
    assert json.loads(body) == {"sum": 6.5, "agent": "tests"}
    status, headers, body = call(node, "tpl-go", method="POST", body=b"nope",
                                 headers={"Content-Type": "text/plain"})
    assert (status, body) == (400, b"not JSON: text/plain\n")   # http.Error's newline
    assert headers["Content-Type"] == "text/plain; charset=utf-8"

    record = node.json("GET", "/tpl-go")[1]
    assert record["spec"]["annotations"]["faastwist.io/lang"] == "golang-middleware"
    first_digest = record["spec"]["annotations"]["faastwist.io/digest"]
    assert record["spec"]["command"] == [
        str(builds / "tpl-go" / first_digest[:24] / "function" / ".handler")]

    # build failures: named, and the running version keeps serving
    (handler / "handler.go").write_text(GO_HANDLER_V1.replace("sum := 0.0", "sum := "))
    done = cli(node, folder, "up", "--build-dir", str(builds), GOPROXY="off")
    assert done.returncode == 1
    line = GO_HANDLER_V1.split("\n").index("\tsum := 0.0") + 2   # the error is on the next
    assert f"tpl-go/handler.go:{line}:" in done.stderr and "syntax error" in done.stderr, \
        done.stderr
    (handler / "handler.go").write_text(GO_HANDLER_V1.replace("func Handle(", "func Handler("))
    done = cli(node, folder, "up", "--build-dir", str(builds), GOPROXY="off")
    assert done.returncode == 1
    assert ("tpl-go/handler.go: package function defines no func Handle(w "
            "http.ResponseWriter, r *http.Request)") in done.stderr, done.stderr
    assert call(node, "tpl-go", "?name=still")[0] == 200
    assert node.json("GET", "/tpl-go")[1]["spec"]["annotations"][
        "faastwist.io/digest"] == first_digest

    # the new version rolls out under load: every call answers, old or new
    (handler / "handler.go").write_text(GO_HANDLER_V2)
    seen: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            seen.append(call(node, "tpl-go")[0])

    caller = threading.Thread(target=load)
    caller.start()
    try:
        out = ok(cli(node, folder, "up", "--build-dir", str(builds), GOPROXY="off"))
        assert "tpl-go: built" in out and "function tpl-go updated" in out
        wait_answer(node, "tpl-go", 202)
    finally:
        stop.set()
        caller.join()
    assert set(seen) <= {200, 202} and 200 in seen, sorted(set(seen))
    status, headers, body = call(node, "tpl-go")
    assert (status, body, headers["Content-Type"]) == (202, b"version 2", "text/plain")

    out = ok(cli(node, folder, "remove", "--build-dir", str(builds)))
    assert "function tpl-go removed" in out
    assert not (builds / "tpl-go").exists()
    wait_answer(node, "tpl-go", 404)


# golang-http as OpenFaaS's README and `faas-cli new` write it, unmodified: its go.mod
# asks for Go 1.24 and requires the templates SDK (built offline with the runner's copy)
GO_HTTP_MOD = """module handler/function

go 1.24.0

require github.com/openfaas/templates-sdk/go-http v0.0.0-20220408082716-5981c545cb03
"""

GO_HTTP_HANDLER = """package function

import (
	"fmt"
	"net/http"
	"net/url"

	handler "github.com/openfaas/templates-sdk/go-http"
)

// Handle a function invocation
func Handle(req handler.Request) (handler.Response, error) {
	var err error

	if req.Method == http.MethodPost && len(req.Body) == 0 {
		return handler.Response{
			Body: []byte("the input was invalid"),
		}, fmt.Errorf("invalid input")
	}
	query, _ := url.ParseQuery(req.QueryString)
	message := fmt.Sprintf("Hello %s, input was: %s, agent: %s",
		query.Get("name"), string(req.Body), req.Header.Get("X-Agent"))

	return handler.Response{
		Body:       []byte(message),
		StatusCode: http.StatusAccepted,
		Header:     http.Header{"X-Served-By": []string{"golang-http"}},
	}, err
}
"""


@pytest.mark.golang
def test_golang_http_template_runs_openfaas_handler_unmodified(
        node: FaasNodeProcess, project: tuple[Path, Path]) -> None:
    folder, builds = project
    ok(cli(node, folder, "new", "tpl-gohttp", "--lang", "golang-http"))
    handler = folder / "tpl-gohttp"
    (handler / "go.mod").write_text(GO_HTTP_MOD)
    (handler / "handler.go").write_text(GO_HTTP_HANDLER)
    done = cli(node, folder, "up", "--build-dir", str(builds), GOPROXY="off")
    out = ok(done)
    assert "asks for go 1.24.0; building with the installed go" in done.stderr
    assert "function tpl-gohttp created" in out
    wait_answer(node, "tpl-gohttp", 202)
    status, headers, body = call(node, "tpl-gohttp", "?name=ada", "PUT", b"data",
                                 {"X-Agent": "t"})
    assert (status, body) == (202, b"Hello ada, input was: data, agent: t")
    assert headers["X-Served-By"] == "golang-http"
    status, _, body = call(node, "tpl-gohttp", "", "POST", b"")
    assert (status, body) == (500, b"the input was invalid")
    ok(cli(node, folder, "remove"))
    wait_answer(node, "tpl-gohttp", 404)


def test_stack_file_errors_name_the_key(project: tuple[Path, Path]) -> None:
    folder, _ = project
    (folder / "stack.yml").write_text(
        "version: 1.0\nfunctions:\n  f1:\n    lang: cobol\n    handler: ./f1\n")
    done = cli(None, folder, "build")
    assert done.returncode == 2
    assert "functions.f1.lang: 'cobol' is not a template" in done.stderr
    (folder / "stack.yml").write_text(
        "version: 1.0\nfunctions:\n  f1:\n    lang: python3\n    handler: ./f1\n"
        "    limitz: {}\n")
    assert "functions.f1.limitz: unknown key" in cli(None, folder, "build").stderr
    (folder / "stack.yml").write_text(
        "version: 1.0\nfunctions:\n  f1:\n    lang: python3\n    handler: ./f1\n"
        "    labels: {com.openfaas.scale.min: lots}\n")
    done = cli(None, folder, "up")   # refused before any build or call
    assert done.returncode == 2
    assert "labels.com.openfaas.scale.min: must be a whole number" in done.stderr, done.stderr
    ok(cli(None, folder, "new", "f2", "--lang", "python3"))   # appends to the file
    assert "already exists" in cli(None, folder, "new", "f2", "--lang",
                                                  "python3").stderr
    assert "no such template" in cli(None, folder, "new", "f3", "--lang", "cobol").stderr
