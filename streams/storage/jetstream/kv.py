"""A JetStream KV bucket (stream ``KV_<bucket>``, subjects ``$KV.<bucket>.<key>``)
read through the stream leader, so that a read right after a write sees it,
and written with revision compare-and-set.

nats-py's KV reads by direct get when the bucket allows it (any replica: it
may lag); here every get goes to the leader.
"""

from __future__ import annotations

import json
from typing import Any

from streams.storage.jetstream.api import WRONG_LAST_SUBJECT_SEQUENCE, ApiError, JetStream


class Conflict(Exception):
    """The key's revision was not the expected one."""


class Bucket:
    def __init__(self, js: JetStream, name: str) -> None:
        self._js = js
        self.name = name
        self.stream = f"KV_{name}"

    async def create(self, replicas: int, max_age_ns: int = 0) -> None:
        await self._js.create_stream(
            {
                "name": self.stream,
                "subjects": [f"$KV.{self.name}.>"],
                "storage": "file",
                "num_replicas": replicas,
                "max_msgs_per_subject": 1,
                "max_age": max_age_ns,
                "discard": "new",
                "allow_rollup_hdrs": True,
                "deny_delete": True,
                "allow_direct": False,
            }
        )

    def _subject(self, key: str) -> str:
        return f"$KV.{self.name}.{key}"

    async def get(self, key: str) -> tuple[Any, int] | None:
        """The key's value and revision, or None."""
        found = await self._js.get(self.stream, last_by_subj=self._subject(key))
        if found is None or found.headers.get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return json.loads(found.data), found.seq

    async def put(self, key: str, value: Any, revision: int | None = None) -> int:
        """Stores ``value``; with ``revision`` only if the key is still at it
        (0: only if absent), else Conflict. Returns the new revision."""
        headers = {}
        if revision is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(revision)
        try:
            return await self._js.publish(self._subject(key), json.dumps(value).encode(), headers)
        except ApiError as error:
            if error.err_code == WRONG_LAST_SUBJECT_SEQUENCE or "wrong last" in error.description:
                raise Conflict(error.description) from error
            raise

    async def delete(self, pattern: str) -> None:
        """Removes the keys matching ``pattern`` (NATS wildcards)."""
        await self._js.purge(self.stream, self._subject(pattern))

    async def keys(self, pattern: str = ">") -> list[str]:
        """The keys matching ``pattern``, sorted."""
        info = await self._js.info(self.stream, self._subject(pattern))
        if info is None:
            return []
        skip = len(self._subject(""))
        return sorted(subject[skip:] for subject in info["state"]["subjects"])
