"""CPU cost of validating one Produce, in-process: parse + ``validation.transaction``.

With ``--baseline REV`` the same requests also go through ``streams/validation.py``
as it was at git revision REV, interleaved with the current one, so both
figures come from one run on one machine state::

    python bench/validation_cost.py --baseline 58b989d
    python bench/validation_cost.py --records 1000 --payload 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from types import ModuleType

from common import ROOT

from streams import validation
from streams.limits import Limits
from streams.v1 import streams_pb2 as pb


def _module_at(revision: str) -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:streams/validation.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location(f"validation_{revision}", handle.name)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load streams/validation.py at {revision}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        os.unlink(handle.name)
    return module


def _request(records: int, payload: int, metadata: int) -> bytes:
    record = pb.RecordInput(
        payload=bytes(payload), metadata={f"key-{i}": "value" for i in range(metadata)}
    )
    return pb.ProduceRequest(
        space="bench",
        writes=[pb.SegmentWrite(segment="segment", records=[record] * records)],
        transaction_id="bench-transaction",
    ).SerializeToString()


def _per_call_us(validate: Callable[[bytes], object], data: bytes, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        validate(data)
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100, help="records per Produce")
    parser.add_argument("--payload", type=int, default=100, help="payload bytes per record")
    parser.add_argument("--metadata", type=int, default=0, help="metadata pairs per record")
    parser.add_argument("--calls", type=int, default=1000, help="Produces per timing")
    parser.add_argument("--repeats", type=int, default=15, help="timings per variant")
    parser.add_argument("--baseline", help="git revision to compare with")
    args = parser.parse_args(argv)
    data = _request(args.records, args.payload, args.metadata)
    lim = Limits()
    variants: dict[str, Callable[[bytes], object]] = {
        "parse only": pb.ProduceRequest.FromString,
        "parse + DiscardUnknownFields": lambda raw: pb.ProduceRequest.FromString(
            raw
        ).DiscardUnknownFields(),
        "parse + validation (current)": lambda raw: validation.transaction(
            pb.ProduceRequest.FromString(raw), lim
        ),
    }
    if args.baseline:
        old = _module_at(args.baseline)
        variants[f"parse + validation ({args.baseline})"] = lambda raw: old.transaction(
            pb.ProduceRequest.FromString(raw), lim
        )
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, validate in variants.items():
            timings[name].append(_per_call_us(validate, data, args.calls))
    print(
        f"Produce of {args.records} records x {args.payload} B, {args.metadata} metadata pairs "
        f"({len(data)} bytes); {args.repeats} timings of {args.calls} calls, Python "
        f"{sys.version.split()[0]}; us per Produce, min (the least disturbed) / median"
    )
    for name, values in timings.items():
        print(f"  {name:<40} {min(values):8.1f} / {statistics.median(values):8.1f}")


if __name__ == "__main__":
    main()
