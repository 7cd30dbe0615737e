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

    # A consumer group: workers share the space, each segment in order.
    client.create_group("orders", "shipping")
    with client.subscribe("orders", "shipping") as subscription:
        for message in subscription:
            print(message.segment, message.sequence, message.attempt)
            message.ack()
"""

from streams.client._aio import (
    AsyncClient,
    AsyncConsumer,
    AsyncPipeline,
    AsyncPipelinedTransaction,
    AsyncProduceFuture,
    AsyncRecordStream,
    AsyncSegmentWatch,
    AsyncSubscription,
    AsyncTransaction,
)
from streams.client._common import (
    DEFAULT_TARGET,
    Group,
    GroupInfo,
    GroupMember,
    GroupNotFound,
    Message,
    NewRecord,
    OnError,
    Ordering,
    PipelineClosed,
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
from streams.client._sync import (
    Client,
    Consumer,
    Pipeline,
    PipelinedTransaction,
    ProduceFuture,
    RecordStream,
    SegmentWatch,
    Subscription,
    Transaction,
)
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
