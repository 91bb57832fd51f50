"""``faastwist token create|list|revoke`` (faastwist/cli/token.py) on real files, through
click's runner: the operator's commands on the node's machine, while the node is down."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from faastwist.auth.tokens import ADMIN_TOKEN_SUFFIX, Role, hash_token, read_tokens
from faastwist.cli.token import (
    NODE_CONFIG_ENV,
    TOKENS_FILE_ENV,
    token,
    token_from_node,
    tokens_file_of,
)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(token, list(args), env=env or {}, catch_exceptions=False)


def node_config(tmp_path: Path, tokens: Path) -> Path:
    config = tmp_path / "controller.yaml"
    config.write_text(f"name: ctl\nprovider: process\nadmin:\n  auth:\n"
                      f"    tokensFile: {tokens}\n")
    return config


def test_create_prints_the_token_once_and_keeps_only_its_hash(tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    result = run("--tokens-file", str(tokens), "create", "--role", "read")
    assert result.exit_code == 0
    secret = result.stdout.strip()
    assert secret.startswith("ftw_")
    entries = read_tokens(tokens)
    assert [(e.role, e.digest) for e in entries] == [(Role.READ, hash_token(secret))]
    assert secret not in tokens.read_text()
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert result.stderr == (f"token {entries[0].id} (read) added to {tokens}; it is shown "
                             f"only now\n")


def test_list_shows_ids_and_roles_as_a_table_or_json(tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    run("--tokens-file", str(tokens), "create", "--role", "admin")
    run("--tokens-file", str(tokens), "create", "--role", "read")
    ids = [e.id for e in read_tokens(tokens)]
    table = run("--tokens-file", str(tokens), "list")
    assert table.exit_code == 0
    assert table.stdout.splitlines() == [
        "ID            ROLE", f"{ids[0]:<14}admin", f"{ids[1]:<14}read"]
    listed = run("--tokens-file", str(tokens), "list", "-o", "json")
    assert json.loads(listed.stdout) == [{"id": ids[0], "role": "admin"},
                                         {"id": ids[1], "role": "read"}]


def test_revoke_removes_the_token_and_the_admin_copy_of_that_token_only(
        tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    first = run("--tokens-file", str(tokens), "create", "--role", "admin").stdout.strip()
    second = run("--tokens-file", str(tokens), "create", "--role", "admin").stdout.strip()
    admin_copy = Path(str(tokens) + ADMIN_TOKEN_SUFFIX)
    admin_copy.write_text(first + "\n")
    gone_id = hash_token(second)[:12]
    result = run("--tokens-file", str(tokens), "revoke", gone_id)
    assert result.exit_code == 0
    assert result.stdout == f"token {read_tokens_id(second)} (admin) revoked\n"
    assert [e.digest for e in read_tokens(tokens)] == [hash_token(first)]
    assert admin_copy.read_text() == first + "\n"   # another token's copy stays
    run("--tokens-file", str(tokens), "revoke", hash_token(first)[:8])
    assert not admin_copy.exists()                  # a revoked token is not handed out


def read_tokens_id(secret: str) -> str:
    from faastwist.auth.tokens import TokenEntry

    return TokenEntry(Role.ADMIN, hash_token(secret)).id


def test_the_file_comes_from_the_node_config_or_the_environment(tmp_path: Path) -> None:
    tokens = tmp_path / "from-config"
    config = node_config(tmp_path, tokens)
    assert tokens_file_of(str(config)) == str(tokens)
    assert run("--config", str(config), "create", "--role", "read").exit_code == 0
    assert len(read_tokens(tokens)) == 1
    by_env = run("list", "-o", "json", env={NODE_CONFIG_ENV: str(config)})
    assert len(json.loads(by_env.stdout)) == 1
    other = tmp_path / "by-env"
    assert run("create", "--role", "admin", env={TOKENS_FILE_ENV: str(other)}).exit_code == 0
    assert read_tokens(other)[0].role is Role.ADMIN


def test_the_tokens_file_flag_wins_over_the_config(tmp_path: Path) -> None:
    config = node_config(tmp_path, tmp_path / "from-config")
    chosen = tmp_path / "chosen"
    run("--config", str(config), "--tokens-file", str(chosen), "create", "--role", "read")
    assert chosen.exists() and not (tmp_path / "from-config").exists()


def test_no_file_named_is_a_usage_error_saying_how(tmp_path: Path) -> None:
    result = CliRunner().invoke(token, ["list"], env={})
    assert result.exit_code == 2
    assert ("say which tokens file: --config conf/controller.yaml (the node's config) or "
            "--tokens-file PATH") in result.stderr


def test_a_bad_node_config_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "controller.yaml"
    config.write_text("name: ctl\nadmin:\n  auth:\n    tokenFile: x\n")
    result = CliRunner().invoke(token, ["--config", str(config), "list"], env={})
    assert result.exit_code == 2
    assert result.stderr.endswith(
        f"\nError: --config {config}: admin.auth.tokenFile: unknown field\n")


@pytest.mark.parametrize("args", [["list"], ["revoke", "abcdef"]])
def test_a_bad_tokens_file_is_an_error_naming_its_line(tmp_path: Path,
                                                       args: list[str]) -> None:
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("admin not-a-digest\n")
    result = CliRunner().invoke(token, ["--tokens-file", str(tokens), *args], env={})
    assert result.exit_code == 1
    assert f"Error: {tokens}, line 1: not a SHA-256 hex digest" in result.stderr


def test_create_refuses_to_append_to_a_file_the_node_would_refuse(tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("root 0123\n")
    result = CliRunner().invoke(token, ["--tokens-file", str(tokens), "create", "--role",
                                        "admin"], env={})
    assert result.exit_code == 1
    assert "line 1: expected 'ROLE SHA256HEX', got 2 fields" not in result.stderr
    assert "line 1: role must be admin or read, got 'root'" in result.stderr
    assert tokens.read_text() == "root 0123\n"


def test_revoke_of_an_unknown_or_short_id_says_so(tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    run("--tokens-file", str(tokens), "create", "--role", "admin")
    unknown = CliRunner().invoke(token, ["--tokens-file", str(tokens), "revoke", "000000"],
                                 env={})
    assert unknown.exit_code == 1 and f"no token with id 000000 in {tokens}" in unknown.stderr
    short = CliRunner().invoke(token, ["--tokens-file", str(tokens), "revoke", "abc"], env={})
    assert short.exit_code == 1 and "at least 6 hex digits" in short.stderr


def test_the_role_is_required_and_checked(tmp_path: Path) -> None:
    tokens = str(tmp_path / "admin-tokens")
    assert CliRunner().invoke(token, ["--tokens-file", tokens, "create"], env={}).exit_code == 2
    bad = CliRunner().invoke(token, ["--tokens-file", tokens, "create", "--role", "root"],
                             env={})
    assert bad.exit_code == 2 and "Invalid value for '--role': 'root' is not one of" in bad.stderr


def test_token_from_node_reads_the_admin_copy_through_either_variable(
        tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    Path(str(tokens) + ADMIN_TOKEN_SUFFIX).write_text("ftw_secret\n")
    config = node_config(tmp_path, tokens)
    assert token_from_node({TOKENS_FILE_ENV: str(tokens)}) == "ftw_secret"
    assert token_from_node({NODE_CONFIG_ENV: str(config)}) == "ftw_secret"
    assert token_from_node({TOKENS_FILE_ENV: str(tokens),
                            NODE_CONFIG_ENV: "/nonexistent.yaml"}) == "ftw_secret"
    assert token_from_node({}) == ""
    assert token_from_node({TOKENS_FILE_ENV: str(tmp_path / "none")}) == ""


def test_the_variables_are_the_documented_ones() -> None:
    assert NODE_CONFIG_ENV == "FAASTWIST_NODE_CONFIG"
    assert TOKENS_FILE_ENV == "FAASTWIST_TOKENS_FILE"


def test_the_help_names_the_flags_their_variables_and_the_roles() -> None:
    group = run("--help").stdout
    assert group.startswith("Usage: token [OPTIONS] COMMAND [ARGS]...")
    assert "--config PATH" in group and "--tokens-file PATH" in group
    flat = " ".join(group.split())
    assert ("The node's controller.yaml; its admin.auth.tokensFile is managed "
            "[env FAASTWIST_NODE_CONFIG].") in flat
    assert ("--tokens-file PATH The tokens file itself [env FAASTWIST_TOKENS_FILE]. "
            "--help") in flat
    create = " ".join(run("create", "--help").stdout.split())
    assert "--role [read|admin] admin: everything; read: GET/HEAD only. [required]" in create
    assert run("revoke", "--help").stdout.startswith("Usage: token revoke [OPTIONS] ID")


def test_the_json_listing_is_indented_by_two(tmp_path: Path) -> None:
    tokens = tmp_path / "admin-tokens"
    run("--tokens-file", str(tokens), "create", "--role", "read")
    entry = read_tokens(tokens)[0]
    listed = run("--tokens-file", str(tokens), "list", "-o", "json").stdout
    assert listed == f'[\n  {{\n    "id": "{entry.id}",\n    "role": "read"\n  }}\n]\n'
