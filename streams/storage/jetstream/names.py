"""Token-safe names: every valid space, segment and consumer name (spaces, dots,
``*``, ``>``, ``$``, any Unicode) becomes NATS stream names, subject tokens and
KV keys made of ``[0-9a-f]`` only.

Names are hex of their UTF-8 bytes: the encoding sorts like the bytes, so a
sorted list of encoded names is the UTF-8 order the lists promise (rule 9),
and subject tokens keep names apart that share a prefix (``a`` vs ``ab``).
A stream name is a hash of the space (names reach 255 bytes, hex doubles them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def encode(name: str) -> str:
    """A non-empty token for ``name`` ("" -> "_", as a space target's segment)."""
    return name.encode("utf-8").hex() or "_"


def decode(token: str) -> str:
    return "" if token == "_" else bytes.fromhex(token).decode("utf-8")


@dataclass(frozen=True, slots=True)
class Names:
    """The names of one deployment (``--nats-prefix``)."""

    prefix: str

    def stream(self, space: str) -> str:
        digest = hashlib.sha256(space.encode("utf-8")).hexdigest()[:40]
        return f"{self.prefix}_s_{digest}"

    def space_subjects(self, space: str) -> str:
        """Every subject of a space's stream."""
        return f"{self.prefix}.{self._space_token(space)}.>"

    def subject(self, space: str, segment: str) -> str:
        return f"{self.prefix}.{self._space_token(space)}.{encode(segment)}"

    def removals(self, space: str) -> str:
        """Where gateways tell each other of a removal in ``space`` (core NATS:
        watchers' wake-ups, nothing stored; outside the stream's subjects)."""
        return f"{self.prefix}.removed.{self._space_token(space)}"

    def segment_of(self, subject: str) -> str:
        return decode(subject.rsplit(".", 1)[1])

    def _space_token(self, space: str) -> str:
        return self.stream(space).rsplit("_", 1)[1]

    def bucket(self, kind: str) -> str:
        return f"{self.prefix}_{kind}"
