"""The container image: its Dockerfile, its lock file, its health check command
and its start command, run here as the image runs them (no Docker engine here)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import grpc
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def image_uid(image: list[Instruction]) -> int:
    """The uid the image's user is created with (fixed, so manifests can name it)."""
    runs = " ".join(rest for keyword, rest in image if keyword == "RUN")
    found = re.search(r"useradd [^&]*--uid (\d+)", runs)
    assert found, "the Dockerfile creates no user with a fixed uid"
    return int(found.group(1))


def test_base_user_volume_port_and_listen_address(image: list[Instruction]) -> None:
    assert image[0] == ("FROM", "python:3.11-slim")
    # Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
    user, _, group = last(image, "USER").partition(":")
    assert user == str(image_uid(image)) and user != "0", user
    assert group not in ("0", "root")
    env = env_of(image)
    data = env["STREAMS_DATA"]
    volumes = arguments(last(image, "VOLUME"))
    assert data in volumes
    host, _, port = env["STREAMS_LISTEN"].rpartition(":")
    assert host == "0.0.0.0"
    assert port in last(image, "EXPOSE").split()
    # The non-root user can write the data folder.
    runs = " ".join(rest for keyword, rest in image if keyword == "RUN")
    assert re.search(rf"chown (-R )?({user}|streams)(:\S+)? {data}\b", runs), runs


def _index(image: list[Instruction], keyword: str, needle: str) -> int:
    found = [i for i, (k, rest) in enumerate(image) if k == keyword and needle in rest]
    assert found, f"no {keyword} with {needle!r} in the Dockerfile"
    return found[0]


def test_dependencies_are_a_locked_layer_before_the_code(image: list[Instruction]) -> None:
    """A code change must not reinstall the dependencies, and the dependencies
    must come from the lock file alone, checked against its hashes."""
    copy_lock = _index(image, "COPY", LOCK.name)
    install_deps = _index(image, "RUN", f"-r {LOCK.name}")
    copy_code = _index(image, "COPY", "streams/")
    assert arguments(image[copy_lock][1])[:-1] == [LOCK.name], "the lock alone, not the code"
    assert copy_lock < install_deps < copy_code, image
    assert _index(image, "COPY", "pyproject.toml") > install_deps
    assert "--require-hashes" in image[install_deps][1]
    for keyword, rest in image:
        if keyword == "RUN" and "pip install" in rest:
            assert "--no-cache-dir" in rest, rest
    # The project itself brings no dependency the lock did not pin, and builds
    # with the locked setuptools rather than whatever is newest that day.
    install_code = next(
        rest for k, rest in image[copy_code:] if k == "RUN" and "pip install" in rest
    )
    for flag in ("--no-deps", "--no-index", "--no-build-isolation"):
        assert flag in install_code, (flag, install_code)


def test_the_image_starts_the_installed_server(image: list[Instruction]) -> None:
    entrypoint = arguments(last(image, "ENTRYPOINT"))
    assert entrypoint == ["/app/.venv/bin/streams-server"], entrypoint
    assert arguments(last(image, "CMD")) == []
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["streams-server"] == "streams.server:main"


# -- the lock file ----------------------------------------------------------------------------

LOCK = REPO_ROOT / "requirements.lock"


def locked(text: str) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) of a pip-compile lock file."""
    pins: dict[str, tuple[Version, int]] = {}
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        line = entry.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        name, sep, version = requirement.strip().partition("==")
        if not sep:
            raise ValueError(f"{LOCK.name}: not pinned with ==: {line!r}")
        key = canonicalize_name(name)
        if key in pins:
            raise ValueError(f"{LOCK.name}: {name} pinned twice")
        pins[key] = (Version(version), len(options))
    return pins


def lock_problems(pyproject: str, lock: str) -> list[str]:
    """Why the lock is out of step with pyproject.toml's runtime dependencies and
    build requirements (empty: in step)."""
    project = tomllib.loads(pyproject)
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    pins = locked(lock)
    problems = [f"{name}=={version} has no hash" for name, (version, n) in pins.items() if not n]
    for text in wanted:
        requirement = Requirement(text)
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name}: not in {LOCK.name}")
        elif not requirement.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{requirement.name}=={pin[0]} does not satisfy {text!r}")
    return problems


def test_lock_is_in_step_with_pyproject() -> None:
    problems = lock_problems((REPO_ROOT / "pyproject.toml").read_text(), LOCK.read_text())
    assert problems == [], f"{problems}: run scripts/lock"


def test_lock_check_sees_drift() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    lock = LOCK.read_text()
    grpcio = locked(lock)["grpcio"][0]
    raised = re.sub(r'"grpcio>=[^"]*"', f'"grpcio>{grpcio}"', pyproject, count=1)
    assert lock_problems(raised, lock) == [f"grpcio=={grpcio} does not satisfy 'grpcio>{grpcio}'"]
    added = pyproject.replace("dependencies = [", 'dependencies = [\n    "attrs>=23",', 1)
    assert lock_problems(added, lock) == [f"attrs: not in {LOCK.name}"]
    unhashed = re.sub(r"(rocksdict==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+", r"\1", lock)
    assert lock_problems(pyproject, unhashed) == [
        f"rocksdict=={locked(lock)['rocksdict'][0]} has no hash"
    ]


def test_the_locked_set_resolves_complete_as_the_image_installs_it(tmp_path: Path) -> None:
    """pip, as the image runs it (hashes required, wheels only, nothing installed
    here counts), resolves the lock to exactly its own entries: no dependency is
    missing (hash-checking mode refuses an unpinned one) and none is extra."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # PyPI alone, as in the image
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--require-hashes", "--only-binary=:all:", "--report", str(report), "-r", str(LOCK)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = {
        canonicalize_name(item["metadata"]["name"]): Version(item["metadata"]["version"])
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved == {name: version for name, (version, _) in locked(LOCK.read_text()).items()}


# -- health check and start -------------------------------------------------------------------


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


def test_the_entrypoint_starts_and_answers_health(tmp_path: Path) -> None:
    """The console script the image starts, as installed in this venv."""
    script = Path(sys.executable).parent / "streams-server"
    if not script.exists():
        pytest.skip("the venv predates the console script: scripts/test reinstalls it")
    server = ServerProcess(tmp_path / "data", command=[str(script)])
    with server.start(timeout=120), grpc.insecure_channel(server.target) as channel:
        assert health_status(channel, "") == SERVING
        assert health_status(channel, SERVICE) == SERVING
        # The entrypoint is the server itself: the signal reaches it directly.
        assert server.stop(signal.SIGTERM) == 0
