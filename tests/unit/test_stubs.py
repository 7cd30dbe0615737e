"""The generated stubs in the tree match protos/: stale stubs fail the suite."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _protogen():
    """scripts/protogen.py, a developer tool outside the package."""
    spec = importlib.util.spec_from_file_location("protogen", ROOT / "scripts" / "protogen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    fresh = _protogen().generate(tmp_path)
    for path in fresh:
        relative = path.relative_to(tmp_path)
        in_tree = ROOT / relative
        assert in_tree.read_bytes() == path.read_bytes(), (
            f"{relative} is stale: run scripts/gen-protos"
        )
