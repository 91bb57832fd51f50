"""The tests keep their own rules: no skip (a missing facility deselects, with its reason
in the report header: tests/conftest.py), and no fixed sleep except where listed here
with why (a poll in a ``while`` loop is fine: tests/support/hygiene.py).

A sleep that shows that nothing happened ("a poll or more: it must not see the change")
passes on a slow machine whatever the code does: wait for a positive event instead (a
later request answered, a log line, a counter). Those not yet rewritten are PENDING
(issue 25): the list only shrinks.
"""

from __future__ import annotations

from tests.support import hygiene

#: (file, function, call) -> why the fixed wait is right there
JUSTIFIED: dict[tuple[str, str, str], str] = {
    ("tests/support/twowrite.py", "do_GET", 'time.sleep(int(self.path.split("/")[2]) / 1000)'):
        "the function under test: a gap it is asked for between its head and its body",
    ("tests/admin/test_console_browser.py", "logs_show_request", "time.sleep(0.3)"):
        "inside page.wait's poll: the logs panel fills after the click",
    ("tests/cluster/test_cluster.py",
     "test_leader_kill9_under_load_fails_nothing_and_a_new_leader_acts_within_ttl",
     "time.sleep(0.5)"):
        "the load runs a while before the kill and after the new leader: requests on both "
        "sides of the failover are measured",
    ("tests/cluster/test_cluster.py", "test_stop_under_load_answers_only_200_and_503",
     "time.sleep(1.0)"): "the load runs before the stop: requests across it are measured",
    ("tests/cluster/test_cluster.py", "test_stop_under_load_answers_only_200_and_503",
     "time.sleep(1.5)"): "the load runs after the stop: requests across it are measured",
    ("tests/e2e/test_async_e2e.py", "test_kill_9_nats_mid_run_loses_no_202",
     "time.sleep(1.0)"): "how long nats-server stays down: the outage under test",
    ("tests/e2e/test_limits_e2e.py", "test_memory_and_cpu_limits_are_enforced_and_reported",
     "time.sleep(3.0)"): "the window the CPU share is measured over (/proc)",
    ("tests/e2e/test_rollout_e2e.py", "test_openfaas_update_under_c16_load_has_no_failed_request",
     "time.sleep(1.5)"): "the load runs before the update: requests across it are measured",
    ("tests/e2e/test_rollout_e2e.py", "test_openfaas_update_under_c16_load_has_no_failed_request",
     "time.sleep(1.0)"): "the load runs after the update: requests across it are measured",
    ("tests/queue/test_bridge.py", "hang", "asyncio.sleep(60)"):
        "a coroutine that never ends in time: what the bridge's timeout must cut",
    ("tests/queue/test_bridge.py", "work", "asyncio.sleep(0.01)"):
        "a coroutine that yields once: the call must cross the loop's thread",
    ("tests/queue/test_bridge.py", "block", "time.sleep(0.2)"):
        "a coroutine that holds the loop's thread: the calls behind it must wait for it",
    ("tests/queue/test_bridge.py", "test_calls_and_results_cross_in_batches",
     "time.sleep(0.5)"):
        "holds the reactor: the results the loop finishes meanwhile must cross back together",
    ("tests/queue/test_bridge.py", "hang", "asyncio.sleep(seconds)"):
        "a coroutine that never ends in time (60s asked): what the bridge's timeout must cut",
    ("tests/queue/test_bridge.py", "work", "asyncio.sleep(0)"):
        "a coroutine that yields to the loop once: the calls of a turn interleave on it",
    ("tests/queue/test_callback.py", "slow", "time.sleep(1.0)"):
        "a resolver that hangs (on the resolver's thread): what the callback timeout must cut",
    ("tests/support/asyncfn.py", "do_POST",
     'time.sleep(int(parse_qs(url.query).get("ms", ["200"])[0]) / 1000)'):
        "a slow function (?ms=N): the work the queue waits for",
    ("tests/support/upstream.py", "handle_any", "time.sleep(delay)"):
        "a slow function: the delay its path asks for",
    ("tests/support/upstream.py", "handle_any", "time.sleep(int(parts[1]) / 1000)"):
        "a slow function: the delay its path asks for",
    ("tests/support/upstream.py", "handle_any", "time.sleep(0.05)"):
        "a function that trickles its answer: the pause between chunks",
}

#: fixed sleeps still to become a wait for a positive event (issue 25); only shrinks
PENDING: dict[tuple[str, str, str], str] = {
    ("tests/cluster/test_cluster.py",
     "test_a_replica_killed_under_back_pressure_ends_the_request_within_1s",
     "time.sleep(1.0)"): "waits for the gate to pause the replica's connection",
    ("tests/cluster/test_cluster.py",
     "test_sigstopped_leader_writes_nothing_and_every_gate_serves_the_update",
     "time.sleep(1.0)"): "shows that the ex-leader writes nothing",
    ("tests/e2e/test_admin_auth_e2e.py", "test_sighup_reloads_the_tokens_file",
     "time.sleep(2.5)"): "shows that a poll does not see a change that kept the file's stamp",
    ("tests/e2e/test_admin_auth_e2e.py",
     "test_cross_site_form_post_is_refused_with_anonymous_admin", "time.sleep(1.5)"):
        "shows that no function was deployed by the refused request",
    ("tests/e2e/test_admin_auth_e2e.py",
     "test_the_gates_system_relay_applies_the_admin_host_and_origin_checks",
     "time.sleep(1.5)"): "shows that no function was deployed by the refused request",
    ("tests/e2e/test_async_e2e.py", "test_stop_keeps_calls_queued_and_delete_dead_letters_them",
     "time.sleep(1.0)"): "shows that a stopped function's call is not delivered",
    ("tests/e2e/test_drain_e2e.py", "test_sigterm_drains_before_the_listener_closes",
     "time.sleep(0.3)"): "waits for the request to reach the function",
    ("tests/e2e/test_observability_e2e.py", "test_access_log_switched_off",
     "time.sleep(0.3)"): "shows that no access line was written",
    ("tests/e2e/test_workers_e2e.py", "test_two_workers_serve_one_port_with_one_view",
     "time.sleep(2.5)"): "shows that later reports count nothing twice",
}


def test_no_skip_and_no_unlisted_fixed_sleep() -> None:
    found = {(path, function, call) for path, function, call, _ in hygiene.uses()}
    lines = {(path, function, call): line for path, function, call, line in hygiene.uses()}
    unlisted = sorted(found - set(JUSTIFIED) - set(PENDING))
    assert unlisted == [], [f"{p}:{lines[(p, f, c)]} {f}: {c}" for p, f, c in unlisted]


def test_the_lists_hold_only_what_is_there() -> None:
    found = {(path, function, call) for path, function, call, _ in hygiene.uses()}
    assert sorted(set(JUSTIFIED) - found) == [], "gone: remove it from JUSTIFIED"
    assert sorted(set(PENDING) - found) == [], "rewritten: remove it from PENDING"
    assert set(JUSTIFIED).isdisjoint(PENDING)
    assert not any(call.startswith(("pytest.skip", "pytest.mark.skip", "pytest.importorskip",
                                    "pytest.mark.xfail")) for _, _, call in JUSTIFIED)


def test_the_finder_tells_polls_from_fixed_sleeps(tmp_path) -> None:
    (tmp_path / "sample.py").write_text(
        "import time, pytest\n"
        "def a():\n    while not done():\n        time.sleep(0.05)\n"
        "def b():\n    time.sleep(1.0)\n"
        "def c():\n    while True:\n        time.sleep(2)\n"
        "def d():\n    pytest.skip('no')\n"
        "SCRIPT = 'import time; time.sleep(30)'\n"
        "@pytest.mark.skipif(True, reason='x')\ndef e():\n    pass\n")
    found = [(function, call) for _, function, call, _ in hygiene.uses(tmp_path, tmp_path)]
    assert found == [("", "pytest.mark.skipif"), ("b", "time.sleep(1.0)"),
                     ("c", "time.sleep(2)"), ("d", "pytest.skip('no')")]


def test_an_assertion_that_accepts_two_answers_says_why() -> None:
    """An assertion of two status codes passes on either: only where both are right by the
    spec, with a comment on the line or just above saying why."""
    import re

    pattern = re.compile(r"assert .*\bin \(\d{3}, \d{3}")
    bare = []
    for path in sorted((hygiene.ROOT / "tests").rglob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if pattern.search(line) and "#" not in line and not (
                    number and lines[number - 1].strip().startswith("#")):
                bare.append(f"{path.relative_to(hygiene.ROOT)}:{number + 1}: {line.strip()}")
    assert bare == []


def test_no_assertion_depends_on_who_runs_the_tests() -> None:
    """``if os.geteuid() == 0: assert ...`` checks nothing where it matters least to the
    author: a test that needs root (or a sandbox) carries the marker and asserts always."""
    import re

    pattern = re.compile(r"^\s*(el)?if .*(geteuid\(\)|sandboxed\b|sandbox\.available|"
                         r"sandbox_unavailable\(\))")
    found = [f"{path.relative_to(hygiene.ROOT)}:{number}: {line.strip()}"
             for path in sorted((hygiene.ROOT / "tests").rglob("*.py"))
             if path.name not in ("facilities.py", "conftest.py", "test_hygiene.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert found == []
