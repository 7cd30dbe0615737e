"""SIGTERM under load: no client sees CANCELLED, and nothing acked or retried is lost.

Each cycle runs concurrent producers (the crash harness's transactions, each
with a transaction_id) against a real server subprocess and sends it SIGTERM
while their calls are in flight, without closing the client channel first.
Every call must end with its real answer or UNAVAILABLE (the contract's
"server shutting down", which clients retry); CANCELLED, which clients do not
retry, fails the run. After the server exits (code 0) it is restarted on the
same data and checked as the crash harness checks after a kill -9: every acked
transaction is stored as acked, none partly, and each unanswered one, retried
with its transaction_id, is written exactly once.

The number of cycles: ``--sigterm-cycles N`` or ``STREAMS_SIGTERM_CYCLES`` (default 50).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import grpc
import pytest

from tests.support.journal import check_store
from tests.support.process import ServerProcess

from .harness import ack_shape_problem, make_request
from .support import COUNTERS
from .test_crash import SEGMENTS, SPACES, Run, retry_unanswered

PRODUCERS = 3
CALL_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0


class Load:
    """One cycle's producers: each sends transactions until a call fails."""

    def __init__(self, run: Run, cycle: int, target_acks: int) -> None:
        self.run = run
        self.cycle = cycle
        self.target_acks = target_acks
        self.acks = 0
        self.ended: dict[int, grpc.StatusCode] = {}
        self.problems: list[str] = []
        self.cond = threading.Condition()
        self.threads = [
            threading.Thread(target=self.produce, args=(i,), daemon=True) for i in range(PRODUCERS)
        ]
        for thread in self.threads:
            thread.start()

    def produce(self, index: int) -> None:
        rng = random.Random(self.run.seed * 1000 + self.cycle * 10 + index)
        stub = self.run.server.stub
        n = 0
        while True:
            n += 1
            request = make_request(rng, f"c{self.cycle}-p{index}-{n}", SPACES, SEGMENTS)
            txn = self.run.journal.sent(request)
            try:
                response = stub.Produce(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as err:
                self.run.journal.unanswered(txn)
                with self.cond:
                    self.ended[index] = err.code()
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        self.problems.append(
                            f"Produce {request.transaction_id}: {err.code().name} "
                            f"({err.details()}), not UNAVAILABLE"
                        )
                    self.cond.notify_all()
                return
            problem = ack_shape_problem(request, response)
            self.run.journal.acked(txn, response)
            with self.cond:
                if problem:
                    self.problems.append(f"Produce {request.transaction_id}: {problem}")
                self.acks += 1
                self.cond.notify_all()

    def wait_until_busy(self) -> None:
        """Returns once the producers have had ``target_acks`` acks between them."""
        with self.cond:
            done = self.cond.wait_for(
                lambda: self.acks >= self.target_acks or self.ended, CALL_TIMEOUT
            )
        assert done and not self.ended, f"the load did not get going: {self.ended}"

    def join(self) -> None:
        for thread in self.threads:
            thread.join(CALL_TIMEOUT + STOP_TIMEOUT)
        alive = sum(thread.is_alive() for thread in self.threads)
        assert not alive, f"{alive} producer(s) got neither an answer nor an error"


def test_sigterm_cycles_under_load_never_cancel_a_call(tmp_path: Path, sigterm_cycles: int) -> None:
    seed = int(os.environ.get("STREAMS_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data, tmp_path / "server.log", flags=["--shutdown-grace", "5"])
    run = Run(server, seed)
    codes: dict[str, int] = {}
    duplicates = fresh = 0

    def fail(problems: list[str], cycle: int) -> None:
        log = (tmp_path / "server.log").read_text(errors="replace")[-3000:]
        pytest.fail(
            f"seed {seed}, SIGTERM cycle {cycle}: {len(problems)} problem(s):\n  "
            + "\n  ".join(problems[:40])
            + f"\nserver log tail:\n{log}"
        )

    server.start()
    try:
        for cycle in range(1, sigterm_cycles + 1):
            load = Load(run, cycle, rng.randint(PRODUCERS, 20 * PRODUCERS))
            load.wait_until_busy()
            # The signal, with calls in flight and the client channel open.
            server.send(signal.SIGTERM)
            code = server.wait(STOP_TIMEOUT)
            load.join()
            server.close_channel()
            problems = list(load.problems)
            if code != 0:
                problems.append(f"the server exited with {code} on SIGTERM")
            for ended in load.ended.values():
                codes[ended.name] = codes.get(ended.name, 0) + 1
            server.start()
            report, _ = check_store(server.stub, run.journal, SPACES)
            problems += report.problems
            dup, new = retry_unanswered(run, report.pending_stored, problems)
            duplicates += dup
            fresh += new
            if problems:
                fail(problems, cycle)
    finally:
        server.close()

    acked = sum(1 for txn in run.journal.txns.values() if txn.ack is not None)
    print(
        f"\nsigterm: seed {seed}, {sigterm_cycles} SIGTERM cycles under {PRODUCERS} producers, "
        f"{len(run.journal.txns)} transactions ({acked} acked in the end), calls ended by "
        f"{codes}, retried {duplicates} duplicate + {fresh} fresh"
    )
    COUNTERS["sigterm: cycles under load"] = sigterm_cycles
    COUNTERS["sigterm: unanswered transactions retried"] = duplicates + fresh
    assert set(codes) == {"UNAVAILABLE"}
