"""A client that stalls: a raw HTTP/2 connection (the ``h2`` package) that
sends gRPC calls and never opens its receive window, so no response to it ever
leaves the server. It answers PING and SETTINGS as a live peer does, so the
server cannot tell it from a slow reader by keepalive.
"""

from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

SERVICE = "/streams.v1.StreamsService/"


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


class StalledClient:
    """One connection; ``call`` starts a call, ``closed`` is set once the server
    closes the connection; ``events`` is everything the server sent."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = target
        self.sock = socket.create_connection((host, int(port)))
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        )
        self.conn.initiate_connection()
        self._lock = threading.Lock()
        self.events: list[h2.events.Event] = []
        self.settings = threading.Event()  # the server's SETTINGS arrived
        self.closed = threading.Event()
        self._flush()
        threading.Thread(target=self._read, daemon=True).start()

    def call(self, method: str, request: bytes) -> int:
        """Sends one call (headers and the whole request); returns its stream id."""
        with self._lock:
            stream = self.conn.get_next_available_stream_id()
            headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", SERVICE + method),
                (":authority", self.target),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
            self.conn.send_headers(stream, headers)
            self.conn.send_data(stream, grpc_frame(request), end_stream=True)
        self._flush()
        return stream

    def _flush(self) -> None:
        with self._lock:
            data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed.set()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self.closed.set()
                return
            with self._lock:
                try:
                    events = self.conn.receive_data(data)  # PING and SETTINGS acks queued
                except h2.exceptions.ProtocolError:
                    # Frames after the server's GOAWAY closed the connection
                    # (a PING, say): the connection is over for this client too.
                    self.closed.set()
                    return
                self.events += events
            if any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
                self.settings.set()
            self._flush()

    def close(self) -> None:
        self.sock.close()
