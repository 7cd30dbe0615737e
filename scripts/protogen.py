"""Generates the Python stubs for protos/ (needs the dev extra, grpcio-tools).

A developer tool that works on a checkout (it reads protos/ next to scripts/),
so it is not part of the installed package.

Usage: ``python scripts/protogen.py OUT_ROOT`` writes ``OUT_ROOT/streams/v1/
streams_pb2.py``, ``.pyi`` and ``_pb2_grpc.py``. ``scripts/gen-protos`` writes
them into the tree; tests/unit/test_stubs.py writes them to a temporary folder
and compares, so stale stubs fail the suite.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[1] / "protos"
PROTO_FILES = ("streams/v1/streams.proto",)
GENERATED = (
    "streams/v1/streams_pb2.py",
    "streams/v1/streams_pb2.pyi",
    "streams/v1/streams_pb2_grpc.py",
)


def generate(out_root: Path) -> list[Path]:
    """Writes the stubs under ``out_root`` and returns their paths."""
    from grpc_tools import protoc

    out_root.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out_root / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
