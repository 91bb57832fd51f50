"""Where specs and FSM records live: etcd in production, memory in unit tests."""

from faastwist.store.base import (
    AlreadyExists,
    Change,
    Conflict,
    FunctionRecord,
    FunctionStore,
    Listing,
    NotFound,
    StoreError,
    StoreUnavailable,
    WatchHandle,
)

__all__ = [
    "AlreadyExists", "Change", "Conflict", "FunctionRecord", "FunctionStore", "Listing",
    "NotFound", "StoreError", "StoreUnavailable", "WatchHandle",
]
