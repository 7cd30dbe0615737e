"""Bearer-token authorization from a JSON file, reloadable on SIGHUP.

The file::

    {"tokens": [
        {"token": "s3cret", "spaces": ["orders*", "billing"], "access": ["read", "write"]}
    ]}

``spaces`` are glob patterns (``*``, ``?``, ``[...]``, case-sensitive);
``read`` allows Consume, Peek, GetOffset, Commit and the lists (which show
only allowed spaces); ``write`` allows Produce. Clients send
``authorization: Bearer <token>``. Example::

    auth = TokenAuth.load(Path("tokens.json"))
    caller = auth.authenticate(context.invocation_metadata())  # Unauthenticated
    caller.check("write", "orders-eu")                         # PermissionDenied
    async for item in caller.until_revoked(stream):            # ends at a revoking reload
        ...

A reload re-checks every open stream: one whose token is gone, or no longer
grants what the stream was checked for, ends at once with UNAUTHENTICATED or
PERMISSION_DENIED, also while it waits for records. Unary calls in flight finish.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal, TypeVar

from streams.errors import PermissionDenied, StreamsError, Unauthenticated

Action = Literal["read", "write"]
ACTIONS: tuple[Action, ...] = ("read", "write")
MAX_TOKENS = 10_000
_WILDCARDS = "*?["
_T = TypeVar("_T")


class AuthFileError(ValueError):
    """The token file is missing, not JSON, or not of the documented shape."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token of the file allows."""

    spaces: tuple[str, ...]
    access: frozenset[str]

    def allows(self, action: Action, space: str) -> bool:
        return action in self.access and any(fnmatchcase(space, p) for p in self.spaces)


def literal_prefix(pattern: str) -> str:
    """The part of a glob pattern before its first wildcard: every name it
    matches starts with it."""
    cut = min((i for i in map(pattern.find, _WILDCARDS) if i >= 0), default=len(pattern))
    return pattern[:cut]


class Caller:
    """What one request's token allows, and what the request was checked for
    (so that a reload can tell whether the token still allows it)."""

    __slots__ = ("_auth", "_cancelled", "_generation", "_grant", "_needs", "_revoked", "_task",
                 "_token", "_waiting")  # fmt: skip

    def __init__(
        self, grant: Grant, token: bytes = b"", auth: TokenAuth | None = None, generation: int = 0
    ) -> None:
        self._grant = grant
        self._token = token
        self._auth = auth  # None: nothing to revoke (no authentication)
        self._generation = generation
        self._needs: set[tuple[Action, str | None]] = set()
        self._revoked: StreamsError | None = None
        self._task: asyncio.Task[object] | None = None
        self._waiting = False
        self._cancelled = False

    @property
    def spaces(self) -> tuple[str, ...]:
        return self._grant.spaces

    @property
    def access(self) -> frozenset[str]:
        return self._grant.access

    def allows(self, action: Action, space: str) -> bool:
        return self._grant.allows(action, space)

    def check(self, action: Action, space: str) -> None:
        if not self.allows(action, space):
            raise PermissionDenied(f"space: the token has no {action} access to {space!r}")
        if self._auth is not None:
            self._needs.add((action, space))

    def check_action(self, action: Action) -> None:
        """For calls that name no space (ListSpaces)."""
        if action not in self._grant.access:
            raise PermissionDenied(f"authorization: the token has no {action} access")
        if self._auth is not None:
            self._needs.add((action, None))

    def prefixes(self, action: Action) -> tuple[str, ...] | None:
        """Sorted, non-overlapping name prefixes that hold every space this
        token may ``action`` (None: any name may match), so a listing scans
        only what the token can see."""
        if action not in self._grant.access:
            return ()
        found = sorted({literal_prefix(p) for p in self._grant.spaces})
        if not found or found[0] == "":
            return None if found else ()
        kept: list[str] = []
        for prefix in found:  # in order, a prefix comes right before what it covers
            if not kept or not prefix.startswith(kept[-1]):
                kept.append(prefix)
        return tuple(kept)

    async def until_revoked(self, stream: AsyncIterator[_T]) -> AsyncIterator[_T]:
        """Passes ``stream`` on until a reload revokes what it was checked for;
        then closes it and raises Unauthenticated or PermissionDenied, at once
        when the stream is waiting inside (for records), or as soon as gRPC
        asks for the next message."""
        auth = self._auth
        if auth is None:
            async for item in stream:
                yield item
            return
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("until_revoked must run in an asyncio task")
        self._task = task
        auth._streams.add(self)
        try:
            if self._generation != auth._generation:
                self._recheck(auth._by_token)  # a reload came between authentication and here
            while True:
                if self._revoked is not None:
                    raise self._revoked
                self._waiting = True
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if self._cancelled and self._revoked is not None and task.uncancel() == 0:
                        raise self._revoked from None
                    raise
                finally:
                    self._waiting = False
                yield item
        finally:
            auth._streams.discard(self)
            self._task = None
            await stream.aclose()  # type: ignore[attr-defined]

    def _recheck(self, by_token: dict[bytes, Grant]) -> None:
        """Takes the reloaded grant of this caller's token, or marks the caller
        revoked when it no longer allows what was checked."""
        grant = by_token.get(self._token)
        if grant is None:
            self._revoke(
                Unauthenticated("authorization: the token was revoked (token file reloaded)")
            )
            return
        for action, space in sorted(self._needs, key=str):
            if space is None and action not in grant.access:
                self._revoke(
                    PermissionDenied(
                        f"authorization: the token no longer has {action} access "
                        "(token file reloaded)"
                    )
                )
                return
            if space is not None and not grant.allows(action, space):
                self._revoke(
                    PermissionDenied(
                        f"space: the token no longer has {action} access to {space!r} "
                        "(token file reloaded)"
                    )
                )
                return
        self._grant = grant
        if self._auth is not None:
            self._generation = self._auth._generation

    def _revoke(self, error: StreamsError) -> None:
        self._revoked = error
        task = self._task
        if task is not None:
            task.get_loop().call_soon_threadsafe(self._interrupt, task)

    def _interrupt(self, task: asyncio.Task[object]) -> None:
        """On the stream's loop: cancels its wait for records (at a yield,
        the next resume raises instead)."""
        if self._waiting and self._task is task and not self._cancelled:
            self._cancelled = True
            task.cancel()


ANYONE = Caller(Grant(spaces=("*",), access=frozenset(ACTIONS)))


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What a reload did: tokens now in force, open streams it ended."""

    tokens: int
    ended: int


class TokenAuth:
    """The tokens of one file; :meth:`reload` swaps them in all at once.

    Runs on the server's event loop thread (reload from a signal handler there).
    """

    def __init__(self, path: Path, grants: list[tuple[bytes, Grant]]) -> None:
        self.path = path
        self._grants = grants
        self._by_token = dict(grants)
        self._generation = 0
        self._streams: set[Caller] = set()  # callers of open streams

    @classmethod
    def load(cls, path: Path) -> TokenAuth:
        return cls(path, _parse(path))

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def reload(self) -> Reloaded:
        """Re-reads the file and ends the open streams it no longer allows; on
        error keeps the old tokens and raises AuthFileError."""
        self._grants = _parse(self.path)
        self._by_token = dict(self._grants)
        self._generation += 1
        ended = 0
        for caller in list(self._streams):
            was = caller._revoked
            caller._recheck(self._by_token)
            ended += was is None and caller._revoked is not None
        return Reloaded(len(self._grants), ended)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            raise Unauthenticated("authorization: missing; send 'authorization: Bearer <token>'")
        text = header.decode("utf-8", "replace") if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization: expected 'Bearer <token>'")
        offered = token.strip().encode("utf-8")
        found = None
        # Compare against every token, in constant time each, so timing tells
        # neither a token's bytes nor which entry matched.
        for secret, grant in self._grants:
            if hmac.compare_digest(secret, offered):
                found = (secret, grant)
        if found is None:
            raise Unauthenticated("authorization: unknown token")
        return Caller(found[1], found[0], self, self._generation)


def _parse(path: Path) -> list[tuple[bytes, Grant]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AuthFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"{path}: not valid JSON: {exc}") from exc
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise AuthFileError(f'{path}: expected {{"tokens": [...]}}')
    if len(entries) > MAX_TOKENS:
        raise AuthFileError(f"{path}: {len(entries)} tokens, over the limit of {MAX_TOKENS}")
    grants = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{path}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise AuthFileError(f"{where}: expected an object")
        token, spaces, access = entry.get("token"), entry.get("spaces"), entry.get("access")
        if not isinstance(token, str) or not token.strip() or token != token.strip():
            raise AuthFileError(f"{where}.token: expected a non-empty string without spaces")
        if token in seen:
            raise AuthFileError(f"{where}.token: the same token appears twice")
        seen.add(token)
        if not isinstance(spaces, list) or not all(isinstance(s, str) and s for s in spaces):
            raise AuthFileError(f"{where}.spaces: expected a list of glob patterns")
        if not isinstance(access, list) or not set(access) <= set(ACTIONS) or not access:
            raise AuthFileError(f"{where}.access: expected a list of 'read' and/or 'write'")
        unknown = set(entry) - {"token", "spaces", "access"}
        if unknown:
            raise AuthFileError(f"{where}: unknown field(s) {sorted(unknown)}")
        grants.append((token.encode("utf-8"), Grant(tuple(spaces), frozenset(access))))
    return grants
