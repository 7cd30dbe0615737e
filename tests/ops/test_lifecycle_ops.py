"""Operating the data lifecycle: the retention options, the background pass
with its counters, and the metrics of removed records and disk usage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import config
from streams.limits import Limits
from streams.model import RetentionPolicy
from streams.v1 import streams_pb2 as pb
from tests.support.inproc import InProcessServer

from .helpers import produce, run_python, sample, scrape, wait_until


def test_retention_options_from_flags_and_variables() -> None:
    parsed = config.parse(
        ["--retention-interval", "0.5", "--retention-max-age", "1.25"],
        environ={
            "STREAMS_RETENTION_MAX_RECORDS_PER_SEGMENT": "7",
            "STREAMS_RETENTION_MAX_BYTES": "4096",
        },
    )
    assert parsed.retention_interval == 0.5
    assert parsed.retention == RetentionPolicy(1_250_000_000, 7, 4096)
    widest = config.parse(
        ["--retention-max-bytes", str(2**64 - 1), "--retention-max-age", "0.000000001"],
        environ={},
    )
    assert widest.retention == RetentionPolicy(1, 0, 2**64 - 1)
    defaults = config.parse([], environ={})
    assert (defaults.retention_interval, defaults.retention) == (60.0, RetentionPolicy())


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--retention-interval", "0", "at least 0.01"),
        ("--retention-interval", "1e-300", "at least 0.01"),
        ("--retention-interval", "-1", "0 or more"),
        ("--retention-interval", "soon", "not a number"),
        ("--retention-max-age", "nan", "finite"),
        ("--retention-max-age", "inf", "finite"),
        ("--retention-max-age", "1e12", "longest"),
        ("--retention-max-records-per-segment", "-3", "negative"),
        ("--retention-max-bytes", "1.5", "whole number"),
        # Under a nanosecond would round to 0, which means the opposite: forever.
        ("--retention-max-age", "1e-10", "nanosecond"),
        # As wide as the wire's uint64 (RetentionPolicy), no wider.
        ("--retention-max-records-per-segment", str(2**64), "over"),
        ("--retention-max-bytes", str(10**30), "over"),
    ],
)
def test_bad_retention_option_is_one_line_naming_it(flag: str, value: str, words: str) -> None:
    result = run_python(["server.py", flag, value, "--storage", "memory"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and words in lines[0], lines[0]


def test_bad_retention_variable_names_it() -> None:
    result = run_python(
        ["server.py", "--storage", "memory"], env={"STREAMS_RETENTION_MAX_AGE": "-5"}
    )
    assert result.returncode == 2
    assert "STREAMS_RETENTION_MAX_AGE" in result.stderr


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InProcessServer]:
    with InProcessServer(
        tmp_path / "data",
        storage="memory",
        metrics_listen="127.0.0.1:0",
        retention_interval=0.05,
        retention=RetentionPolicy(max_records_per_segment=2),
    ) as srv:
        yield srv


def removed(port: int, cause: str) -> tuple[float, float]:
    samples = scrape(port)
    return (
        sample(samples, "streams_removed_records_total", cause=cause),
        sample(samples, "streams_removed_bytes_total", cause=cause),
    )


def test_removals_are_counted_by_cause(server: InProcessServer) -> None:
    port, stub = server.server.metrics_port, server.stub
    assert removed(port, "trim") == removed(port, "delete") == (0, 0)
    record = pb.RecordInput(payload=b"12345").SerializeToString()
    # Configured to keep everything: only the trim and the delete remove.
    stub.ConfigureSpace(
        pb.ConfigureSpaceRequest(
            space="kept", config=pb.SpaceConfig(retention=pb.RetentionPolicy())
        )
    )
    produce(stub, "kept", "a", [b"12345"] * 4)
    stub.Trim(pb.TrimRequest(space="kept", segment="a", before_offset=4))
    assert removed(port, "trim") == (3, 3 * len(record))
    stub.DeleteSegment(pb.DeleteSegmentRequest(space="kept", segment="a"))
    assert removed(port, "delete") == (1, len(record))
    # The default policy keeps 2 records per segment: the pass removes 3.
    produce(stub, "aged", "a", [b"12345"] * 5)
    wait_until(lambda: removed(port, "retention")[0] == 3, what="the retention pass")
    assert removed(port, "retention")[1] == 3 * len(record)


def test_disk_series_only_for_a_backend_with_files(server: InProcessServer) -> None:
    # The memory backend keeps no files: no disk series (the rocksdb engine's
    # are checked with its storage tests).
    names = {name for name, _ in scrape(server.server.metrics_port)}
    assert "streams_disk_bytes" not in names
    assert "streams_disk_reclaimed_bytes_total" not in names


@pytest.mark.parametrize("change_bytes, overflows", [(1, True), (1 << 20, False)])
def test_max_watch_change_bytes_bounds_what_a_watch_remembers(
    tmp_path: Path, change_bytes: int, overflows: bool
) -> None:
    """Past --max-watch-change-bytes a watch re-reads every segment (deleted
    ones too, so a long-deleted name comes again); within it, only the changed."""
    limits = Limits(max_watch_change_bytes=change_bytes)
    with InProcessServer(tmp_path / "data", storage="memory", limits=limits) as srv:
        produce(srv.stub, "s", "gone", [b"x"])
        produce(srv.stub, "s", "kept", [b"x"])
        srv.stub.DeleteSegment(pb.DeleteSegmentRequest(space="s", segment="gone"))
        call = srv.stub.WatchSegments(pb.WatchSegmentsRequest(space="s"), timeout=20)
        while not next(call).snapshot_complete:
            pass
        produce(srv.stub, "s", "new", [b"x"])
        message = next(call)
        call.cancel()
    assert [s.name for s in message.segments] == (["kept", "new"] if overflows else ["new"])
    assert list(message.deleted) == (["gone"] if overflows else [])
