"""A bare grpc.aio service with the message shapes of Streams: the gRPC limit.

Two methods, registered with a generic handler and no (de)serializers, so the
server does no work beyond gRPC's own:

- ``/bare.Bare/Unary``: takes any request bytes (clients send a serialized
  ``ProduceRequest`` or ``PeekRequest``) and answers a pre-built
  ``ProduceResponse`` of one segment ack (about 40 bytes).
- ``/bare.Bare/Stream``: takes a ``StreamRequest`` (below: how many records,
  how many per message, one sample stored ``Record``) and streams pre-built
  ``ConsumeResponse`` bytes of that many records each, as a Consume of the
  same batch size would.

Run it as its own process, like the server::

    python bench/bare_grpc.py --listen 127.0.0.1:0     # prints "listening on HOST:PORT"

or from a benchmark: ``with run_bare_server() as address: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from common import run_listening

from streams import codec
from streams.v1 import streams_pb2 as pb

UNARY = "/bare.Bare/Unary"
STREAM = "/bare.Bare/Stream"
_STREAM_HEAD = struct.Struct(">QI")  # records in all, records per message


def stream_request(total: int, batch: int, record: bytes) -> bytes:
    """The request of ``STREAM``: ``total`` records of ``record``'s bytes, ``batch``
    per response message."""
    return _STREAM_HEAD.pack(total, batch) + record


def framed(records: list[bytes]) -> bytes:
    """``records`` (serialized ``Record``s) as one serialized ``ConsumeResponse``."""
    return b"".join(b"\x0a" + codec.varint(len(r)) + r for r in records)


def _produce_response() -> bytes:
    ack = pb.SegmentAck(segment="producer-0", first_sequence=1_000_001, last_sequence=1_000_100)
    return pb.ProduceResponse(
        acks=[ack],
        first_position=4_000_001,
        last_position=4_000_100,
        timestamp=codec.timestamp(1_767_225_600_123_456_789),
    ).SerializeToString()


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _RESPONSE


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    total, batch = _STREAM_HEAD.unpack_from(request)
    record = request[_STREAM_HEAD.size :]
    full = framed([record] * batch)
    sent = 0
    while sent < total:
        count = min(batch, total - sent)
        yield full if count == batch else framed([record] * count)
        sent += count


_RESPONSE = _produce_response()


async def serve(listen: str) -> None:
    # The same message size limits as the Streams server (16 MiB requests).
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    handler = grpc.method_handlers_generic_handler(
        "bare.Bare",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    await server.start()
    host = listen.rsplit(":", 1)[0]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


@contextlib.contextmanager
def run_bare_server() -> Iterator[str]:
    """Starts this module as its own process on 127.0.0.1; yields its address."""
    with tempfile.TemporaryDirectory(prefix="streams-bench-bare-") as tmp:
        command = [sys.executable, str(Path(__file__)), "--listen", "127.0.0.1:0"]
        with run_listening(command, Path(tmp) / "bare.log") as (_, address):
            yield address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 picks one")
    args = parser.parse_args()
    asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
