"""The blocking client: :class:`Client`, :class:`RecordStream`, :class:`Consumer`,
:class:`Subscription` (a consumer group's member)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Any, Self, TypeVar

import grpc

from streams.client import _common as c
from streams.client._common import (
    DEFAULT_TARGET,
    Group,
    GroupInfo,
    Message,
    OnError,
    Ordering,
    ProduceResult,
    Record,
    RecordLike,
    RetryPolicy,
    SegmentEvent,
    SegmentInfo,
    SpaceConfig,
    SpaceInfo,
)
from streams.errors import DeadlineExceeded, NotFound
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc

T = TypeVar("T")


class Client:
    """A blocking Streams client over one gRPC channel; thread-safe.

    Example::

        from streams import Client

        with Client("127.0.0.1:50051") as client:
            ack = client.produce("orders", "eu", [b'{"id": 1}', b'{"id": 2}'])
            print(ack.acks[0].last_sequence, ack.last_position)
            for record in client.consume("orders", "eu", from_offset=1):
                print(record.sequence, record.payload)

    Options: ``tls`` (or any of ``root_certificates`` / ``private_key`` /
    ``certificate_chain``, PEM bytes) for a TLS channel; ``token`` sends
    ``authorization: Bearer <token>`` with every call; ``timeout`` is the default
    deadline in seconds of each unary call attempt (None = none; streams have none
    unless given one); ``retry`` a :class:`RetryPolicy` (by default calls and
    streams ride out 5 minutes of server downtime); ``keepalive_time`` /
    ``keepalive_timeout`` in seconds; ``channel_options`` raw gRPC channel options.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        keepalive_time: float | None = None,
        keepalive_timeout: float | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._conn = c.Connection(
            target=target, tls=tls, root_certificates=root_certificates,
            private_key=private_key, certificate_chain=certificate_chain, token=token,
            timeout=timeout, retry=retry or c.RetryPolicy(), keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout, channel_options=tuple(channel_options),
        )  # fmt: skip
        self._channel = self._conn.channel(grpc)
        self._stub = streams_pb2_grpc.StreamsServiceStub(self._channel)
        self._closed = False

    @property
    def target(self) -> str:
        return self._conn.target

    def close(self) -> None:
        """Closes the channel; calls and streams still open end with :class:`Cancelled`."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------------------

    def _unary(
        self,
        method: Callable[..., Any],
        request: Any,
        timeout: float | None,
        safe: bool = True,
    ) -> Any:
        """One unary call, retried while its outcome is unknown when ``safe``."""
        retrier = c.Retrier.unary(self._conn.retry, request, safe)
        while True:
            try:
                return method(
                    request,
                    timeout=self._conn.deadline(timeout),
                    metadata=self._conn.metadata(),
                )
            except grpc.RpcError as exc:
                error = c.error_from_rpc(exc)
                delay = None if self._closed else retrier.delay(error)
                if delay is None:
                    raise error from None
                time.sleep(delay)

    def produce(
        self,
        space: str,
        segment: str,
        payloads_or_records: RecordLike | Iterable[RecordLike],
        *,
        expected_sequence: int | None = None,
        transaction_id: str | None = None,
        timeout: float | None = None,
    ) -> ProduceResult:
        """Appends records to one segment as one transaction.

        ``payloads_or_records``: bytes or str payloads, :class:`NewRecord`s (with
        metadata), or :class:`Record`s; a lone bytes or str is one record.
        ``expected_sequence``: 0 = the segment must be empty, N = its last sequence
        must be N (else :class:`SequenceMismatch`, whose ``actual`` is the real one).
        The call carries ``transaction_id`` (a new uuid4 when None), so a retry after
        a status that leaves the outcome unknown (UNAVAILABLE, CANCELLED, ...: see
        :class:`RetryPolicy`) never writes twice.

        Example::

            ack = client.produce("orders", "eu", [b"a", NewRecord(b"b", {"k": "v"})],
                                 expected_sequence=0)
            (ack.acks[0].first_sequence, ack.acks[0].last_sequence)  # (1, 2)
        """
        write = c.segment_write(segment, payloads_or_records, expected_sequence)
        return self._produce(c.produce_request(space, [write], transaction_id), timeout)

    def _produce(self, request: pb.ProduceRequest, timeout: float | None) -> ProduceResult:
        response = self._unary(self._stub.Produce, request, timeout)
        return c.to_produce_result(response, request.transaction_id)

    def transaction(self, space: str, *, transaction_id: str | None = None) -> Transaction:
        """A builder for one transaction over several segments of ``space``.

        Example::

            result = (client.transaction("orders")
                      .add("eu", [b"created"], expected_sequence=0)
                      .add("audit", b"42 created")
                      .commit())
        """
        return Transaction(self, space, transaction_id)

    def pipeline(
        self,
        *,
        max_in_flight: int = c.DEFAULT_PIPELINE_IN_FLIGHT,
        max_bytes: int = c.DEFAULT_PIPELINE_BYTES,
        timeout: float | None = None,
    ) -> Pipeline:
        """A :class:`Pipeline`: up to ``max_in_flight`` transactions (and
        ``max_bytes`` of requests) in flight at once, handles resolved in send
        order; ``timeout`` is each attempt's deadline (default: the client's).

        Example::

            with client.pipeline() as pipeline:
                for batch in batches:
                    pipeline.produce("orders", "eu", batch)
            # every transaction is acknowledged here, or the first error was raised
        """
        return Pipeline(self, max_in_flight, max_bytes, timeout)

    def consume(
        self,
        space: str,
        segment: str = "",
        *,
        from_offset: int | None = None,
        from_time: datetime | float | None = None,
        from_consumer: str | None = None,
        from_end: bool = False,
        to_offset: int = 0,
        limit: int = 0,
        max_batch: int = 0,
        timeout: float | None = None,
    ) -> RecordStream:
        """Reads the stored records of a segment (or, ``segment=""``, of the whole space).

        Give at most one start: ``from_offset`` (inclusive), ``from_time`` (datetime
        or epoch seconds), ``from_consumer`` (right after its committed offset);
        none = the first record. ``to_offset`` (inclusive) and ``limit`` bound it.

        Example::

            for record in client.consume("orders", from_offset=10, limit=100):
                print(record.position, record.segment, record.text)
        """
        request = c.consume_request(
            space, segment, from_offset=from_offset, from_time=from_time,
            from_consumer=from_consumer, from_end=from_end, to_offset=to_offset, limit=limit,
            max_batch=max_batch, follow=False,
        )  # fmt: skip
        return RecordStream(self, request, timeout)

    def follow(
        self,
        space: str,
        segment: str = "",
        *,
        from_offset: int | None = None,
        from_time: datetime | float | None = None,
        from_consumer: str | None = None,
        from_end: bool = False,
        to_offset: int = 0,
        limit: int = 0,
        max_batch: int = 0,
        timeout: float | None = None,
    ) -> RecordStream:
        """Like :meth:`consume`, then stays open and yields each new record as it commits.

        It ends at ``to_offset`` or ``limit``, on ``close()``, or when ``timeout``
        passes (:class:`DeadlineExceeded`). After a server restart it reconnects
        from the record after the last one it yielded, or, before any, from the
        start the server fixed (see :class:`RetryPolicy`). ``stream.ready()`` returns
        once the start point is fixed: everything committed afterwards will come.

        Example::

            with client.follow("orders", from_end=True) as stream:
                stream.ready()
                for record in stream:
                    handle(record)
        """
        request = c.consume_request(
            space, segment, from_offset=from_offset, from_time=from_time,
            from_consumer=from_consumer, from_end=from_end, to_offset=to_offset, limit=limit,
            max_batch=max_batch, follow=True,
        )  # fmt: skip
        return RecordStream(self, request, timeout)

    def peek(self, space: str, segment: str = "", *, timeout: float | None = None) -> Record:
        """The last record of a segment, or of the whole space; :class:`NotFound` if none."""
        response = self._unary(self._stub.Peek, pb.PeekRequest(space=space, segment=segment),
                               timeout)  # fmt: skip
        return c.to_record(response.record)

    def commit(
        self,
        consumer: str,
        space: str,
        segment: str = "",
        *,
        offset: int,
        expected_offset: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Stores ``offset`` (the last one processed) for ``consumer``; returns it.

        ``expected_offset`` makes it a compare-and-set (:class:`OffsetMismatch`).
        Past the target's last offset: :class:`OutOfRange`.

        Example::

            client.commit("billing", "orders", offset=record.position)
        """
        request = c.commit_request(consumer, space, segment, offset, expected_offset)
        # A compare-and-set is not repeatable: its own first success would fail the retry.
        response = self._unary(self._stub.Commit, request, timeout, expected_offset is None)
        return int(response.offset)

    def get_offset(
        self, consumer: str, space: str, segment: str = "", *, timeout: float | None = None
    ) -> int | None:
        """The committed offset of ``consumer`` for the target, None if it never committed."""
        request = pb.GetOffsetRequest(consumer=consumer, space=space, segment=segment)
        try:
            return int(self._unary(self._stub.GetOffset, request, timeout).offset)
        except NotFound:
            return None

    def list_spaces(
        self, *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[SpaceInfo]:
        """Every space, by name; fetches pages of ``page_size`` (0 = server default) as needed."""
        token = ""
        while True:
            request = pb.ListSpacesRequest(page_size=page_size, page_token=token)
            response = self._unary(self._stub.ListSpaces, request, timeout)
            yield from map(c.to_space_info, response.spaces)
            token = response.next_page_token
            if not token:
                return

    def list_segments(
        self, space: str, *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[SegmentInfo]:
        """Every segment of ``space``, by name (none for an unknown space); pages as needed."""
        token = ""
        while True:
            request = pb.ListSegmentsRequest(space=space, page_size=page_size, page_token=token)
            response = self._unary(self._stub.ListSegments, request, timeout)
            yield from map(c.to_segment_info, response.segments)
            token = response.next_page_token
            if not token:
                return

    def get_space(self, space: str, *, timeout: float | None = None) -> SpaceInfo:
        """A space's numbers and config; :class:`NotFound` when it is unknown or deleted.

        Example::

            info = client.get_space("orders")
            print(info.first_position, info.last_position, info.record_count, info.bytes)
        """
        response = self._unary(self._stub.GetSpace, pb.GetSpaceRequest(space=space), timeout)
        return c.to_space_info(response.space)

    def get_segment(self, space: str, segment: str, *, timeout: float | None = None) -> SegmentInfo:
        """A segment's numbers; :class:`NotFound` when it is unknown or deleted.

        Example::

            info = client.get_segment("orders", "eu")
            print(info.first_sequence, info.last_sequence, info.record_count)
        """
        request = pb.GetSegmentRequest(space=space, segment=segment)
        return c.to_segment_info(self._unary(self._stub.GetSegment, request, timeout).segment)

    def trim(
        self,
        space: str,
        segment: str = "",
        *,
        before_offset: int | None = None,
        before_time: datetime | float | None = None,
        timeout: float | None = None,
    ) -> int:
        """Removes the records of a segment (or, ``segment=""``, of every segment of
        the space) whose offset is below ``before_offset``, or whose timestamp is
        below ``before_time`` (datetime, naive = UTC, or epoch seconds); give one.
        Returns the target's first retained offset (its last + 1 when nothing is left).

        Removal is visible to every read at once; reads that start earlier start
        at the first retained record. Trimming again is harmless (it never brings
        a record back), so the call is retried like a read. ``before_offset`` above
        the last offset + 1: :class:`OutOfRange`; unknown target: :class:`NotFound`.

        Example::

            first = client.trim("orders", "eu", before_offset=1000)   # keeps 1000...
            client.trim("orders", before_time=datetime.now(UTC) - timedelta(days=30))
        """
        request = c.trim_request(space, segment, before_offset, before_time)
        return int(self._unary(self._stub.Trim, request, timeout).first_offset)

    def delete_segment(
        self,
        space: str,
        segment: str,
        *,
        expected_sequence: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Removes every record of a segment and its consumers' offsets; it leaves
        ``list_segments``. Numbers are kept: a later produce continues after the
        old last sequence. Deleting what does not exist is OK.

        ``expected_sequence`` (as in :meth:`produce`): delete only if the
        segment's last sequence is still N, else :class:`SequenceMismatch`.

        Example::

            client.delete_segment("orders", "customer-42", expected_sequence=17)
        """
        # Retried like a read: a delete that went through left the last
        # sequence as it was, so even its compare-and-set holds on a repeat.
        request = c.delete_segment_request(space, segment, expected_sequence)
        self._unary(self._stub.DeleteSegment, request, timeout)

    def delete_space(self, space: str, *, timeout: float | None = None) -> None:
        """Removes every record, consumer offset and the config of a space; it leaves
        ``list_spaces``. Positions are kept: a later produce continues after the
        old last position. Deleting what does not exist is OK.

        Example::

            client.delete_space("orders-staging")
        """
        self._unary(self._stub.DeleteSpace, pb.DeleteSpaceRequest(space=space), timeout)

    def configure_space(
        self, space: str, config: SpaceConfig, *, timeout: float | None = None
    ) -> SpaceConfig:
        """Stores a space's config, replacing the previous one whole; returns it as
        the server stored it. Allowed before the space has records.

        ``config.retention`` is enforced by the server's background pass (every
        ``--retention-interval``): records past the policy are removed as by
        :meth:`trim`. ``SpaceConfig()`` (no retention) hands the space back to the
        server's default policy.

        Example::

            client.configure_space("orders", SpaceConfig(
                retention=RetentionPolicy(max_age=timedelta(days=7), max_bytes=2**30)))
        """
        request = pb.ConfigureSpaceRequest(space=space, config=c.space_config(config))
        return c.to_space_config(self._unary(self._stub.ConfigureSpace, request, timeout).config)

    def watch_segments(
        self, space: str, *, prefix: str = "", timeout: float | None = None
    ) -> SegmentWatch:
        """The segments of ``space`` (those whose name starts with ``prefix``), then
        their changes, live: iterate the :class:`SegmentWatch` for events.

        First :class:`SnapshotSegments` (the current info, in name order, in one or
        more events), then :class:`SnapshotComplete` (also when there are none),
        then :class:`SegmentsUpdated` (appends, trims, a segment written anew) and
        :class:`SegmentsDeleted` as they happen, coalesced: a slow reader gets the
        latest info per segment, never a backlog. It ends on ``close()``, or when
        ``timeout`` passes (:class:`DeadlineExceeded`).

        After a server restart it reconnects (see :class:`RetryPolicy`) and
        yields only what changed meanwhile, as updates and deletions: it compares
        the new snapshot with ``watch.segments``, its view of every watched
        segment (kept in memory, one :class:`SegmentInfo` per segment).

        Example::

            with client.watch_segments("orders", prefix="customer-") as watch:
                for event in watch:
                    match event:
                        case SnapshotSegments(segments) | SegmentsUpdated(segments):
                            for info in segments:
                                print(info.name, info.first_sequence, info.last_sequence)
                        case SegmentsDeleted(names):
                            print("deleted", names)
                        case SnapshotComplete():
                            print("up to date:", len(watch.segments), "segments")
        """
        request = pb.WatchSegmentsRequest(space=space, prefix=prefix)
        return SegmentWatch(self, request, timeout)

    # -- consumer groups -----------------------------------------------------------------------

    def create_group(
        self,
        space: str,
        group: str,
        *,
        ordering: Ordering = Ordering.PER_SEGMENT,
        from_offset: int | None = None,
        from_time: datetime | float | None = None,
        from_end: bool = False,
        ack_timeout: timedelta | float | None = None,
        max_attempts: int | None = None,
        dead_letter_space: str | None = None,
        dead_letter_segment: str | None = None,
        timeout: float | None = None,
    ) -> Group:
        """Creates consumer group ``group`` on ``space``; returns it as the server
        resolved it (defaults filled in). Creating it again with the same settings
        is OK (so the call is retried safely); other settings: :class:`AlreadyExists`.

        ``ordering``: ``Ordering.PER_SEGMENT`` (each segment strictly in order,
        segments in parallel) or ``Ordering.NONE`` (any record to any member).
        The start, at most one: ``from_offset`` (a position), ``from_time``
        (datetime, naive = UTC, or epoch seconds), ``from_end`` (only records
        written from now on); none = the first record. ``ack_timeout`` (timedelta
        or seconds; None = 30 s): a delivery not settled by then is delivered
        again. ``max_attempts`` (None = 5): deliveries before a record is parked
        in ``dead_letter_space`` / ``dead_letter_segment`` (None = ``$parked`` /
        ``<space>/<group>``).

        Example::

            client.create_group("orders", "billing", ack_timeout=timedelta(minutes=2),
                                max_attempts=10)
        """
        request = pb.CreateGroupRequest(group=c.group_message(
            space, group, ordering=ordering, from_offset=from_offset, from_time=from_time,
            from_end=from_end, ack_timeout=ack_timeout, max_attempts=max_attempts,
            dead_letter_space=dead_letter_space, dead_letter_segment=dead_letter_segment,
        ))  # fmt: skip
        return c.to_group(self._unary(self._stub.CreateGroup, request, timeout).group)

    def get_group(self, space: str, group: str, *, timeout: float | None = None) -> GroupInfo:
        """A group's settings and progress: ``acked_through``, ``lag``, records in
        flight, parked, and its live members; :class:`GroupNotFound` when unknown.

        Example::

            info = client.get_group("orders", "billing")
            print(info.acked_through, info.lag, [m.name for m in info.members])
        """
        request = pb.GetGroupRequest(space=space, group=group)
        try:
            return c.to_group_info(self._unary(self._stub.GetGroup, request, timeout))
        except NotFound as exc:
            raise c.group_error(exc, space, group) from None

    def list_groups(
        self, space: str, *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[Group]:
        """Every group of ``space``, by name; fetches pages as needed.

        Example::

            for group in client.list_groups("orders"):
                print(group.name, group.ordering, group.max_attempts)
        """
        token = ""
        while True:
            request = pb.ListGroupsRequest(space=space, page_size=page_size, page_token=token)
            response = self._unary(self._stub.ListGroups, request, timeout)
            yield from map(c.to_group, response.groups)
            token = response.next_page_token
            if not token:
                return

    def delete_group(self, space: str, group: str, *, timeout: float | None = None) -> None:
        """Deletes a group and its progress (idempotent, so retried safely); its
        subscriptions end with :class:`GroupNotFound`.

        Example::

            client.delete_group("orders", "billing")
        """
        self._unary(self._stub.DeleteGroup, pb.DeleteGroupRequest(space=space, group=group),
                    timeout)  # fmt: skip

    def subscribe(
        self,
        space: str,
        group: str,
        *,
        member_name: str | None = None,
        max_in_flight: int = 100,
    ) -> Subscription:
        """Joins ``group`` as a member: iterate the :class:`Subscription` for
        :class:`Message` objects, and ``ack()`` (or ``nack()``) each one.

        The server shares the space's records among the group's members, at
        least once. Under ``Ordering.PER_SEGMENT`` a member gets a segment's next
        record only once the previous one is settled, so a worker that handles
        its messages one after the other handles each segment in order.
        ``max_in_flight`` bounds the records delivered and not yet settled;
        ``member_name`` is shown to operators (default ``host/pid``).

        After a disconnect (UNAVAILABLE, a lost connection: see
        :class:`RetryPolicy`), or RESOURCE_EXHAUSTED (a server momentarily
        full, a group at its most members), the subscription joins again with
        back-off; the messages of the old stream are then dead (their
        ``ack()`` does nothing) and the server delivers them again. A deleted
        or unknown group raises :class:`GroupNotFound`. ``close()`` sends the
        answers queued and leaves the group: unsettled records go to the other
        members.

        Example::

            with client.subscribe("orders", "billing") as subscription:
                for message in subscription:
                    bill(message.payload)
                    message.ack()
        """
        membership = c.Membership(space, group, member_name, max_in_flight, self._conn.retry)
        return Subscription(self, membership)


class Transaction(c.TransactionBuilder):
    """Writes to several segments of one space, committed together by :meth:`commit`.

    The transaction id is fixed when the builder is made, so calling ``commit()``
    again after an error is answered as a duplicate if the first one went through.
    """

    def __init__(self, client: Client, space: str, transaction_id: str | None) -> None:
        super().__init__(space, transaction_id)
        self._client = client

    def commit(self, *, timeout: float | None = None) -> ProduceResult:
        return self._client._produce(self.request(), timeout)


class ProduceFuture(concurrent.futures.Future[ProduceResult]):
    """The handle of one pipelined transaction: a :class:`concurrent.futures.Future`
    whose result is the :class:`ProduceResult` (or whose exception is the
    transaction's error), plus the ``transaction_id`` it was sent under.

    Cancelling the handle is refused (``cancel()`` returns False): the transaction
    is on its way; :meth:`Pipeline.cancel` withdraws every transaction in flight.

    Example::

        handle = pipeline.produce("orders", "eu", b"created")
        handle.add_done_callback(lambda h: print("acked", h.transaction_id))
        result = handle.result(timeout=5)   # the ProduceResult, or the transaction's error
    """

    def __init__(self, transaction_id: str) -> None:
        super().__init__()
        self.transaction_id = transaction_id
        self.set_running_or_notify_cancel()


class Pipeline:
    """Many transactions in flight from one producer over the client's channel;
    handles complete in send order. Make it with :meth:`Client.pipeline`.

    ``produce`` (and ``transaction(...).commit()``) sends at once and returns a
    :class:`ProduceFuture`; it blocks while ``max_in_flight`` transactions, or
    ``max_bytes`` of requests, wait for their acks (a transaction larger than
    ``max_bytes`` goes alone). Each transaction is retried on its own under its
    transaction id while its outcome is unknown (the client's :class:`RetryPolicy`;
    the server answers a repeat of a committed one as a duplicate), and its
    error, if any, fails its own handle only: later transactions go on. Handles
    resolve in send order: a handle resolves once every earlier one has.

    The server commits the transactions in flight in the order it takes them:
    normally the send order, but not guaranteed (a retried transaction lands
    after later ones that went through). Where order across transactions matters
    within a segment, give each its ``expected_sequence`` (a transaction that
    would overtake one sent before it then fails with :class:`SequenceMismatch`
    and writes nothing) or use ``max_in_flight=1``.

    :meth:`flush` waits for every handle and raises the first error (in send
    order) since the previous flush; :meth:`close` (and leaving the ``with``
    block) stops new sends and flushes. Leaving the block on an exception
    cancels the transactions in flight instead: their handles raise
    :class:`Cancelled` (outcome unknown; sending again under the same transaction
    id is safe). Thread-safe. Callbacks added to handles run on gRPC's thread
    with the pipeline's lock held: they must not block (nor ``produce`` into a
    full window: the answers that would make room come on that thread).

    Example::

        with client.pipeline(max_in_flight=64) as pipeline:
            handles = [pipeline.produce("orders", "eu", [event]) for event in events]
        print(handles[-1].result().last_position)   # every ack is in: the block flushed
    """

    def __init__(
        self, client: Client, max_in_flight: int, max_bytes: int, timeout: float | None
    ) -> None:
        self._client = client
        self._window = c.PipelineWindow(max_in_flight, max_bytes)
        self._timeout = timeout
        self._room = threading.Condition(threading.RLock())
        self._closed = False
        self._cancelled = False

    @property
    def in_flight(self) -> int:
        """Transactions sent whose handles are not resolved yet."""
        return self._window.in_flight

    @property
    def bytes_in_flight(self) -> int:
        """Request bytes of the transactions in flight (bounded by ``max_bytes``)."""
        return self._window.bytes_in_flight

    def produce(
        self,
        space: str,
        segment: str,
        payloads_or_records: RecordLike | Iterable[RecordLike],
        *,
        expected_sequence: int | None = None,
        transaction_id: str | None = None,
    ) -> ProduceFuture:
        """Sends one transaction to one segment (arguments as :meth:`Client.produce`);
        blocks while the window is full."""
        request = c.pipelined_request(
            space, segment, payloads_or_records, expected_sequence, transaction_id
        )
        return self._send(request)

    def transaction(self, space: str, *, transaction_id: str | None = None) -> PipelinedTransaction:
        """A multi-segment transaction; its ``commit()`` returns a :class:`ProduceFuture`.

        Example::

            pipeline.transaction("orders").add("eu", b"created").add("audit", b"42").commit()
        """
        return PipelinedTransaction(self, space, transaction_id)

    def _send(self, request: pb.ProduceRequest) -> ProduceFuture:
        size = request.ByteSize()
        with self._room:
            while not self._closed and not self._window.fits(size):
                self._room.wait()
            if self._closed:
                raise c.PipelineClosed("produce on a closed pipeline")
            handle = ProduceFuture(request.transaction_id)
            entry = self._window.add(handle, request, size)
        self._attempt(entry, c.Retrier.unary(self._client._conn.retry, request))
        return handle

    def _attempt(self, entry: c.InFlight, retrier: c.Retrier) -> None:
        if self._cancelled:
            with self._room:
                self._end(entry, c.cancelled_in_pipeline(entry.request))
            return
        # Made outside the lock, which the answers of other calls need meanwhile.
        conn = self._client._conn
        try:
            call = self._client._stub.Produce.future(
                entry.request, timeout=conn.deadline(self._timeout), metadata=conn.metadata()
            )
        except ValueError:  # gRPC's answer on a closed channel: the client was closed
            with self._room:
                self._end(entry, c.cancelled_in_pipeline(entry.request, "the client"))
            return
        with self._room:
            entry.call = call
            cancelled = self._cancelled
        if cancelled:
            call.cancel()  # cancel() ran before the call was there to cancel
        call.add_done_callback(lambda done: self._answered(entry, retrier, done))

    def _answered(self, entry: c.InFlight, retrier: c.Retrier, call: Any) -> None:
        outcome: ProduceResult | BaseException
        if call.cancelled():
            outcome = c.cancelled_in_pipeline(entry.request)
        else:
            try:
                outcome = c.to_produce_result(call.result(), entry.request.transaction_id)
            except grpc.RpcError as exc:
                outcome = c.error_from_rpc(exc)
                stopping = self._cancelled or self._client._closed
                delay = None if stopping else retrier.delay(outcome)
                if delay is not None:
                    timer = threading.Timer(delay, self._attempt, (entry, retrier))
                    timer.daemon = True
                    with self._room:
                        if not self._cancelled:  # else cancel() ran meanwhile: end it now
                            entry.call = timer
                            timer.start()
                            return
                    outcome = c.cancelled_in_pipeline(entry.request)
            except Exception as exc:  # whatever it is, the handle must resolve
                outcome = exc
        with self._room:
            self._end(entry, outcome)

    def _end(self, entry: c.InFlight, outcome: ProduceResult | BaseException) -> None:
        # Under the lock: handles of one pipeline resolve one at a time, in send order.
        for done in self._window.end(entry, outcome):
            c.settle(done.handle, done.outcome)
        self._room.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every handle resolved; raises the first error (in send
        order) since the previous flush, or :class:`DeadlineExceeded` after ``timeout``
        seconds (the transactions stay in flight).

        Example::

            try:
                pipeline.flush(timeout=10)
            except DeadlineExceeded:
                pipeline.cancel()   # give up on what is still in flight
        """
        with self._room:
            if not self._room.wait_for(lambda: self._window.in_flight == 0, timeout):
                raise DeadlineExceeded(
                    f"flush: {self._window.in_flight} transactions still in flight "
                    f"after {timeout} s"
                )
            failure = self._window.take_failure()
        if failure is not None:
            raise failure[1]

    def close(self) -> None:
        """No new sends; waits for every ack (see :meth:`flush`)."""
        with self._room:
            self._closed = True
            self._room.notify_all()
        self.flush()

    def cancel(self) -> None:
        """Closes the pipeline and cancels every transaction in flight: their
        handles raise :class:`Cancelled` (outcome unknown), returns once all resolved.

        Example::

            pipeline.cancel()
            for handle in handles:
                if isinstance(handle.exception(), Cancelled):
                    resend.append(handle.transaction_id)   # the same id: a repeat is safe
        """
        with self._room:
            self._closed = self._cancelled = True
            for entry in self._window.unended():
                call = entry.call
                if call is None:
                    continue  # being made: _attempt cancels it once it is there
                if isinstance(call, threading.Timer):
                    call.cancel()  # a retry waiting for its backoff
                    self._end(entry, c.cancelled_in_pipeline(entry.request))
                else:
                    call.cancel()
            self._room.wait_for(lambda: self._window.in_flight == 0)
            self._window.take_failure()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()


class PipelinedTransaction(c.TransactionBuilder):
    """A transaction over several segments of one space, sent through a
    :class:`Pipeline` by :meth:`commit`.

    Example::

        handle = pipeline.transaction("orders").add("eu", b"created").add("audit", b"42").commit()
    """

    def __init__(self, pipeline: Pipeline, space: str, transaction_id: str | None) -> None:
        super().__init__(space, transaction_id)
        self._pipeline = pipeline

    def commit(self) -> ProduceFuture:
        """Sends it (blocking while the window is full); its handle resolves in send order."""
        return self._pipeline._send(self.request())


class _Reconnecting(Iterator[T]):
    """A server stream that reconnects while its outcome is unknown (see
    :class:`RetryPolicy`); subclasses say how to call and what a response yields.

    ``close()`` (thread-safe) cancels the call; the iteration then simply ends.
    """

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._closed = False
        self._call = self._start()
        self._items = self._iterate()

    def _method(self) -> Callable[..., Any]:
        raise NotImplementedError

    def _request(self) -> Any:
        """The request of the next (re)connection."""
        raise NotImplementedError

    def _retrier(self) -> c.Retrier:
        raise NotImplementedError

    def _connected(self) -> None:
        """A call was started (before its first response)."""

    def _convert(self, response: Any) -> Iterable[T]:
        raise NotImplementedError

    def _done(self) -> bool:
        """Nothing is left to reconnect for."""
        return False

    def _start(self) -> Any:
        conn = self._client._conn
        return self._method()(
            self._request(),
            timeout=conn.deadline(self._timeout, default=False),
            metadata=conn.metadata(),
        )

    def _iterate(self) -> Iterator[T]:
        while True:
            try:
                self._connected()
                for response in self._call:
                    yield from self._convert(response)
                return
            except grpc.RpcError as exc:
                if self._closed:
                    return
                error = c.error_from_rpc(exc)
                # Closing the client ends its streams with CANCELLED, as its calls.
                delay = None if self._client._closed else self._retrier().delay(error)
                if delay is None:
                    raise error from None
                if self._done():
                    return
                time.sleep(delay)
                if self._closed:
                    return
                self._call = self._start()

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordStream(_Reconnecting[Record]):
    """The records of a consume or follow call; iterate it, close it when done.

    ``close()`` (thread-safe) cancels the call; the iteration then simply ends.
    """

    def __init__(self, client: Client, request: pb.ConsumeRequest, timeout: float | None) -> None:
        self._cursor = c.ReadCursor(request, client._conn.retry)
        super().__init__(client, timeout)

    def _method(self) -> Callable[..., Any]:
        return self._client._stub.Consume

    def _request(self) -> pb.ConsumeRequest:
        return self._cursor.request()

    def _retrier(self) -> c.Retrier:
        return self._cursor.retrier

    def _connected(self) -> None:
        metadata = self._call.initial_metadata()
        failed = self._call.done() and self._call.code() is not grpc.StatusCode.OK
        self._cursor.connected(metadata, failed)

    def _convert(self, response: pb.ConsumeResponse) -> Iterable[Record]:
        return self._cursor.records(response)

    def _done(self) -> bool:
        return self._cursor.done

    def ready(self) -> None:
        """Blocks until the server has fixed the start point (or raises its error)."""
        self._call.initial_metadata()
        if self._call.done() and self._call.code() not in (grpc.StatusCode.OK, None):
            if self._closed:
                return
            raise c.error_from_rpc(self._call)


class SegmentWatch(_Reconnecting[SegmentEvent]):
    """The events of ``watch_segments``: iterate it, close it when done.

    ``segments`` is the view the events built so far (name -> latest
    :class:`SegmentInfo`), ``snapshot_complete`` whether the first snapshot
    has been reported whole. After a server restart the watch reconnects and
    yields only what changed meanwhile (see :meth:`Client.watch_segments`).
    """

    def __init__(
        self, client: Client, request: pb.WatchSegmentsRequest, timeout: float | None
    ) -> None:
        self._view = c.WatchView(request, client._conn.retry)
        super().__init__(client, timeout)

    def _method(self) -> Callable[..., Any]:
        return self._client._stub.WatchSegments

    def _request(self) -> pb.WatchSegmentsRequest:
        self._view.reconnecting()
        return self._view.request

    def _retrier(self) -> c.Retrier:
        return self._view.retrier

    def _convert(self, response: pb.WatchSegmentsResponse) -> Iterable[SegmentEvent]:
        return self._view.events(response)

    @property
    def segments(self) -> Mapping[str, SegmentInfo]:
        """Every watched segment by name, as the events so far reported it (read-only)."""
        return MappingProxyType(self._view.known)

    @property
    def snapshot_complete(self) -> bool:
        return self._view.complete


class Subscription(Iterator[Message]):
    """The messages of a group subscription (see :meth:`Client.subscribe`);
    iterate it, ``ack()`` each message, ``close()`` it when done.

    ``member_id`` is the id the server gave the current join (None before the
    first); ``joins`` counts the joins (more than one after a re-join).
    ``close()`` may be called from another thread; the iteration then ends.

    ``with`` (or ``close()``) is the reliable way to leave. A subscription
    dropped without it (``for message in client.subscribe(...): break``)
    closes itself when it is freed: in CPython at once, as the loop lets go
    of it, unless something else still refers to it (then when that goes,
    or at the next garbage collection for a reference cycle).
    """

    def __init__(self, client: Client, membership: c.Membership) -> None:
        # The gRPC call and its request thread refer to the stream, never to
        # this object, so that dropping it frees it and the finalizer leaves.
        self._stream = _SubscribeStream(client, membership)
        weakref.finalize(self, self._stream.close).atexit = False

    @property
    def member_id(self) -> str | None:
        return self._stream.membership.member_id

    @property
    def joins(self) -> int:
        return self._stream.membership.joins

    def __next__(self) -> Message:
        return next(self._stream.items)

    def close(self, *, grace: float = 5.0) -> None:
        """Leaves the group: sends the acks and nacks queued, ends the stream
        and waits up to ``grace`` seconds for the server to end it (then
        cancels it). Messages not settled are delivered again to other members."""
        self._stream.close(grace=grace)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SubscribeStream:
    """What a :class:`Subscription` runs: its current Subscribe call and link,
    the re-joins, and the leaving."""

    def __init__(self, client: Client, membership: c.Membership) -> None:
        self._client = client
        self.membership = membership
        self._closed = False
        self._stop = threading.Event()  # cuts a re-join's back-off short
        self._switch = threading.Lock()  # a re-join and close() never cross
        # Held while a thread waits for the next response: gRPC allows one reader.
        self._reading = threading.Lock()
        self._link, self._call = self._connect()
        self.items = self._iterate()

    def _connect(self) -> tuple[c.Link, Any]:
        ready = threading.Event()
        link = c.Link(ready.set)
        call = self._client._stub.Subscribe(
            _requests(self.membership.join, link, ready), metadata=self._client._conn.metadata()
        )
        return link, call

    def _iterate(self) -> Iterator[Message]:
        while True:
            try:
                while True:
                    with self._reading:
                        response = next(self._call, None)
                    if response is None:
                        return  # the server ended the stream OK: after close() half-closed it
                    for message in self.membership.messages(response, self._link):
                        if self._closed:
                            return
                        yield message
            except grpc.RpcError as exc:
                self._link.close(flush=False)
                if self._closed:
                    return
                error = self.membership.error(c.error_from_rpc(exc))
                # Closing the client ends its subscriptions with CANCELLED, as its calls.
                delay = None if self._client._closed else self.membership.rejoin_delay(error)
                if delay is None:
                    raise error from None
                self._stop.wait(delay)
                with self._switch:
                    if self._closed:
                        return
                    self._link, self._call = self._connect()

    def close(self, *, grace: float = 5.0) -> None:
        with self._switch:
            if self._closed:
                return
            self._closed = True
            link, call = self._link, self._call
        self._stop.set()
        link.close(flush=True)
        # gRPC reports the stream's end only once every response before it was
        # read: drop the deliveries still on their way (the server gives them to
        # the others once this member leaves) until the end comes, or the grace.
        timer = threading.Timer(grace, call.cancel)
        timer.daemon = True
        timer.start()
        try:
            # A thread reading now gets its response (or the end) first.
            with self._reading:
                for _ in call:
                    pass
        except grpc.RpcError:
            pass
        finally:
            timer.cancel()
        call.cancel()


def _requests(
    join: pb.SubscribeRequest, link: c.Link, ready: threading.Event
) -> Generator[Any, None, None]:
    """A Subscribe's request stream (gRPC reads it in its own thread): the join,
    then whatever the link has queued each time it has something."""
    yield join
    while True:
        batch = link.take()
        if batch is None:
            return
        if batch:
            yield from batch
            continue
        ready.wait()
        ready.clear()


class Consumer:
    """At-least-once processing: follows from the committed offset, commits as it goes.

    Iterate it; a record counts as processed when you ask for the next one, and
    when the consumer is closed with no exception in flight. Processed offsets are
    committed every ``commit_every`` records, every ``commit_interval`` seconds
    (None = never on time alone), and on close. A new consumer with the same name
    and target resumes right after the last commit: a crash replays at most what
    was processed since, never skips.

    Example::

        with Consumer(client, "billing", "orders", commit_every=100) as consumer:
            for record in consumer:
                bill(record)    # an exception here leaves this record uncommitted

    :meth:`run` calls a handler per record instead, with a policy for a record the
    handler fails on (a poison record that would stop every restart)::

        with Consumer(client, "billing", "orders") as consumer:
            consumer.run(bill, on_error=OnError.SKIP)   # log it, commit past it
    """

    def __init__(
        self,
        client: Client,
        consumer: str,
        space: str,
        segment: str = "",
        *,
        commit_every: int = 100,
        commit_interval: float | None = 5.0,
        max_batch: int = 0,
    ) -> None:
        self.client = client
        self.name = consumer
        self.space = space
        self.segment = segment
        self._schedule = c.CommitSchedule(segment, commit_every, commit_interval)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stream = client.follow(space, segment, from_consumer=consumer, max_batch=max_batch)
        self._ticker: threading.Thread | None = None
        if commit_interval is not None:
            self._ticker = threading.Thread(target=self._tick, name="streams-consumer-commit",
                                            daemon=True)  # fmt: skip
            self._ticker.start()

    @property
    def committed(self) -> int | None:
        """The last offset this consumer committed (None before its first commit)."""
        return self._schedule.committed

    def ready(self) -> None:
        """Blocks until the follow stream's start point is fixed."""
        self._stream.ready()

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        """The next record; raises a commit error that retrying cannot mend
        (PermissionDenied, say), also one met by the background commit."""
        self._schedule.raise_failure()
        with self._lock:
            self._schedule.done_with_current()
            due = self._schedule.due()
        if due is not None:
            try:
                self._commit(due)
            except Exception as exc:
                if not self._schedule.failed(self.name, due, exc):
                    raise
        try:
            record = next(self._stream)
        except StopIteration:
            self._schedule.raise_failure()  # the ticker closed the stream to say so
            raise
        with self._lock:
            self._schedule.hand_out(record)
        return record

    def run(
        self,
        handler: Callable[[Record], object],
        *,
        on_error: OnError | Callable[[Record, Exception], object] = OnError.STOP,
    ) -> None:
        """Calls ``handler`` on each record until the stream ends or the consumer is
        closed (from another thread, say).

        When the handler raises (an ``Exception``), ``on_error`` decides:
        ``OnError.STOP`` raises it, and the record is not committed;
        ``OnError.SKIP`` logs it and goes on; a callable gets the record and the
        exception (to park the record elsewhere) and the consumer goes on, or
        stops if the callable raises. A record skipped or handed to the callable
        counts as processed: the committed offset moves past it.

        Example::

            def park(record: Record, exc: Exception) -> None:
                client.produce("orders-parked", record.segment, record)

            with Consumer(client, "billing", "orders") as consumer:
                consumer.run(bill, on_error=park)
        """
        c.check_on_error(on_error)
        for record in self:
            try:
                handler(record)
            except Exception as exc:
                callback = c.handler_failed(self.name, on_error, record, exc)
                if callback is not None:
                    callback(record, exc)

    def _commit(self, offset: int) -> None:
        with self._lock:
            if self._schedule.committed == offset:
                return
            self.client.commit(self.name, self.space, self.segment, offset=offset)
            self._schedule.committed_at(offset)

    def commit(self) -> None:
        """Commits the records processed so far, now."""
        with self._lock:
            pending = self._schedule.pending()
        if pending is not None:
            self._commit(pending)

    def _tick(self) -> None:
        interval = self._schedule.interval or 1.0
        while not self._stop.wait(interval):
            with self._lock:
                due = self._schedule.due()
            if due is not None:
                try:
                    self._commit(due)
                except Exception as exc:
                    if self._schedule.failed(self.name, due, exc):
                        continue  # the next tick, or close(), tries again
                    # Lasting: wake the application out of its wait for records.
                    self._stream.close()
                    return

    def close(self, *, processed: bool = True) -> None:
        """Stops following and commits; ``processed=False`` leaves the record in hand out."""
        self._stop.set()
        self._stream.close()
        if self._ticker is not None:
            self._ticker.join()
        if processed:
            with self._lock:
                self._schedule.done_with_current()
        self.commit()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(processed=exc is None)
