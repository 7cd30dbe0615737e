"""Every public name of the client imports from ``streams`` (issue 11, item 5:
``from streams import Unauthenticated`` failed while the README listed it)."""

from __future__ import annotations

import builtins
import importlib
import re
import subprocess
import sys

import pytest

import streams
import streams.client
from tests.support.process import REPO_ROOT


def readme_client_names() -> set[str]:
    """The capitalised Python names the README's Python client section mentions:
    in backticks, after ``streams.``, and in its code."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("### Python (", 1)[1].split("\n### ", 1)[0]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    code = re.sub(r"#.*", "", code)  # comments are prose
    spans = [*re.findall(r"`([^`\n]+)`", section), code]
    names = set()
    for span in spans:
        names.update(re.findall(r"(?<![\w.])([A-Z][a-z][A-Za-z]*)\b", span))
        names.update(re.findall(r"\bstreams\.([A-Z]\w+)", span))
    return names - set(dir(builtins))


def test_the_readme_names_enough_to_mean_something() -> None:
    names = readme_client_names()
    assert {"Client", "AsyncClient", "Consumer", "Unauthenticated", "RetryPolicy"} <= names


@pytest.mark.parametrize("name", sorted(readme_client_names()))
def test_each_name_the_readme_mentions_imports_from_streams(name: str) -> None:
    exec(f"from streams import {name}", {})  # the statement a reader types
    assert name in streams.__all__


def test_streams_exports_what_streams_client_exports() -> None:
    assert sorted(streams.__all__) == sorted(streams.client.__all__)
    for name in streams.__all__:
        assert getattr(streams, name) is getattr(streams.client, name)
    assert set(streams.__all__) <= set(dir(streams))


def test_an_unknown_name_is_an_import_error() -> None:
    with pytest.raises(ImportError):
        exec("from streams import Unauthenticatd", {})


def test_the_server_does_not_load_the_client() -> None:
    code = "import streams, streams.server, sys; print('streams.client' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stdout + result.stderr
    assert importlib.import_module("streams") is streams
