"""The asyncio client: :class:`AsyncClient`, :class:`AsyncRecordStream`, :class:`AsyncConsumer`,
:class:`AsyncSubscription`.

Same methods and semantics as :mod:`streams.client._sync`, awaited; both build
their requests and read their responses through :mod:`streams.client._common`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime, timedelta
from types import MappingProxyType, TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

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
from streams.errors import DeadlineExceeded, NotFound, StreamsError
from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc

T = TypeVar("T")


class AsyncClient:
    """An asyncio Streams client over one ``grpc.aio`` channel; same options as
    :class:`streams.Client`. Make it inside a running event loop.

    Example::

        from streams import AsyncClient

        async with AsyncClient("127.0.0.1:50051") as client:
            await client.produce("orders", "eu", [b"a", b"b"])
            async for record in client.consume("orders", "eu"):
                print(record.sequence, record.payload)
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
        self._channel = self._conn.channel(grpc.aio)
        self._stub = streams_pb2_grpc.StreamsServiceStub(self._channel)
        self._closed = False

    @property
    def target(self) -> str:
        return self._conn.target

    async def close(self) -> None:
        self._closed = True
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(
        self, method: Callable[..., Any], request: Any, timeout: float | None, safe: bool = True
    ) -> Any:
        retrier = c.Retrier.unary(self._conn.retry, request, safe)
        while True:
            try:
                response = await method(
                    request,
                    timeout=self._conn.deadline(timeout),
                    metadata=self._conn.metadata(),
                )
                if response is not None:
                    return response
                # grpc.aio logs an answer that does not parse and hands over None.
                error: StreamsError = c.TransportError(f"INTERNAL: {c.UNPARSED_ANSWER}")
            except grpc.RpcError as exc:
                error = c.error_from_rpc(exc)
            delay = None if self._closed else retrier.delay(error)
            if delay is None:
                raise error from None
            await asyncio.sleep(delay)

    async def produce(
        self,
        space: str,
        segment: str,
        payloads_or_records: RecordLike | Iterable[RecordLike],
        *,
        expected_sequence: int | None = None,
        transaction_id: str | None = None,
        timeout: float | None = None,
    ) -> ProduceResult:
        """See :meth:`streams.Client.produce`."""
        write = c.segment_write(segment, payloads_or_records, expected_sequence)
        return await self._produce(c.produce_request(space, [write], transaction_id), timeout)

    async def _produce(self, request: pb.ProduceRequest, timeout: float | None) -> ProduceResult:
        response = await self._unary(self._stub.Produce, request, timeout)
        return c.to_produce_result(response, request.transaction_id)

    def transaction(self, space: str, *, transaction_id: str | None = None) -> AsyncTransaction:
        """See :meth:`streams.Client.transaction`; ``await txn.commit()``."""
        return AsyncTransaction(self, space, transaction_id)

    def pipeline(
        self,
        *,
        max_in_flight: int = c.DEFAULT_PIPELINE_IN_FLIGHT,
        max_bytes: int = c.DEFAULT_PIPELINE_BYTES,
        timeout: float | None = None,
    ) -> AsyncPipeline:
        """See :meth:`streams.Client.pipeline`.

        Example::

            async with client.pipeline() as pipeline:
                for batch in batches:
                    await pipeline.produce("orders", "eu", batch)
        """
        return AsyncPipeline(self, max_in_flight, max_bytes, timeout)

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
    ) -> AsyncRecordStream:
        """See :meth:`streams.Client.consume`; ``async for record in ...``."""
        request = c.consume_request(
            space, segment, from_offset=from_offset, from_time=from_time,
            from_consumer=from_consumer, from_end=from_end, to_offset=to_offset, limit=limit,
            max_batch=max_batch, follow=False,
        )  # fmt: skip
        return AsyncRecordStream(self, request, timeout)

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
    ) -> AsyncRecordStream:
        """See :meth:`streams.Client.follow`; ``await stream.ready()``."""
        request = c.consume_request(
            space, segment, from_offset=from_offset, from_time=from_time,
            from_consumer=from_consumer, from_end=from_end, to_offset=to_offset, limit=limit,
            max_batch=max_batch, follow=True,
        )  # fmt: skip
        return AsyncRecordStream(self, request, timeout)

    async def peek(self, space: str, segment: str = "", *, timeout: float | None = None) -> Record:
        """See :meth:`streams.Client.peek`."""
        request = pb.PeekRequest(space=space, segment=segment)
        return c.to_record((await self._unary(self._stub.Peek, request, timeout)).record)

    async def commit(
        self,
        consumer: str,
        space: str,
        segment: str = "",
        *,
        offset: int,
        expected_offset: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """See :meth:`streams.Client.commit`."""
        request = c.commit_request(consumer, space, segment, offset, expected_offset)
        response = await self._unary(self._stub.Commit, request, timeout, expected_offset is None)
        return int(response.offset)

    async def get_offset(
        self, consumer: str, space: str, segment: str = "", *, timeout: float | None = None
    ) -> int | None:
        """See :meth:`streams.Client.get_offset`."""
        request = pb.GetOffsetRequest(consumer=consumer, space=space, segment=segment)
        try:
            return int((await self._unary(self._stub.GetOffset, request, timeout)).offset)
        except NotFound:
            return None

    async def list_spaces(
        self, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[SpaceInfo]:
        """See :meth:`streams.Client.list_spaces`; ``async for space in ...``."""
        token = ""
        while True:
            request = pb.ListSpacesRequest(page_size=page_size, page_token=token)
            response = await self._unary(self._stub.ListSpaces, request, timeout)
            for info in response.spaces:
                yield c.to_space_info(info)
            token = response.next_page_token
            if not token:
                return

    async def list_segments(
        self, space: str, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[SegmentInfo]:
        """See :meth:`streams.Client.list_segments`; ``async for segment in ...``."""
        token = ""
        while True:
            request = pb.ListSegmentsRequest(space=space, page_size=page_size, page_token=token)
            response = await self._unary(self._stub.ListSegments, request, timeout)
            for info in response.segments:
                yield c.to_segment_info(info)
            token = response.next_page_token
            if not token:
                return

    async def get_space(self, space: str, *, timeout: float | None = None) -> SpaceInfo:
        """See :meth:`streams.Client.get_space`."""
        request = pb.GetSpaceRequest(space=space)
        return c.to_space_info((await self._unary(self._stub.GetSpace, request, timeout)).space)

    async def get_segment(
        self, space: str, segment: str, *, timeout: float | None = None
    ) -> SegmentInfo:
        """See :meth:`streams.Client.get_segment`."""
        request = pb.GetSegmentRequest(space=space, segment=segment)
        response = await self._unary(self._stub.GetSegment, request, timeout)
        return c.to_segment_info(response.segment)

    async def trim(
        self,
        space: str,
        segment: str = "",
        *,
        before_offset: int | None = None,
        before_time: datetime | float | None = None,
        timeout: float | None = None,
    ) -> int:
        """See :meth:`streams.Client.trim`."""
        request = c.trim_request(space, segment, before_offset, before_time)
        return int((await self._unary(self._stub.Trim, request, timeout)).first_offset)

    async def delete_segment(
        self,
        space: str,
        segment: str,
        *,
        expected_sequence: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """See :meth:`streams.Client.delete_segment`."""
        request = c.delete_segment_request(space, segment, expected_sequence)
        await self._unary(self._stub.DeleteSegment, request, timeout)

    async def delete_space(self, space: str, *, timeout: float | None = None) -> None:
        """See :meth:`streams.Client.delete_space`."""
        await self._unary(self._stub.DeleteSpace, pb.DeleteSpaceRequest(space=space), timeout)

    async def configure_space(
        self, space: str, config: SpaceConfig, *, timeout: float | None = None
    ) -> SpaceConfig:
        """See :meth:`streams.Client.configure_space`."""
        request = pb.ConfigureSpaceRequest(space=space, config=c.space_config(config))
        response = await self._unary(self._stub.ConfigureSpace, request, timeout)
        return c.to_space_config(response.config)

    def watch_segments(
        self, space: str, *, prefix: str = "", timeout: float | None = None
    ) -> AsyncSegmentWatch:
        """See :meth:`streams.Client.watch_segments`; ``async for event in watch``.

        Example::

            async with client.watch_segments("orders") as watch:
                async for event in watch:
                    if isinstance(event, SegmentsUpdated):
                        print([info.last_sequence for info in event.segments])
        """
        request = pb.WatchSegmentsRequest(space=space, prefix=prefix)
        return AsyncSegmentWatch(self, request, timeout)

    # -- consumer groups -----------------------------------------------------------------------

    async def create_group(
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
        """See :meth:`streams.Client.create_group`."""
        request = pb.CreateGroupRequest(group=c.group_message(
            space, group, ordering=ordering, from_offset=from_offset, from_time=from_time,
            from_end=from_end, ack_timeout=ack_timeout, max_attempts=max_attempts,
            dead_letter_space=dead_letter_space, dead_letter_segment=dead_letter_segment,
        ))  # fmt: skip
        response = await self._unary(self._stub.CreateGroup, request, timeout)
        return c.to_group(response.group)

    async def get_group(self, space: str, group: str, *, timeout: float | None = None) -> GroupInfo:
        """See :meth:`streams.Client.get_group`."""
        request = pb.GetGroupRequest(space=space, group=group)
        try:
            return c.to_group_info(await self._unary(self._stub.GetGroup, request, timeout))
        except NotFound as exc:
            raise c.group_error(exc, space, group) from None

    async def list_groups(
        self, space: str, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Group]:
        """See :meth:`streams.Client.list_groups`; ``async for group in ...``."""
        token = ""
        while True:
            request = pb.ListGroupsRequest(space=space, page_size=page_size, page_token=token)
            response = await self._unary(self._stub.ListGroups, request, timeout)
            for group in response.groups:
                yield c.to_group(group)
            token = response.next_page_token
            if not token:
                return

    async def delete_group(self, space: str, group: str, *, timeout: float | None = None) -> None:
        """See :meth:`streams.Client.delete_group`."""
        request = pb.DeleteGroupRequest(space=space, group=group)
        await self._unary(self._stub.DeleteGroup, request, timeout)

    def subscribe(
        self,
        space: str,
        group: str,
        *,
        member_name: str | None = None,
        max_in_flight: int = 100,
    ) -> AsyncSubscription:
        """See :meth:`streams.Client.subscribe`; ``async for message in ...``.

        ``message.ack()`` and ``nack()`` are plain calls (they queue the answer
        and return at once), also from other threads.

        Example::

            async with client.subscribe("orders", "billing") as subscription:
                async for message in subscription:
                    await bill(message.payload)
                    message.ack()
        """
        membership = c.Membership(space, group, member_name, max_in_flight, self._conn.retry)
        return AsyncSubscription(self, membership)


class AsyncTransaction(c.TransactionBuilder):
    """See :class:`streams.client.Transaction`; ``await txn.commit()``."""

    def __init__(self, client: AsyncClient, space: str, transaction_id: str | None) -> None:
        super().__init__(space, transaction_id)
        self._client = client

    async def commit(self, *, timeout: float | None = None) -> ProduceResult:
        return await self._client._produce(self.request(), timeout)


class AsyncProduceFuture(asyncio.Future[ProduceResult]):
    """The handle of one pipelined transaction: an :class:`asyncio.Future` of its
    :class:`ProduceResult` (``await handle``), plus the ``transaction_id`` it was
    sent under. Cancelling the handle only stops waiting on it: the transaction
    is on its way (:meth:`AsyncPipeline.cancel` withdraws every one in flight).

    Example::

        handle = await pipeline.produce("orders", "eu", b"created")
        result = await handle   # the ProduceResult, or the transaction's error
    """

    def __init__(self, transaction_id: str) -> None:
        super().__init__()
        self.transaction_id = transaction_id


class AsyncPipeline:
    """See :class:`streams.client.Pipeline`: ``await pipeline.produce(...)`` waits
    for room in the window and returns an :class:`AsyncProduceFuture`; handles
    resolve in send order. Make it with :meth:`AsyncClient.pipeline`.

    Example::

        async with client.pipeline(max_in_flight=64) as pipeline:
            handles = [await pipeline.produce("orders", "eu", [event]) for event in events]
        print((await handles[-1]).last_position)   # every ack is in: the block flushed
    """

    def __init__(
        self, client: AsyncClient, max_in_flight: int, max_bytes: int, timeout: float | None
    ) -> None:
        self._client = client
        self._window = c.PipelineWindow(max_in_flight, max_bytes)
        self._timeout = timeout
        self._waiters: list[asyncio.Future[None]] = []  # woken when handles resolve
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

    async def produce(
        self,
        space: str,
        segment: str,
        payloads_or_records: RecordLike | Iterable[RecordLike],
        *,
        expected_sequence: int | None = None,
        transaction_id: str | None = None,
    ) -> AsyncProduceFuture:
        """See :meth:`streams.client.Pipeline.produce`; waits while the window is full."""
        request = c.pipelined_request(
            space, segment, payloads_or_records, expected_sequence, transaction_id
        )
        return await self._send(request)

    def transaction(
        self, space: str, *, transaction_id: str | None = None
    ) -> AsyncPipelinedTransaction:
        """A multi-segment transaction; ``await txn.commit()`` returns its handle."""
        return AsyncPipelinedTransaction(self, space, transaction_id)

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _send(self, request: pb.ProduceRequest) -> AsyncProduceFuture:
        size = request.ByteSize()
        await self._wait(lambda: self._closed or self._window.fits(size))
        if self._closed:
            raise c.PipelineClosed("produce on a closed pipeline")
        handle = AsyncProduceFuture(request.transaction_id)
        entry = self._window.add(handle, request, size)
        entry.call = asyncio.ensure_future(self._client._produce(request, self._timeout))
        entry.call.add_done_callback(lambda task: self._answered(entry, task))
        return handle

    def _answered(self, entry: c.InFlight, task: Any) -> None:
        outcome: ProduceResult | BaseException
        if task.cancelled():
            outcome = c.cancelled_in_pipeline(entry.request)
        else:
            error = task.exception()
            outcome = task.result() if error is None else error
        for done in self._window.end(entry, outcome):
            if done.handle.done():
                continue  # the caller cancelled the handle: it stopped waiting
            c.settle(done.handle, done.outcome)
            if self._cancelled and isinstance(done.outcome, BaseException):
                done.handle.exception()  # the caller asked: asyncio need not log it
        self._wake()

    async def flush(self, timeout: float | None = None) -> None:
        """See :meth:`streams.client.Pipeline.flush`."""
        try:
            await asyncio.wait_for(self._wait(lambda: self._window.in_flight == 0), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"flush: {self._window.in_flight} transactions still in flight after {timeout} s"
            ) from None
        failure = self._window.take_failure()
        if failure is not None:
            handle, error = failure
            if not handle.cancelled():
                handle.exception()  # raised here: asyncio need not log it as never retrieved
            raise error

    async def close(self) -> None:
        """No new sends; waits for every ack (see :meth:`flush`)."""
        self._closed = True
        self._wake()
        await self.flush()

    def _wake(self) -> None:
        # Room freed, or the pipeline closed: every waiter checks its condition again.
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def cancel(self) -> None:
        """See :meth:`streams.client.Pipeline.cancel`."""
        self._closed = self._cancelled = True
        self._wake()
        for entry in self._window.unended():
            entry.call.cancel()
        await self._wait(lambda: self._window.in_flight == 0)
        self._window.take_failure()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.cancel()


class AsyncPipelinedTransaction(c.TransactionBuilder):
    """See :class:`streams.client.PipelinedTransaction`; ``await txn.commit()``.

    Example::

        txn = pipeline.transaction("orders").add("eu", b"created").add("audit", b"42")
        handle = await txn.commit()
    """

    def __init__(self, pipeline: AsyncPipeline, space: str, transaction_id: str | None) -> None:
        super().__init__(space, transaction_id)
        self._pipeline = pipeline

    async def commit(self) -> AsyncProduceFuture:
        """Sends it (waiting while the window is full); its handle resolves in send order."""
        return await self._pipeline._send(self.request())


class _AsyncReconnecting(AsyncIterator[T]):
    """See :class:`streams.client._sync._Reconnecting`: the same reconnecting
    server stream, awaited; ``close()`` cancels it."""

    def __init__(self, client: AsyncClient, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._closed = False
        self._call = self._start()
        self._items = self._iterate()

    def _method(self) -> Callable[..., Any]:
        raise NotImplementedError

    def _request(self) -> Any:
        raise NotImplementedError

    def _retrier(self) -> c.Retrier:
        raise NotImplementedError

    async def _connected(self) -> None:
        """A call was started (before its first response)."""

    def _convert(self, response: Any) -> Iterable[T]:
        raise NotImplementedError

    def _done(self) -> bool:
        return False

    def _start(self) -> Any:
        conn = self._client._conn
        return self._method()(
            self._request(),
            timeout=conn.deadline(self._timeout, default=False),
            metadata=conn.metadata(),
        )

    async def _iterate(self) -> AsyncGenerator[T, None]:
        while True:
            try:
                await self._connected()
                async for response in self._call:
                    for item in self._convert(response):
                        yield item
                return
            except asyncio.CancelledError:
                if self._closed:
                    return
                raise
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
                await asyncio.sleep(delay)
                if self._closed:
                    return
                self._call = self._start()

    async def __anext__(self) -> T:
        return await self._items.__anext__()

    def close(self) -> None:
        self._closed = True
        self._call.cancel()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await self._items.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncRecordStream(_AsyncReconnecting[Record]):
    """The records of an async consume or follow call; ``close()`` cancels it."""

    def __init__(
        self, client: AsyncClient, request: pb.ConsumeRequest, timeout: float | None
    ) -> None:
        self._cursor = c.ReadCursor(request, client._conn.retry)
        super().__init__(client, timeout)

    def _method(self) -> Callable[..., Any]:
        return self._client._stub.Consume

    def _request(self) -> pb.ConsumeRequest:
        return self._cursor.request()

    def _retrier(self) -> c.Retrier:
        return self._cursor.retrier

    async def _connected(self) -> None:
        metadata = await self._call.initial_metadata()
        failed = self._call.done() and await self._call.code() != grpc.StatusCode.OK
        self._cursor.connected(metadata, failed)

    def _convert(self, response: pb.ConsumeResponse) -> Iterable[Record]:
        return self._cursor.records(response)

    def _done(self) -> bool:
        return self._cursor.done

    async def ready(self) -> None:
        """Returns once the server has fixed the start point (or raises its error)."""
        await self._call.initial_metadata()
        if self._call.done() and not self._closed:
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                details = await self._call.details()
                trailers = await self._call.trailing_metadata()
                raise c.error_from_status(code, details, trailers)


class AsyncSegmentWatch(_AsyncReconnecting[SegmentEvent]):
    """See :class:`streams.SegmentWatch`; ``async for event in watch``."""

    def __init__(
        self, client: AsyncClient, request: pb.WatchSegmentsRequest, timeout: float | None
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
        """See :attr:`streams.SegmentWatch.segments`."""
        return MappingProxyType(self._view.known)

    @property
    def snapshot_complete(self) -> bool:
        return self._view.complete


class AsyncSubscription(AsyncIterator[Message]):
    """See :class:`streams.Subscription`: the messages of an async group
    subscription; ``async for``, then ``await close()`` (or ``async with``).

    ``async with`` (or ``await close()``) is the reliable way to leave. A
    subscription dropped without it (``async for ...: break``) closes itself
    when it is freed (in CPython at once, unless something else still refers
    to it): a task on its event loop then does what ``close()`` does.
    """

    def __init__(self, client: AsyncClient, membership: c.Membership) -> None:
        # The gRPC call and its request task refer to the stream, never to this
        # object, so that dropping it frees it and the finalizer leaves.
        self._stream = _SubscribeStream(client, membership)
        weakref.finalize(self, _close_abandoned, self._stream).atexit = False

    @property
    def member_id(self) -> str | None:
        return self._stream.membership.member_id

    @property
    def joins(self) -> int:
        return self._stream.membership.joins

    async def __anext__(self) -> Message:
        return await self._stream.items.__anext__()

    async def close(self, *, grace: float = 5.0) -> None:
        """See :meth:`streams.Subscription.close`."""
        await self._stream.close(grace=grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _SubscribeStream:
    """What an :class:`AsyncSubscription` runs: its current Subscribe call and
    link, the re-joins, and the leaving."""

    def __init__(self, client: AsyncClient, membership: c.Membership) -> None:
        self._client = client
        self.membership = membership
        self.loop = asyncio.get_running_loop()
        self._closed = False
        self._stop = asyncio.Event()  # cuts a re-join's back-off short
        self._link, self._call = self._connect()
        self.items = self._iterate()

    def _connect(self) -> tuple[c.Link, Any]:
        ready = asyncio.Event()
        # Thread-safe, and one loop turn late: answers given meanwhile go together.
        link = c.Link(lambda: self.loop.call_soon_threadsafe(ready.set))
        call = self._client._stub.Subscribe(
            _requests(self.membership.join, link, ready), metadata=self._client._conn.metadata()
        )
        return link, call

    async def _iterate(self) -> AsyncGenerator[Message, None]:
        while True:
            try:
                async for response in self._call:
                    for message in self.membership.messages(response, self._link):
                        if self._closed:
                            return
                        yield message
                return  # the server ended the stream OK: after close() half-closed it
            except asyncio.CancelledError:
                if self._closed:
                    return
                raise
            except grpc.RpcError as exc:
                self._link.close(flush=False)
                if self._closed:
                    return
                error = self.membership.error(c.error_from_rpc(exc))
                delay = None if self._client._closed else self.membership.rejoin_delay(error)
                if delay is None:
                    raise error from None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._closed:
                    return
                self._link, self._call = self._connect()

    async def close(self, *, grace: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._link.close(flush=True)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, grpc.RpcError):
            await asyncio.wait_for(self._call.code(), grace)
        self._call.cancel()
        with contextlib.suppress(Exception):  # another task may be inside it: it ends itself
            await self.items.aclose()


async def _requests(
    join: pb.SubscribeRequest, link: c.Link, ready: asyncio.Event
) -> AsyncGenerator[Any, None]:
    yield join
    while True:
        batch = link.take()
        if batch is None:
            return
        if batch:
            for request in batch:
                yield request
            continue
        await ready.wait()
        ready.clear()


# Closes of subscriptions dropped unclosed, until they end (the loop keeps
# only weak references to its tasks).
_closing: set[asyncio.Task[None]] = set()


def _close_abandoned(stream: _SubscribeStream) -> None:
    """Runs when an AsyncSubscription is freed unclosed, in whatever thread let
    go of it: starts its close on its loop (nothing to do once that is closed:
    its calls ended with it)."""

    def start() -> None:
        task = stream.loop.create_task(stream.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        stream.loop.call_soon_threadsafe(start)


class AsyncConsumer:
    """See :class:`streams.Consumer`: the same at-least-once helper, for asyncio.

    Example::

        async with AsyncConsumer(client, "billing", "orders") as consumer:
            async for record in consumer:
                await bill(record)

        async with AsyncConsumer(client, "billing", "orders") as consumer:
            await consumer.run(bill, on_error=OnError.SKIP)   # see Consumer.run
    """

    def __init__(
        self,
        client: AsyncClient,
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
        self._lock = asyncio.Lock()
        self._stream = client.follow(space, segment, from_consumer=consumer, max_batch=max_batch)
        self._ticker: asyncio.Task[None] | None = None
        if commit_interval is not None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(commit_interval))

    @property
    def committed(self) -> int | None:
        return self._schedule.committed

    async def ready(self) -> None:
        await self._stream.ready()

    def __aiter__(self) -> AsyncConsumer:
        return self

    async def __anext__(self) -> Record:
        """See :meth:`streams.Consumer.__next__`."""
        self._schedule.raise_failure()
        self._schedule.done_with_current()
        due = self._schedule.due()
        if due is not None:
            try:
                await self._commit(due)
            except Exception as exc:
                if not self._schedule.failed(self.name, due, exc):
                    raise
        try:
            record = await self._stream.__anext__()
        except StopAsyncIteration:
            self._schedule.raise_failure()  # the ticker closed the stream to say so
            raise
        self._schedule.hand_out(record)
        return record

    async def run(
        self,
        handler: Callable[[Record], Awaitable[object]],
        *,
        on_error: OnError | Callable[[Record, Exception], object] = OnError.STOP,
    ) -> None:
        """See :meth:`streams.Consumer.run`: awaits ``handler(record)`` per record;
        ``on_error`` may be a plain function or a coroutine function.

        Example::

            async def park(record: Record, exc: Exception) -> None:
                await client.produce("orders-parked", record.segment, record)

            async with AsyncConsumer(client, "billing", "orders") as consumer:
                await consumer.run(bill, on_error=park)
        """
        c.check_on_error(on_error)
        async for record in self:
            try:
                await handler(record)
            except Exception as exc:
                callback = c.handler_failed(self.name, on_error, record, exc)
                if callback is not None:
                    outcome = callback(record, exc)
                    if inspect.isawaitable(outcome):
                        await outcome

    async def _commit(self, offset: int) -> None:
        async with self._lock:
            if self._schedule.committed == offset:
                return
            await self.client.commit(self.name, self.space, self.segment, offset=offset)
            self._schedule.committed_at(offset)

    async def commit(self) -> None:
        pending = self._schedule.pending()
        if pending is not None:
            await self._commit(pending)

    async def _tick(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            due = self._schedule.due()
            if due is not None:
                try:
                    await self._commit(due)
                except Exception as exc:
                    if self._schedule.failed(self.name, due, exc):
                        continue  # the next tick, or close(), tries again
                    # Lasting: wake the application out of its wait for records.
                    self._stream.close()
                    return

    async def close(self, *, processed: bool = True) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self._stream.aclose()
        if processed:
            self._schedule.done_with_current()
        await self.commit()

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close(processed=exc is None)
