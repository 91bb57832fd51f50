"""The coverage ``make test`` reports includes the twistd nodes' own lines.

A node ends by re-raising the SIGTERM that stopped it, which skips ``atexit`` and so
coverage's own save: without ``tests.support.covered`` the node's data is lost (measured:
faastwist/node.py read 0% in a whole run). This runs a node the way the suite does under
coverage, with a data file of its own, and reads what the node saved.
"""

from __future__ import annotations

import signal
from pathlib import Path

import coverage
import pytest

from tests.support.node import FaasNodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.process]

ROOT = Path(__file__).resolve().parents[2]


def test_a_sigtermed_node_saves_its_coverage(tmp_path: Path, monkeypatch) -> None:
    data_file = tmp_path / "cov" / ".coverage"
    rcfile = tmp_path / "coveragerc"
    rcfile.write_text(f"[run]\nsource = {ROOT / 'faastwist'}\nparallel = true\n"
                      f"data_file = {data_file}\n")
    # this test's own measurement (if any) must not reach the node: only the rc file above
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    monkeypatch.delenv("COVERAGE_FILE", raising=False)
    monkeypatch.setenv("COVERAGE_PROCESS_START", str(rcfile))

    node = FaasNodeProcess(tmp_path / "node").start()
    try:
        assert node.json("GET")[0] == 200
    finally:
        code = node.stop()
    # twistd's exit after a SIGTERM: killed by the signal, no atexit ran in the node
    assert code == -signal.SIGTERM, node.log()

    saved = list(data_file.parent.glob(".coverage.*"))
    assert saved, f"the node saved no coverage data:\n{node.log()}"
    combined = coverage.Coverage(data_file=str(data_file))
    combined.combine([str(path) for path in saved])
    data = combined.get_data()
    measured = {Path(name).relative_to(ROOT).as_posix(): data.lines(name) or []
                for name in data.measured_files()}
    # the start-up (tap's makeService) and the shutdown path (the node's stopService)
    assert measured.get("faastwist/tap.py"), sorted(measured)
    # the node's last shutdown line ran after the SIGTERM, and was saved all the same
    source = (ROOT / "faastwist" / "node.py").read_text().splitlines()
    stopped = next(number for number, line in enumerate(source, 1)
                   if 'log.info("faasgate stopped")' in line)
    assert stopped in measured.get("faastwist/node.py", []), node.log()
