"""The admin port: the Easegress-style REST API, ops endpoints, the console, the guard in
front of them all (Host, Origin, credentials) and the OpenAPI document."""

from faastwist.admin.api import AdminAPI
from faastwist.admin.console import ConsoleResource
from faastwist.admin.guard import AdminGuard
from faastwist.admin.ops import OpsAPI

__all__ = ["AdminAPI", "AdminGuard", "ConsoleResource", "OpsAPI"]
