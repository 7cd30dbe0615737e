"""Page tokens of ListSpaces and ListSegments, signed so that a token the
server did not issue is refused (INVALID_ARGUMENT, as the contract says).

A token carries the last name of the previous page and an HMAC-SHA256 of it,
bound to the listing it came from (its scope), under the server's key. The key
is random per process unless ``--page-token-key FILE`` names one, which
several servers behind one address share (and which survives restarts)::

    pages = PageTokens.load(None)                     # a random key
    token = pages.encode("spaces", "orders")
    pages.decode("spaces", token)                     # "orders"
    pages.decode("spaces", "forged")                  # InvalidArgument
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from streams import limits
from streams.errors import InvalidArgument
from streams.validation import name, show

MIN_KEY_BYTES = 16
_VERSION = b"\x02"
# 128 bits of HMAC-SHA256 are plenty against forgery and keep tokens short.
_MAC_BYTES = 16
_HEAD = len(_VERSION) + _MAC_BYTES
# The longest token the server can issue: anything longer is refused unread.
MAX_TOKEN_CHARS = -(-(_HEAD + limits.MAX_NAME_BYTES) * 4 // 3)


class PageKeyError(ValueError):
    """The --page-token-key file cannot be read or is too short."""


class PageTokens:
    """Issues and checks page tokens under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise PageKeyError(f"a page-token key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @property
    def key(self) -> bytes:
        """The signing key (a ``--workers N`` writer hands it to its fronts)."""
        return self._key

    @classmethod
    def load(cls, path: Path | None) -> PageTokens:
        """The key in ``path`` (surrounding whitespace ignored), or a random one."""
        if path is None:
            return cls(secrets.token_bytes(32))
        try:
            key = path.read_bytes().strip()
        except OSError as exc:
            raise PageKeyError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        if len(key) < MIN_KEY_BYTES:
            raise PageKeyError(
                f"{path}: {len(key)} bytes, a key needs at least {MIN_KEY_BYTES} "
                "(e.g. `head -c 32 /dev/urandom | base64`)"
            )
        return cls(key)

    def _mac(self, scope: str, raw_name: bytes) -> bytes:
        message = _VERSION + scope.encode("utf-8") + b"\x00" + raw_name
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, scope: str, last_name: str) -> str:
        raw = last_name.encode("utf-8")
        token = _VERSION + self._mac(scope, raw) + raw
        return base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")

    def decode(self, scope: str, token: str) -> str | None:
        """The name after which the page starts, or None for the first page."""
        if not token:
            return None
        bad = InvalidArgument(
            f"page_token: {show(token)} was not issued by this server for this listing "
            "(or the server restarted without --page-token-key); start the listing again"
        )
        if len(token) > MAX_TOKEN_CHARS:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise bad from None
        if len(raw) <= _HEAD or raw[:1] != _VERSION:
            raise bad
        last = raw[_HEAD:]
        if not hmac.compare_digest(self._mac(scope, last), raw[1:_HEAD]):
            raise bad
        try:
            return name("page_token", last.decode("utf-8"))
        except (UnicodeDecodeError, InvalidArgument):
            raise bad from None
