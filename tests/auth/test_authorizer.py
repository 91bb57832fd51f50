"""Roles from the Authorization header: bearer tokens, basic auth, the anonymous role."""

from __future__ import annotations

import base64

import pytest

from faastwist.auth.authorizer import Authorizer, BasicCredentials, Decision, anonymous_role
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
    assert auth.check(basic("admin", "pa:ss"), True) == Decision(True, 200, "", Role.ADMIN, ())
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


def test_replace_swaps_the_basic_credentials_too() -> None:
    auth = Authorizer(TOKENS)
    assert auth.check(basic("ops", "pw"), True).code == 401
    auth.replace(TOKENS, BasicCredentials("ops", "pw"))
    assert auth.check(basic("ops", "pw"), True) == Decision(True, 200, "", Role.ADMIN, ())
    auth.replace(TOKENS, None)
    assert auth.check(basic("ops", "pw"), True).code == 401


def test_basic_credentials_with_characters_outside_base64_are_refused() -> None:
    """Not cleaned up into valid ones: what is sent is what is checked."""
    auth = Authorizer(TOKENS, basic=BasicCredentials("admin", "pa:ss"))
    encoded = base64.b64encode(b"admin:pa:ss").decode()
    assert auth.check(f"Basic {encoded[:4]}!{encoded[4:]}", False).code == 401
    assert auth.check(f"Basic {encoded}", False).allowed


BEARER = ("WWW-Authenticate", 'Bearer realm="faastwist"')
BASIC = ("WWW-Authenticate", 'Basic realm="Restricted"')


@pytest.mark.parametrize("basic_on, anonymous, header, write, expected", [
    (False, None, f"Bearer {ADMIN}", True, Decision(True, 200, "", Role.ADMIN, ())),
    (False, None, f"Bearer {READ}", False, Decision(True, 200, "", Role.READ, ())),
    (False, Role.READ, None, False, Decision(True, 200, "", Role.READ, ())),
    (False, None, None, False, Decision(
        False, 401, "authentication required: send Authorization: Bearer TOKEN (the node's "
                    "admin token is in its tokensFile + '.admin')", None, (BEARER,))),
    (True, None, " ", False, Decision(
        False, 401, "authentication required: send Authorization: Bearer TOKEN or HTTP Basic "
                    "(the node's admin token is in its tokensFile + '.admin')", None,
        (BEARER, BASIC))),
    (False, None, "Bearer nope", False, Decision(
        False, 401, "Authorization: the bearer token is not valid (unknown or revoked)", None,
        (BEARER,))),
    (False, None, basic("u", "p"), False, Decision(
        False, 401, "Authorization: HTTP Basic is not enabled on this node "
                    "(admin.auth.basicAuth); send a bearer token", None, (BEARER,))),
    (True, None, basic("admin", "wrong"), False, Decision(
        False, 401, "Authorization: wrong user or password", None, (BEARER, BASIC))),
    (False, None, "Digest x", False, Decision(
        False, 401, "Authorization: unsupported scheme 'digest'; send Bearer TOKEN", None,
        (BEARER,))),
    (False, Role.READ, None, True, Decision(
        False, 401, "authentication required: anonymous callers may only read; send an "
                    "admin token to change anything", None, (BEARER,))),
    (False, None, f"Bearer {READ}", True, Decision(
        False, 403, "forbidden: this token has the read role; changes need an admin token",
        Role.READ, ())),
])
def test_every_decision_exactly(basic_on: bool, anonymous: Role | None, header: str | None,
                                write: bool, expected: Decision) -> None:
    """The whole answer, message included: it is the ``{code, message}`` a client reads."""
    auth = Authorizer(TOKENS, anonymous=anonymous,
                      basic=BasicCredentials("admin", "pa:ss") if basic_on else None)
    assert auth.check(header, write) == expected


def test_anonymous_role_choices() -> None:
    assert anonymous_role("none") is None
    assert anonymous_role("read") is Role.READ and anonymous_role("admin") is Role.ADMIN
    with pytest.raises(ValueError) as caught:
        anonymous_role("root")
    assert str(caught.value) == "must be one of none, read, admin, got 'root'"


@pytest.mark.parametrize("header", ["Bearer ", "Bearer", "bearer    ", " Bearer \t"])
def test_an_empty_bearer_token_is_no_credentials(header: str) -> None:
    """faas-cli sends ``Authorization: Bearer `` when not logged in: the anonymous rules
    apply to it, exactly as to a request without the header."""
    for anonymous in (None, Role.READ, Role.ADMIN):
        auth = Authorizer(TOKENS, anonymous=anonymous)
        for write in (False, True):
            assert auth.check(header, write) == auth.check(None, write), (anonymous, write)
    assert Authorizer(TOKENS, anonymous=Role.READ).check(header, False).allowed
    assert Authorizer(TOKENS, anonymous=Role.ADMIN).check(header, True).role is Role.ADMIN


def test_presents_credentials() -> None:
    from faastwist.auth.authorizer import presents_credentials

    assert [presents_credentials(h) for h in (None, "", "  ", "Bearer ", "Bearer")] == [
        False] * 5
    assert [presents_credentials(h) for h in ("Bearer x", "Basic ", "Digest", "x")] == [
        True] * 4
