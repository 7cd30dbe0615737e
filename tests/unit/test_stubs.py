"""The generated stubs in the tree match protos/: stale stubs fail the suite."""

from __future__ import annotations

from pathlib import Path

from streams import protogen

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    fresh = protogen.generate(tmp_path)
    for path in fresh:
        relative = path.relative_to(tmp_path)
        in_tree = ROOT / relative
        assert in_tree.read_bytes() == path.read_bytes(), (
            f"{relative} is stale: run scripts/gen-protos"
        )
