"""Start-up checks: an option the server cannot start with becomes an
:class:`~streams.config.OptionError` naming the option and the value, before
the library it is for (gRPC, ssl, RocksDB) fails in its own words.

Example::

    check_bindable("--listen", "127.0.0.1:50051")   # OptionError if in use
    cert, key = read_tls_pair(config.tls_cert, config.tls_key)
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from streams.config import OptionError


def check_bindable(option: str, address: str) -> None:
    """Raises unless a listening socket can be bound at HOST:PORT ``address`` on
    one of the addresses its host resolves to (as gRPC binds: any one will do).

    gRPC would otherwise log its own error lines first, and with a port that
    does not bind it fails with a generic message."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OptionError(option, address, f"cannot resolve {host!r}: {exc.strerror}") from None
    reasons = []
    for family, kind, proto, _, where in found:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC does: a port whose last connections linger in TIME_WAIT binds.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                reasons.append(exc.strerror or str(exc))
                continue
            return
    raise OptionError(option, address, f"cannot listen there: {reasons[0]}")


def check_data_folder(path: Path) -> None:
    """Raises when ``path`` cannot become a folder: it, or the nearest of its
    parents that exists, is something else (RocksDB would say "File exists")."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "it is" if existing == path else f"{existing} is"
        raise OptionError("--data", path, f"{where} not a directory")


def read_file(option: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OptionError(option, path, exc.strerror or str(exc)) from None


def read_tls_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """The PEM certificate chain and its private key, checked to belong together
    (gRPC would only find out at the first handshake)."""
    cert_pem, key_pem = read_file("--tls-cert", cert), read_file("--tls-key", key)
    try:
        # An empty password: an encrypted key fails here rather than prompting.
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        raise OptionError(
            "--tls-cert", cert, f"not a PEM certificate chain whose key is --tls-key {key}: {exc}"
        ) from None
    return cert_pem, key_pem


def read_client_ca(path: Path) -> bytes:
    pem = read_file("--tls-client-ca", path)
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise OptionError("--tls-client-ca", path, f"not a PEM CA bundle: {exc}") from None
    return pem
