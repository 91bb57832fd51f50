"""Roles from the Authorization header: bearer tokens, basic auth, the anonymous role."""

from __future__ import annotations

import base64

import pytest

from faastwist.auth.authorizer import Authorizer, BasicCredentials, anonymous_role
from faastwist.auth.tokens import Role, TokenEntry, hash_token

ADMIN, READ = "admin-secret", "read-secret"
TOKENS = (TokenEntry(Role.ADMIN, hash_token(ADMIN)), TokenEntry(Role.READ, hash_token(READ)))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("header, write, code", [
    (f"Bearer {ADMIN}", True, 200),
    (f"Bearer {ADMIN}", False, 200),
    (f"bearer   {ADMIN}", True, 200),
    (f"Bearer {READ}", False, 200),
    (f"Bearer {READ}", True, 403),
    ("Bearer wrong", False, 401),
    (None, False, 401),
    ("", True, 401),
    ("Digest x", False, 401),
    (basic("u", "p"), False, 401),     # basic auth is off
])
def test_tokens_without_anonymous(header: str | None, write: bool, code: int) -> None:
    decision = Authorizer(TOKENS).check(header, write)
    assert (200 if decision.allowed else decision.code) == code
    if code == 401:
        assert decision.headers == (("WWW-Authenticate", 'Bearer realm="faastwist"'),)
        assert decision.message


def test_basic_auth_is_admin_and_advertised() -> None:
    auth = Authorizer(TOKENS, basic=BasicCredentials("admin", "pa:ss"))
    assert auth.check(basic("admin", "pa:ss"), True).role is Role.ADMIN
    assert auth.check(basic("admin", "nope"), False).code == 401
    assert auth.check("Basic !!notbase64", False).code == 401
    assert ("WWW-Authenticate", 'Basic realm="Restricted"') in auth.check(None, False).headers


@pytest.mark.parametrize("anonymous, write, code", [
    ("none", False, 401), ("none", True, 401),
    ("read", False, 200), ("read", True, 401),
    ("admin", False, 200), ("admin", True, 200),
])
def test_anonymous_roles(anonymous: str, write: bool, code: int) -> None:
    decision = Authorizer(TOKENS, anonymous=anonymous_role(anonymous)).check(None, write)
    assert (200 if decision.allowed else decision.code) == code


def test_a_wrong_token_is_refused_even_when_anonymous_may_write() -> None:
    auth = Authorizer(TOKENS, anonymous=Role.ADMIN)
    assert auth.check("Bearer stale", True).code == 401


def test_replace_swaps_tokens() -> None:
    auth = Authorizer(TOKENS)
    auth.replace([TokenEntry(Role.READ, hash_token(ADMIN))], None)
    assert auth.check(f"Bearer {ADMIN}", True).code == 403
    assert auth.check(f"Bearer {READ}", False).code == 401


def test_anonymous_role_choices() -> None:
    assert anonymous_role("none") is None
    with pytest.raises(ValueError, match="none, read, admin"):
        anonymous_role("root")
