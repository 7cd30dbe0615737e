"""Where Streams errors meet gRPC: the one map from error types to status codes.

The server answers each :class:`~streams.errors.StreamsError` with
:func:`code_of` and :func:`trailers_of`; the client turns a status back into
the same type with :func:`error_from_status`. Storage and validation raise
plain errors and never see a status code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

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

# Trailing metadata that carries a mismatch's values, so clients need not parse
# messages. Segment names are UTF-8, hence a binary ("-bin") key.
SEGMENT_TRAILER = "streams-segment-bin"
ACTUAL_TRAILER = "streams-actual"

Trailers = tuple[tuple[str, str | bytes], ...]

CODES: dict[type[StreamsError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    NotFound: grpc.StatusCode.NOT_FOUND,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
}
_TYPES = {code: kind for kind, code in CODES.items()}


class StatusError(StreamsError):
    """A status with no error type of its own (INTERNAL, UNKNOWN, ...), as a
    client received it; ``code`` is that status."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def code_of(error: StreamsError) -> grpc.StatusCode:
    """The status ``error`` travels as: its type's, or its nearest base's."""
    if isinstance(error, StatusError):
        return error.code
    for kind in type(error).__mro__:
        code = CODES.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def trailers_of(error: StreamsError) -> Trailers:
    """Trailing metadata sent with the status: a mismatch's values, which
    clients read as fields."""
    if isinstance(error, SequenceMismatch):
        return (
            (SEGMENT_TRAILER, error.segment.encode("utf-8")),
            (ACTUAL_TRAILER, str(error.actual)),
        )
    if isinstance(error, OffsetMismatch):
        # Empty: no offset stored.
        return ((ACTUAL_TRAILER, "" if error.actual is None else str(error.actual)),)
    return ()


def error_from_status(
    code: grpc.StatusCode, details: str | None, trailers: Iterable[tuple[str, Any]] | None = ()
) -> StreamsError:
    """The specific error for a status code, its message and its trailing
    metadata: FAILED_PRECONDITION becomes :class:`SequenceMismatch` (with
    ``segment`` and ``actual``) or :class:`OffsetMismatch` (with ``actual``, None
    when nothing was stored); a status with no type of its own a
    :class:`StatusError`."""
    message = details or code.name
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        values = dict(trailers or ())
        if SEGMENT_TRAILER in values:
            segment = values[SEGMENT_TRAILER]
            text = segment.decode("utf-8") if isinstance(segment, bytes) else segment
            return SequenceMismatch(
                message, segment=text, actual=int(values.get(ACTUAL_TRAILER) or 0)
            )
        if ACTUAL_TRAILER in values:
            actual = values[ACTUAL_TRAILER]
            return OffsetMismatch(message, actual=int(actual) if actual else None)
    kind = _TYPES.get(code)
    if kind is not None:
        return kind(message)
    return StatusError(f"{code.name}: {message}", code)
