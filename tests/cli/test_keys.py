"""Key-protected and rate-limited invocation on a real node, keys managed with the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import echo_spec, run_cli, wait_for
from tests.support.node import http

pytestmark = pytest.mark.slow


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def call(node, name: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, reply_headers, _ = http("GET", f"{node.gate_url}/function/{name}/",
                                    headers=headers or {})
    return status, {k.lower(): v for k, v in reply_headers.items()}


def test_keys_rotation_and_rate_limit_end_to_end(cli_node, tmp_path: Path) -> None:
    ok(run_cli(cli_node, "create", "-f", str(echo_spec(tmp_path, "locked"))))
    ok(run_cli(cli_node, "wait", "locked", "--for", "active", "--timeout", "60s"))
    assert call(cli_node, "locked")[0] == 200                      # no keys: open
    first = ok(run_cli(cli_node, "key", "create", "locked")).stdout.strip()
    assert first.startswith("fk_")
    status, headers = wait_for(lambda: (lambda r: r if r[0] == 401 else None)(
        call(cli_node, "locked")))
    assert headers["www-authenticate"].startswith("Bearer")
    assert call(cli_node, "locked", {"X-API-Key": "fk_wrong"})[0] == 401
    assert call(cli_node, "locked", {"Authorization": f"Bearer {first}"})[0] == 200
    # rotation: a second key, both valid, then the first revoked
    second = ok(run_cli(cli_node, "key", "create", "locked")).stdout.strip()
    listing = ok(run_cli(cli_node, "key", "list", "locked", "-o", "json")).stdout
    assert first not in listing and second not in listing
    ids = [line.split()[0] for line in
           ok(run_cli(cli_node, "key", "list", "locked")).stdout.splitlines()[1:]]
    assert len(ids) == 2
    wait_for(lambda: call(cli_node, "locked", {"X-API-Key": second})[0] == 200)
    assert call(cli_node, "locked", {"X-API-Key": first})[0] == 200
    ok(run_cli(cli_node, "key", "revoke", "locked", ids[0]))
    wait_for(lambda: call(cli_node, "locked", {"X-API-Key": first})[0] == 401)
    assert call(cli_node, "locked", {"X-API-Key": second})[0] == 200
    refused = run_cli(cli_node, "key", "revoke", "locked", ids[0])
    assert refused.returncode == 1 and ids[0] in refused.stderr
    # issue 21: the last key does not go (that would open the function) unless --open
    last = run_cli(cli_node, "key", "revoke", "locked", ids[1])
    assert last.returncode == 1 and "is the last key of function locked" in last.stderr
    assert call(cli_node, "locked")[0] == 401
    assert call(cli_node, "locked", {"X-API-Key": second})[0] == 200
    opened = ok(run_cli(cli_node, "key", "revoke", "locked", ids[1], "--open"))
    assert "anyone may call it" in opened.stderr
    wait_for(lambda: call(cli_node, "locked")[0] == 200)

    # past the rate: 429 with Retry-After (burst 2 at 0.2/s: the third waits 5 s)
    ok(run_cli(cli_node, "create", "-f", str(echo_spec(
        tmp_path, "limited", rateLimit={"rps": 0.2, "burst": 2}))))
    ok(run_cli(cli_node, "wait", "limited", "--for", "active", "--timeout", "60s"))
    codes = [call(cli_node, "limited") for _ in range(3)]
    assert [c[0] for c in codes] == [200, 200, 429]
    assert 4 <= int(codes[2][1]["retry-after"]) <= 5
    for name in ("locked", "limited"):
        ok(run_cli(cli_node, "stop", name))
        ok(run_cli(cli_node, "delete", name))
