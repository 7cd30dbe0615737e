"""The crash harness (test_crash.py) over a ``--workers 2`` server: a writer
process that owns the store and two gRPC fronts sharing the port.

The same load (producers, a committer, a remover, followers) runs with its
calls taking turns over both fronts (tests/support/fronts.py: SpreadServer),
and each cycle ends the server one of three ways at a random moment:

- ``kill -9`` of the writer: both fronts must exit on their own (the store
  host's connection and their standard input close), none may keep the port;
- ``kill -9`` of one front: the writer stops everything and exits 1, the
  other front goes with it;
- SIGTERM to the writer: exit 0, fronts gone.

Now and then the writer is killed again while it starts (fronts half spawned,
recovery running): no front may outlive it. After each restart the checks are
test_crash.py's: every acked transaction stored as acked, none partly, numbers
dense, unanswered transactions retried exactly once, offsets, followers'
records, trims and deletes.

STREAMS_WORKERS_CRASH_CYCLES (default 6: each way at least once) sets the number of cycles.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.support.fronts import SpreadServer, fronts_of
from tests.support.waiting import wait_until

from .support import COUNTERS
from .test_crash import CHECKS, Run, check_after_restart, kill9_while_starting

WORKERS = 2
CYCLES = int(os.environ.get("STREAMS_WORKERS_CRASH_CYCLES", "6"))
# The order of the ways a cycle ends the server (repeated).
KINDS = ("writer", "front", "writer", "sigterm", "writer", "front")
# How long fronts may outlive their writer (they exit at once on its end).
FRONT_EXIT_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0


def test_kill9_of_writer_or_front_keeps_every_acked_transaction(tmp_path: Path) -> None:
    seed = int(os.environ.get("STREAMS_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    data = tmp_path / "data"
    data.mkdir()
    log = tmp_path / "server.log"
    server = SpreadServer(data, log, workers=WORKERS)
    server.start()
    run = Run(server, seed)
    threads = run.workers()
    started = time.monotonic()
    figures = dict.fromkeys(("writer", "front", "sigterm", "kills_while_starting", *CHECKS), 0)

    def fail(problems: list[str], when: str) -> None:
        pytest.fail(
            f"seed {seed}, {when}: {len(problems)} problem(s):\n  "
            + "\n  ".join(problems[:40])
            + f"\nserver log tail:\n{log.read_text(errors='replace')[-4000:]}"
        )

    def fronts_gone(why: str) -> None:
        try:
            wait_until(lambda: not fronts_of(data), FRONT_EXIT_TIMEOUT, "the fronts to exit")
        except AssertionError:
            fail([f"{why}: fronts {fronts_of(data)} still running"], why)

    try:
        run.gate.open()
        for t in threads:
            t.start()
        for cycle in range(1, CYCLES + 1):
            kind = KINDS[(cycle - 1) % len(KINDS)]
            fronts = server.fronts()
            # Let the load run, then end the server at a random moment. Workers
            # start no new call once the gate is shut; those in flight meet the end.
            time.sleep(rng.uniform(0.05, 0.5))
            run.gate.shut()
            if kind == "writer":
                server.kill()
                server.close_channel()
                fronts_gone(f"cycle {cycle}, kill -9 of the writer")
            elif kind == "front":
                os.kill(rng.choice(fronts), signal.SIGKILL)
                code = server.wait(STOP_TIMEOUT)
                server.close_channel()
                if code != 1:
                    fail([f"a front killed: the writer exited with {code}, not 1"], kind)
                fronts_gone(f"cycle {cycle}, kill -9 of a front")
            else:
                code = server.stop(timeout=STOP_TIMEOUT)
                if code != 0:
                    fail([f"SIGTERM under load: the writer exited with {code}"], kind)
                fronts_gone(f"cycle {cycle}, SIGTERM")
            run.gate.close()
            if kind == "writer" and cycle % 4 == 1:
                # A second crash during (or right after) the recovery and the fronts' start.
                kill9_while_starting(server, rng.uniform(0.0, 1.5))
                fronts_gone(f"cycle {cycle}, kill -9 of the writer while it starts")
                figures["kills_while_starting"] += 1
            server.start()
            figures[kind] += 1
            problems = check_after_restart(run, figures)
            if problems:
                fail(problems, f"after cycle {cycle} ({kind})")
            run.gate.open()

        run.gate.close()
        run.gate.stop()
        for t in threads:
            t.join(10)
        server.restart()
        problems = check_after_restart(run, figures)
        if run.journal.pending():
            problems.append(f"{len(run.journal.pending())} transactions left unresolved")
        if problems:
            fail(problems, "after the final graceful restart")
    finally:
        run.gate.stop()
        server.close()
        # Never leave a front behind, whatever failed.
        for pid in fronts_of(data):
            os.kill(pid, signal.SIGKILL)

    elapsed = time.monotonic() - started
    followed = sum(len(f.records) for f in run.followers)
    print(
        f"\ncrash over --workers {WORKERS}: seed {seed}, {figures['writer']} writer kills, "
        f"{figures['front']} front kills, {figures['sigterm']} SIGTERMs, "
        f"{figures['kills_while_starting']} kills while starting, in {elapsed:.1f} s; "
        f"{len(run.journal.txns)} transactions, {run.acks} acked on first try, "
        f"{run.unanswered} unanswered (retried {figures['retried_duplicate']} duplicate + "
        f"{figures['retried_fresh']} fresh), {run.commits_acked} commits, "
        f"{run.removals_acked} trims/deletes acked, {followed} records followed"
    )
    for name in ("writer", "front", "sigterm", "kills_while_starting"):
        COUNTERS[f"crash --workers {WORKERS}: {name}"] = figures[name]
    COUNTERS[f"crash --workers {WORKERS}: transaction checks"] = figures["checks"]
    assert figures["writer"] and figures["front"] and figures["sigterm"]
    assert run.acks > 0 and run.commits_acked > 0 and run.removals_acked > 0
    assert all(f.records for f in run.followers), [len(f.records) for f in run.followers]
