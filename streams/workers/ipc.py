"""Frames between a front and the store host: a 4-byte big-endian length, then
a pickle (protocol 5) of a tuple of :mod:`streams.model` values, port results
and :mod:`streams.errors` exceptions.

Both ends are processes of one server, started by the writer, and the socket
lives in a 0700 directory, so pickle is safe here; a frame's length is still
checked against :func:`max_frame_bytes`, so that a broken peer cannot make
either end buffer without bound.

:class:`Link` is the protocol both ends share: frames sent during one turn of
the event loop leave in one write (one system call for many replies), and it
tells its owner when the peer reads too slowly (:attr:`Link.writable`).
"""

from __future__ import annotations

import asyncio
import copyreg
import dataclasses
import operator
import pickle
import struct
from collections.abc import Callable
from typing import Any

from streams import model
from streams.errors import InvariantViolation
from streams.limits import Limits
from streams.model import ProduceResult, SegmentAck, SegmentAppend, Transaction

HEADER = struct.Struct(">I")
# Room in a frame for what surrounds the request or response it carries:
# names, numbers, pickle's framing of each record.
FRAME_SLACK = 1 << 20
PER_RECORD_SLACK = 64


def _by_constructor(cls: type[Any]) -> None:
    """Pickles instances of the dataclass ``cls`` as a call of ``cls`` with its
    fields: pickle's default for a slotted dataclass calls a Python function
    per object each way (several times slower)."""
    fields = operator.attrgetter(*(field.name for field in dataclasses.fields(cls)))
    if len(dataclasses.fields(cls)) == 1:
        copyreg.pickle(cls, lambda obj: (cls, (fields(obj),)))
    else:
        copyreg.pickle(cls, lambda obj: (cls, fields(obj)))


for _cls in vars(model).values():
    if (
        isinstance(_cls, type)
        and dataclasses.is_dataclass(_cls)
        and _cls.__module__ == model.__name__
    ):
        _by_constructor(_cls)


class FrameError(Exception):
    """A frame over the size limit, or one that does not decode: the
    connection is broken and is closed."""


def max_frame_bytes(limits: Limits) -> int:
    """The largest frame either end accepts: a whole request or response of
    the server's limits, with room for the numbers and names around it."""
    biggest = max(limits.max_request_bytes, limits.max_response_bytes, limits.max_record_bytes)
    return biggest + FRAME_SLACK + PER_RECORD_SLACK * limits.max_records_per_produce


def encode(message: object, max_frame: int) -> bytes:
    """``message`` as one frame; FrameError when it is over ``max_frame``
    (pickle's own errors go through: the message cannot travel)."""
    payload = pickle.dumps(message, 5)
    if len(payload) > max_frame:
        raise FrameError(f"a frame of {len(payload)} bytes is over the limit ({max_frame})")
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Cuts received bytes into messages, one at a time (so that a reader can
    stop taking them: what it has not taken stays bytes, at most what one
    receive brought)."""

    def __init__(self, max_frame: int) -> None:
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._at = 0  # where the next frame starts in the buffer

    def add(self, data: bytes) -> None:
        self._buffer += data

    def take(self) -> object | None:
        """The next whole message (None: none yet); FrameError when a frame is
        over the limit or does not decode."""
        buffer, at = self._buffer, self._at
        if len(buffer) - at >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, at)
            if size > self._max_frame:
                raise FrameError(f"a frame of {size} bytes is over the limit ({self._max_frame})")
            stop = at + HEADER.size + size
            if stop <= len(buffer):
                try:
                    message = pickle.loads(memoryview(buffer)[at + HEADER.size : stop])
                except Exception as exc:
                    raise FrameError(f"a frame does not decode: {exc!r}") from exc
                self._at = stop
                return message
        if at:
            del buffer[:at]
            self._at = 0
        return None

    def feed(self, data: bytes) -> list[object]:
        """``add``, then every message completed."""
        self.add(data)
        return list(iter(self.take, None))


class Link(asyncio.Protocol):
    """One end of a connection: sends and receives messages as frames.

    ``on_message`` gets each message received, ``on_lost`` the connection's
    end (None: closed cleanly). Frames sent in one loop turn leave together.
    The transport's buffer past ``high_water`` bytes clears :attr:`writable`
    (set again once below a quarter of it).
    """

    def __init__(
        self,
        max_frame: int,
        high_water: int,
        on_message: Callable[[object], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self.max_frame = max_frame
        self._high_water = high_water
        self._reader = FrameReader(max_frame)
        self._on_message = on_message
        self._on_lost = on_lost
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flushing = False
        self._transport: asyncio.Transport | None = None
        self._paused = False  # the transport's buffer is over the high water
        self._held = False  # the owner takes no message now (pause_reading)
        self._delivering = False
        self.writable = asyncio.Event()
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError(f"a stream transport is needed, got {transport!r}")
        self._transport = transport
        transport.set_write_buffer_limits(self._high_water, self._high_water // 4)
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self._reader.add(data)
        self._deliver()

    def _deliver(self) -> None:
        if self._delivering:  # resumed from within on_message: the loop below goes on
            return
        self._delivering = True
        try:
            while not self._held and not self.closed:
                try:
                    message = self._reader.take()
                except FrameError as exc:
                    self.abort(exc)
                    return
                if message is None:
                    return
                self._on_message(message)
        finally:
            self._delivering = False

    def pause_writing(self) -> None:
        self._paused = True
        self.writable.clear()

    def resume_writing(self) -> None:
        self._paused = False
        self._check_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    # -- sending ----------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes sent but not yet taken by the peer (ours and the transport's)."""
        transport = self._transport
        size = 0 if transport is None else transport.get_write_buffer_size()
        return self._out_bytes + size

    def send(self, message: object) -> None:
        """Queues ``message`` (FrameError when it is too large; dropped once closed)."""
        self.send_frame(encode(message, self.max_frame))

    def send_frame(self, frame: bytes) -> None:
        if self.closed:
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes >= self._high_water:
            self.writable.clear()
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self.closed or self._transport is None or not self._out:
            return
        out = self._out
        self._out = []
        self._out_bytes = 0
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._check_writable()

    def _check_writable(self) -> None:
        if not self._paused and self._out_bytes < self._high_water:
            self.writable.set()

    # -- reading and closing ------------------------------------------------

    def pause_reading(self) -> None:
        """Takes no more messages (those received wait as bytes) until resumed."""
        self._held = True
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._held = False
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()
            self._deliver()

    def close(self) -> None:
        """Sends what is queued, then closes."""
        if self._transport is not None and not self.closed:
            self._flush()
            self._transport.close()
        self._finish(None)

    def abort(self, exc: Exception) -> None:
        """Drops the connection at once (a broken frame)."""
        if self._transport is not None:
            self._transport.abort()
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self._out_bytes = 0
        self.writable.set()  # whoever waits to write finds the link closed
        self._on_lost(exc)


# -- messages ------------------------------------------------------------------
#
# Front to host: ``(id, name, args)``; id 0 asks for no answer. ``name`` is a
# store method of CALLS, or FOLLOW (args: target; answers the last offset the
# pump starts after), WATCH (args: space), UNFOLLOW / UNWATCH (args: the id of
# the FOLLOW or WATCH call), BARRIER (answers at once), HELLO (args: the front's
# max frame, which must be the host's: the first call of a connection).
#
# Host to front: ``(id, ok, value)`` answers call ``id`` (``ok`` False: value is
# the exception); ``(0, kind, ...)`` is pushed: PUSH (follow id, first offset,
# framed records, their count, the last offset known), REMOVED (space, segment
# names or None), CHANGES (watch id, names or None), FAILED (follow or watch
# id, exception), WRITE_ERROR (the store's write_error).

FOLLOW = "follow"
UNFOLLOW = "unfollow"
WATCH = "watch"
UNWATCH = "unwatch"
PUSH = "push"
REMOVED = "removed"
CHANGES = "changes"
FAILED = "failed"
WRITE_ERROR = "write_error"
BARRIER = "barrier"
HELLO = "hello"

# The store methods a front may call (read and peek answer framed bytes).
CALLS = frozenset(
    {
        "produce",
        "last_offset",
        "read",
        "first_at_or_after",
        "peek",
        "commit_offset",
        "get_offset",
        "consumer_lags",
        "list_spaces",
        "list_segments",
        "first_offset",
        "trim",
        "delete_segment",
        "delete_space",
        "configure_space",
        "get_space",
        "get_segment",
        "create_group",
        "get_group",
        "list_groups",
        "delete_group",
        "settle_group",
    }
)


def sendable_error(exc: BaseException) -> BaseException:
    """``exc`` if it travels (pickles, and unpickles: a frame the front cannot
    decode would break the connection), else an InvariantViolation naming it."""
    try:
        pickle.loads(pickle.dumps(exc, 5))
    except Exception as why:
        return InvariantViolation(f"{type(exc).__name__}: {exc} (it cannot travel: {why})")
    return exc


# A Produce's transaction and result travel as plain tuples: pickle handles
# those in C, where a dataclass costs a Python call per object each way (it
# was most of the IPC cost of a Produce).
PackedTransaction = tuple[str, tuple[tuple[str, tuple[bytes, ...], int | None], ...], str, bytes]
PackedResult = tuple[tuple[tuple[str, int, int], ...], int, int, int, bool]


def pack_transaction(txn: Transaction) -> PackedTransaction:
    appends = tuple((a.segment, a.bodies, a.expected_sequence) for a in txn.appends)
    return txn.space, appends, txn.transaction_id, txn.fingerprint


def unpack_transaction(packed: PackedTransaction) -> Transaction:
    space, appends, transaction_id, fingerprint = packed
    return Transaction(
        space, tuple(SegmentAppend(*append) for append in appends), transaction_id, fingerprint
    )


def pack_result(result: ProduceResult) -> PackedResult:
    acks = tuple((a.segment, a.first_sequence, a.last_sequence) for a in result.acks)
    return acks, result.first_position, result.last_position, result.timestamp_ns, result.duplicate


def unpack_result(packed: PackedResult) -> ProduceResult:
    acks, first, last, timestamp_ns, duplicate = packed
    return ProduceResult(
        tuple(SegmentAck(*ack) for ack in acks), first, last, timestamp_ns, duplicate
    )
