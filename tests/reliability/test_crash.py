"""Crash consistency: kill -9 the server at random moments under load, then check everything.

Concurrent producers (single- and multi-segment transactions, each with a
transaction_id), a committer, and followers (Consume follow=True on each space and on
one segment of each) run against a real server subprocess. The server is killed with
SIGKILL at a random moment, restarted on the same data directory, and, with every
worker paused, the harness checks after each restart:

- every acknowledged transaction is present, with exactly the acked sequences,
  positions and timestamp, and the payloads and metadata that were sent;
- no transaction is partly present (all of its records or none), none twice;
- sequences and positions are dense from 1; lists agree with the records;
- a transaction whose Produce got no answer, retried with the same transaction_id, is
  written exactly once: duplicate=true with the numbers it was stored under, or written
  fresh, and then it was not stored before;
- committed offsets: the last acked Commit (or a later unanswered one) is stored;
- every record a follower received before the crash is stored, identical;
- trims and deletes (a remover trims segments and spaces by offset and by
  timestamp, and deletes segments and now and then a space, while the others
  write): no record below an acknowledged trim point, nor one acked before an
  acknowledged delete was sent, is ever readable again (segment reads, space
  reads, peeks, lists, GetSpace/GetSegment); every segment is dense from its
  first retained sequence to its last; the space read is the segment reads
  merged; no number is acked twice (numbering continues after deletes); every
  acked record no removal may have taken is there; infos (first offsets,
  counts, bytes) agree with the records; unanswered removals are retried.

STREAMS_CRASH_CYCLES (default 25) sets the number of kill -9 cycles, for longer runs.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from streams.v1 import streams_pb2 as pb
from tests.support.journal import (
    UNKNOWN_OUTCOME,
    Follower,
    Journal,
    check_store,
    commit_key,
    read_target,
)
from tests.support.process import ServerProcess

from .harness import (
    Gate,
    ack_shape_problem,
    make_request,
    removal_request,
    retry_removals,
    send_removal,
)
from .support import COUNTERS

SPACES = ("crash-a", "crash-b")
# Prefix pairs (s1 / s10) and a non-ASCII name with a slash.
SEGMENTS = ("s1", "s10", "s2", "é/x")
FOLLOWED = (("crash-a", ""), ("crash-b", ""), ("crash-a", "s1"), ("crash-b", "s10"))
CONSUMERS = ("c1", "c/2")
PRODUCERS = 4
CYCLES = int(os.environ.get("STREAMS_CRASH_CYCLES", "25"))
MIN_CYCLES = 20
# Past this many seconds the run stops as soon as it has MIN_CYCLES kill -9 cycles.
TIME_BUDGET = float(os.environ.get("STREAMS_CRASH_SECONDS", "45"))
CALL_TIMEOUT = 5.0


class Run:
    """Shared state of one crash run."""

    def __init__(self, server: ServerProcess, seed: int) -> None:
        self.server = server
        self.gate = Gate()
        self.journal = Journal()
        self.followers = [Follower(sp, seg, gaps=True) for sp, seg in FOLLOWED]
        self.errors: list[str] = []
        self.seed = seed
        self.acks = 0
        self.unanswered = 0
        self.commits_acked = 0
        self.removals_acked = 0
        self.removals_unanswered = 0

    def error(self, text: str) -> None:
        self.errors.append(text)

    # ---- workers ------------------------------------------------------------------------

    def workers(self) -> list[threading.Thread]:
        """The load's threads (not started): producers, a committer, a remover, followers."""
        threads = [
            threading.Thread(target=self.producer, args=(i,), daemon=True) for i in range(PRODUCERS)
        ]
        threads.append(threading.Thread(target=self.committer, daemon=True))
        threads.append(threading.Thread(target=self.remover, daemon=True))
        threads += [
            threading.Thread(target=self.follower, args=(f,), daemon=True) for f in self.followers
        ]
        return threads

    def producer(self, index: int) -> None:
        rng = random.Random(self.seed * 100 + index)
        n = 0
        while True:
            with self.gate.inside() as ok:
                if not ok:
                    return
                n += 1
                req = make_request(rng, f"p{index}-{n}", SPACES, SEGMENTS)
                txn = self.journal.sent(req)
                stub = self.server.stub
                try:
                    resp = stub.Produce(req, timeout=CALL_TIMEOUT)
                except grpc.RpcError as err:
                    if err.code() in UNKNOWN_OUTCOME:
                        self.journal.unanswered(txn)
                        self.unanswered += 1
                    else:
                        self.error(f"Produce {req.transaction_id}: {err.code()} {err.details()}")
                        self.journal.unanswered(txn)
                    continue
                except ValueError:  # the channel was closed under us: unknown outcome
                    self.journal.unanswered(txn)
                    self.unanswered += 1
                    continue
                problem = ack_shape_problem(req, resp)
                if problem:
                    self.error(f"Produce {req.transaction_id}: {problem}")
                self.journal.acked(txn, resp)
                self.acks += 1

    def committer(self) -> None:
        rng = random.Random(self.seed * 100 + 99)
        tried: dict[tuple[str, str, str], int] = {}
        while True:
            with self.gate.inside() as ok:
                if not ok:
                    return
                consumer = rng.choice(CONSUMERS)
                space = rng.choice(SPACES)
                segment = rng.choice(("", *SEGMENTS))
                key = commit_key(consumer, space, segment)
                with self.journal.lock:
                    if segment:
                        top = self.journal.acked_sequence[(space, segment)]
                    else:
                        top = self.journal.acked_position[space]
                low = tried.get(key, 0) + 1
                if top < low:
                    time.sleep(0.005)
                    continue
                # Increasing tries: each unanswered one is told apart from the others.
                offset = rng.randint(low, top)
                tried[key] = offset
                req = pb.CommitRequest(
                    consumer=consumer, space=space, segment=segment, offset=offset
                )
                sent_at = self.journal.tick()
                try:
                    resp = self.server.stub.Commit(req, timeout=CALL_TIMEOUT)
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.NOT_FOUND and "deleted" in (
                        err.details() or ""
                    ):
                        continue  # the target was deleted: nothing stored (contract)
                    if err.code() not in UNKNOWN_OUTCOME:
                        self.error(f"Commit {key} {offset}: {err.code()} {err.details()}")
                    self.journal.commit_unanswered(key, offset)
                    continue
                except ValueError:
                    self.journal.commit_unanswered(key, offset)
                    continue
                if resp.offset != offset:
                    self.error(f"Commit {key} {offset} answered offset {resp.offset}")
                self.journal.commit_acked(key, offset, sent_at)
                self.commits_acked += 1
            time.sleep(0.002)

    def remover(self) -> None:
        """Trims (by offset and by timestamp, segments and spaces) and deletes."""
        rng = random.Random(self.seed * 100 + 98)
        while True:
            with self.gate.inside() as ok:
                if not ok:
                    return
                req = removal_request(rng, self.journal, SPACES, SEGMENTS)
                if req is not None:
                    removal = self.journal.removal_sent(req)
                    outcome = send_removal(self.server.stub, req, CALL_TIMEOUT)
                    if isinstance(outcome, str):
                        self.error(outcome)
                    if outcome is None or isinstance(outcome, str):
                        self.removals_unanswered += outcome is None
                    else:
                        self.journal.removal_acked(removal, *outcome)
                        self.removals_acked += 1
            time.sleep(rng.uniform(0.01, 0.06))

    def follower(self, f: Follower) -> None:
        while True:
            with self.gate.inside() as ok:
                if not ok:
                    return
                req = pb.ConsumeRequest(
                    space=f.space, segment=f.segment, from_offset=f.next_offset, follow=True
                )
                try:
                    for resp in self.server.stub.Consume(req, timeout=300):
                        f.received(resp.records)
                    self.error(f"follower {f.space}/{f.segment!r}: stream ended with no error")
                except grpc.RpcError as err:
                    if err.code() not in UNKNOWN_OUTCOME:
                        self.error(
                            f"follower {f.space}/{f.segment!r}: {err.code()} {err.details()}"
                        )
                except ValueError:
                    pass
                except AssertionError as err:  # gap or duplicate: recorded in f.errors
                    self.error(str(err))
                    return
                f.reconnects += 1
            time.sleep(0.01)


def kill9_while_starting(server: ServerProcess, delay: float) -> None:
    """Starts the server and SIGKILLs it ``delay`` s later, whether or not it is
    ready yet (a crash during recovery or right after it)."""
    server.spawn(stdout=subprocess.DEVNULL)
    time.sleep(delay)
    server.kill()


def retry_unanswered(
    run: Run, report_pending: dict[tuple[str, str], list[pb.Record]], problems: list[str]
) -> tuple[int, int]:
    """Retries every unanswered transaction with its own id; checks exactly-once."""
    duplicates = fresh = 0
    for txn in run.journal.pending():
        key = (txn.space, txn.txid)
        stored = report_pending[key]
        resp = run.server.stub.Produce(txn.request, timeout=CALL_TIMEOUT)
        if resp.duplicate:
            duplicates += 1
            problem = run.journal.duplicate_problem(txn, resp, stored)
            if problem:
                problems.append(f"retry of {key} answered duplicate=true: {problem}")
        else:
            fresh += 1
            if stored:
                problems.append(
                    f"retry of {key} wrote it AGAIN (fresh ack at positions "
                    f"{resp.first_position}..{resp.last_position}) although it was already "
                    f"stored at {stored[0].position}..{stored[-1].position}"
                )
            problem = ack_shape_problem(txn.request, resp)
            if problem:
                problems.append(f"retry of {key}: {problem}")
        run.journal.acked(txn, resp)
    return duplicates, fresh


# The figures check_after_restart adds up over a run.
CHECKS = (
    "checks",
    "retried_duplicate",
    "retried_fresh",
    "follower_records_checked",
    "offset_checks",
    "pending_present",
    "pending_absent",
    "removals_retried",
    "removed_records",
    "removal_checks",
)


def check_after_restart(run: Run, figures: dict[str, int]) -> list[str]:
    """With the workers paused and the server restarted: checks the store
    against the journal, retries every unanswered transaction and removal,
    and adds to ``figures`` (CHECKS); returns the problems found."""
    server = run.server
    report, _ = check_store(server.stub, run.journal, SPACES, run.followers)
    problems = list(report.problems) + run.errors
    run.errors.clear()
    dup, fresh = retry_unanswered(run, report.pending_stored, problems)
    figures["removed_records"] += report.removed_records
    figures["removal_checks"] += report.removal_checks
    figures["checks"] += report.transactions_checked
    figures["retried_duplicate"] += dup
    figures["retried_fresh"] += fresh
    figures["pending_present"] += report.pending_present
    figures["pending_absent"] += report.pending_absent
    figures["follower_records_checked"] += report.follower_records_checked
    figures["offset_checks"] += report.offsets_checked
    if problems:
        return problems
    # What was read back is durable now: it is the new baseline for offsets.
    for key, got in report.offsets_read.items():
        if got is not None:
            run.journal.commit_acked(key, got, run.journal.tick())
    # Only after that baseline: a retried delete removes offsets read back above.
    figures["removals_retried"] += retry_removals(server.stub, run.journal, problems)
    return problems


def test_kill9_cycles_keep_every_acked_transaction(tmp_path: Path) -> None:
    seed = int(os.environ.get("STREAMS_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data, tmp_path / "server.log")
    server.start()
    run = Run(server, seed)
    threads = run.workers()
    started = time.monotonic()
    figures = dict.fromkeys(("cycles", "sigterm_cycles", "kills_while_starting", *CHECKS), 0)

    def fail(problems: list[str], when: str) -> None:
        log = (tmp_path / "server.log").read_text(errors="replace")[-3000:]
        pytest.fail(
            f"seed {seed}, {when}: {len(problems)} problem(s):\n  "
            + "\n  ".join(problems[:40])
            + f"\nserver log tail:\n{log}"
        )

    try:
        run.gate.open()
        for t in threads:
            t.start()
        cycle = 0
        while True:
            cycle += 1
            # Every 6th cycle is a graceful SIGTERM under the same load (it must exit 0
            # and keep everything acked too); the others are kill -9.
            graceful = cycle % 6 == 0
            # Let the load run, then stop the server at a random moment. Workers start no
            # new call once the gate is shut, but those in flight meet the kill.
            time.sleep(rng.uniform(0.05, 0.5))
            run.gate.shut()
            if graceful:
                code = server.stop()
                if code != 0:
                    fail([f"SIGTERM under load: the server exited with {code}"], "SIGTERM")
            else:
                server.kill()  # calls in flight meet a dead server
                server.close_channel()
            run.gate.close()
            if not graceful and cycle % 4 == 0:
                # Now and then a second crash, during (or right after) the recovery.
                kill9_while_starting(server, rng.uniform(0.0, 0.5))
                figures["kills_while_starting"] += 1
            server.start()
            figures["sigterm_cycles" if graceful else "cycles"] += 1
            problems = check_after_restart(run, figures)
            if problems:
                fail(problems, f"after {'SIGTERM' if graceful else 'kill -9'} cycle {cycle}")
            kills = figures["cycles"]
            if kills >= CYCLES or (
                time.monotonic() - started > TIME_BUDGET and kills >= MIN_CYCLES
            ):
                break
            run.gate.open()

        # Final: stop the workers, a graceful restart, and one last full check.
        run.gate.close()
        run.gate.stop()
        for t in threads:
            t.join(10)
        server.restart()
        report, views = check_store(server.stub, run.journal, SPACES, run.followers)
        problems = list(report.problems) + run.errors
        if run.journal.pending():
            problems.append(f"{len(run.journal.pending())} transactions left unresolved")
        problems += [f"left unanswered: {r.request}" for r in run.journal.unanswered_removals()]
        if problems:
            fail(problems, "after the final graceful restart")
    finally:
        run.gate.stop()
        server.close()

    total = len(run.journal.txns)
    records = sum(len(v.records) for v in views.values())
    followed = sum(len(f.records) for f in run.followers)
    elapsed = time.monotonic() - started
    print(
        f"\ncrash: seed {seed}, {figures['cycles']} kill -9 cycles and "
        f"{figures['sigterm_cycles']} SIGTERM cycles under load in {elapsed:.1f} s "
        f"({figures['kills_while_starting']} more kills while starting), "
        f"{total} transactions ({records} records) checked in the end, "
        f"{figures['checks']} transaction checks over all cycles, "
        f"{run.acks} acked on first try, {run.unanswered} unanswered "
        f"({figures['pending_present']} found stored / {figures['pending_absent']} not), "
        f"retries: {figures['retried_duplicate']} duplicate + {figures['retried_fresh']} fresh, "
        f"{run.commits_acked} commits acked, {figures['offset_checks']} offset checks, "
        f"{run.removals_acked} trims/deletes acked ({run.removals_unanswered} unanswered, "
        f"{figures['removals_retried']} retried), {figures['removal_checks']} records checked "
        f"gone for good, {figures['removed_records']} maybe removed, "
        f"{followed} records followed, {figures['follower_records_checked']} follower "
        f"record checks"
    )
    for name, value in (
        ("kill -9 cycles", figures["cycles"]),
        ("SIGTERM cycles under load", figures["sigterm_cycles"]),
        ("kill -9 during start-up", figures["kills_while_starting"]),
        ("transactions checked (distinct)", total),
        ("transaction checks (over all cycles)", figures["checks"]),
        ("unanswered transactions retried", run.unanswered),
        ("follower record checks", figures["follower_records_checked"]),
        ("trims and deletes acked", run.removals_acked),
        ("records checked gone after an acked trim or delete", figures["removal_checks"]),
    ):
        COUNTERS[f"crash: {name}"] = value
    # The run must have exercised what it claims to test.
    assert figures["cycles"] >= MIN_CYCLES
    assert run.acks > 0
    assert run.commits_acked > 0
    assert run.removals_acked > 0
    assert figures["removal_checks"] > 0, "no acknowledged removal was ever checked"
    assert all(f.records for f in run.followers), [len(f.records) for f in run.followers]
    assert sum(f.reconnects for f in run.followers) >= MIN_CYCLES


def test_checker_catches_loss_partial_transactions_and_bad_offsets(tmp_path: Path) -> None:
    """The checker itself: fed a journal that disagrees with the store, it must complain."""
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data, tmp_path / "server.log")
    server.start()
    try:
        journal = Journal()
        rng = random.Random(7)
        stored = make_request(rng, "stored", SPACES, SEGMENTS)
        stored.space = SPACES[0]
        txn = journal.sent(stored)
        journal.acked(txn, server.stub.Produce(stored, timeout=CALL_TIMEOUT))
        follower = Follower(SPACES[0], "")
        follower.received(read_target(server.stub, SPACES[0]))
        server.stub.Commit(
            pb.CommitRequest(consumer="c1", space=SPACES[0], offset=1), timeout=CALL_TIMEOUT
        )
        report, _ = check_store(server.stub, journal, SPACES, [follower])
        assert report.problems == []
        assert report.transactions_checked == 1

        # An acked transaction that is not stored.
        lost = make_request(rng, "lost", SPACES, SEGMENTS)
        journal.acked(journal.sent(lost), pb.ProduceResponse(first_position=99, last_position=99))
        # The stored transaction, as if it had one record more than what is stored.
        stored.writes[0].records.add(payload=b"missing")
        # A follower record that differs from what is stored.
        changed = pb.Record()
        changed.CopyFrom(follower.records[0])
        changed.payload += b"!"
        follower.records[0] = changed
        # A commit acked at 3 while 1 is stored.
        journal.commit_acked(commit_key("c1", SPACES[0], ""), 3)
        report, _ = check_store(server.stub, journal, SPACES, [follower])
        text = "\n".join(report.problems)
        assert f"LOST acked transaction {lost.space}/lost" in text
        assert "transaction crash-a/stored" in text and "partly present" in text
        assert "follower crash-a/'' offset 1" in text
        assert "committed offset ('c1', 'crash-a', '')" in text

        # Removals the journal says were acknowledged, but the store still has
        # what they removed: a trim point past a stored record, a deleted segment.
        journal = Journal()
        journal.acked(journal.sent(stored), pb.ProduceResponse())  # replaced below
        journal.txns.clear()
        kept = make_request(rng, "kept", SPACES, SEGMENTS)
        kept.space = SPACES[1]
        txn = journal.sent(kept)
        journal.acked(txn, server.stub.Produce(kept, timeout=CALL_TIMEOUT))
        segment = kept.writes[0].segment
        trim = journal.removal_sent(
            pb.TrimRequest(space=SPACES[1], segment=segment, before_offset=2)
        )
        journal.removal_acked(trim, 2)
        report, _ = check_store(server.stub, journal, [SPACES[1]])
        text = "\n".join(report.problems)
        assert f"({segment}/1) is readable after an acknowledged trim" in text, text
        journal.removals.clear()
        delete = journal.removal_sent(pb.DeleteSegmentRequest(space=SPACES[1], segment=segment))
        journal.removal_acked(delete)
        report, _ = check_store(server.stub, journal, [SPACES[1]])
        text = "\n".join(report.problems)
        assert f"segment {SPACES[1]}/{segment} is listed after its acknowledged delete" in text
        assert "is readable after an acknowledged delete" in text, text
    finally:
        server.close()
