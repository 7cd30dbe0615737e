"""Streams: an event-stream store served over gRPC.

The client is re-exported here (``from streams import Client, AsyncClient``);
it is imported on first use, so the server does not load it. The names are the
same as :mod:`streams.client`'s (tests/client/test_public_names.py checks it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What type checkers see: the names themselves, and no module __getattr__
    # that would let a misspelt name pass as Any.
    from streams.client import (
        DEFAULT_TARGET,
        AlreadyExists,
        AsyncClient,
        AsyncConsumer,
        AsyncPipeline,
        AsyncPipelinedTransaction,
        AsyncProduceFuture,
        AsyncRecordStream,
        AsyncSegmentWatch,
        AsyncSubscription,
        AsyncTransaction,
        Cancelled,
        Client,
        Consumer,
        DataLoss,
        DeadlineExceeded,
        FailedPrecondition,
        Group,
        GroupInfo,
        GroupMember,
        GroupNotFound,
        InvalidArgument,
        Message,
        NewRecord,
        NotFound,
        OffsetMismatch,
        OnError,
        Ordering,
        OutOfRange,
        PermissionDenied,
        Pipeline,
        PipelineClosed,
        PipelinedTransaction,
        ProduceFuture,
        ProduceResult,
        Record,
        RecordLike,
        RecordStream,
        ResourceExhausted,
        RetentionPolicy,
        RetryPolicy,
        SegmentAck,
        SegmentEvent,
        SegmentInfo,
        SegmentsDeleted,
        SegmentsUpdated,
        SegmentWatch,
        SequenceMismatch,
        SnapshotComplete,
        SnapshotSegments,
        SpaceConfig,
        SpaceInfo,
        StreamsError,
        Subscription,
        Transaction,
        Unauthenticated,
        Unavailable,
        Unimplemented,
    )

__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExists",
    "AsyncClient",
    "AsyncConsumer",
    "AsyncPipeline",
    "AsyncPipelinedTransaction",
    "AsyncProduceFuture",
    "AsyncRecordStream",
    "AsyncSegmentWatch",
    "AsyncSubscription",
    "AsyncTransaction",
    "Cancelled",
    "Client",
    "Consumer",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Group",
    "GroupInfo",
    "GroupMember",
    "GroupNotFound",
    "InvalidArgument",
    "Message",
    "NewRecord",
    "NotFound",
    "OffsetMismatch",
    "OnError",
    "Ordering",
    "OutOfRange",
    "PermissionDenied",
    "Pipeline",
    "PipelineClosed",
    "PipelinedTransaction",
    "ProduceFuture",
    "ProduceResult",
    "Record",
    "RecordLike",
    "RecordStream",
    "ResourceExhausted",
    "RetentionPolicy",
    "RetryPolicy",
    "SegmentAck",
    "SegmentEvent",
    "SegmentInfo",
    "SegmentWatch",
    "SegmentsDeleted",
    "SegmentsUpdated",
    "SequenceMismatch",
    "SnapshotComplete",
    "SnapshotSegments",
    "SpaceConfig",
    "SpaceInfo",
    "StreamsError",
    "Subscription",
    "Transaction",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        if name in __all__:
            return getattr(importlib.import_module("streams.client"), name)
        raise AttributeError(f"module 'streams' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
