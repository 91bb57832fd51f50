"""Where specs and FSM records live: etcd in production, memory in unit tests."""

from faastwist.store.base import (
    AlreadyExists,
    Change,
    Conflict,
    Expired,
    FunctionRecord,
    FunctionStore,
    Listing,
    NotFound,
    Page,
    StoreError,
    StoreUnavailable,
    WatchHandle,
)

__all__ = [
    "AlreadyExists", "Change", "Conflict", "Expired", "FunctionRecord", "FunctionStore",
    "Listing", "NotFound", "Page", "StoreError", "StoreUnavailable", "WatchHandle",
]
