"""The container image: its Dockerfile, its health check command, and its start
path (scripts/serve), run here as the image runs them (no Docker engine here)."""

from __future__ import annotations

import json
import shlex
import signal
from pathlib import Path

import grpc
import pytest

from streams.healthcheck import default_target
from tests.support.inproc import InProcessServer
from tests.support.process import ServerProcess, free_port

from .helpers import REPO_ROOT, SERVICE, SERVING, health_status
from .helpers import run_python as run

Instruction = tuple[str, str]


def dockerfile() -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def arguments(text: str) -> list[str]:
    """Exec form (a JSON array) or shell form."""
    return json.loads(text) if text.startswith("[") else shlex.split(text)


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def last(instructions: list[Instruction], keyword: str) -> str:
    found = [rest for k, rest in instructions if k == keyword]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


@pytest.fixture(scope="module")
def image() -> list[Instruction]:
    return dockerfile()


def test_base_user_volume_port_and_listen_address(image: list[Instruction]) -> None:
    assert image[0] == ("FROM", "python:3.11-slim")
    user = last(image, "USER").split(":")[0]
    assert user not in ("root", "0", "")
    env = env_of(image)
    data = env["STREAMS_DATA"]
    volumes = arguments(last(image, "VOLUME"))
    assert data in volumes
    host, _, port = env["STREAMS_LISTEN"].rpartition(":")
    assert host == "0.0.0.0"
    assert port in last(image, "EXPOSE").split()
    # The non-root user can write the data folder.
    runs = " ".join(rest for keyword, rest in image if keyword == "RUN")
    assert f"chown {user} {data}" in runs or f"chown -R {user} {data}" in runs, runs


def test_installs_through_the_scripts_that_serve_uses(image: list[Instruction]) -> None:
    runs = [rest for keyword, rest in image if keyword == "RUN"]
    assert any("scripts/_venv.sh" in run and "ensure_venv" in run for run in runs), runs
    copied = {
        arguments(rest)[i].rstrip("/")
        for keyword, rest in image
        if keyword == "COPY"
        for i in range(len(arguments(rest)) - 1)
    }
    # What `pip install -e .` and scripts/serve need inside the image.
    assert {"pyproject.toml", "README.md", "server.py", "scripts", "streams"} <= copied
    command = arguments(last(image, "CMD"))
    entrypoint = [rest for keyword, rest in image if keyword == "ENTRYPOINT"]
    start = [*(arguments(entrypoint[-1]) if entrypoint else []), *command]
    assert start[0] == "scripts/serve", start


def test_healthcheck_runs_the_health_module(image: list[Instruction]) -> None:
    text = last(image, "HEALTHCHECK")
    assert "CMD" in text
    command = arguments(text.split("CMD", 1)[1].strip())
    assert command[1:3] == ["-m", "streams.healthcheck"], command
    # Without --target it asks the port the image listens on, on loopback.
    port = env_of(image)["STREAMS_LISTEN"].rpartition(":")[2]
    assert default_target(env_of(image)) == f"127.0.0.1:{port}"


def test_healthcheck_command_exit_codes(inproc: InProcessServer) -> None:
    ok = run(["-m", "streams.healthcheck", "--target", inproc.target])
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout
    named = run(["-m", "streams.healthcheck", "--target", inproc.target, "--service", SERVICE])
    assert named.returncode == 0, named.stderr
    # As in the image: no --target, the port taken from STREAMS_LISTEN.
    from_env = run(["-m", "streams.healthcheck"], env={"STREAMS_LISTEN": f"0.0.0.0:{inproc.port}"})
    assert from_env.returncode == 0, from_env.stderr
    nothing = run(["-m", "streams.healthcheck", "--target", f"127.0.0.1:{free_port()}"])
    assert nothing.returncode == 1


def test_scripts_serve_starts_and_answers_health(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", command=[str(REPO_ROOT / "scripts" / "serve")])
    with server.start(timeout=120), grpc.insecure_channel(server.target) as channel:
        assert health_status(channel, "") == SERVING
        assert health_status(channel, SERVICE) == SERVING
        # scripts/serve execs the server: the signal reaches it directly.
        assert server.stop(signal.SIGTERM) == 0
