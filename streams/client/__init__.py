"""The Python client of Streams: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both have the same typed methods; errors arrive as the exception types of
:mod:`streams.errors`, one per status, all under
:class:`~streams.errors.StreamsError` (the server raises the same types).
Example::

    from streams import Client, Consumer, SequenceMismatch

    client = Client("127.0.0.1:50051", token="s3cret")
    try:
        client.produce("orders", "eu", [b"first"], expected_sequence=0)
    except SequenceMismatch as exc:
        print("segment", exc.segment, "already ends at", exc.actual)

    # One transaction over two segments.
    client.transaction("orders").add("eu", b"created").add("audit", b"42").commit()

    # At-least-once processing that resumes after its last commit.
    with Consumer(client, "billing", "orders", commit_every=100) as consumer:
        for record in consumer:
            print(record.position, record.segment, record.payload)
"""

from streams.client._aio import (
    AsyncClient,
    AsyncConsumer,
    AsyncRecordStream,
    AsyncSegmentWatch,
    AsyncTransaction,
)
from streams.client._common import (
    DEFAULT_TARGET,
    NewRecord,
    OnError,
    ProduceResult,
    Record,
    RecordLike,
    RetentionPolicy,
    RetryPolicy,
    SegmentAck,
    SegmentEvent,
    SegmentInfo,
    SegmentsDeleted,
    SegmentsUpdated,
    SnapshotComplete,
    SnapshotSegments,
    SpaceConfig,
    SpaceInfo,
)
from streams.client._sync import Client, Consumer, RecordStream, SegmentWatch, Transaction
from streams.errors import (
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OffsetMismatch,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    SequenceMismatch,
    StreamsError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExists",
    "AsyncClient",
    "AsyncConsumer",
    "AsyncRecordStream",
    "AsyncSegmentWatch",
    "AsyncTransaction",
    "Cancelled",
    "Client",
    "Consumer",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NewRecord",
    "NotFound",
    "OffsetMismatch",
    "OnError",
    "OutOfRange",
    "PermissionDenied",
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
    "Transaction",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
