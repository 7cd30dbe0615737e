"""The parts of the JetStream API this backend uses, as plain requests.

nats-py has no helper for atomic batch publishing nor for batched direct gets,
and its KV reads may be served by a lagging replica; so the backend speaks the
JSON API itself (``$JS.API.*``), where it picks what answers: a get through
the stream leader (``STREAM.MSG.GET``) is never stale, a direct get
(``DIRECT.GET``, any replica) may lag right after a publish.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from streams.errors import ResourceExhausted, Unavailable

# JetStream error codes this backend acts on.
STREAM_NOT_FOUND = 10059
NO_MESSAGE = 10037
WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_SUBJECT_SEQUENCE = 10164
BATCH_DUPLICATE_ID = 10201
DUPLICATE_IN_PROCESS = 10158
STREAM_NAME_IN_USE = 10058

# Headers of an atomic batch's messages (ADR-50), kept with the stored messages.
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"

TIMEOUT = 10.0
# One attempt of an API request (see JetStream.api).
ATTEMPT_TIMEOUT = 1.0


class ApiError(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"JetStream error {err_code} ({code}): {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message: its subject, stream sequence, headers and data."""

    subject: str
    seq: int
    headers: Mapping[str, str]
    data: bytes


# "no suitable peers for placement": too few nodes are up to place R3 now.
NO_SUITABLE_PEERS = 10005


def _error(error: Mapping[str, Any]) -> Exception:
    """A JetStream error answer: Unavailable when the cluster cannot serve
    right now (503: no leader, an election going on; 10005: no peers to place
    a stream on, as while a node restarts), else ApiError."""
    if error.get("code") == 503 or error.get("err_code") == NO_SUITABLE_PEERS:
        return Unavailable(f"the NATS cluster cannot serve this now: {error['description']}")
    return ApiError(error.get("code", 0), error.get("err_code", 0), error["description"])


def parse_headers(raw: bytes) -> dict[str, str]:
    """``NATS/1.0\\r\\nKey: value\\r\\n...`` as a dict."""
    found = {}
    for line in raw.decode("utf-8").split("\r\n")[1:]:
        key, colon, value = line.partition(":")
        if colon:
            found[key.strip()] = value.strip()
    return found


class _Answer:
    """The replies to one batched direct get, as its subscription's callback
    hands them over (a callback, not ``next_msg`` per message: twice as fast)."""

    def __init__(self) -> None:
        self.found: list[Message] = []
        self.done = asyncio.get_running_loop().create_future()
        self.progress = 0  # replies taken, to tell a slow answer from a lost one

    def take(self, msg: Msg) -> None:
        self.progress += 1
        headers = msg.headers or {}
        seq = headers.get("Nats-Sequence")
        previous = headers.get("Nats-Last-Sequence")
        if seq is None:
            self._end()  # the end of the batch (204), or nothing there (404)
        elif self.found and previous is not None and int(previous) != self.found[-1].seq:
            # A reply went missing (dropped as a slow consumer): the answer ends
            # before the gap, so that the reader asks again from there.
            self._end()
        else:
            self.found.append(Message(headers["Nats-Subject"], int(seq), headers, msg.data))

    def _end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def wait(self) -> list[Message] | None:
        """The messages, once the batch ends or ATTEMPT_TIMEOUT passes without
        a reply (then what came, or None when nothing did)."""
        while not self.done.done():
            seen = self.progress
            try:
                await asyncio.wait_for(asyncio.shield(self.done), ATTEMPT_TIMEOUT)
            except TimeoutError:
                if self.progress == seen:
                    return self.found or None
        return self.found


class _Replies:
    """One wildcard inbox subscription on which every batched direct get of a
    connection is answered, each under its own token."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._lock = asyncio.Lock()
        self._next = 0
        self._answers: dict[str, _Answer] = {}

    async def expect(self) -> tuple[str, _Answer]:
        """A new inbox and the answer that collects what arrives there."""
        if not self._prefix:
            async with self._lock:
                if not self._prefix:
                    prefix = self._nc.new_inbox()
                    await self._nc.subscribe(f"{prefix}.*", cb=self._take)
                    self._prefix = prefix
        self._next += 1
        inbox = f"{self._prefix}.{self._next}"
        answer = self._answers[inbox] = _Answer()
        return inbox, answer

    def forget(self, inbox: str) -> None:
        """Late replies to ``inbox`` are dropped from now on."""
        self._answers.pop(inbox, None)

    async def _take(self, msg: Msg) -> None:
        answer = self._answers.get(msg.subject)
        if answer is not None:
            answer.take(msg)


class JetStream:
    """Requests to the JetStream API over one NATS connection."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._replies = _Replies(nc)

    async def api(self, subject: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One API request (all of those used here can be repeated safely).

        A request can go unanswered: only the stream's leader answers, and
        under load (measured on a 2-core machine, R3) no server answered a
        few requests in a few hundred, while the same request sent again was
        answered at once. So each attempt waits ATTEMPT_TIMEOUT, and the
        request is sent again until TIMEOUT has passed."""
        payload = json.dumps(body).encode() if body is not None else b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            try:
                reply = await self.nc.request(
                    f"$JS.API.{subject}", payload, timeout=ATTEMPT_TIMEOUT
                )
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
                if loop.time() + ATTEMPT_TIMEOUT > deadline:
                    raise Unavailable(
                        f"the NATS cluster did not answer {subject}: {error!r}"
                    ) from error
            except nats.errors.ConnectionClosedError as error:
                raise Unavailable("the connection to the NATS cluster is closed") from error
        answer: dict[str, Any] = json.loads(reply.data)
        if "error" in answer:
            raise _error(answer["error"])
        return answer

    async def create_stream(self, config: Mapping[str, Any]) -> None:
        """Creates the stream (an existing one is left as it is), and returns
        once it has a leader: another gateway's create may still be electing
        one, and until then the stream's requests go unanswered."""
        try:
            await self.api(f"STREAM.CREATE.{config['name']}", config)
        except ApiError as error:
            if error.err_code != STREAM_NAME_IN_USE:
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            info = await self.info(config["name"])
            if info is not None and ("cluster" not in info or info["cluster"].get("leader")):
                return
            if loop.time() > deadline:
                raise Unavailable(f"stream {config['name']} has no leader after {TIMEOUT} s")
            await asyncio.sleep(0.02)

    async def info(self, stream: str, subjects_filter: str | None = None) -> dict[str, Any] | None:
        """The stream's info (None when there is no such stream); with a
        ``subjects_filter`` every matching subject's message count, all pages."""
        body: dict[str, Any] = {}
        if subjects_filter is not None:
            body["subjects_filter"] = subjects_filter
        try:
            answer = await self.api(f"STREAM.INFO.{stream}", body)
        except ApiError as error:
            if error.err_code == STREAM_NOT_FOUND:
                return None
            raise
        if subjects_filter is not None:
            subjects = answer["state"].get("subjects") or {}
            while answer.get("total", 0) > answer.get("offset", 0) + answer.get("limit", 0):
                body["offset"] = answer["offset"] + answer["limit"]
                answer = await self.api(f"STREAM.INFO.{stream}", body)
                subjects.update(answer["state"].get("subjects") or {})
            answer["state"]["subjects"] = subjects
        return answer

    async def get(self, stream: str, **query: Any) -> Message | None:
        """One message through the stream leader (never stale), or None."""
        try:
            answer = await self.api(f"STREAM.MSG.GET.{stream}", query)
        except ApiError as error:
            if error.err_code in (NO_MESSAGE, STREAM_NOT_FOUND):
                return None
            raise
        found = answer["message"]
        hdrs = found.get("hdrs")
        return Message(
            found["subject"],
            found["seq"],
            parse_headers(base64.b64decode(hdrs)) if hdrs else {},
            base64.b64decode(found.get("data") or ""),
        )

    async def direct_batch(
        self, stream: str, seq: int, batch: int, max_bytes: int, subject: str
    ) -> list[Message]:
        """Up to ``batch`` messages (and about ``max_bytes``) of ``subject``
        from stream sequence ``seq`` on, from any replica (it may lag). An
        unanswered request is sent again (see :meth:`api`); an answer cut
        short returns what came (the caller reads on from there)."""
        body = {"seq": seq, "batch": batch, "max_bytes": max_bytes, "next_by_subj": subject}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            found = await self._direct_attempt(stream, json.dumps(body).encode())
            if found is not None:
                return found
            if loop.time() + ATTEMPT_TIMEOUT > deadline:
                raise Unavailable(f"the NATS cluster did not answer a read of {stream}")

    async def _direct_attempt(self, stream: str, request: bytes) -> list[Message] | None:
        """One batched direct get; None when nothing came back in time."""
        inbox, answer = await self._replies.expect()
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", request, inbox)
            return await answer.wait()
        except nats.errors.ConnectionClosedError as error:
            raise Unavailable("the connection to the NATS cluster is closed") from error
        finally:
            self._replies.forget(inbox)

    async def purge(self, stream: str, subject: str | None = None, before: int = 0) -> int:
        """Removes the messages (of ``subject``) below stream sequence ``before``
        (every one when 0); returns how many."""
        body: dict[str, Any] = {}
        if subject is not None:
            body["filter"] = subject
        if before:
            body["seq"] = before
        answer = await self.api(f"STREAM.PURGE.{stream}", body)
        return int(answer.get("purged", 0))

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str]) -> int:
        """One message, acknowledged once stored; returns its stream sequence."""
        return await self._acked(subject, data, headers)

    async def publish_batch(
        self, messages: Sequence[tuple[str, bytes]], headers: Sequence[Mapping[str, str]]
    ) -> int:
        """``messages`` as one atomic batch (all stored or none); ``headers``
        per message. Returns the stream sequence of the last one."""
        self._check_sizes(messages, headers)
        if len(messages) == 1:
            return await self._acked(messages[0][0], messages[0][1], headers[0])
        batch_id = uuid.uuid4().hex
        last = len(messages)
        for n, ((subject, data), extra) in enumerate(zip(messages, headers, strict=True), 1):
            h = {BATCH_ID: batch_id, BATCH_SEQUENCE: str(n), **extra}
            if n < last:
                await self.nc.publish(subject, data, headers=h)
            else:
                h[BATCH_COMMIT] = "1"
                return await self._acked(subject, data, h)
        raise ValueError("an empty batch")

    def _check_sizes(
        self, messages: Sequence[tuple[str, bytes]], headers: Sequence[Mapping[str, str]]
    ) -> None:
        """Refuses a batch with a message over the servers' ``max_payload``
        before any of it is sent (NATS counts headers in; 100 bytes of margin
        for the batch headers added)."""
        limit = self.nc.max_payload
        for (_, data), extra in zip(messages, headers, strict=True):
            size = len(data) + sum(len(k) + len(v) + 4 for k, v in extra.items()) + 112
            if size > limit:
                raise ResourceExhausted(
                    f"a record of {len(data)} bytes does not fit the NATS servers' max_payload "
                    f"({limit} bytes with its headers): raise max_payload in the nats-server "
                    "configuration (8MB holds every record Streams accepts)"
                )

    async def _acked(self, subject: str, data: bytes, headers: Mapping[str, str]) -> int:
        try:
            reply = await self.nc.request(subject, data, timeout=TIMEOUT, headers=dict(headers))
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            raise Unavailable(f"the NATS cluster did not acknowledge a write: {error!r}") from error
        except nats.errors.ConnectionClosedError as error:
            raise Unavailable("the connection to the NATS cluster is closed") from error
        answer = json.loads(reply.data)
        if "error" in answer:
            raise _error(answer["error"])
        if answer.get("duplicate"):
            # A single message's repeated Nats-Msg-Id is acknowledged with the
            # original's sequence, where a batch's is refused: told apart the same way.
            raise ApiError(400, BATCH_DUPLICATE_ID, f"duplicate of the message at {answer['seq']}")
        return int(answer["seq"])
