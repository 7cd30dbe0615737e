"""The ``streams`` command line: produce, consume, peek, commit, lag, list, and the data
lifecycle (trim, delete, configure, info, watch) over gRPC.

Commands print JSON lines on standard output (``--output`` picks bare payloads
or a table instead). Exit codes: 0 ok, 1 the server (or the connection)
answered with an error (message on stderr), 2 a usage error or bad input.
Examples::

    streams produce orders eu '{"id": 1}' '{"id": 2}'
    streams produce orders eu --file events.jsonl        # one record per line
    streams consume orders eu --from 1 --limit 10
    streams consume orders --consumer billing --commit   # tail -f that commits
    streams consume orders --output json | streams produce copy --input json
    streams lag orders --consumer billing
    streams commit orders --consumer billing --offset 42
    streams spaces
    streams trim orders eu --before 1000                 # keep sequences 1000...
    streams configure orders --max-age 604800            # retention: 7 days
    streams info orders eu
    streams watch orders --prefix customer-
    streams group create orders billing --max-attempts 10
    streams subscribe orders billing                     # JSON lines, each acked once printed
    streams group info orders billing
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata as package_metadata
from pathlib import Path
from typing import IO, Any, NoReturn

from streams import status
from streams.cli_groups import (
    MANUAL_COMMANDS,
    ORDERINGS,
    cmd_group_create,
    cmd_group_delete,
    cmd_group_info,
    cmd_group_list,
    cmd_subscribe,
)
from streams.cli_input import INPUTS, Batch, InputError, Line, batches, lines, records
from streams.cli_output import OUTPUTS, emit, iso, printer, record_printer
from streams.client import (
    DEFAULT_TARGET,
    Client,
    Consumer,
    NotFound,
    ProduceResult,
    RetentionPolicy,
    RetryPolicy,
    SegmentEvent,
    SegmentInfo,
    SegmentsDeleted,
    SegmentsUpdated,
    SnapshotComplete,
    SnapshotSegments,
    SpaceConfig,
    SpaceInfo,
    StreamsError,
)

EXIT_OK, EXIT_SERVER, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the command line that argparse could not see (exit code 2)."""


class LocatedServerError(Exception):
    """A server error on a batch of input lines, with the line it is about."""

    def __init__(self, where: str, error: StreamsError, acknowledged: int) -> None:
        super().__init__(
            f"{where}: {status.code_of(error).name}: {error.message} "
            f"({acknowledged} records acknowledged before this batch)"
        )


# -- output -----------------------------------------------------------------------------------


def _ack_json(result: ProduceResult) -> dict[str, Any]:
    return {
        "acks": [
            {"segment": a.segment, "first_sequence": a.first_sequence,
             "last_sequence": a.last_sequence}
            for a in result.acks
        ],
        "first_position": result.first_position,
        "last_position": result.last_position,
        "timestamp": iso(result.timestamp),
        "duplicate": result.duplicate,
        "transaction_id": result.transaction_id,
    }  # fmt: skip


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


def _duration(text: str) -> float:
    """Decimal seconds, 0 or more (0 = no limit), as the server's options take them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
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
    """A one-line progress bar on stderr for a file of known size: the share of
    the file whose records the server acknowledged, and how many records."""

    def __init__(self, total: int, out: IO[str], enabled: bool) -> None:
        self._total = max(total, 1)
        self._out = out
        self._enabled = enabled
        self._shown = False

    def update(self, done: int, records: int) -> None:
        if not self._enabled:
            return
        fraction = min(done / self._total, 1.0)
        bar = "#" * int(fraction * 30)
        self._out.write(f"\r[{bar:<30}] {fraction:6.1%} {records} records acknowledged")
        self._out.flush()
        self._shown = True

    def finish(self) -> None:
        """Ends the bar's line, so that what follows (an error, the prompt) starts a new one."""
        if self._shown:
            self._out.write("\n")
            self._out.flush()


_RECORD_INDEX = re.compile(r"writes\[(\d+)\]\.records\[(\d+)\]")


def _where(name: str, batch: Batch, error: StreamsError) -> str:
    """The input line a server error is about: the record it names, else the batch's lines."""
    found = _RECORD_INDEX.search(error.message)
    line = found and batch.line_of(int(found[1]), int(found[2]))
    if line:
        return f"{name}:{line.number}"
    first, last = batch.lines()
    return f"{name}:{first}" if first == last else f"{name}:{first}-{last}"


def _open_input(args: argparse.Namespace) -> tuple[IO[bytes], str, int]:
    """The input stream, its name for messages, and its size (0 = unknown)."""
    if args.file in (None, "-"):
        return sys.stdin.buffer, "<stdin>", 0
    path = Path(args.file)
    try:
        source = path.open("rb")
    except OSError as exc:
        raise UsageError(f"--file: cannot read {args.file!r}: {exc.strerror}") from None
    return source, args.file, path.stat().st_size


def cmd_produce(client: Client, args: argparse.Namespace) -> None:
    metadata = dict(args.metadata or [])
    if args.segment is None and args.input != "json":
        raise UsageError("SEGMENT is needed, unless --input json takes each record's own")
    if args.segment is None and args.expected_sequence is not None:
        raise UsageError("--expected-sequence needs SEGMENT")
    if args.payloads:
        if args.file is not None:
            raise UsageError("give payloads as arguments or --file, not both")
        if args.input != "payload":
            raise UsageError("--input json reads --file or standard input, not arguments")
        source: IO[bytes] | None = None
        name, total = "argument", 0
        given: Iterable[Line] = [
            Line(number, payload.encode(), 0) for number, payload in enumerate(args.payloads, 1)
        ]
    else:
        source, name, total = _open_input(args)
        given = lines(source)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = _Progress(total, sys.stderr, show and total > 0)
    items = records(
        given,
        name=name, kind=args.input, segment=args.segment, metadata=metadata,
    )  # fmt: skip
    expected = args.expected_sequence
    acknowledged = 0
    try:
        for number, batch in enumerate(batches(items, args.batch_size, args.batch_bytes)):
            txn = args.transaction_id and (
                args.transaction_id if number == 0 else f"{args.transaction_id}:{number}"
            )
            transaction = client.transaction(args.space, transaction_id=txn)
            for segment, entries in batch.writes.items():
                transaction.add(segment, [e.record for e in entries], expected_sequence=expected)
            try:
                result = transaction.commit()
            except StreamsError as exc:
                raise LocatedServerError(_where(name, batch, exc), exc, acknowledged) from None
            if expected is not None:
                expected = result.acks[0].last_sequence
            acknowledged += batch.count
            progress.update(batch.end, acknowledged)
            emit(_ack_json(result))
    finally:
        progress.finish()
        if source is not None and source is not sys.stdin.buffer:
            source.close()


def _consume_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "from_offset": args.from_offset,
        "from_time": args.from_time,
        "from_consumer": args.consumer,
        "from_end": args.from_end,
        "to_offset": args.to,
        "limit": args.limit,
    }


def cmd_consume(client: Client, args: argparse.Namespace) -> None:
    if args.from_end and not args.follow:
        raise UsageError("--from-end reads only new records: it needs --follow")
    show = record_printer(args.output)
    if args.commit:
        _consume_and_commit(client, args, show)
        return
    method = client.follow if args.follow else client.consume
    with method(args.space, args.segment, **_consume_options(args)) as stream:
        for record in stream:
            show(record)


def _consume_and_commit(client: Client, args: argparse.Namespace, show: Any) -> None:
    """``tail -f`` that commits: a record counts as processed once it is printed
    and flushed; the Consumer commits processed offsets as it goes and on exit.
    A record whose printing failed (the reader went away) stays uncommitted."""
    if args.consumer is None:
        raise UsageError("--commit needs --consumer: whose offset to commit")
    consumer = Consumer(
        client, args.consumer, args.space, args.segment,
        commit_every=args.commit_every, commit_interval=args.commit_interval,
    )  # fmt: skip
    printed = True
    count = 0
    try:
        for record in consumer:
            printed = False
            show(record)
            printed = True
            count += 1
            offset = record.offset_in(args.segment)
            if (args.limit and count >= args.limit) or (args.to and offset >= args.to):
                break
    finally:
        consumer.close(processed=printed)


def cmd_peek(client: Client, args: argparse.Namespace) -> None:
    record_printer(args.output)(client.peek(args.space, args.segment))


def cmd_commit(client: Client, args: argparse.Namespace) -> None:
    offset = client.commit(
        args.consumer, args.space, args.segment, offset=args.offset,
        expected_offset=args.expected_offset,
    )  # fmt: skip
    emit({"consumer": args.consumer, "space": args.space, "segment": args.segment,
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
    emit({"consumer": args.consumer, "space": args.space, "segment": args.segment,
           "offset": offset})  # fmt: skip


def _config_json(config: SpaceConfig | None) -> dict[str, Any] | None:
    """A space's config; a retention of null is the server's default, a limit of 0 none."""
    if config is None:
        return None
    policy = config.retention
    if policy is None:
        return {"retention": None}
    return {
        "retention": {
            "max_age": policy.max_age.total_seconds() if policy.max_age else 0,
            "max_records_per_segment": policy.max_records_per_segment or 0,
            "max_bytes": policy.max_bytes or 0,
        }
    }


def _retention_text(config: SpaceConfig | None) -> str:
    """The retention of a space in one table cell."""
    policy = config.retention if config is not None else None
    if policy is None:
        return "default"
    limits = [
        f"max_age={policy.max_age.total_seconds():.6f}".rstrip("0").rstrip(".") + "s"
        if policy.max_age
        else "",
        f"max_records_per_segment={policy.max_records_per_segment}"
        if policy.max_records_per_segment
        else "",
        f"max_bytes={policy.max_bytes}" if policy.max_bytes else "",
    ]
    return ",".join(x for x in limits if x) or "forever"


def _space_json(info: SpaceInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "first_position": info.first_position,
        "last_position": info.last_position,
        "last_timestamp": iso(info.last_timestamp),
        "record_count": info.record_count,
        "bytes": info.bytes,
        "config": _config_json(info.config),
    }


def _segment_json(info: SegmentInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "first_sequence": info.first_sequence,
        "last_sequence": info.last_sequence,
        "last_position": info.last_position,
        "last_timestamp": iso(info.last_timestamp),
        "record_count": info.record_count,
        "bytes": info.bytes,
    }


SPACE_COLUMNS = ("name", "first_position", "last_position", "record_count", "bytes",
                 "retention", "last_timestamp")  # fmt: skip
SEGMENT_COLUMNS = ("name", "first_sequence", "last_sequence", "record_count", "bytes",
                   "last_position", "last_timestamp")  # fmt: skip
WATCH_COLUMNS = ("event", *SEGMENT_COLUMNS)
LAG_COLUMNS = ("consumer", "space", "segment", "committed", "last", "lag")


def _space_printer(output: str) -> Callable[[SpaceInfo], None]:
    """Spaces as JSON lines (config nested), or table rows (retention in one cell)."""
    show = printer(output, SPACE_COLUMNS)
    if output == "table":
        return lambda info: show({**_space_json(info), "retention": _retention_text(info.config)})
    return lambda info: show(_space_json(info))


def cmd_spaces(client: Client, args: argparse.Namespace) -> None:
    show = _space_printer(args.output)
    for info in client.list_spaces(page_size=args.page_size):
        show(info)


def cmd_segments(client: Client, args: argparse.Namespace) -> None:
    show = printer(args.output, SEGMENT_COLUMNS)
    for info in client.list_segments(args.space, page_size=args.page_size):
        show(_segment_json(info))


def _last_offset(client: Client, space: str, segment: str) -> int:
    """The target's last offset: the last record's sequence (segment) or position (space)."""
    try:
        return client.peek(space, segment).offset_in(segment)
    except NotFound:
        return 0


def cmd_lag(client: Client, args: argparse.Namespace) -> None:
    """Per named consumer with a committed offset on the target: last minus committed.

    The API has no call that lists consumers, so they are named with --consumer;
    one that never committed on a target is left out."""
    if not args.consumer:
        raise UsageError(
            "--consumer is needed: the server offers no way to list consumers, so name them"
        )
    if args.space is None:
        targets = [(info.name, "") for info in client.list_spaces()]
    else:
        targets = [(args.space, args.segment)]
    show = printer(args.output, LAG_COLUMNS)
    for space, segment in targets:
        last: int | None = None
        for consumer in dict.fromkeys(args.consumer):
            committed = client.get_offset(consumer, space, segment)
            if committed is None:
                continue
            if last is None:
                last = _last_offset(client, space, segment)
            lag = max(last - committed, 0)
            show({"consumer": consumer, "space": space, "segment": segment,
                  "committed": committed, "last": last, "lag": lag})  # fmt: skip


def cmd_trim(client: Client, args: argparse.Namespace) -> None:
    first = client.trim(args.space, args.segment, before_offset=args.before,
                        before_time=args.before_time)  # fmt: skip
    emit({"space": args.space, "segment": args.segment, "first_offset": first})


def cmd_delete(client: Client, args: argparse.Namespace) -> None:
    if args.segment:
        if args.whole_space:
            raise UsageError("--whole-space deletes SPACE: give no SEGMENT with it")
        client.delete_segment(args.space, args.segment, expected_sequence=args.expected_sequence)
    else:
        if not args.whole_space:
            raise UsageError(
                "no SEGMENT: deleting every record of SPACE needs --whole-space, "
                "so that a forgotten SEGMENT never deletes a space"
            )
        if args.expected_sequence is not None:
            raise UsageError("--expected-sequence needs SEGMENT")
        client.delete_space(args.space)
    emit({"space": args.space, "segment": args.segment, "deleted": True})


def cmd_configure(client: Client, args: argparse.Namespace) -> None:
    limits = (args.max_age, args.max_records_per_segment, args.max_bytes)
    if args.default_retention:
        if any(limit is not None for limit in limits):
            raise UsageError("--default-retention takes no limits: it drops the space's own")
        config = SpaceConfig()
    elif all(limit is None for limit in limits):
        raise UsageError(
            "give the retention: --max-age, --max-records-per-segment, --max-bytes "
            "(0 = no limit), or --default-retention"
        )
    else:
        config = SpaceConfig(
            RetentionPolicy(
                max_age=timedelta(seconds=args.max_age) if args.max_age else None,
                max_records_per_segment=args.max_records_per_segment or None,
                max_bytes=args.max_bytes or None,
            )
        )
    stored = client.configure_space(args.space, config)
    emit({"space": args.space, "config": _config_json(stored)})


def cmd_info(client: Client, args: argparse.Namespace) -> None:
    if args.segment:
        printer(args.output, SEGMENT_COLUMNS)(
            _segment_json(client.get_segment(args.space, args.segment))
        )
    else:
        _space_printer(args.output)(client.get_space(args.space))


def _event_rows(event: SegmentEvent) -> list[dict[str, Any]]:
    """A watch event as printed: one line per segment (snapshot, updated) or name (deleted)."""
    match event:
        case SnapshotSegments(segments):
            return [{"event": "snapshot", **_segment_json(info)} for info in segments]
        case SegmentsUpdated(segments):
            return [{"event": "updated", **_segment_json(info)} for info in segments]
        case SegmentsDeleted(names):
            return [{"event": "deleted", "name": name} for name in names]
        case SnapshotComplete():
            return [{"event": "snapshot_complete"}]
    raise TypeError(f"unknown watch event {event!r}")


def cmd_watch(client: Client, args: argparse.Namespace) -> None:
    show = printer(args.output, WATCH_COLUMNS)
    with client.watch_segments(args.space, prefix=args.prefix) as watch:
        for event in watch:
            for row in _event_rows(event):
                show(row)


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
        description="Talk to a Streams server. Commands print JSON lines (--output picks "
        "others). Exit codes: 0 ok, 1 server or connection error, 2 usage error or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"streams {_version()}")
    _connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description)
        _connection_options(sub, suppress=True)
        # Errors found after parsing show this command's usage, not the top one's.
        sub.set_defaults(parser=sub)
        return sub

    def output(sub: argparse.ArgumentParser, choices: Sequence[str]) -> None:
        sub.add_argument("--output", "-o", choices=choices, default="json",
                         help="json lines (default), " + ", ".join(choices[1:]))  # fmt: skip

    p = command(
        "produce", "append records to a segment",
        "Append records to SEGMENT of SPACE: the PAYLOAD arguments, else one record per "
        "line of --file (or of standard input), sent in batches of --batch-size records; "
        "each batch is one transaction, retried safely under its transaction id. Prints one "
        "JSON line per batch. With --input json each line is a record as 'streams consume' "
        "prints it (payload, payload_encoding, metadata; and its segment when SEGMENT is "
        "not given), so records copy from one space to another.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment", nargs="?", help="(optional with --input json)")
    p.add_argument("payloads", nargs="*", metavar="PAYLOAD", help="record payloads (UTF-8)")
    p.add_argument(
        "--file", "-f", metavar="F", help="read one record per line from F ('-' = stdin)"
    )
    p.add_argument("--input", "-i", choices=INPUTS, default="payload",
                   help="what a line is: its payload (default), or a JSON record")  # fmt: skip
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
    p.add_argument("--commit", action="store_true",
                   help="follow from --consumer's offset and commit each record once "
                   "printed (at least once: a crash reprints at most what came since "
                   "the last commit)")  # fmt: skip
    p.add_argument("--commit-every", type=_positive, default=100, metavar="N",
                   help="with --commit: commit every N records (default 100)")  # fmt: skip
    p.add_argument("--commit-interval", type=_seconds, default=1.0, metavar="SECONDS",
                   help="with --commit: and every SECONDS (default 1)")  # fmt: skip
    output(p, OUTPUTS)
    p.set_defaults(run=cmd_consume)

    p = command("peek", "print the last record", "Print the last record of SEGMENT, or of SPACE.")
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    output(p, OUTPUTS)
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
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_spaces)

    p = command("segments", "list the segments of a space",
                "List every segment of SPACE, by name, with its last numbers.")  # fmt: skip
    p.add_argument("space")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N")
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_segments)

    p = command(
        "lag", "how far consumers are behind",
        "For each --consumer with a committed offset on SEGMENT of SPACE, on SPACE, or "
        "(no SPACE) on every space: the last offset, the committed one, and the lag "
        "between them. The server cannot list consumers: name each one.",
    )  # fmt: skip
    p.add_argument("space", nargs="?")
    p.add_argument("segment", nargs="?", default="")
    p.add_argument("--consumer", "-c", action="append", metavar="C",
                   help="a consumer to report (repeatable)")  # fmt: skip
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_lag)

    p = command(
        "trim", "remove the oldest records",
        "Remove the records of SEGMENT (or of every segment of SPACE) below offset --before "
        "(sequence, or position for SPACE), or older than --before-time. Prints the first "
        "retained offset. Idempotent: a trim never brings a record back.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    before = p.add_mutually_exclusive_group(required=True)
    before.add_argument("--before", type=_non_negative, metavar="N",
                        help="keep offsets N and up (at most the last offset + 1)")  # fmt: skip
    before.add_argument("--before-time", type=_time, metavar="T",
                        help="keep records at or after T (ISO 8601 or epoch seconds)")  # fmt: skip
    p.set_defaults(run=cmd_trim)

    p = command(
        "delete", "delete a segment, or a space",
        "Delete SEGMENT of SPACE (its records and consumer offsets), or with --whole-space "
        "and no SEGMENT every record, offset and the config of SPACE. Numbers are kept: a "
        "later produce continues after the old last one. Deleting what does not exist is OK.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    p.add_argument("--expected-sequence", type=_non_negative, metavar="N",
                   help="delete only if the segment's last sequence is N")  # fmt: skip
    p.add_argument("--whole-space", action="store_true",
                   help="delete SPACE itself (needed when no SEGMENT is given)")  # fmt: skip
    p.set_defaults(run=cmd_delete)

    p = command(
        "configure", "set a space's retention",
        "Store the retention policy of SPACE, replacing its config whole (a limit not given "
        "is no limit); the server removes records past it in the background. Prints the "
        "config as stored.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("--max-age", type=_duration, metavar="SECONDS",
                   help="remove records older than SECONDS (decimal, 0 = forever)")  # fmt: skip
    p.add_argument("--max-records-per-segment", type=_non_negative, metavar="N",
                   help="keep the newest N records of each segment (0 = no limit)")  # fmt: skip
    p.add_argument("--max-bytes", type=_non_negative, metavar="N",
                   help="keep at most N bytes of records in the space (0 = no limit)")  # fmt: skip
    p.add_argument("--default-retention", action="store_true",
                   help="drop the space's own policy: the server's default applies")  # fmt: skip
    p.set_defaults(run=cmd_configure)

    p = command(
        "info", "print a space's or a segment's numbers",
        "Print the numbers of SEGMENT, or of SPACE (with its config): first and last "
        "offsets, retained records and bytes.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("segment", nargs="?", default="")
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_info)

    p = command(
        "watch", "print a space's segments, then their changes",
        "Print every segment of SPACE (whose name starts with --prefix) as a 'snapshot' "
        "line, then 'snapshot_complete', then live an 'updated' line per segment written "
        "or trimmed and a 'deleted' line per segment deleted (coalesced: the latest info "
        "per segment). Reconnects after a server restart with what changed meanwhile. "
        "Runs until Ctrl-C.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("--prefix", default="", metavar="P",
                   help="only segments whose name starts with P")  # fmt: skip
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_watch)

    group = command(
        "group", "manage consumer groups",
        "Create, inspect, list and delete the consumer groups of a space; 'streams "
        "subscribe' joins one.",
    )  # fmt: skip
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help, description=description)
        _connection_options(sub, suppress=True)
        sub.set_defaults(parser=sub)
        return sub

    p = action(
        "create", "create a group",
        "Create GROUP on SPACE (again with the same settings: OK) and print it with the "
        "server's defaults filled in.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("group")
    p.add_argument("--ordering", choices=tuple(ORDERINGS), default="per-segment",
                   help="per-segment (default: each segment in order) or none")  # fmt: skip
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from", dest="from_offset", type=_non_negative, metavar="N",
                       help="start at position N (default: the first record)")  # fmt: skip
    start.add_argument("--from-time", type=_time, metavar="T",
                       help="start at the first record at or after T")  # fmt: skip
    start.add_argument("--from-end", action="store_true",
                       help="only records written after the group is created")  # fmt: skip
    p.add_argument("--ack-timeout", type=_seconds, metavar="SECONDS",
                   help="deliver again what is not settled by then (default 30)")  # fmt: skip
    p.add_argument("--max-attempts", type=_positive, metavar="N",
                   help="deliveries before a record is parked (default 5)")  # fmt: skip
    p.add_argument("--dead-letter-space", metavar="S", help="where parked records go "
                   "(default $parked)")  # fmt: skip
    p.add_argument("--dead-letter-segment", metavar="S",
                   help="their segment (default SPACE/GROUP)")  # fmt: skip
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_group_create)

    p = action(
        "info", "print a group's settings and progress",
        "Print GROUP's settings, acked_through (every position up to it settled), "
        "last_position, lag, in_flight, parked and its live members.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("group")
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_group_info)

    p = action("list", "list the groups of a space", "List every group of SPACE, by name.")
    p.add_argument("space")
    p.add_argument("--page-size", type=_non_negative, default=0, metavar="N")
    output(p, ("json", "table"))
    p.set_defaults(run=cmd_group_list)

    p = action(
        "delete", "delete a group",
        "Delete GROUP and its progress (deleting what does not exist is OK); its "
        "subscribers' streams end with NOT_FOUND.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("group")
    p.set_defaults(run=cmd_group_delete)

    p = command(
        "subscribe", "join a consumer group and print its records",
        "Join GROUP of SPACE and print each record delivered to this member as a JSON "
        "line (the record, plus 'attempt'), acking it once printed. With --manual, read "
        f"one line from standard input per record instead: {MANUAL_COMMANDS} (nack: "
        "deliver again after a back-off; park: to the dead-letter segment; quit or end "
        "of input: leave, the record unsettled). Re-joins after a server restart; a "
        "record may be printed again (at least once). Runs until Ctrl-C or --limit.",
    )  # fmt: skip
    p.add_argument("space")
    p.add_argument("group")
    p.add_argument("--member", metavar="NAME", help="the member name operators see "
                   "(default host/pid)")  # fmt: skip
    p.add_argument("--max-in-flight", type=_non_negative, default=0, metavar="N",
                   help="records delivered and not yet settled (default: the server's, "
                   "100; 1 with --manual)")  # fmt: skip
    p.add_argument("--limit", type=_non_negative, default=0, metavar="N",
                   help="leave after N records")  # fmt: skip
    p.add_argument("--manual", action="store_true",
                   help="settle each record as a line of standard input says")  # fmt: skip
    output(p, OUTPUTS)
    p.set_defaults(run=cmd_subscribe)
    return parser


def _version() -> str:
    try:
        return package_metadata.version("streams")
    except package_metadata.PackageNotFoundError:
        return "unknown (not installed)"


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
    parser = getattr(args, "parser", parser)
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
    except InputError as exc:
        _fail(str(exc), EXIT_USAGE)
    except LocatedServerError as exc:
        _fail(str(exc), EXIT_SERVER)
    except StreamsError as exc:
        _fail(f"{status.code_of(exc).name}: {exc.message}", EXIT_SERVER)
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
