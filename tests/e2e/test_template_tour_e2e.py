"""The templates' tour (docs-pending/golang.rst, "A tour for every template"), its
commands run as they are for every template faastwist ships, each on a node started
fresh (a node folder laid out as the repository's, as on a fresh machine after ``make
system-deps``): ``new``, ``up``, ``curl``, ``remove``.

The node template needs Debian's nodejs (marker ``nodejs``), the Go ones Debian's Go
(``golang``): deselected with the reason where missing.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from faastwist.templates import TEMPLATES, Runtime
from tests.e2e.test_doc_tours_e2e import localise, run
from tests.support.node import ROOT, FaasNodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.sandbox]

TOUR_FILE = ROOT / "docs" / "cli.rst"
TOUR_LANG = "python3-http"
MARKS = {Runtime.NODE: [pytest.mark.nodejs], Runtime.GO: [pytest.mark.golang],
         Runtime.PYTHON: []}


def tour_commands() -> list[str]:
    text = TOUR_FILE.read_text()
    section = text[text.index("Templates: write a handler, not a server"):]
    match = re.search(r"\.\. code-block:: console\n\n((?:   .*\n|\n)+)", section)
    assert match, f"no console block in {TOUR_FILE}"
    return [line[5:].split("  #")[0] for line in match.group(1).splitlines()
            if line.startswith("   $ ")]


def test_the_tour_is_what_the_issue_promises() -> None:
    assert tour_commands() == ["export PATH=$PWD/.venv/bin:$PATH",
                               "export FAASTWIST_NODE_CONFIG=conf/controller.yaml",
                               f"faastwist new hello --lang {TOUR_LANG}",
                               "faastwist up -f stack.yml",
                               "curl http://127.0.0.1:10083/function/hello",
                               "faastwist remove -f stack.yml"]
    text = TOUR_FILE.read_text()
    for lang in TEMPLATES:   # the text names every template it claims the tour works for
        assert f"``{lang}``" in text or f"--lang {lang}" in text, lang


@pytest.mark.parametrize("lang", [pytest.param(lang, marks=MARKS[template.runtime])
                                  for lang, template in sorted(TEMPLATES.items())])
def test_template_tour(tour_node: FaasNodeProcess, lang: str) -> None:
    lines = [line.replace(f"--lang {TOUR_LANG}", f"--lang {lang}")
             for line in tour_commands()]
    url = "http://127.0.0.1:10083/function/hello"
    # the replica starts with the first call: wait for it as a user would, then the
    # tour's own curl, its status printed after its answer
    script = "\n".join(lines).replace(
        f"curl {url}", f"for i in $(seq 150); do curl -sf -o /dev/null {url} && break; "
                       f"sleep 0.2; done; curl -s -w '\\n[HTTP %{{http_code}}]\\n' {url}")
    builds = Path(tempfile.mkdtemp(prefix="faastwist-tour-builds-", dir="/tmp"))
    os.chmod(builds, 0o711)
    prelude = f'faastwist() {{ {sys.executable} -m faastwist.cli "$@"; }}\n'
    try:
        output = run(prelude + localise(script, tour_node) + "\n", tour_node,
                     FAASTWIST_SERVER=tour_node.admin_root, FAASTWIST_GATE=tour_node.gate_url,
                     FAASTWIST_BUILD_DIR=str(builds))
    finally:
        shutil.rmtree(builds, ignore_errors=True)
    handler = TEMPLATES[lang].handler_file
    assert f"function hello ({lang}): handler in ./hello/{handler}" in output, output
    assert re.search(rf"hello: built [0-9a-f]{{12}} \({re.escape(lang)}\)", output), output
    assert "function hello created" in output, output
    # python3 (classic) answers the request's body, empty here; the others greet
    answer = "" if lang == "python3" else "Hello from faastwist!"
    assert re.search(rf"(^|\n){re.escape(answer)}\n?\n\[HTTP 200\]", output), output
    assert "function hello removed" in output, output
