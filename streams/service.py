"""The gRPC servicer: each RPC is request -> validation -> storage -> response.

Handlers are registered by hand rather than through the generated base class
so that Consume and Peek can send stored record bytes as they are (every
response goes to gRPC as bytes, through a serializer that passes them on), so
that a request that is not valid protobuf (bad UTF-8 in a string, say) becomes
INVALID_ARGUMENT instead of gRPC's generic INTERNAL, and so that the raw size of
every request is counted (``--max-inflight-request-bytes``) before it is parsed.

Every response is charged to the memory budget from when it is built until
gRPC has taken it (:mod:`streams.memory`), under the slow-consumer deadline
(:mod:`streams.slow_consumers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from streams import codec, group_wire, infos, segment_watch, status, validation
from streams.auth import ANYONE, Caller, TokenAuth
from streams.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StreamsError,
    Unavailable,
)
from streams.groups import Groups, Member
from streams.limits import Limits
from streams.memory import InflightRequests, MemoryBudget
from streams.metrics import Metrics
from streams.model import MAX_OFFSET, Cut, GroupConfig, SegmentInfo, SpaceInfo, Target
from streams.page_tokens import PageTokens
from streams.slow_consumers import SlowConsumers
from streams.storage.port import RecordBatch, Store
from streams.v1 import streams_pb2 as pb

SERVICE_NAME = "streams.v1.StreamsService"
# Consume's initial metadata: the first offset the read delivers (see the contract).
START_HEADER = "streams-start"
_Named = TypeVar("_Named", SpaceInfo, SegmentInfo, GroupConfig)
log = logging.getLogger(__name__)
# A response handed to gRPC is in memory twice until sent: the bytes the
# handler yields and gRPC core's copy of them (measured: a follower that stops
# reading holds 2.1 MiB per 1 MiB response).
RESPONSE_COPIES = 2
# How long a client may leave a response untaken before its connection is
# closed (--slow-consumer-seconds; NATS's write_deadline is 10 s too).
SLOW_CONSUMER_SECONDS = 10.0
# Unary calls without side effects: run again rather than held while waiting for memory.
_READS = frozenset(
    {"Peek", "GetOffset", "ListSpaces", "ListSegments", "GetSpace", "GetSegment", "GetGroup",
     "ListGroups"}
)  # fmt: skip
# Streams that last as long as their client stays: left out of the duration histogram.
_OPEN_ENDED = frozenset({"WatchSegments", "Subscribe"})
# At shutdown, how long no call may have come in before gRPC's server is
# stopped (see StreamsService.drain): long enough for the serving loop to take
# every call gRPC holds for it, short next to any grace period.
DRAIN_QUIET_SECONDS = 0.1


class _Received:
    """A request as the handler gets it: the parsed message, or why there is none,
    and the raw bytes counted in flight until the call ends."""

    __slots__ = ("error", "message", "requests", "size")

    def __init__(self, requests: InflightRequests, size: int) -> None:
        self.requests = requests
        self.size = size
        self.message: Any = None
        self.error: StreamsError | None = None

    def release(self) -> None:
        if self.size:
            self.requests.give_back(self.size)
            self.size = 0

    def adopt(self, other: _Received) -> None:
        """Becomes ``other`` (which gives up its counted bytes to this one)."""
        self.message, self.error, self.size = other.message, other.error, other.size
        other.size = 0


def _parser(message_type: type[Message], requests: InflightRequests) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> _Received:
        received = _Received(requests, 0)
        try:
            # Refused here, before the parse copies it again.
            requests.take(len(data))
        except ResourceExhausted as exc:
            received.error = exc
            return received
        received.size = len(data)
        try:
            received.message = message_type.FromString(data)
        except DecodeError as exc:
            received.error = InvalidArgument(
                f"request: not a valid {message_type.DESCRIPTOR.name}: {exc}"
            )
        return received

    return parse


def _raw(data: bytes) -> bytes:
    return data


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


class _Charged:
    """A streamed response's charge to the memory budget and its slow-consumer
    timer, both taken back on exit (a class: this runs once per response, and
    a generator-based context manager costs twice as much)."""

    __slots__ = ("_cost", "_memory", "_peer", "_timer")

    def __init__(
        self, memory: MemoryBudget, slow: SlowConsumers, peer: str, name: str, size: int
    ) -> None:
        self._memory, self._peer, self._cost = memory, peer, RESPONSE_COPIES * size
        memory.charge(self._cost, peer)
        self._timer = slow.watch(peer, name, size)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        self._memory.refund(self._cost, self._peer)


class StreamsService:
    """Serves ``streams.v1.StreamsService`` over a :class:`~streams.storage.port.Store`.

    Example::

        service = StreamsService(store, Limits(), Metrics(Path("data")), groups=groups)
        server.add_generic_rpc_handlers((service.handler(),))

    ``groups`` serves the consumer groups' live side (Subscribe); without one
    the service builds its own over ``store``.
    """

    def __init__(
        self,
        store: Store,
        lim: Limits,
        metrics: Metrics,
        auth: TokenAuth | None = None,
        pages: PageTokens | None = None,
        memory: MemoryBudget | None = None,
        slow_consumer_seconds: float = SLOW_CONSUMER_SECONDS,
        groups: Groups | None = None,
    ) -> None:
        self._store = store
        self._limits = lim
        self._metrics = metrics
        self._auth = auth
        self._pages = pages or PageTokens.load(None)
        # Shared with the store's tail windows when the server builds both.
        self._memory = memory or MemoryBudget(
            lim.memory_budget_bytes, lim.memory_budget_bytes // lim.max_concurrent_streams
        )
        self.groups = groups or Groups(store, lim, self._memory)
        self._slow = SlowConsumers(slow_consumer_seconds, metrics.slow_consumers.inc)
        # A bidirectional stream's first message (Subscribe's join) comes within this.
        self._first_seconds = slow_consumer_seconds
        self._requests = InflightRequests(lim.max_inflight_request_bytes)
        self._streams = 0
        metrics.watch_memory(self._memory, self._requests)
        # Shutdown: new calls are answered UNAVAILABLE (which clients retry)
        # while the calls already running finish (see drain).
        self._draining = False
        self._drain_started = asyncio.Event()  # wakes streams waiting for their first message
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_call = 0.0  # loop time at which the last call entered a handler

    async def drain(self, timeout: float, quiet: float = DRAIN_QUIET_SECONDS) -> bool:
        """Refuses new calls with UNAVAILABLE and waits (up to ``timeout``
        seconds) until no call runs and none has come in for ``quiet`` seconds;
        True if that happened in time.

        gRPC's own stop, which follows, would CANCEL every call its core has
        accepted but not yet handed to a handler (the serving loop takes them one
        at a time, so under load some wait there), and every call that reaches
        it after the stop began. Waiting for a quiet spell lets the serving loop
        hand over every waiting call, each answered UNAVAILABLE here, and leaves
        the stop a moment in which clients send nothing.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._draining = True
        self._drain_started.set()
        self._last_call = loop.time()
        while True:
            if not self._idle.is_set():
                try:
                    await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    return False
            settled = self._last_call + quiet
            if loop.time() >= settled and self._idle.is_set():
                return True
            if settled > deadline:
                return False
            await asyncio.sleep(settled - loop.time())

    def handler(self) -> grpc.GenericRpcHandler:
        unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        bidi = grpc.stream_stream_rpc_method_handler
        rpcs: dict[str, tuple[Any, type[Message]]] = {
            "Produce": (unary, pb.ProduceRequest),
            "Consume": (stream, pb.ConsumeRequest),
            "Peek": (unary, pb.PeekRequest),
            "Commit": (unary, pb.CommitRequest),
            "GetOffset": (unary, pb.GetOffsetRequest),
            "ListSpaces": (unary, pb.ListSpacesRequest),
            "ListSegments": (unary, pb.ListSegmentsRequest),
            "Trim": (unary, pb.TrimRequest),
            "DeleteSegment": (unary, pb.DeleteSegmentRequest),
            "DeleteSpace": (unary, pb.DeleteSpaceRequest),
            "ConfigureSpace": (unary, pb.ConfigureSpaceRequest),
            "GetSpace": (unary, pb.GetSpaceRequest),
            "GetSegment": (unary, pb.GetSegmentRequest),
            "WatchSegments": (stream, pb.WatchSegmentsRequest),
            "CreateGroup": (unary, pb.CreateGroupRequest),
            "GetGroup": (unary, pb.GetGroupRequest),
            "ListGroups": (unary, pb.ListGroupsRequest),
            "DeleteGroup": (unary, pb.DeleteGroupRequest),
            "Subscribe": (bidi, pb.SubscribeRequest),
        }
        wraps: dict[Any, Callable[[str, Any], Callable[..., Any]]] = {
            unary: self._unary,
            stream: self._stream,
            bidi: self._bidi,
        }
        handlers = {}
        for name, (kind, request_type) in rpcs.items():
            method = getattr(self, _snake(name))
            wrap = wraps[kind]
            # Responses are bytes by then (see _unary): sized and charged as sent.
            handlers[name] = kind(
                wrap(name, method),
                request_deserializer=_parser(request_type, self._requests),
                response_serializer=_raw,
            )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    def _unary(self, name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def handle(received: _Received, context: grpc.aio.ServicerContext) -> bytes:
            # No await between the parse and here: the bytes counted are given back.
            try:
                async with self._rpc(name, received, context) as caller:
                    peer = context.peer()
                    data = await self._response(name, method, received, context, caller, peer)
                    self._hold_until_done(name, context, peer, RESPONSE_COPIES * len(data))
                    return data
            finally:
                received.release()

        return handle

    async def _response(
        self,
        name: str,
        method: Callable[..., Awaitable[Any]],
        received: _Received,
        context: grpc.aio.ServicerContext,
        caller: Caller,
        peer: str,
    ) -> bytes:
        """The call's response, serialized, once it fits the memory budget. A
        read that does not fit is dropped and run again once it would; a
        write's answer (small, and its request stays counted in flight) waits
        as it is."""
        while True:
            response = await method(received.message, context, caller)
            data: bytes = response if isinstance(response, bytes) else response.SerializeToString()
            cost = RESPONSE_COPIES * len(data)
            if name not in _READS or self._memory.fits(cost, peer):
                break
            del response, data
            await self._memory.room_for(cost, peer)
        await self._memory.room_for(cost, peer)
        return data

    def _hold_until_done(
        self, name: str, context: grpc.aio.ServicerContext, peer: str, cost: int
    ) -> None:
        """Charges a unary response to the memory budget until its call is done:
        gRPC has sent it, or the call ended otherwise."""
        self._memory.charge(cost, peer)
        timer = self._slow.watch(peer, name, cost // RESPONSE_COPIES)

        def release(_: grpc.aio.ServicerContext) -> None:
            timer.cancel()
            self._memory.refund(cost, peer)

        context.add_done_callback(release)  # type: ignore[arg-type]  # the stub wants its own class

    def _stream(self, name: str, method: Callable[..., AsyncIterator[bytes]]) -> Callable[..., Any]:
        async def handle(
            received: _Received, context: grpc.aio.ServicerContext, *rest: Any
        ) -> AsyncIterator[bytes]:
            # A bidirectional stream's first message is still to come (see _bidi).
            first = rest[0] if rest else None
            try:
                async with self._rpc(name, received, context, stream=True, first=first) as caller:
                    # Ends the stream when a token reload revokes what it needs.
                    stream = method(received.message, context, caller, *rest)
                    async for response in caller.until_revoked(stream):
                        yield response
            finally:
                received.release()

        return handle

    def _bidi(self, name: str, method: Callable[..., AsyncIterator[bytes]]) -> Callable[..., Any]:
        """A bidirectional stream, checked as :meth:`_stream` checks its one
        request, on its first message; the method gets the rest of the
        request stream (each a :class:`_Received` to release once handled).
        The stream is admitted (and counted running) before its first message
        comes, which must come within ``slow_consumer_seconds``."""
        stream = self._stream(name, method)

        async def handle(
            requests: AsyncIterator[_Received], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            # Filled in by _rpc with the first message once it comes.
            first = _Received(self._requests, 0)
            # Iterated only once admitted: grpc warns of a receiver never awaited.
            async for response in stream(first, context, requests):
                yield response

        return handle

    async def _first(self, name: str, requests: AsyncIterator[_Received]) -> _Received:
        """A bidirectional stream's first message. DeadlineExceeded when none
        comes within ``slow_consumer_seconds``; Unavailable when the server
        starts draining meanwhile; InvalidArgument when the stream ends first."""
        reading = asyncio.ensure_future(anext(aiter(requests), None))
        draining = asyncio.ensure_future(self._drain_started.wait())
        try:
            await asyncio.wait(
                (reading, draining), timeout=self._first_seconds, return_when="FIRST_COMPLETED"
            )
        finally:
            draining.cancel()
            if not reading.done():
                reading.cancel()
        if reading.done() and not reading.cancelled():
            first = reading.result()
            if first is not None:
                return first
            ended = _Received(self._requests, 0)
            ended.error = InvalidArgument(f"{name}: the stream ended before its first message")
            return ended
        if self._draining:
            raise Unavailable(f"{name}: the server is shutting down; retry")
        raise DeadlineExceeded(
            f"{name}: no first message (the join) within {self._first_seconds:g} s "
            "(slow_consumer_seconds)"
        )

    @contextlib.asynccontextmanager
    async def _rpc(
        self,
        name: str,
        received: _Received,
        context: grpc.aio.ServicerContext,
        stream: bool = False,
        first: AsyncIterator[_Received] | None = None,
    ) -> AsyncIterator[Caller]:
        """Authenticates, rejects unparsable requests and streams over the cap, and
        turns every error into the status its type names (and a metric, and a log line).
        With ``first`` (a bidirectional stream's requests), the stream is admitted
        before its first message is awaited from it into ``received``."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self._running += 1
        self._idle.clear()
        self._last_call = asyncio.get_running_loop().time()
        admitted = False
        try:
            if self._draining:
                raise Unavailable(f"{name}: the server is shutting down; retry")
            if first is not None:
                # Counted (streams, running) while it waits: a stream that never sends
                # its first message holds a slot, and the drain ends the wait.
                self._admit_stream(name)
                admitted = True
                received.adopt(await self._first(name, first))
            if received.error is not None:
                raise received.error
            # Every RPC: a known field with the wrong wire type is refused, not
            # read as empty (Produce and Consume also check their submessages).
            validation.known_fields(received.message)
            caller = (
                self._auth.authenticate(context.invocation_metadata()) if self._auth else ANYONE
            )
            if stream and not admitted:
                self._admit_stream(name)
                admitted = True
            yield caller
        except StreamsError as exc:
            code = status.code_of(exc)
            await context.abort(code, exc.message, status.trailers_of(exc))
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: gRPC dropped the stream (its client went away).
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", name, extra={"method": name})
            await context.abort(code, f"{name}: internal error; the server log has details")
        finally:
            if admitted:
                self._streams -= 1
                self._metrics.active_consume_streams.dec()
            self._running -= 1
            if not self._running:
                self._idle.set()
            timed = name not in _OPEN_ENDED and not getattr(received.message, "follow", False)
            self._metrics.finished(
                name, code.name, time.perf_counter() - started if timed else None
            )
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "rpc",
                    extra={
                        "method": name,
                        "code": code.name,
                        "peer": context.peer(),
                        "ms": round((time.perf_counter() - started) * 1000, 3),
                        "space": getattr(received.message, "space", None),
                    },
                )

    def _admit_stream(self, name: str) -> None:
        cap = self._limits.max_concurrent_streams
        if self._streams >= cap:
            raise ResourceExhausted(
                f"{name}: {self._streams} streams are open, the most max_concurrent_streams "
                f"({cap}) allows; retry later"
            )
        self._streams += 1
        self._metrics.active_consume_streams.inc()

    # -- RPCs ------------------------------------------------------------

    async def produce(
        self, request: pb.ProduceRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.ProduceResponse:
        txn = validation.transaction(request, self._limits)
        caller.check("write", txn.space)
        started = time.perf_counter()
        result = await self._store.produce(txn)
        self._metrics.produce_latency.observe(time.perf_counter() - started)
        if not result.duplicate:
            size = sum(sum(map(len, append.bodies)) for append in txn.appends)
            self._metrics.produced(txn.record_count, size)
        return codec.produce_response(result)

    async def consume(
        self, request: pb.ConsumeRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> AsyncIterator[bytes]:
        query = validation.consume(request, self._limits)
        target = query.target
        caller.check("read", target.space)
        # Subscribed before the start is fixed, so nothing committed after it is missed.
        following = self._store.follow(target) if query.follow else contextlib.nullcontext()
        async with following as sub:
            first = await self._start(query)
            last = query.to_offset or MAX_OFFSET
            if sub is None:
                # Without follow, the read ends at what was stored when it started.
                last = min(last, await self._store.last_offset(target))
            await context.send_initial_metadata(((START_HEADER, str(first)),))
            peer = context.peer()
            remaining = query.limit or MAX_OFFSET
            needed = 1  # memory the next response needs at least
            while remaining and first <= last:
                await self._memory.room_for(needed, peer)
                cut = Cut(
                    min(query.max_batch, remaining),
                    self._response_allowance(peer),
                    self._limits.max_filter_skip_bytes,
                )
                prefix = query.segment_prefix
                batch, after = await self._store.read(target, first, last, cut, prefix)
                if batch.count:
                    wire = batch.to_wire()
                    cost = RESPONSE_COPIES * len(wire)
                    if not self._memory.fits(cost, peer):
                        # One record, larger than the response may take: wait until it fits.
                        needed = cost
                        continue
                    needed = 1
                    with self._charged(peer, "Consume", len(wire)):
                        yield wire
                    self._metrics.consumed_records.inc(batch.count)
                    first = after
                    remaining -= batch.count
                elif after > first:
                    # Only other segments' records so far: let other calls run, go on.
                    first = after
                    await asyncio.sleep(0)
                elif sub is None:
                    break
                else:
                    await sub.wait(first)

    def _response_allowance(self, peer: str) -> int:
        """The most bytes the next streamed response to ``peer`` may take
        (at least 1: one record or segment always goes)."""
        allowed = self._memory.allowance(peer) // RESPONSE_COPIES
        return max(1, min(self._limits.max_response_bytes, allowed))

    def _charged(self, peer: str, name: str, size: int) -> _Charged:
        """Charges a streamed response of ``size`` bytes to the memory budget
        (and the slow-consumer deadline) while gRPC holds it: until the
        stream asks for the next response, or ends (``with`` the result)."""
        return _Charged(self._memory, self._slow, peer, name, size)

    async def _start(self, query: validation.ConsumeQuery) -> int:
        """The first offset the read may return: the requested start, or the
        first retained offset when that is later (records below it were
        trimmed or deleted; a committed offset below it is kept, and the read
        starts at the first retained record)."""
        requested = await self._requested_start(query)
        return max(requested, await self._store.first_offset(query.target))

    async def _requested_start(self, query: validation.ConsumeQuery) -> int:
        match query.start:
            case "from_offset":
                return await self._start_at(query.target, "offset", query.from_offset)
            case "from_timestamp":
                return await self._start_at(query.target, "timestamp", query.from_timestamp_ns)
            case "from_consumer":
                committed = await self._store.get_offset(query.from_consumer, query.target)
                return (committed or 0) + 1
            case "from_end":
                return await self._start_at(query.target, "end", 0)
            case _:
                return 1

    async def _start_at(self, target: Target, kind: str, value: int) -> int:
        """The first offset a read from ``kind`` starts at: "offset" ``value``,
        the first record stamped at or after "timestamp" ``value``, or after
        the "end"; else the first (Consume's and a group's starts)."""
        match kind:
            case "offset":
                return max(1, value)
            case "timestamp":
                return await self._store.first_at_or_after(target, value)
            case "end":
                return await self._store.last_offset(target) + 1
            case _:
                return 1

    async def peek(
        self, request: pb.PeekRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> bytes:
        target = validation.target(request.space, request.segment)
        caller.check("read", target.space)
        last: RecordBatch | None = await self._store.peek(target)
        if last is None:
            raise NotFound(f"space, segment: {target.describe()} has no retained records")
        # A PeekResponse is its one Record field, framed like ConsumeResponse's.
        return last.to_wire()

    async def commit(
        self, request: pb.CommitRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.CommitResponse:
        validation.written_name("consumer", request.consumer)
        consumer, target = _offset_target(request, caller)
        expected = request.expected_offset if request.HasField("expected_offset") else None
        offset = await self._store.commit_offset(consumer, target, request.offset, expected)
        return pb.CommitResponse(offset=offset)

    async def get_offset(
        self, request: pb.GetOffsetRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.GetOffsetResponse:
        consumer, target = _offset_target(request, caller)
        offset = await self._store.get_offset(consumer, target)
        if offset is None:
            raise NotFound(
                f"consumer: {consumer!r} has committed no offset for {target.describe()}"
            )
        return pb.GetOffsetResponse(offset=offset)

    async def list_spaces(
        self, request: pb.ListSpacesRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.ListSpacesResponse:
        caller.check_action("read")
        size = validation.page_size(request.page_size)
        after = self._pages.decode("spaces", request.page_token)
        # Only spaces the token may read (another's space names are theirs),
        # scanning only the name ranges its patterns can match.
        visible = None if caller is ANYONE else (lambda space: caller.allows("read", space))
        found = await self._store.list_spaces(after, size + 1, visible, caller.prefixes("read"))
        page, token = self._page(found, size, "spaces")
        return pb.ListSpacesResponse(
            spaces=[infos.space_info(info) for info in page], next_page_token=token
        )

    async def list_segments(
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.ListSegmentsResponse:
        space = validation.name("space", request.space)
        caller.check("read", space)
        size = validation.page_size(request.page_size)
        scope = f"segments\x00{space}"
        after = self._pages.decode(scope, request.page_token)
        found = await self._store.list_segments(space, after, size + 1)
        page, token = self._page(found, size, scope)
        return pb.ListSegmentsResponse(
            segments=[infos.segment_info(info) for info in page], next_page_token=token
        )

    async def trim(
        self, request: pb.TrimRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.TrimResponse:
        query = validation.trim(request)
        target = query.target
        caller.check("write", target.space)
        before = query.before_offset
        if before is None:
            # Timestamps never decrease along offsets: every record below the
            # first stamped at or after the point is stamped before it.
            before = await self._store.first_at_or_after(target, query.before_timestamp_ns)
        first, removed = await self._store.trim(target, before)
        self._metrics.removed("trim", removed)
        return pb.TrimResponse(first_offset=first)

    async def delete_segment(
        self, request: pb.DeleteSegmentRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.DeleteSegmentResponse:
        # Not written_name: names stored before `$` was reserved can be deleted.
        space = validation.name("space", request.space)
        segment = validation.name("segment", request.segment)
        caller.check("write", space)
        expected = request.expected_sequence if request.HasField("expected_sequence") else None
        removed = await self._store.delete_segment(space, segment, expected)
        self._metrics.removed("delete", removed)
        return pb.DeleteSegmentResponse()

    async def delete_space(
        self, request: pb.DeleteSpaceRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.DeleteSpaceResponse:
        space = validation.name("space", request.space)
        caller.check("write", space)
        removed = await self._store.delete_space(space)
        # Its groups went with it (also when there was no record): their members end.
        self.groups.deleted_space(space)
        self._metrics.removed("delete", removed)
        return pb.DeleteSpaceResponse()

    async def configure_space(
        self, request: pb.ConfigureSpaceRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.ConfigureSpaceResponse:
        space = validation.written_name("space", request.space)
        config = validation.space_config(request.config)
        caller.check("write", space)
        await self._store.configure_space(space, config)
        response = pb.ConfigureSpaceResponse()
        if request.HasField("config"):
            # As sent, unknown fields dropped (validation did), no defaults filled in.
            response.config.CopyFrom(request.config)
        return response

    async def get_space(
        self, request: pb.GetSpaceRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.GetSpaceResponse:
        space = validation.name("space", request.space)
        caller.check("read", space)
        info = await self._store.get_space(space)
        if info is None:
            raise NotFound(
                f"space: {validation.show(space)} has no records and no config "
                "(never written, or deleted)"
            )
        return pb.GetSpaceResponse(space=infos.space_info(info))

    async def get_segment(
        self, request: pb.GetSegmentRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.GetSegmentResponse:
        space = validation.name("space", request.space)
        segment = validation.name("segment", request.segment)
        caller.check("read", space)
        info = await self._store.get_segment(space, segment)
        if info is None:
            raise NotFound(
                f"segment: {validation.show(segment)} of space {validation.show(space)} "
                "does not exist (never written, or deleted)"
            )
        return pb.GetSegmentResponse(segment=infos.segment_info(info))

    async def watch_segments(
        self, request: pb.WatchSegmentsRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> AsyncIterator[bytes]:
        space = validation.name("space", request.space)
        prefix = validation.name_prefix("prefix", request.prefix)
        caller.check("read", space)
        peer = context.peer()

        async def room() -> int:
            # As Consume: built only once memory is free, cut to what it may take.
            await self._memory.room_for(1, peer)
            return self._response_allowance(peer)

        feed = segment_watch.responses(self._store, space, prefix, room)
        async with contextlib.aclosing(feed) as messages:
            async for data in messages:
                await self._memory.room_for(RESPONSE_COPIES * len(data), peer)
                with self._charged(peer, "WatchSegments", len(data)):
                    yield data

    # -- consumer groups -------------------------------------------------

    async def create_group(
        self, request: pb.CreateGroupRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.CreateGroupResponse:
        config = validation.group(request.group)
        caller.check("write", config.space)
        dead = config.dead_letter_space
        # The default `$parked` is the server's (also written out, as CreateGroup returns
        # it); another dead-letter space is the client's to write.
        if dead != validation.DEFAULT_DEAD_LETTER_SPACE and not caller.allows("write", dead):
            raise PermissionDenied(
                f"group.dead_letter_space: the token has no write access to {validation.show(dead)}"
            )
        # The position before the group's first record.
        start = config.start
        acked_through = await self._start_at(Target(config.space), start.kind, start.value) - 1
        stored, created = await self._store.create_group(
            config, acked_through, self._limits.max_groups_per_space
        )
        if not created and stored != config:
            raise AlreadyExists(
                f"group: {validation.show(config.name)} of space {validation.show(config.space)} "
                f"exists with other settings: {group_wire.differences(stored, config)}"
            )
        return pb.CreateGroupResponse(group=group_wire.group(stored))

    async def get_group(
        self, request: pb.GetGroupRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.GetGroupResponse:
        space, name = validation.group_ref(request.space, request.group)
        caller.check("read", space)
        state = await self._store.get_group(space, name)
        if state is None:
            raise NotFound(
                f"group: {validation.show(name)} of space {validation.show(space)} does not exist"
            )
        target = Target(space)
        info = pb.GroupInfo(
            last_position=await self._store.last_offset(target), parked=state.progress.parked
        )
        live = self.groups.live(space, name)
        if live is None:
            first = await self._store.first_offset(target)
            info.acked_through = group_wire.durable_acked_through(state.progress, first)
        else:
            info.acked_through = live.acked_through
            info.in_flight = live.in_flight
            info.members.extend(
                pb.GroupMember(id=member_id, name=member, segments=segments, in_flight=held)
                for member_id, member, segments, held in live.members
            )
        return pb.GetGroupResponse(group=group_wire.group(state.config), info=info)

    async def list_groups(
        self, request: pb.ListGroupsRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.ListGroupsResponse:
        space = validation.name("space", request.space)
        size = validation.page_size(request.page_size)
        caller.check("read", space)
        scope = f"groups\x00{space}"
        after = self._pages.decode(scope, request.page_token)
        found = await self._store.list_groups(space, after, size + 1)
        page, token = self._page(found, size, scope)
        return pb.ListGroupsResponse(
            groups=[group_wire.group(config) for config in page], next_page_token=token
        )

    async def delete_group(
        self, request: pb.DeleteGroupRequest, context: grpc.aio.ServicerContext, caller: Caller
    ) -> pb.DeleteGroupResponse:
        space, name = validation.group_ref(request.space, request.group)
        caller.check("write", space)
        await self._store.delete_group(space, name)
        # Also when there was none: a member that joined a group deleted meanwhile ends.
        self.groups.deleted(space, name)
        return pb.DeleteGroupResponse()

    async def subscribe(
        self,
        request: pb.SubscribeRequest,
        context: grpc.aio.ServicerContext,
        caller: Caller,
        requests: AsyncIterator[_Received],
    ) -> AsyncIterator[bytes]:
        join = validation.join(request)
        caller.check("read", join.space)
        peer = context.peer()
        async with self.groups.join(
            join.space, join.group, join.member_name, join.max_in_flight
        ) as member:
            data = group_wire.joined(member.id)
            with self._charged(peer, "Subscribe", len(data)):
                yield data
            reader = asyncio.create_task(self._settlements(requests, member))
            try:
                while True:
                    await self._memory.room_for(1, peer)
                    allowance = self._response_allowance(peer)
                    got = await member.deliveries(allowance)
                    if not got:
                        return  # the member ended without an error: the client half-closed
                    for data in group_wire.deliveries(got, allowance):
                        await self._memory.room_for(RESPONSE_COPIES * len(data), peer)
                        with self._charged(peer, "Subscribe", len(data)):
                            yield data
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _settlements(self, requests: AsyncIterator[_Received], member: Member) -> None:
        """Reads a member's acks and nacks until its client half-closes (the
        member ends, OK) or sends what is not valid (the member ends with
        that error, which ends the stream)."""
        try:
            async for received in requests:
                try:
                    if received.error is not None:
                        raise received.error
                    settle = validation.settle(received.message, self._limits)
                finally:
                    received.release()
                if settle.nack:
                    member.nack(settle.positions, settle.park, settle.reason)
                else:
                    member.ack(settle.positions)
        except StreamsError as exc:
            member.end(exc)
            return
        except Exception:
            # Without an end the member would wait for acks that never come.
            log.exception("Subscribe: reading the client's messages failed")
            member.end(Unavailable("Subscribe: reading the stream failed; join again"))
            return
        member.end(None)

    def _page(self, found: list[_Named], size: int, scope: str) -> tuple[list[_Named], str]:
        """Cuts a listing fetched one past ``size`` into a page and the next page's token."""
        page = found[:size]
        token = self._pages.encode(scope, page[-1].name) if len(found) > size else ""
        return page, token


def _offset_target(
    request: pb.CommitRequest | pb.GetOffsetRequest, caller: Caller
) -> tuple[str, Target]:
    """The consumer and target of an offset call, checked (offsets need read access)."""
    consumer = validation.name("consumer", request.consumer)
    target = validation.target(request.space, request.segment)
    caller.check("read", target.space)
    return consumer, target
