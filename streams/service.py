"""The gRPC servicer: each RPC is request -> validation -> storage -> response.

Handlers are registered by hand rather than through the generated base class
so that Consume and Peek can send stored record bytes as they are (a custom
response serializer that passes bytes through), and so that a request that is
not valid protobuf (bad UTF-8 in a string, say) becomes INVALID_ARGUMENT
instead of gRPC's generic INTERNAL.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from streams import codec, validation
from streams.errors import InvalidArgument, NotFound, StreamsError
from streams.keys import U64_MAX
from streams.limits import Limits
from streams.model import SegmentInfo, SpaceInfo
from streams.storage.base import Store
from streams.v1 import streams_pb2 as pb

SERVICE_NAME = "streams.v1.StreamsService"
_Named = TypeVar("_Named", SpaceInfo, SegmentInfo)
log = logging.getLogger(__name__)


class _Malformed:
    """Stands in for a request that did not parse, so the handler can say why."""

    def __init__(self, message_type: type[Message], error: str) -> None:
        self.message = f"request: not a valid {message_type.DESCRIPTOR.name}: {error}"


def _parser(message_type: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return _Malformed(message_type, str(exc))

    return parse


def _raw(data: bytes) -> bytes:
    return data


class StreamsService:
    """Serves ``streams.v1.StreamsService`` over a :class:`~streams.storage.base.Store`.

    Example::

        service = StreamsService(store, Limits())
        server.add_generic_rpc_handlers((service.handler(),))
    """

    def __init__(self, store: Store, lim: Limits) -> None:
        self._store = store
        self._limits = lim

    def handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Produce": unary(
                    self._unary(self.produce),
                    request_deserializer=_parser(pb.ProduceRequest),
                    response_serializer=pb.ProduceResponse.SerializeToString,
                ),
                "Consume": grpc.unary_stream_rpc_method_handler(
                    self._stream(self.consume),
                    request_deserializer=_parser(pb.ConsumeRequest),
                    response_serializer=_raw,
                ),
                "Peek": unary(
                    self._unary(self.peek),
                    request_deserializer=_parser(pb.PeekRequest),
                    response_serializer=_raw,
                ),
                "Commit": unary(
                    self._unary(self.commit),
                    request_deserializer=_parser(pb.CommitRequest),
                    response_serializer=pb.CommitResponse.SerializeToString,
                ),
                "GetOffset": unary(
                    self._unary(self.get_offset),
                    request_deserializer=_parser(pb.GetOffsetRequest),
                    response_serializer=pb.GetOffsetResponse.SerializeToString,
                ),
                "ListSpaces": unary(
                    self._unary(self.list_spaces),
                    request_deserializer=_parser(pb.ListSpacesRequest),
                    response_serializer=pb.ListSpacesResponse.SerializeToString,
                ),
                "ListSegments": unary(
                    self._unary(self.list_segments),
                    request_deserializer=_parser(pb.ListSegmentsRequest),
                    response_serializer=pb.ListSegmentsResponse.SerializeToString,
                ),
            },
        )

    # Every handler's errors travel as the status their type names.
    @staticmethod
    def _unary(
        method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, _Malformed):
                    raise InvalidArgument(request.message)
                return await method(request, context)
            except StreamsError as exc:
                await context.abort(exc.code, exc.message)

        return handle

    @staticmethod
    def _stream(
        method: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[bytes]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            try:
                if isinstance(request, _Malformed):
                    raise InvalidArgument(request.message)
                async for response in method(request, context):
                    yield response
            except StreamsError as exc:
                await context.abort(exc.code, exc.message)

        return handle

    # -- RPCs ------------------------------------------------------------

    async def produce(
        self, request: pb.ProduceRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProduceResponse:
        txn = validation.transaction(request, self._limits)
        return codec.produce_response(await self._store.produce(txn))

    async def consume(
        self, request: pb.ConsumeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        query = validation.consume(request, self._limits)
        target = query.target
        # Subscribed before the start is fixed, so nothing committed after it is missed.
        with self._store.subscribe(target) if query.follow else contextlib.nullcontext() as sub:
            first = await self._start(query)
            last = query.to_offset or U64_MAX
            if sub is None:
                # Without follow, the read ends at what was stored when it started.
                last = min(last, self._store.last_offset(target))
            await context.send_initial_metadata(())
            remaining = query.limit or U64_MAX
            while remaining and first <= last:
                records = self._store.read(
                    target,
                    first,
                    last,
                    min(query.max_batch, remaining),
                    self._limits.max_response_bytes,
                )
                if records:
                    yield codec.consume_response(records)
                    first += len(records)
                    remaining -= len(records)
                elif sub is None:
                    break
                else:
                    await sub.wait(first)

    async def _start(self, query: validation.ConsumeQuery) -> int:
        """The first offset the read may return."""
        match query.start:
            case "from_offset":
                return max(1, query.from_offset)
            case "from_timestamp":
                return self._store.first_at_or_after(query.target, query.from_timestamp_ns)
            case "from_consumer":
                committed = await self._store.get_offset(query.from_consumer, query.target)
                return (committed or 0) + 1
            case "from_end":
                return self._store.last_offset(query.target) + 1
            case _:
                return 1

    async def peek(self, request: pb.PeekRequest, context: grpc.aio.ServicerContext) -> bytes:
        target = validation.target(request.space, request.segment)
        stored = self._store.peek(target)
        if stored is None:
            raise NotFound(f"space, segment: {target.describe()} has no records")
        # A PeekResponse is its one Record field, framed like ConsumeResponse's.
        return codec.consume_response((stored,))

    async def commit(
        self, request: pb.CommitRequest, context: grpc.aio.ServicerContext
    ) -> pb.CommitResponse:
        consumer = validation.name("consumer", request.consumer)
        target = validation.target(request.space, request.segment)
        expected = request.expected_offset if request.HasField("expected_offset") else None
        offset = await self._store.commit_offset(consumer, target, request.offset, expected)
        return pb.CommitResponse(offset=offset)

    async def get_offset(
        self, request: pb.GetOffsetRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOffsetResponse:
        consumer = validation.name("consumer", request.consumer)
        target = validation.target(request.space, request.segment)
        offset = await self._store.get_offset(consumer, target)
        if offset is None:
            raise NotFound(
                f"consumer: {consumer!r} has committed no offset for {target.describe()}"
            )
        return pb.GetOffsetResponse(offset=offset)

    async def list_spaces(
        self, request: pb.ListSpacesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSpacesResponse:
        size = validation.page_size(request.page_size)
        after = validation.decode_page_token("spaces", request.page_token)
        page, token = _page(self._store.list_spaces(after, size + 1), size, "spaces")
        return pb.ListSpacesResponse(
            spaces=[
                pb.SpaceInfo(
                    name=info.name,
                    last_position=info.last_position,
                    last_timestamp=codec.timestamp(info.last_timestamp_ns),
                )
                for info in page
            ],
            next_page_token=token,
        )

    async def list_segments(
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentsResponse:
        space = validation.name("space", request.space)
        size = validation.page_size(request.page_size)
        scope = f"segments\x00{space}"
        after = validation.decode_page_token(scope, request.page_token)
        page, token = _page(self._store.list_segments(space, after, size + 1), size, scope)
        return pb.ListSegmentsResponse(
            segments=[
                pb.SegmentInfo(
                    name=info.name,
                    last_sequence=info.last_sequence,
                    last_position=info.last_position,
                    last_timestamp=codec.timestamp(info.last_timestamp_ns),
                )
                for info in page
            ],
            next_page_token=token,
        )


def _page(found: list[_Named], size: int, scope: str) -> tuple[list[_Named], str]:
    """Cuts a listing fetched one past ``size`` into a page and the next page's token."""
    page = found[:size]
    token = validation.encode_page_token(scope, page[-1].name) if len(found) > size else ""
    return page, token
