"""The NATS JetStream backend (``--storage jetstream --nats-url ...``): every
space is a JetStream stream, every segment a subject of it, so that several
stateless Streams servers (gateways) share one NATS cluster. See store.py."""

from __future__ import annotations

import re

from streams.storage.backend import Backend, Option, positive_int

# JetStream's atomic batch holds at most 1,000 messages (1,001: error 10199):
# a Produce is one batch.
MAX_RECORDS_PER_PRODUCE = 1000
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")


def urls(text: str) -> tuple[str, ...]:
    """``--nats-url``: comma-separated ``nats://HOST:PORT`` addresses."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    for url in found:
        if not url.startswith(("nats://", "tls://")):
            raise ValueError(f"{url!r}: a NATS address starts with nats:// or tls://")
    if not found:
        raise ValueError("no NATS address given")
    return found


def prefix(text: str) -> str:
    """``--nats-prefix``: the name every stream, subject and bucket starts with."""
    if not PREFIX_PATTERN.fullmatch(text):
        raise ValueError(f"{text!r}: 1-32 of A-Z a-z 0-9 _ -")
    return text


BACKEND = Backend(
    "jetstream",
    "a NATS JetStream cluster: several servers (stateless gateways) may share it",
    "streams.storage.jetstream.store:open_store",
    (
        Option(
            "nats-url",
            urls,
            "nats://127.0.0.1:4222",
            "NATS servers of the JetStream cluster, comma-separated nats://HOST:PORT",
        ),
        Option(
            "nats-prefix",
            prefix,
            "streams",
            "what the names of this deployment's streams, subjects and KV buckets start with "
            "(gateways of one deployment share it; several deployments may share a cluster)",
        ),
        Option(
            "nats-replicas",
            positive_int,
            3,
            "replicas of each stream and KV bucket this backend creates (R3 survives a node)",
        ),
    ),
    max_records_per_produce=MAX_RECORDS_PER_PRODUCE,
)
