"""How the JetStream backend reads the cluster's error answers."""

from __future__ import annotations

from streams.errors import Unavailable
from streams.storage.jetstream.api import ApiError, _error


def test_answers_of_a_cluster_that_cannot_serve_now_are_unavailable() -> None:
    # An election (503), and too few nodes up to place an R3 stream (10005,
    # seen right after a node restarts): a client should retry, not see INTERNAL.
    for answer in (
        {"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"},
        {"code": 500, "err_code": 10005, "description": "no suitable peers for placement"},
    ):
        assert isinstance(_error(answer), Unavailable), answer
    other = _error({"code": 400, "err_code": 10058, "description": "stream name already in use"})
    assert isinstance(other, ApiError) and other.err_code == 10058
