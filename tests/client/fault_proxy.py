"""A real gRPC pass-through server in front of a real Streams server, for the
client tests that need a fault the server does not make on demand: a status
after the call went through, an answer cut short, a stream (Consume,
Subscribe) broken at a chosen moment, a reconnect held back.

Calls pass as bytes. A test hooks a unary method with ``proxy.hooks[name] =
hook``: ``hook(forward, context)`` returns the answer's bytes, and may call
``forward()`` (the real call upstream) or not, and abort before or after.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "streams.v1.StreamsService"
UNARY = ("Produce", "Peek", "Commit", "GetOffset", "ListSpaces", "ListSegments")
START_HEADER = "streams-start"

Forward = Callable[[], bytes]
Hook = Callable[[Forward, grpc.ServicerContext], bytes]


class FaultProxy:
    """Forwards every call to ``upstream``; see the module docstring."""

    def __init__(self, upstream: str) -> None:
        self.upstream = grpc.insecure_channel(upstream)
        self.lock = threading.Lock()
        self.hooks: dict[str, Hook] = {}
        self.calls: Counter[str] = Counter()  # calls received, by method
        # Consume: new calls wait while this is clear; headers get a streams-start
        # of this value when the upstream sent none (the contract's, ahead of the server).
        self.consume_gate = threading.Event()
        self.consume_gate.set()
        self.start_header: str | None = None
        self._live: list[tuple[Any, list[bool]]] = []  # upstream call, [broken by the test]
        self.opened = 0  # Consume calls that got their headers, ever
        self._opened = threading.Condition(self.lock)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._unary(name)) for name in UNARY}
        handlers["Consume"] = grpc.unary_stream_rpc_method_handler(self._consume)
        handlers["Subscribe"] = grpc.stream_stream_rpc_method_handler(self._subscribe)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"

    def _unary(self, name: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        call = self.upstream.unary_unary(f"/{SERVICE}/{name}")

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.calls[name] += 1
                hook = self.hooks.get(name)

            def forward() -> bytes:
                try:
                    return bytes(call(request, timeout=10))
                except grpc.RpcError as exc:
                    context.abort(exc.code(), exc.details() or "")

            return hook(forward, context) if hook is not None else forward()

        return handle

    def _consume(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        with self.lock:
            self.calls["Consume"] += 1
        if not self.consume_gate.wait(30):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the test never opened the gate")
        responses = self.upstream.unary_stream(f"/{SERVICE}/Consume")(request)
        context.add_callback(responses.cancel)
        broken = [False]
        with self.lock:  # breakable from here: before the client can know it is open
            self._live.append((responses, broken))
        headers = list(responses.initial_metadata() or ())
        if self.start_header is not None and all(k != START_HEADER for k, _ in headers):
            headers.append((START_HEADER, self.start_header))
        context.send_initial_metadata(headers)
        with self.lock:
            self.opened += 1
            self._opened.notify_all()
        yield from self._relay(responses, broken, context)

    def _subscribe(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        with self.lock:
            self.calls["Subscribe"] += 1
        responses = self.upstream.stream_stream(f"/{SERVICE}/Subscribe")(requests)
        context.add_callback(responses.cancel)
        broken = [False]
        with self.lock:
            self._live.append((responses, broken))
        yield from self._relay(responses, broken, context)

    def _relay(
        self, responses: Any, broken: list[bool], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """The upstream stream's answers, then its status (UNAVAILABLE when the test broke it)."""
        try:
            yield from responses
        except grpc.RpcError as exc:
            if broken[0]:
                context.abort(grpc.StatusCode.UNAVAILABLE, "stream broken by the test proxy")
            if exc.code() is not grpc.StatusCode.CANCELLED:
                context.abort(exc.code(), exc.details() or "")
        finally:
            with self.lock:
                self._live.remove((responses, broken))

    def wait_opened(self, count: int, timeout: float = 10.0) -> None:
        """Returns once ``count`` Consume calls in all have got their headers."""
        with self._opened:
            if not self._opened.wait_for(lambda: self.opened >= count, timeout):
                raise AssertionError(f"{self.opened} of {count} Consume calls opened")

    def break_streams(self) -> None:
        """Ends every open Consume and Subscribe with UNAVAILABLE, as a server restart does."""
        with self.lock:
            live = list(self._live)
        for responses, broken in live:
            broken[0] = True
            responses.cancel()

    def close(self) -> None:
        self.consume_gate.set()
        self.server.stop(0)
        self.upstream.close()
