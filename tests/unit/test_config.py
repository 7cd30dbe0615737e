"""Server options: flags, STREAMS_* variables, defaults, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import config
from streams.limits import Limits


def test_defaults_are_the_contracts() -> None:
    cfg = config.parse([], environ={})
    assert (cfg.listen, cfg.data, cfg.sync) == ("127.0.0.1:50051", Path.cwd() / "data", True)
    assert cfg.limits == Limits()
    assert cfg.limits.max_payload_bytes == 1 << 20
    assert cfg.limits.max_request_bytes == 16 << 20
    assert cfg.limits.max_record_bytes == 3 << 19


def test_environment_sets_and_flags_override() -> None:
    env = {
        "STREAMS_LISTEN": "0.0.0.0:7000",
        "STREAMS_MAX_BATCH": "50",
        "STREAMS_DEFAULT_BATCH": "10",
        "STREAMS_NO_SYNC": "true",
    }
    cfg = config.parse([], environ=env)
    assert (cfg.listen, cfg.limits.max_batch, cfg.sync) == ("0.0.0.0:7000", 50, False)
    cfg = config.parse(["--listen", "127.0.0.1:0", "--max-batch", "70"], environ=env)
    assert (cfg.listen, cfg.limits.max_batch) == ("127.0.0.1:0", 70)


@pytest.mark.parametrize(
    ("argv", "environ", "words"),
    [
        (["--max-payload-bytes", "0"], {}, "max_payload_bytes"),
        (["--default-batch", "20", "--max-batch", "10"], {}, "default_batch"),
        (["--max-record-bytes", str(8 << 20)], {}, "response"),
        (["--max-payload-bytes", str(2 << 20)], {}, "max_record_bytes"),
        ([], {"STREAMS_MAX_METADATA_VALUE_BYTES": str(2 << 20)}, "max_record_bytes"),
        ([], {"STREAMS_MAX_BATCH": "many"}, "STREAMS_MAX_BATCH"),
        ([], {"STREAMS_NO_SYNC": "perhaps"}, "perhaps"),
        (["--dedupe-window-seconds", "0"], {}, "dedupe-window-seconds"),
    ],
)
def test_bad_values_are_usage_errors(
    argv: list[str], environ: dict[str, str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        config.parse(argv, environ=environ)
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_help_names_every_option_and_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config.parse(["--help"], environ={})
    text = capsys.readouterr().out
    for option in ("--listen", "--data", "--no-sync", "--max-metadata-value-bytes"):
        assert option in text
    assert "STREAMS_MAX_METADATA_VALUE_BYTES" in text
    assert "power loss" in text
