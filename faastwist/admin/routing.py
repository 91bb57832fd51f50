"""The Easegress API's paths, and the route decorator every handler under them uses.

Its own module so that the route sets of the admin port (``api``, ``asyncapi``) can be
registered on one Klein app without importing each other.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from klein import Klein
from twisted.web.iweb import IRequest

from faastwist.admin.codec import ApiError

Handler = TypeVar("Handler", bound=Callable[..., Any])

BASE = "/apis/<any(v1, v2):version>/faas/<controller>"
FUNCTION = BASE + "/<fn>"


def controller_route(app: Klein, url: str, method: str) -> Callable[[Handler], Handler]:
    """``app.route`` for a path under ``BASE`` that first checks its ``controller``.

    A name other than this server's controller is a 404 naming both, raised before the
    handler runs, so no handler repeats the check (and none can forget it).
    """
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def checked(self: Any, request: IRequest, *, controller: str, **kwargs: str) -> Any:
            if controller != self.controller:
                raise ApiError(404, f"controller {controller} not found; this server runs "
                                    f"controller {self.controller}")
            return handler(self, request, controller=controller, **kwargs)
        route = app.route(url, methods=[method], strict_slashes=False)
        # Klein's route() is typed to return its own wrapper type; what it returns is
        # `checked`, which calls as a Handler
        return route(checked)  # type: ignore[return-value]
    return decorate


__all__ = ["BASE", "FUNCTION", "controller_route"]
