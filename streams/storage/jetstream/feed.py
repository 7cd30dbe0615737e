"""The live tail across gateways: one ordered consumer per followed (or
watched) space, on its stream, feeding :class:`~streams.storage.tail.Tail`
wake-ups and watches. A consumer delivers only stored (quorum-acknowledged)
messages, so followers are woken only by durable records (rule 7), whichever
gateway wrote them. Removals are not in the stream: the gateway that made one
publishes the names it touched on a core subject, which the others' watches
hear (:meth:`Feeds.removed`)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from streams.model import Target
from streams.storage.jetstream import records
from streams.storage.jetstream.names import Names
from streams.storage.tail import Tail


class Feeds:
    """Ordered consumers of followed spaces, and the last offsets they saw."""

    def __init__(self, nc: Client, js: JetStreamContext, names: Names, tail: Tail) -> None:
        self._nc = nc
        self._js = js
        self._names = names
        self._tail = tail
        self._subs: dict[str, object] = {}
        self._removal_subs: dict[str, object] = {}
        self._holders: Counter[str] = Counter()
        # The last offset each target is known to have (durable), for Subscription.wait.
        self.known: dict[Target, int] = {}
        self._delivered: dict[str, int] = {}
        self._progress: dict[str, asyncio.Event] = {}

    def last(self, target: Target) -> int:
        return self.known.get(target, 0)

    async def hold(self, space: str, after: int) -> None:
        """Feeds ``space`` from stream sequence ``after + 1`` on (once, for every holder)."""
        self._holders[space] += 1
        if space in self._subs:
            return
        self._delivered[space] = after

        async def deliver(msg: Msg) -> None:
            self._deliver(space, msg)

        async def removed(msg: Msg) -> None:
            names = json.loads(msg.data)
            self._tail.removed(space, names)

        # Subscribed first: a removal announced once the consumer runs is heard.
        self._removal_subs[space] = await self._nc.subscribe(
            self._names.removals(space), cb=removed
        )

        self._subs[space] = await self._js.subscribe(
            self._names.space_subjects(space),
            stream=self._names.stream(space),
            cb=deliver,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=after + 1,
                headers_only=True,
            ),
        )

    async def release(self, space: str) -> None:
        self._holders[space] -= 1
        if self._holders[space] > 0:
            return
        del self._holders[space]
        sub = self._subs.pop(space, None)
        removals = self._removal_subs.pop(space, None)
        if removals is not None:
            await removals.unsubscribe()  # type: ignore[attr-defined]
        self._delivered.pop(space, None)
        for target in [t for t in self.known if t.space == space]:
            del self.known[target]
        if sub is not None:
            await sub.unsubscribe()  # type: ignore[attr-defined]

    def _deliver(self, space: str, msg: Msg) -> None:
        position = msg.metadata.sequence.stream
        headers = msg.headers or {}
        if records.SEQ not in headers:
            return
        segment = self._names.segment_of(msg.subject)
        sequence = int(headers[records.SEQ])
        for target, offset in ((Target(space), position), (Target(space, segment), sequence)):
            if self.known.get(target, 0) < offset:
                self.known[target] = offset
        self._delivered[space] = max(self._delivered.get(space, 0), position)
        self._tail.publish(space, position, (), [(segment, sequence, ())])
        event = self._progress.pop(space, None)
        if event is not None:
            event.set()

    async def reached(self, space: str, position: int, timeout: float = 1.0) -> None:
        """Returns once the feed of ``space`` (if any) delivered ``position``, so
        that this gateway's followers and watchers know of a write when it is
        acknowledged; gives up after ``timeout`` (they learn of it later)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while space in self._subs and self._delivered.get(space, 0) < position:
            event = self._progress.setdefault(space, asyncio.Event())
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return

    def followed(self, space: str) -> bool:
        return space in self._subs

    async def removed(self, space: str, segments: list[str] | None) -> None:
        """Tells this gateway's watchers, and the other gateways', that records
        of ``segments`` of ``space`` (None: of any) were removed. The connection
        does not echo: this gateway hears only the others'."""
        self._tail.removed(space, segments)
        await self._nc.publish(self._names.removals(space), json.dumps(segments).encode())

    async def close(self) -> None:
        for sub in [*self._subs.values(), *self._removal_subs.values()]:
            await sub.unsubscribe()  # type: ignore[attr-defined]
        self._subs.clear()
        self._removal_subs.clear()
        self._holders.clear()
        for event in self._progress.values():
            event.set()
