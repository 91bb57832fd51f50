"""Who may do what on the admin plane: bearer tokens, HTTP Basic, the anonymous role.

Pure rules over one header value, so the admin port, the console and the gate's
OpenFaaS ``/system/*`` API all answer the same way. The token table is swapped whole
on reload (one attribute assignment), so a request sees either the old or the new file.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Iterable

import attrs

from faastwist.auth.tokens import Role, TokenEntry, hash_token

ANONYMOUS_CHOICES = ("none", "read", "admin")
BASIC_REALM = "Restricted"


@attrs.frozen
class BasicCredentials:
    """OpenFaaS-style basic auth: one user and password, with the admin role."""

    user: str
    password: str


@attrs.frozen
class Decision:
    """The outcome: ``allowed``, else ``code`` (401/403) and a message for ``{code, message}``."""

    allowed: bool
    code: int = 200
    message: str = ""
    role: Role | None = None
    headers: tuple[tuple[str, str], ...] = ()


def anonymous_role(value: str) -> Role | None:
    """``none`` | ``read`` | ``admin`` as a role (None: callers must authenticate)."""
    if value not in ANONYMOUS_CHOICES:
        raise ValueError(f"must be one of {', '.join(ANONYMOUS_CHOICES)}, got {value!r}")
    return None if value == "none" else Role(value)


def presents_credentials(authorization: str | None) -> bool:
    """Whether an ``Authorization`` value carries credentials at all. faas-cli sends
    ``Authorization: Bearer `` with an empty token when not logged in: that is no
    credentials (the anonymous rules apply), not a bad token."""
    if authorization is None:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if not scheme:
        return False
    return bool(value.strip()) or scheme.lower() != "bearer"


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class Authorizer:
    """Decides one request from its ``Authorization`` header and whether it writes."""

    def __init__(self, tokens: Iterable[TokenEntry] = (), anonymous: Role | None = None,
                 basic: BasicCredentials | None = None) -> None:
        self.tokens: tuple[TokenEntry, ...] = tuple(tokens)
        self.anonymous = anonymous
        self.basic = basic

    def replace(self, tokens: Iterable[TokenEntry], basic: BasicCredentials | None) -> None:
        """Swap in a reloaded tokens file and basic credentials."""
        self.tokens = tuple(tokens)
        self.basic = basic

    def _challenge(self) -> tuple[tuple[str, str], ...]:
        values = [("WWW-Authenticate", 'Bearer realm="faastwist"')]
        if self.basic is not None:
            values.append(("WWW-Authenticate", f'Basic realm="{BASIC_REALM}"'))
        return tuple(values)

    def _unauthorized(self, message: str) -> Decision:
        return Decision(False, 401, message, None, self._challenge())

    def role_of_token(self, token: str) -> Role | None:
        """The role of a bearer token; every entry is compared, in constant time each."""
        digest = hash_token(token)
        found: Role | None = None
        for entry in self.tokens:
            if hmac.compare_digest(entry.digest.encode(), digest.encode()) and found is None:
                found = entry.role
        return found

    def _role_of_basic(self, encoded: str) -> Role | None:
        if self.basic is None:
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        ok_user = _equal(user, self.basic.user)
        ok_password = _equal(password, self.basic.password)
        return Role.ADMIN if ok_user and ok_password else None

    def authenticate(self, authorization: str | None) -> Decision:
        """The caller's role, or a 401 naming what was wrong with the credentials."""
        if authorization is None or not presents_credentials(authorization):
            if self.anonymous is None:
                how = "Authorization: Bearer TOKEN"
                if self.basic is not None:
                    how += " or HTTP Basic"
                return self._unauthorized(f"authentication required: send {how} (the node's "
                                          f"admin token is in its tokensFile + '.admin')")
            return Decision(True, role=self.anonymous)
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            role = self.role_of_token(value.strip())
            if role is None:
                return self._unauthorized("Authorization: the bearer token is not valid "
                                          "(unknown or revoked)")
            return Decision(True, role=role)
        if scheme == "basic":
            if self.basic is None:
                return self._unauthorized("Authorization: HTTP Basic is not enabled on this "
                                          "node (admin.auth.basicAuth); send a bearer token")
            role = self._role_of_basic(value)
            if role is None:
                return self._unauthorized("Authorization: wrong user or password")
            return Decision(True, role=role)
        return self._unauthorized(f"Authorization: unsupported scheme {scheme!r}; send "
                                  f"Bearer TOKEN")

    def check(self, authorization: str | None, write: bool) -> Decision:
        """Authenticate, then authorize: a read role on a write is 403."""
        decision = self.authenticate(authorization)
        if not decision.allowed:
            return decision
        assert decision.role is not None
        if not decision.role.allows(write):
            if not presents_credentials(authorization):
                return self._unauthorized("authentication required: anonymous callers may "
                                          "only read; send an admin token to change anything")
            return Decision(False, 403, "forbidden: this token has the read role; changes "
                                        "need an admin token", decision.role)
        return decision
