"""Frames between a front and the store host: a 4-byte big-endian length, then
a pickle (protocol 5) of a tuple of :mod:`streams.model` values, port results
and :mod:`streams.errors` exceptions.

Both ends are processes of one server, started by the writer, and the socket
lives in a 0700 directory; still, a frame is hostile until decoded and checked:
it is unpickled by :class:`_Unpickler`, which resolves only the classes that
travel (those of :mod:`streams.model` and :mod:`streams.errors`; builtins
containers and scalars need no look-up), so a frame naming any other callable
(``os.system`` in a ``__reduce__``) is a :class:`FrameError` and the connection
is dropped without running anything. A frame's length is checked against
:func:`max_frame_bytes`, so that a broken peer cannot make either end buffer
without bound; the host also checks who connects (SO_PEERCRED, see
:func:`peer_credentials`) and the shape of each message (:func:`check_call`).

:class:`Link` is the protocol both ends share: frames sent during one turn of
the event loop leave in one write (one system call for many replies), and it
tells its owner when the peer reads too slowly (:attr:`Link.writable`).
"""

from __future__ import annotations

import asyncio
import copyreg
import dataclasses
import inspect
import io
import operator
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

from streams import errors, model
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
    """A frame over the size limit, one that does not decode, or a message of
    the wrong shape: the connection is broken and is closed."""


# What a frame may name: the classes of the model and the errors (enums and
# dataclasses are built by calling their class; exceptions likewise).
_TRAVELLING: dict[tuple[str, str], type[Any]] = {
    (module.__name__, name): value
    for module, base in ((model, object), (errors, BaseException))
    for name, value in vars(module).items()
    if isinstance(value, type) and value.__module__ == module.__name__ and issubclass(value, base)
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the classes of :data:`_TRAVELLING`: anything else a frame
    names (a function, another module's class) raises before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        found = _TRAVELLING.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} may not travel between workers")
        return found


def loads(data: bytes | memoryview) -> object:
    """The message pickled in ``data``, decoded by the restricted unpickler."""
    return _Unpickler(io.BytesIO(data)).load()


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
                    message = loads(memoryview(buffer)[at + HEADER.size : stop])
                except Exception as exc:
                    raise FrameError(f"a frame does not decode: {exc!r}") from exc
                self._at = stop
                return message
        if at:
            del buffer[:at]
            self._at = 0
        return None


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
        admit: Callable[[asyncio.Transport], str | None] | None = None,
    ) -> None:
        """``admit``: asked once connected, before any frame is read; a reason
        it returns drops the connection (``on_lost`` gets a FrameError)."""
        self.max_frame = max_frame
        self._admit = admit
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
        refused = None if self._admit is None else self._admit(transport)
        if refused is not None:
            self.abort(FrameError(f"connection refused: {refused}"))
            return
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
        loads(pickle.dumps(exc, 5))
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


def _arities() -> dict[str, tuple[int, int]]:
    """Per message name a front may send, the fewest and most arguments."""
    from streams.storage.port import Store  # the port imports nothing of the workers

    found = {FOLLOW: (1, 1), WATCH: (1, 1), UNFOLLOW: (1, 1), UNWATCH: (1, 1)}
    found |= {BARRIER: (0, 0), HELLO: (1, 1)}
    for name in CALLS:
        params = list(inspect.signature(getattr(Store, name)).parameters.values())[1:]
        required = sum(param.default is inspect.Parameter.empty for param in params)
        found[name] = (required, len(params))
    return found


ARITIES = _arities()


def check_call(message: object) -> tuple[int, str, tuple[Any, ...]]:
    """``message`` as a front's ``(id, name, args)``; FrameError when it is of
    another shape (not a 3-tuple, an id not a non-negative int, a name no
    front may send, or a count of arguments the name does not take)."""
    if type(message) is not tuple or len(message) != 3:
        raise FrameError(f"a message is not (id, name, args): {type(message).__name__}")
    call_id, name, args = message
    if type(call_id) is not int or call_id < 0:
        raise FrameError(f"a message's id is not a non-negative int: {call_id!r:.80}")
    arity = ARITIES.get(name) if type(name) is str else None
    if arity is None:
        raise FrameError(f"no message {name!r:.80}")
    if type(args) is not tuple or not arity[0] <= len(args) <= arity[1]:
        raise FrameError(f"{name}: arguments are not a tuple of {arity[0]} to {arity[1]} values")
    if name in (UNFOLLOW, UNWATCH) and type(args[0]) is not int:
        raise FrameError(f"{name}: the id is not an int: {args[0]!r:.80}")
    return call_id, name, args


# Host to front, pushes by kind: the values after (0, kind).
_PUSHED = {PUSH: 5, REMOVED: 2, CHANGES: 2, FAILED: 2, WRITE_ERROR: 1}


def check_answer(message: object) -> tuple[Any, ...]:
    """``message`` as the host's answer ``(id, ok, value)`` or push ``(0, kind,
    ...)``; FrameError when it is of another shape."""
    if type(message) is not tuple or len(message) < 3 or type(message[0]) is not int:
        raise FrameError(f"a message from the host is not (id, ...): {type(message).__name__}")
    if message[0]:
        if len(message) != 3 or type(message[1]) is not bool:
            raise FrameError("an answer from the host is not (id, ok, value)")
        if not message[1] and not isinstance(message[2], BaseException):
            raise FrameError(f"a failed answer carries no error: {type(message[2]).__name__}")
    elif type(message[1]) is not str or _PUSHED.get(message[1]) != len(message) - 2:
        raise FrameError(f"no push {message[1]!r:.80} of {len(message) - 2} values")
    return message


_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(transport: asyncio.BaseTransport) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket
    (SO_PEERCRED: what the kernel recorded at connect); None when unknown."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    pid, uid, gid = _CREDENTIALS.unpack(raw)
    return pid, uid, gid
