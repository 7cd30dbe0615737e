"""Streams: an event-stream store served over gRPC.

The client is re-exported here (``from streams import Client, AsyncClient``);
it is imported on first use, so the server does not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.client import (
        AlreadyExists,
        AsyncClient,
        AsyncConsumer,
        Client,
        Consumer,
        DeadlineExceeded,
        InvalidArgument,
        NewRecord,
        NotFound,
        OffsetMismatch,
        OutOfRange,
        ProduceResult,
        Record,
        ResourceExhausted,
        RetryPolicy,
        SequenceMismatch,
        StreamsError,
        Unavailable,
    )

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncConsumer",
    "Client",
    "Consumer",
    "DeadlineExceeded",
    "InvalidArgument",
    "NewRecord",
    "NotFound",
    "OffsetMismatch",
    "OutOfRange",
    "ProduceResult",
    "Record",
    "ResourceExhausted",
    "RetryPolicy",
    "SequenceMismatch",
    "StreamsError",
    "Unavailable",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("streams.client"), name)
    raise AttributeError(f"module 'streams' has no attribute {name!r}")
