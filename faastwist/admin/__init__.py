"""The admin port: the Easegress-style REST API, ops endpoints and the console."""

from faastwist.admin.api import AdminAPI
from faastwist.admin.console import ConsoleResource
from faastwist.admin.ops import OpsAPI

__all__ = ["AdminAPI", "ConsoleResource", "OpsAPI"]
