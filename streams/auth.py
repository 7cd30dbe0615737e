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
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from streams.errors import PermissionDenied, Unauthenticated

Action = Literal["read", "write"]
ACTIONS: tuple[Action, ...] = ("read", "write")
MAX_TOKENS = 10_000


class AuthFileError(ValueError):
    """The token file is missing, not JSON, or not of the documented shape."""


@dataclass(frozen=True, slots=True)
class Caller:
    """What one request's token allows."""

    spaces: tuple[str, ...]
    access: frozenset[str]

    def allows(self, action: Action, space: str) -> bool:
        return action in self.access and any(fnmatchcase(space, p) for p in self.spaces)

    def check(self, action: Action, space: str) -> None:
        if not self.allows(action, space):
            raise PermissionDenied(f"space: the token has no {action} access to {space!r}")

    def check_action(self, action: Action) -> None:
        """For calls that name no space (ListSpaces)."""
        if action not in self.access:
            raise PermissionDenied(f"authorization: the token has no {action} access")


ANYONE = Caller(spaces=("*",), access=frozenset(ACTIONS))


class TokenAuth:
    """The tokens of one file; :meth:`reload` swaps them in all at once."""

    def __init__(self, path: Path, grants: list[tuple[bytes, Caller]]) -> None:
        self.path = path
        self._grants = grants

    @classmethod
    def load(cls, path: Path) -> TokenAuth:
        return cls(path, _parse(path))

    def reload(self) -> int:
        """Re-reads the file; on error keeps the old tokens and raises AuthFileError."""
        self._grants = _parse(self.path)
        return len(self._grants)

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
        for secret, caller in self._grants:
            if hmac.compare_digest(secret, offered):
                found = caller
        if found is None:
            raise Unauthenticated("authorization: unknown token")
        return found


def _parse(path: Path) -> list[tuple[bytes, Caller]]:
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
        grants.append((token.encode("utf-8"), Caller(tuple(spaces), frozenset(access))))
    return grants
