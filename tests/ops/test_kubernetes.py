"""deploy/kubernetes: the sidecar and StatefulSet examples, parsed and checked
against the image (Dockerfile) and the server's own option parser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams import config

from .helpers import REPO_ROOT
from .test_container import arguments, dockerfile, env_of

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"


def documents(name: str) -> list[dict[str, Any]]:
    with open(MANIFESTS / name) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def workload(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, [doc.get("kind") for doc in docs]
    return found[0]


def streams_container(pod: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in pod["containers"] if "streams" in c["image"]]
    assert len(found) == 1, [c["image"] for c in pod["containers"]]
    return found[0]


def effective_argv(container: dict[str, Any]) -> list[str]:
    """What the container runs, by Kubernetes' rules: ``command`` replaces the
    image's ENTRYPOINT, ``args`` replace its CMD (and drop the CMD even when
    only ``args`` is given)."""
    image = dockerfile()
    entrypoint = [arguments(r) for k, r in image if k == "ENTRYPOINT"]
    cmd = [arguments(r) for k, r in image if k == "CMD"]
    head = container.get("command", entrypoint[-1] if entrypoint else [])
    if "command" in container or "args" in container:
        tail = container.get("args", [])
    else:
        tail = cmd[-1] if cmd else []
    return [*head, *tail]


def server_config(container: dict[str, Any]) -> config.Config:
    """The server's configuration in this container: the image's ENV, the
    container's env, and its ``args`` read as server flags."""
    environ = env_of(dockerfile())
    environ.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return config.parse(container.get("args", []), environ=environ)


def grpc_port(container: dict[str, Any]) -> int:
    ports = [p["containerPort"] for p in container["ports"] if p.get("name") == "grpc"]
    assert len(ports) == 1, container["ports"]
    return int(ports[0])


def check_streams_container(pod: dict[str, Any], volume_names: set[str]) -> config.Config:
    """Probes, ports, resources, data volume and grace period of the Streams container."""
    container = streams_container(pod)
    listen = next(e["value"] for e in container["env"] if e["name"] == "STREAMS_LISTEN")
    host, _, port = listen.rpartition(":")
    assert host == "0.0.0.0", "kubelet probes come from outside the pod's loopback"
    assert int(port) == grpc_port(container)
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in container, probe
        assert set(container[probe]) & {"grpc"}, (probe, container[probe])
        assert container[probe]["grpc"]["port"] == grpc_port(container), probe
        assert container[probe]["grpc"].get("service", "") in ("", "streams.v1.StreamsService")
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]

    cfg = server_config(container)
    assert int(cfg.listen.rpartition(":")[2]) == grpc_port(container)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert str(cfg.data) in mounts, (cfg.data, mounts)
    assert mounts[str(cfg.data)] in volume_names
    if cfg.metrics_listen:
        metrics_port = int(cfg.metrics_listen.rpartition(":")[2])
        assert metrics_port in [p["containerPort"] for p in container["ports"]]
    assert pod["terminationGracePeriodSeconds"] > cfg.shutdown_grace
    # The pod runs as the image's user, which owns the data folder.
    uid = re.search(r"useradd [^&]*--uid (\d+)", (REPO_ROOT / "Dockerfile").read_text())
    assert uid, "the Dockerfile creates no user with a fixed uid"
    user = container.get("securityContext", {}).get("runAsUser")
    assert user in (None, int(uid.group(1)))
    assert pod.get("securityContext", {}).get("fsGroup") in (None, int(uid.group(1)))
    return cfg


def test_sidecar_app_and_streams_share_a_pod_with_a_persistent_volume() -> None:
    docs = documents("sidecar.yaml")
    deployment = workload(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert len(pod["containers"]) >= 2
    app = [c for c in pod["containers"] if c is not streams_container(pod)]
    assert app, "no application container beside Streams"
    claims = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"}
    persistent = {
        v["name"]
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") in claims
    }
    assert persistent, pod["volumes"]
    check_streams_container(pod, persistent)
    # One writer per volume.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    # The app is pointed at the sidecar's port.
    port = grpc_port(streams_container(pod))
    targets = [e["value"] for c in app for e in c.get("env", []) if "TARGET" in e["name"]]
    assert all(t.rpartition(":")[2] == str(port) for t in targets)


def test_statefulset_has_its_volume_claim_and_probes() -> None:
    docs = documents("statefulset.yaml")
    statefulset = workload(docs, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    pod = spec["template"]["spec"]
    cfg = check_streams_container(pod, claims)
    container = streams_container(pod)
    if cfg.auth_tokens is not None:
        mounted = [Path(m["mountPath"]) for m in container["volumeMounts"]]
        assert any(cfg.auth_tokens.is_relative_to(m) for m in mounted), cfg.auth_tokens
    service = workload(docs, "Service")
    names = {p["name"] for p in container["ports"]}
    grpc_target = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")["targetPort"]
    assert grpc_target in names or grpc_target == grpc_port(container)
    assert spec["serviceName"] == service["metadata"]["name"]


@pytest.mark.parametrize(
    ("name", "kind"), [("sidecar.yaml", "Deployment"), ("statefulset.yaml", "StatefulSet")]
)
def test_the_streams_container_runs_the_server_with_its_flags(name: str, kind: str) -> None:
    """Kubernetes ``args`` replace the image's CMD: with an image whose start is
    its CMD (no ENTRYPOINT), the container must also name the command, or it
    would try to execute its first flag."""
    docs = documents(name)
    assert all("apiVersion" in doc and "kind" in doc for doc in docs)
    container = streams_container(workload(docs, kind)["spec"]["template"]["spec"])
    argv = effective_argv(container)
    assert argv and argv[0] in ("scripts/serve", "/app/scripts/serve"), (
        f"the container would run {argv!r}, not the server"
    )
    assert config.parse(argv[1:], environ={})
