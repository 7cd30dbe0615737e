"""The consumer-group commands of the ``streams`` command line: ``group create |
info | list | delete`` and ``subscribe`` (print each delivered record, then ack
it, or settle it as a line of standard input says)."""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from typing import IO, Any

from streams.cli_input import InputError
from streams.cli_output import emit, iso, message_printer, printer
from streams.client import Client, Group, GroupInfo, Message, Ordering, Subscription

ORDERINGS = {"per-segment": Ordering.PER_SEGMENT, "none": Ordering.NONE}
GROUP_COLUMNS = ("name", "space", "ordering", "ack_timeout", "max_attempts",
                 "dead_letter_space", "dead_letter_segment")  # fmt: skip
GROUP_INFO_COLUMNS = ("name", "acked_through", "last_position", "lag", "in_flight", "parked",
                      "members")  # fmt: skip
MANUAL_COMMANDS = "ack | nack [REASON] | park [REASON] | quit"


def group_json(group: Group) -> dict[str, Any]:
    return {
        "space": group.space,
        "name": group.name,
        "ordering": group.ordering.value,
        "from_offset": group.from_offset,
        "from_time": iso(group.from_time) if group.from_time is not None else None,
        "from_end": group.from_end,
        "ack_timeout": group.ack_timeout.total_seconds(),
        "max_attempts": group.max_attempts,
        "dead_letter_space": group.dead_letter_space,
        "dead_letter_segment": group.dead_letter_segment,
    }


def group_info_json(info: GroupInfo) -> dict[str, Any]:
    return {
        **group_json(info.group),
        "acked_through": info.acked_through,
        "last_position": info.last_position,
        "lag": info.lag,
        "in_flight": info.in_flight,
        "parked": info.parked,
        "members": [
            {"id": m.id, "name": m.name, "segments": m.segments, "in_flight": m.in_flight}
            for m in info.members
        ],
    }


def cmd_group_create(client: Client, args: argparse.Namespace) -> None:
    group = client.create_group(
        args.space, args.group, ordering=ORDERINGS[args.ordering],
        from_offset=args.from_offset, from_time=args.from_time, from_end=args.from_end,
        ack_timeout=args.ack_timeout, max_attempts=args.max_attempts,
        dead_letter_space=args.dead_letter_space, dead_letter_segment=args.dead_letter_segment,
    )  # fmt: skip
    printer(args.output, GROUP_COLUMNS)(group_json(group))


def cmd_group_info(client: Client, args: argparse.Namespace) -> None:
    row = group_info_json(client.get_group(args.space, args.group))
    if args.output == "table":
        row["members"] = ",".join(f"{m['name'] or m['id']}:{m['in_flight']}"
                                  for m in row["members"]) or "-"  # fmt: skip
    printer(args.output, GROUP_INFO_COLUMNS)(row)


def cmd_group_list(client: Client, args: argparse.Namespace) -> None:
    show = printer(args.output, GROUP_COLUMNS)
    for group in client.list_groups(args.space, page_size=args.page_size):
        show(group_json(group))


def cmd_group_delete(client: Client, args: argparse.Namespace) -> None:
    client.delete_group(args.space, args.group)
    emit({"space": args.space, "group": args.group, "deleted": True})


class Answers:
    """The lines of ``--manual`` input, read in a thread so that the end of the
    input is seen while the command waits for a record: once every line read
    has settled its record, the end of input closes the subscription."""

    def __init__(self, source: IO[str], subscription: Subscription) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._unused = 0
        self._done = threading.Condition()
        self._subscription = subscription
        threading.Thread(target=self._read, args=(source,), daemon=True).start()

    def _read(self, source: IO[str]) -> None:
        for line in source:
            with self._done:
                self._unused += 1
            self._lines.put(line)
        self._lines.put(None)
        with self._done:
            self._done.wait_for(lambda: self._unused == 0)
        self._subscription.close()  # sends the answers queued, then leaves

    def settle(self, message: Message) -> bool:
        """Settles ``message`` as the next line says; False: leave (end of input, quit)."""
        line = self._lines.get()
        if line is None:
            return False
        try:
            return settle(message, line)
        finally:
            # Only now may the end of input close the subscription: the answer is queued.
            with self._done:
                self._unused -= 1
                self._done.notify()


def settle(message: Message, line: str) -> bool:
    """Settles ``message`` as a ``--manual`` line says; False: leave (quit)."""
    verb, _, reason = line.strip().partition(" ")
    reason = reason.strip()
    if verb == "ack" and not reason:
        message.ack()
    elif verb == "nack":
        message.nack(reason=reason)
    elif verb == "park":
        message.nack(park=True, reason=reason)
    elif verb == "quit" and not reason:
        return False
    else:
        raise InputError(f"<stdin>: expected {MANUAL_COMMANDS}, got {line.strip()!r} "
                         f"(position {message.position} left unsettled)")  # fmt: skip
    return True


def cmd_subscribe(client: Client, args: argparse.Namespace) -> None:
    """Prints each delivered message, then acks it (once printed and flushed), or
    with --manual settles it as the next line of standard input says."""
    show = message_printer(args.output)
    # --manual answers one record at a time: the next is delivered once it is settled.
    in_flight = args.max_in_flight or (1 if args.manual else 0)
    count = 0
    with client.subscribe(args.space, args.group, member_name=args.member,
                          max_in_flight=in_flight) as subscription:  # fmt: skip
        answers = Answers(sys.stdin, subscription) if args.manual else None
        for message in subscription:
            show(message)
            if answers is None:
                message.ack()
            elif not answers.settle(message):
                return
            count += 1
            if args.limit and count >= args.limit:
                return
