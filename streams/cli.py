"""The ``streams`` command line: produce, consume, peek, commit and list over gRPC.

Every command prints JSON lines on standard output. Exit codes: 0 ok, 1 the
server (or the connection) answered with an error (message on stderr), 2 a
usage error. Examples::

    streams produce orders eu '{"id": 1}' '{"id": 2}'
    streams produce orders eu --file events.jsonl        # one record per line
    streams consume orders eu --from 1 --limit 10
    streams consume orders --consumer billing --follow
    streams commit orders --consumer billing --offset 42
    streams spaces
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from streams.client import (
    DEFAULT_TARGET,
    Client,
    NewRecord,
    NotFound,
    ProduceResult,
    Record,
    RetryPolicy,
    SegmentInfo,
    SpaceInfo,
    StreamsError,
)

EXIT_OK, EXIT_SERVER, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the command line that argparse could not see (exit code 2)."""


# -- output -----------------------------------------------------------------------------------


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def record_json(record: Record) -> dict[str, Any]:
    """A record as printed: the payload as text when it is UTF-8, else base64, and which."""
    try:
        payload, encoding = record.payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(record.payload).decode("ascii"), "base64"
    return {
        "space": record.space,
        "segment": record.segment,
        "sequence": record.sequence,
        "position": record.position,
        "timestamp": _iso(record.timestamp),
        "payload": payload,
        "payload_encoding": encoding,
        "metadata": dict(record.metadata),
        "transaction_id": record.transaction_id,
    }


def _ack_json(result: ProduceResult) -> dict[str, Any]:
    return {
        "acks": [
            {"segment": a.segment, "first_sequence": a.first_sequence,
             "last_sequence": a.last_sequence}
            for a in result.acks
        ],
        "first_position": result.first_position,
        "last_position": result.last_position,
        "timestamp": _iso(result.timestamp),
        "duplicate": result.duplicate,
        "transaction_id": result.transaction_id,
    }  # fmt: skip


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# -- argument types -----------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _time(text: str) -> datetime:
    """ISO 8601 (naive = UTC, a trailing Z allowed) or seconds since the epoch."""
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or epoch seconds: {text!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE: {text!r}")
    return key, value


# -- commands -----------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr for a file of known size."""

    def __init__(self, total: int, out: IO[str], enabled: bool) -> None:
        self._total = max(total, 1)
        self._out = out
        self._enabled = enabled
        self._shown = -1.0

    def update(self, done: int, records: int) -> None:
        if not self._enabled:
            return
        fraction = min(done / self._total, 1.0)
        if fraction - self._shown < 0.01 and fraction < 1.0:
            return
        self._shown = fraction
        bar = "#" * int(fraction * 30)
        self._out.write(f"\r[{bar:<30}] {fraction:6.1%} {records} records")
        self._out.flush()

    def finish(self) -> None:
        if self._enabled:
            self._out.write("\n")
            self._out.flush()


def _lines(stream: IO[bytes], on_line: Any) -> Iterator[bytes]:
    done = 0
    for line in stream:
        done += len(line)
        on_line(done)
        yield line.rstrip(b"\n").removesuffix(b"\r")


def _batches(
    payloads: Iterable[bytes], metadata: dict[str, str], max_records: int, max_bytes: int
) -> Iterator[list[NewRecord]]:
    batch: list[NewRecord] = []
    size = 0
    for payload in payloads:
        if batch and (len(batch) >= max_records or size + len(payload) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(NewRecord(payload, metadata))
        size += len(payload) + 16
    if batch:
        yield batch


def cmd_produce(client: Client, args: argparse.Namespace) -> None:
    metadata = dict(args.metadata or [])
    progress: _Progress | None = None
    source: IO[bytes] | None = None
    if args.payloads:
        if args.file is not None:
            raise UsageError("give payloads as arguments or --file, not both")
        payloads: Iterable[bytes] = [p.encode() for p in args.payloads]
    else:
        if args.file in (None, "-"):
            source = sys.stdin.buffer
            total = 0
        else:
            path = Path(args.file)
            try:
                source = path.open("rb")
            except OSError as exc:
                raise UsageError(f"--file: cannot read {args.file!r}: {exc.strerror}") from None
            total = path.stat().st_size
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        progress = _Progress(total, sys.stderr, show and total > 0)
        records = 0

        def on_line(done: int) -> None:
            nonlocal records
            records += 1
            if progress is not None:
                progress.update(done, records)

        payloads = _lines(source, on_line)
    expected = args.expected_sequence
    try:
        for number, batch in enumerate(
            _batches(payloads, metadata, args.batch_size, args.batch_bytes)
        ):
            txn = args.transaction_id and (
                args.transaction_id if number == 0 else f"{args.transaction_id}:{number}"
            )
            result = client.produce(
                args.space, args.segment, batch, expected_sequence=expected, transaction_id=txn
            )
            if expected is not None:
                expected = result.acks[0].last_sequence
            _emit(_ack_json(result))
    finally:
        if progress is not None:
            progress.finish()
        if source is not None and source is not sys.stdin.buffer:
            source.close()


def cmd_consume(client: Client, args: argparse.Namespace) -> None:
    options: dict[str, Any] = {
        "from_offset": args.from_offset,
        "from_time": args.from_time,
        "from_consumer": args.consumer,
        "from_end": args.from_end,
        "to_offset": args.to,
        "limit": args.limit,
    }
    if args.from_end and not args.follow:
        raise UsageError("--from-end reads only new records: it needs --follow")
    method = client.follow if args.follow else client.consume
    with method(args.space, args.segment, **options) as stream:
        for record in stream:
            _emit(record_json(record))


def cmd_peek(client: Client, args: argparse.Namespace) -> None:
    _emit(record_json(client.peek(args.space, args.segment)))


def cmd_commit(client: Client, args: argparse.Namespace) -> None:
    offset = client.commit(
        args.consumer, args.space, args.segment, offset=args.offset,
        expected_offset=args.expected_offset,
    )  # fmt: skip
    _emit({"consumer": args.consumer, "space": args.space, "segment": args.segment,
           "offset": offset})  # fmt: skip


def cmd_offset(client: Client, args: argparse.Namespace) -> None:
    offset = client.get_offset(args.consumer, args.space, args.segment)
    if offset is None:
        target = (
            f"segment {args.segment!r} of space {args.space!r}"
            if args.segment
            else (f"space {args.space!r}")
        )
        raise NotFound(f"consumer {args.consumer!r} has no committed offset for {target}")
    _emit({"consumer": args.consumer, "space": args.space, "segment": args.segment,
           "offset": offset})  # fmt: skip


def _space_json(info: SpaceInfo) -> dict[str, Any]:
    return {"name": info.name, "last_position": info.last_position,
            "last_timestamp": _iso(info.last_timestamp)}  # fmt: skip


def _segment_json(info: SegmentInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "last_sequence": info.last_sequence,
        "last_position": info.last_position,
        "last_timestamp": _iso(info.last_timestamp),
    }


def cmd_spaces(client: Client, args: argparse.Namespace) -> None:
    for info in client.list_spaces(page_size=args.page_size):
        _emit(_space_json(info))


def cmd_segments(client: Client, args: argparse.Namespace) -> None:
    for info in client.list_segments(args.space, page_size=args.page_size):
        _emit(_segment_json(info))


# -- parser -------------------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after its name."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target", default=default(os.environ.get("STREAMS_TARGET", DEFAULT_TARGET)),
        help=f"server HOST:PORT (env STREAMS_TARGET, default {DEFAULT_TARGET})",
    )  # fmt: skip
    group.add_argument(
        "--token", default=default(os.environ.get("STREAMS_TOKEN")),
        help="bearer token sent as 'authorization: Bearer TOKEN' (env STREAMS_TOKEN)",
    )  # fmt: skip
    group.add_argument("--tls", action="store_true", default=default(False),
                       help="connect over TLS with the system's root certificates")  # fmt: skip
    group.add_argument("--ca", metavar="PEM", default=default(None),
                       help="root certificates to trust (implies --tls)")  # fmt: skip
    group.add_argument("--cert", metavar="PEM", default=default(None),
                       help="client certificate chain for mutual TLS")  # fmt: skip
    group.add_argument("--key", metavar="PEM", default=default(None),
                       help="client private key for mutual TLS")  # fmt: skip
    group.add_argument("--timeout", type=_seconds, metavar="SECONDS", default=default(30.0),
                       help="deadline of each unary call attempt, and how long to retry "
                            "an unreachable server (default 30)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streams",
        description="Talk to a Streams server. Every command prints JSON lines. "
        "Exit codes: 0 ok, 1 server or connection error, 2 usage error.",
    )
    _connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description)
        _connection_options(sub, suppress=True)
        return sub

    p = command(
        "produce", "append records to a segment",
        "Append records to SEGMENT of SPACE: the PAYLOAD arguments, else one record per "
        "line of --file (or of standard input), sent in batches of --batch-size records; "
        "each batch is one transaction, retried safely under its transaction id. Prints one "
        "JSON line per batch.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment")
    p.add_argument("payloads", nargs="*", metavar="PAYLOAD", help="record payloads (UTF-8)")
    p.add_argument(
        "--file", "-f", metavar="F", help="read one record per line from F ('-' = stdin)"
    )
    p.add_argument("--metadata", "-m", type=_pair, action="append", metavar="KEY=VALUE",
                   help="metadata for every record (repeatable)")  # fmt: skip
    p.add_argument("--expected-sequence", type=_non_negative, metavar="N",
                   help="the segment's last sequence must be N (0 = empty)")  # fmt: skip
    p.add_argument("--transaction-id", metavar="ID",
                   help="idempotency key (later batches get ID:1, ID:2, ...)")  # fmt: skip
    p.add_argument("--batch-size", type=_positive, default=1000, metavar="N",
                   help="records per Produce (default 1000)")  # fmt: skip
    p.add_argument("--batch-bytes", type=_positive, default=4 * 1024 * 1024, metavar="N",
                   help="payload bytes per Produce, about (default 4 MiB)")  # fmt: skip
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="progress bar for --file (default: if stderr is a tty)")  # fmt: skip
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(run=cmd_produce)

    p = command(
        "consume", "read records as JSON lines",
        "Read SEGMENT of SPACE in sequence order, or the whole SPACE in position order. "
        "Prints one JSON line per record; 'payload' is the text when it is UTF-8, else "
        "base64, as 'payload_encoding' says.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_offset", type=_non_negative, metavar="N",
                       help="start at offset N (inclusive)")  # fmt: skip
    start.add_argument("--from-time", type=_time, metavar="T",
                       help="first record at or after T (ISO 8601 or epoch seconds)")  # fmt: skip
    start.add_argument("--consumer", metavar="C",
                       help="start right after consumer C's committed offset")  # fmt: skip
    start.add_argument("--from-end", action="store_true",
                       help="only records committed from now on (with --follow)")  # fmt: skip
    p.add_argument("--to", type=_non_negative, default=0, metavar="N",
                   help="stop after offset N (inclusive)")  # fmt: skip
    p.add_argument("--limit", type=_non_negative, default=0, metavar="N",
                   help="stop after N records")  # fmt: skip
    p.add_argument("--follow", action="store_true",
                   help="stay open and print new records as they commit (Ctrl-C ends)")  # fmt: skip
    p.set_defaults(run=cmd_consume)

    p = command("peek", "print the last record", "Print the last record of SEGMENT, or of SPACE.")
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    p.set_defaults(run=cmd_peek)

    p = command(
        "commit", "store a consumer's offset",
        "Store OFFSET (the last one processed) for --consumer on SEGMENT, or on SPACE.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    p.add_argument("--consumer", required=True, metavar="C")
    p.add_argument("--offset", required=True, type=_non_negative, metavar="N")
    p.add_argument("--expected-offset", type=_non_negative, metavar="N",
                   help="compare-and-set: the stored offset must be N (0 = none)")  # fmt: skip
    p.set_defaults(run=cmd_commit)

    p = command("offset", "print a consumer's offset",
                "Print the committed offset of --consumer on SEGMENT, or on SPACE.")  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    p.add_argument("--consumer", required=True, metavar="C")
    p.set_defaults(run=cmd_offset)

    p = command("spaces", "list spaces", "List every space, by name, with its last numbers.")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N")
    p.set_defaults(run=cmd_spaces)

    p = command("segments", "list the segments of a space",
                "List every segment of SPACE, by name, with its last numbers.")  # fmt: skip
    p.add_argument("space")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N")
    p.set_defaults(run=cmd_segments)
    return parser


def _read(path: str | None, parser: argparse.ArgumentParser) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        parser.error(f"cannot read {path!r}: {exc.strerror}")


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"streams: error: {message}\n")
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (``streams`` exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    client = Client(
        args.target,
        tls=args.tls,
        root_certificates=_read(args.ca, parser),
        certificate_chain=_read(args.cert, parser),
        private_key=_read(args.key, parser),
        token=args.token,
        timeout=args.timeout,
        # A command line waits for the server as long as for one call, not the
        # library's 5 minutes.
        retry=RetryPolicy(max_elapsed=args.timeout),
    )
    try:
        args.run(client, args)
    except UsageError as exc:
        parser.error(str(exc))
    except StreamsError as exc:
        _fail(f"{exc.code.name}: {exc.message}", EXIT_SERVER)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): quiet, as other Unix tools are.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        client.close()
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
