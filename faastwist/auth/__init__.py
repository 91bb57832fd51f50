"""Admin-plane authentication and browser defences, shared by every admin surface.

Layers, lowest first: ``tokens`` (the tokens file; no Twisted, the CLI uses it),
``authorizer`` (roles from an Authorization header) and ``origin`` (Host and Origin
rules), then ``reload`` (a service that keeps an Authorizer in step with its files).
A package of its own, not part of ``admin/``, so the gate's OpenFaaS ``/system/*`` API
and the CLI use the same rules without importing the admin API.
"""

from faastwist.auth.authorizer import Authorizer, BasicCredentials, Decision
from faastwist.auth.origin import OriginPolicy
from faastwist.auth.tokens import Role, TokenEntry, hash_token

__all__ = ["Authorizer", "BasicCredentials", "Decision", "OriginPolicy", "Role", "TokenEntry",
           "hash_token"]
