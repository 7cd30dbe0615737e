"""Stopping a ``--workers 2`` server with calls in flight on both fronts.

- SIGTERM to the writer while producers (the crash harness's transactions,
  each with a transaction_id) and followers run on both fronts: every Produce
  ends with its answer or UNAVAILABLE (never CANCELLED), every follower with
  UNAVAILABLE (never OK, never a hang), the writer exits 0 and no front
  outlives it; after a restart every acked transaction is stored as acked,
  every record a follower received is stored, and each unanswered transaction,
  retried with its id, is written exactly once.
- ``kill -9`` of one front: the writer stops everything and exits 1, the other
  front's followers end UNAVAILABLE; nothing acked is lost after a restart.

STREAMS_WORKERS_SIGTERM_CYCLES (default 4) sets the number of SIGTERM cycles.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.reliability.test_crash import FOLLOWED, SPACES, Run, retry_unanswered
from tests.reliability.test_sigterm import Load
from tests.support.fronts import SpreadServer, fronts_of
from tests.support.journal import Follower, check_store
from tests.support.waiting import wait_until

WORKERS = 2
CYCLES = int(os.environ.get("STREAMS_WORKERS_SIGTERM_CYCLES", "4"))
STOP_TIMEOUT = 30.0
FOLLOW_TIMEOUT = 120.0
FRONT_EXIT_TIMEOUT = 10.0


class Following:
    """One follow stream per target of FOLLOWED, each opened through the
    server's spreading stub (so they take turns over the fronts); records go to
    journal Followers (which reject a gap or a duplicate), the stream's end to
    ``ended``."""

    def __init__(self, server: SpreadServer) -> None:
        self.followers = [Follower(space, segment) for space, segment in FOLLOWED]
        self.ended: dict[int, grpc.StatusCode | str] = {}
        self.threads = []
        for i, f in enumerate(self.followers):
            call = server.stub.Consume(
                pb.ConsumeRequest(space=f.space, segment=f.segment, from_offset=1, follow=True),
                timeout=FOLLOW_TIMEOUT,
            )
            self.threads.append(threading.Thread(target=self._read, args=(i, call), daemon=True))
        for thread in self.threads:
            thread.start()

    def _read(self, index: int, call: Iterator[pb.ConsumeResponse]) -> None:
        try:
            for response in call:
                self.followers[index].received(response.records)
            self.ended[index] = "the stream ended OK"
        except grpc.RpcError as err:
            self.ended[index] = err.code()
        except AssertionError as err:  # a gap or a duplicate
            self.ended[index] = str(err)

    def live(self) -> bool:
        return all(f.records for f in self.followers)

    def join(self) -> list[str]:
        """Waits for every stream's end; the problems with how they ended."""
        for thread in self.threads:
            thread.join(STOP_TIMEOUT)
        problems = [f"follower {i} did not end" for i, t in enumerate(self.threads) if t.is_alive()]
        problems += [
            f"follower {FOLLOWED[i]} ended with {how}, not UNAVAILABLE"
            for i, how in self.ended.items()
            if how != grpc.StatusCode.UNAVAILABLE
        ]
        return problems


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SpreadServer]:
    data = tmp_path / "data"
    data.mkdir()
    proc = SpreadServer(
        data, tmp_path / "server.log", workers=WORKERS, flags=["--shutdown-grace", "5"]
    )
    try:
        yield proc
    finally:
        proc.close()
        for pid in fronts_of(data):  # never leave one behind, whatever failed
            os.kill(pid, signal.SIGKILL)


def _fail(server: SpreadServer, problems: list[str], when: str) -> None:
    pytest.fail(
        f"{when}: {len(problems)} problem(s):\n  "
        + "\n  ".join(problems[:40])
        + f"\nserver log tail:\n{server.stderr()[-4000:]}"
    )


def _check_restart(server: SpreadServer, run: Run, following: Following) -> list[str]:
    server.start()
    report, _ = check_store(server.stub, run.journal, SPACES, following.followers)
    problems = list(report.problems)
    retry_unanswered(run, report.pending_stored, problems)
    return problems


def test_sigterm_with_produce_calls_and_followers_in_flight(server: SpreadServer) -> None:
    seed = int(os.environ.get("STREAMS_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    run = Run(server, seed)
    codes: dict[str, int] = {}
    server.start()
    for cycle in range(1, CYCLES + 1):
        following = Following(server)
        load = Load(run, cycle, rng.randint(10, 60))
        load.wait_until_busy()
        wait_until(following.live, STOP_TIMEOUT, "every follower to receive a record")
        server.send(signal.SIGTERM)
        code = server.wait(STOP_TIMEOUT)
        load.join()
        problems = load.problems + following.join()
        if code != 0:
            problems.append(f"the writer exited with {code} on SIGTERM")
        if fronts_of(server.data):
            problems.append(f"fronts {fronts_of(server.data)} outlived the writer")
        server.close_channel()
        for ended in load.ended.values():
            codes[ended.name] = codes.get(ended.name, 0) + 1
        problems += _check_restart(server, run, following)
        if problems:
            _fail(server, problems, f"seed {seed}, SIGTERM cycle {cycle}")
    acked = sum(1 for txn in run.journal.txns.values() if txn.ack is not None)
    print(
        f"\nsigterm over --workers {WORKERS}: seed {seed}, {CYCLES} cycles, "
        f"{len(run.journal.txns)} transactions ({acked} acked), producers ended by {codes}"
    )
    assert set(codes) == {"UNAVAILABLE"}


def test_a_front_killed_stops_the_server_with_status_1(server: SpreadServer) -> None:
    run = Run(server, seed=1)
    server.start()
    following = Following(server)
    load = Load(run, 1, 30)
    load.wait_until_busy()
    wait_until(following.live, STOP_TIMEOUT, "every follower to receive a record")
    victim, survivor = server.fronts()
    os.kill(victim, signal.SIGKILL)
    code = server.wait(STOP_TIMEOUT)
    load.join()  # each producer's call ended (UNAVAILABLE checked below, per front)
    following.join()
    problems = []
    if code != 1:
        problems.append(f"the writer exited with {code}, not 1")
    try:
        wait_until(lambda: not fronts_of(server.data), FRONT_EXIT_TIMEOUT, "the other front")
    except AssertionError:
        problems.append(f"front {survivor} outlived the server")
    if str(victim) not in server.stderr():
        problems.append(f"the log does not name the front that died (pid {victim})")
    # Calls on the killed front end as a broken connection does; every one
    # leaves its outcome unknown (the retries below settle it).
    unknown = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}
    problems += [
        f"a producer ended with {how.name}" for how in load.ended.values() if how not in unknown
    ]
    problems += [
        f"follower {FOLLOWED[i]} ended with {how}"
        for i, how in following.ended.items()
        if how not in unknown
    ]
    server.close_channel()
    problems += _check_restart(server, run, following)
    if problems:
        _fail(server, problems, "a front killed")
