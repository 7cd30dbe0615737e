"""Fan-out capacity: the records/s a server delivers to many followers.

The highest rate of single-record durable transactions at which every one of
``followers`` streams (``Consume`` with ``follow=true``) gets every record,
with no gap, and the p99 from send to arrival stays under ``P99_LIMIT_MS``.
Each step is one ``follow_latency.run_configuration`` on a fresh server
(``--workers`` as asked): rates double from ``start`` until a step fails (or
halve until one passes), then ``refine`` geometric bisections between the
last pass and the first fail. A step counts ``seconds``, or as long as it
takes to send ``MIN_TRANSACTIONS``. The figure is the records delivered per
second (to all followers together) at the best passing step.

    python bench/fanout.py --workers 1,2            # 100 followers
    python bench/fanout.py --workers 1 --seconds 2 --refine 1
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from common import Histogram, fmt, markdown_table
from follow_latency import Outcome, run_configuration

from streams import config

P99_LIMIT_MS = 50.0
MIN_RATE = 10.0  # transactions/s: below this the search gives up
MAX_RATE = 20_000.0  # one producer process cannot send much more
ACHIEVED_SHARE = 0.95  # of the target rate, or the producer fell behind
# Counted transactions per step, at least (a slow step runs longer): the p99 of
# the records of 12 transactions is their slowest one's, so one stall of a
# shared machine would fail the step; over 100, one late transaction is 1 %.
MIN_TRANSACTIONS = 100
# Followers per connection: the kernel spreads connections (not streams) over
# the server's front processes, so 100 followers come over 10 connections.
PER_CHANNEL = 10


@dataclass
class Step:
    rate: float  # transactions/s asked of the producer
    achieved: float  # transactions/s acknowledged
    delivered: float  # records/s received by all followers together
    p50_ms: float
    p99_ms: float
    lost: int  # records a follower should have seen and did not
    server_cpu: float  # share of one core, all the server's processes
    why: str  # "" when the step passed, else what failed
    only_slow: bool = False  # failed on the p99 alone: nothing lost, no error, on schedule

    @property
    def passed(self) -> bool:
        return not self.why


@dataclass
class Capacity:
    workers: int
    followers: int
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        passed = [s for s in self.steps if s.passed]
        return max(passed, key=lambda s: s.delivered) if passed else None

    @property
    def delivered(self) -> float:
        best = self.best
        return best.delivered if best else math.nan


def judge(outcome: Outcome, rate: float) -> Step:
    """One step's figures and, when it failed, why."""
    latency = Histogram()
    for report in outcome.reports:
        latency.merge(report.latency)
    p = outcome.producer
    expected = p.acked * outcome.followers
    lost = expected - latency.total
    gaps = sum(r.gaps for r in outcome.reports)
    unfinished = outcome.followers - sum(r.finished for r in outcome.reports)
    errors = [e for r in outcome.reports for e in r.errors] + p.errors
    p99 = latency.percentile(0.99) / 1000
    achieved = p.acked / p.seconds
    problems = []
    if errors:
        problems.append(f"{len(errors)} error(s), first: {errors[0]}")
    if lost or gaps or unfinished:
        problems.append(f"{lost:,} lost, {gaps} gaps, {unfinished} unfinished")
    if p.skipped or achieved < ACHIEVED_SHARE * rate:
        problems.append(f"producer behind: {fmt(achieved)} tx/s, {p.skipped:,} skipped")
    only_slow = not problems
    if not p99 < P99_LIMIT_MS:
        problems.append(f"p99 {p99:.1f} ms")
    return Step(
        rate,
        achieved,
        latency.total / p.seconds,
        latency.percentile(0.5) / 1000,
        p99,
        max(lost, 0),
        outcome.server_cpu_share,
        "; ".join(problems),
        only_slow and bool(problems),
    )


def search(
    workers: int,
    followers: int,
    processes: int,
    start: float,
    seconds: float,
    refine: int,
    warmup: float = 1.0,
    retries: int = 1,
) -> Capacity:
    """The best passing rate for a server with ``workers`` (see the module doc).
    A step that failed on its p99 alone is run again up to ``retries`` times:
    one stall of a shared machine sets the p99 of a short step."""
    found = Capacity(workers, followers)

    def attempt(rate: float) -> Step:
        counted = max(seconds, MIN_TRANSACTIONS / rate)
        outcome = run_configuration(
            followers, processes, rate, counted, warmup, 30.0, workers, PER_CHANNEL
        )
        result = judge(outcome, rate)
        found.steps.append(result)
        verdict = "pass" if result.passed else f"fail ({result.why})"
        print(
            f"fanout: --workers {workers}, {followers} followers, {fmt(rate)} tx/s: "
            f"{fmt(result.delivered)} records/s delivered, p99 {result.p99_ms:.1f} ms, {verdict}",
            file=sys.stderr,
            flush=True,
        )
        return result

    def step(rate: float) -> Step:
        result = attempt(rate)
        for _ in range(retries):
            if not result.only_slow:
                break
            result = attempt(rate)
        return result

    good, bad = math.nan, math.nan
    rate = start
    if step(rate).passed:
        good = rate
        while rate * 2 <= MAX_RATE:
            rate *= 2
            if not step(rate).passed:
                bad = rate
                break
            good = rate
    else:
        bad = rate
        while rate / 2 >= MIN_RATE:
            rate /= 2
            if step(rate).passed:
                good = rate
                break
            bad = rate
    for _ in range(refine):
        if math.isnan(good) or math.isnan(bad):
            break
        middle = math.sqrt(good * bad)
        if step(middle).passed:
            good = middle
        else:
            bad = middle
    return found


def steps_table(capacities: Sequence[Capacity]) -> str:
    rows = [
        [
            f"--workers {c.workers}",
            fmt(s.rate),
            fmt(s.achieved),
            fmt(s.delivered),
            fmt(s.p50_ms, 2),
            fmt(s.p99_ms, 2),
            fmt(s.lost),
            f"{s.server_cpu:.0%}",
            "pass" if s.passed else s.why,
        ]
        for c in capacities
        for s in c.steps
    ]
    return markdown_table(
        [
            "server",
            "tx/s asked",
            "tx/s acked",
            "records/s delivered",
            "p50 ms",
            "p99 ms",
            "lost",
            "server CPU (of one core)",
            "verdict",
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default=f"1,{config.cores()}", help="comma-separated")
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2, help="follower processes")
    parser.add_argument("--start", type=float, default=100.0, help="first rate (tx/s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="counted seconds per step")
    parser.add_argument("--refine", type=int, default=2, help="bisections after the ramp")
    parser.add_argument(
        "--retries", type=int, default=1, help="runs again of a step slow on its p99 alone"
    )
    args = parser.parse_args(argv)
    found = [
        search(
            int(w),
            args.followers,
            args.processes,
            args.start,
            args.seconds,
            args.refine,
            retries=args.retries,
        )
        for w in args.workers.split(",")
    ]
    print(steps_table(found))
    for c in found:
        print(f"--workers {c.workers}: {fmt(c.delivered)} records/s delivered")


if __name__ == "__main__":
    main()
