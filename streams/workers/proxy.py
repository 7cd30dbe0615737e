"""A front's RPCs that need the one writer process, forwarded there unparsed.

The consumer-group registry (its dispatchers, live members, in-flight
records) lives once, in the writer: every RPC whose service code touches it
(``StreamsService.groups``) runs on the writer's own StreamsServer, reached
over a private Unix socket. The front forwards such a call as it came: the
request bytes, the client's metadata (its bearer token included: the writer
checks it as a single server would), and back the response bytes, initial
and trailing metadata, status and details. Subscribe streams both ways; a
cancellation on either side cancels the other.

Example (a front's server, see streams.workers.front)::

    proxy = WriterProxy(grpc.aio.insecure_channel("unix:/tmp/x/writer.sock"), slow)
    server = StreamsServer(config, handlers=(proxy,), ...)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, NoReturn

import grpc

from streams.service import SERVICE_NAME
from streams.slow_consumers import SlowConsumers

# grep `self.groups` in streams/service.py: these touch the registry. ListGroups
# does not, but is kept with the rest of the group RPCs so that a group's
# listing and its live state come from one place.
UNARY = frozenset({"CreateGroup", "GetGroup", "ListGroups", "DeleteGroup", "DeleteSpace"})
STREAMING = frozenset({"Subscribe"})
PROXIED = UNARY | STREAMING
# gRPC sets these itself on the call to the writer (a front cannot forward them).
_OWN_KEYS = ("user-agent", "grpc-")
# The writer's answers are at most a response's size; gRPC's 4 MiB default is not the cap.
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)


def _identity(data: bytes) -> bytes:
    return data


def _outgoing(metadata: Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    """The client's metadata as the call to the writer can carry it."""
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if not key.startswith(":") and not key.startswith(_OWN_KEYS)
    )


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    # No deadline: gRPC reports a huge number of seconds, or None.
    return None if remaining is None or remaining > 10**8 else max(0.0, remaining)


class WriterProxy(grpc.GenericRpcHandler):
    """Takes the :data:`PROXIED` RPCs of ``streams.v1.StreamsService`` and
    forwards them over ``channel`` (to the writer's StreamsServer); leaves
    every other RPC to the handlers after it."""

    def __init__(self, channel: grpc.aio.Channel, slow: SlowConsumers) -> None:
        self._channel = channel
        self._slow = slow
        self._closed = False
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name in UNARY:
            upstream = channel.unary_unary(
                f"/{SERVICE_NAME}/{name}",
                request_serializer=_identity,
                response_deserializer=_identity,
            )
            self._handlers[f"/{SERVICE_NAME}/{name}"] = grpc.unary_unary_rpc_method_handler(
                self._unary(upstream)
            )
        for name in STREAMING:
            stream = channel.stream_stream(
                f"/{SERVICE_NAME}/{name}",
                request_serializer=_identity,
                response_deserializer=_identity,
            )
            self._handlers[f"/{SERVICE_NAME}/{name}"] = grpc.stream_stream_rpc_method_handler(
                self._streaming(name, stream)
            )

    def close(self) -> None:
        """The front's shutdown began: new calls are answered UNAVAILABLE (which
        clients retry elsewhere), as the service answers its own; calls already
        forwarded finish."""
        self._closed = True

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        if self._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry")

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)  # type: ignore[attr-defined]

    def _unary(self, upstream: grpc.aio.UnaryUnaryMultiCallable) -> Any:
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await self._admit(context)
            call = upstream(
                request,
                metadata=_outgoing(context.invocation_metadata()),
                timeout=_timeout(context),
            )
            try:
                response = await call
            except grpc.aio.AioRpcError as exc:
                await _fail(context, exc)
            except asyncio.CancelledError:  # the client's call ended: so does the writer's
                call.cancel()
                raise
            await _headers(context, call)
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            return response  # type: ignore[no-any-return]  # bytes, deserialized as is

        return forward

    def _streaming(self, name: str, upstream: grpc.aio.StreamStreamMultiCallable) -> Any:
        async def forward(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> None:
            await self._admit(context)
            call = upstream(
                metadata=_outgoing(context.invocation_metadata()), timeout=_timeout(context)
            )
            sending = asyncio.create_task(_send(requests, call))
            peer = context.peer()
            try:
                await _headers(context, call)
                while isinstance(response := await call.read(), bytes):  # else EOF
                    # The client must take it in time, as from the service itself.
                    timer = self._slow.watch(peer, name, len(response))
                    try:
                        await context.write(response)
                    finally:
                        timer.cancel()
                code = await call.code()
            except grpc.aio.AioRpcError as exc:
                await _fail(context, exc)
            except asyncio.CancelledError:
                call.cancel()
                raise
            finally:
                sending.cancel()
                # Its failure (the writer gone) is the call's status, reported above.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sending
            trailers = tuple(await call.trailing_metadata() or ())
            if code != grpc.StatusCode.OK:
                await context.abort(code, await call.details() or "", trailers)
            context.set_trailing_metadata(trailers)

        return forward


async def _send(requests: AsyncIterator[bytes], call: grpc.aio.StreamStreamCall) -> None:
    """The client's messages to the writer, then its half-close."""
    async for request in requests:
        await call.write(request)
    await call.done_writing()


async def _headers(context: grpc.aio.ServicerContext, call: grpc.aio.Call) -> None:
    headers = _outgoing(await call.initial_metadata())
    if headers:
        await context.send_initial_metadata(headers)


async def _fail(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError) -> NoReturn:
    """Ends the client's call as the writer ended its own."""
    await context.abort(exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ()))
    raise RuntimeError("context.abort returned")  # it raises: gRPC ends the call with it
