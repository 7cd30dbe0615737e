"""ListSpaces under a token: time per call against how many spaces the server
holds and how many the token can see (the issue: 20k spaces, 119 ms for a
token that sees none, so the time told how many there were).

    python bench/list_spaces.py [--spaces 20000] [--calls 20]

Runs a server subprocess with a token file, fills it with spaces ``noise-N``
plus ``orders-0..9``, then times ListSpaces (page_size 100) for: a token that
sees nothing (``secret*``), one that sees 10 (``orders-*``), and one with a
leading wildcard (``*-x``, which must scan every name).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import grpc
from common import markdown_table, percentile, run_server

from streams.v1 import streams_pb2 as pb
from streams.v1 import streams_pb2_grpc as pb_grpc

TOKENS = {"none": ["secret*"], "ten": ["orders-*"], "leading-wildcard": ["*-x"], "admin": ["*"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spaces", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.json"
        entries = [
            {"token": t, "spaces": s, "access": ["read", "write"]} for t, s in TOKENS.items()
        ]
        tokens.write_text(json.dumps({"tokens": entries}))
        with run_server(sync=False, extra=["--auth-tokens", str(tokens)]) as server:
            channel = grpc.insecure_channel(server.address)
            stub = pb_grpc.StreamsServiceStub(channel)
            admin = (("authorization", "Bearer admin"),)
            names = [f"noise-{n}" for n in range(args.spaces)] + [f"orders-{n}" for n in range(10)]
            write = [pb.SegmentWrite(segment="s", records=[pb.RecordInput(payload=b"x")])]
            for name in names:
                stub.Produce(pb.ProduceRequest(space=name, writes=write), metadata=admin)
            rows = []
            for token in TOKENS:
                metadata = (("authorization", f"Bearer {token}"),)
                times = []
                for _ in range(args.calls):
                    started = time.perf_counter()
                    reply = stub.ListSpaces(pb.ListSpacesRequest(page_size=100), metadata=metadata)
                    times.append((time.perf_counter() - started) * 1000)
                rows.append(
                    [token, str(TOKENS[token]), str(len(reply.spaces)),
                     f"{percentile(times, 0.5):.2f}", f"{percentile(times, 0.95):.2f}"]
                )  # fmt: skip
            channel.close()
    print(f"ListSpaces, {args.spaces + 10} spaces, page_size 100, {args.calls} calls each")
    print(markdown_table(["token", "patterns", "listed", "median ms", "p95 ms"], rows))


if __name__ == "__main__":
    main()
