"""deploy/kubernetes: every manifest validated against the Kubernetes schemas
(kubernetes-validate, offline), every pod checked against the Pod Security
"restricted" level field by field (tests/ops/pod_security.py), and the Streams
containers checked against the image (Dockerfile) and the server's own option parser."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streams import config
from streams.healthcheck import default_target

from . import pod_security
from .helpers import REPO_ROOT
from .test_container import arguments, dockerfile, env_of, image_uid, last

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
FILES = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod"}
# Native sidecars (init containers with restartPolicy: Always) are on by default
# from 1.29; the manifests must also be valid for the newest schemas.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
NODE_EXPORTER_PORT = 9100
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}


def documents(name: str) -> list[dict[str, Any]]:
    with open(MANIFESTS / name) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def pod_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def labels_of(doc: dict[str, Any]) -> dict[str, str]:
    meta = doc["metadata"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]
    return dict(meta.get("labels") or {})


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name in FILES for doc in documents(name) if doc["kind"] in WORKLOADS]


def workload(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, [doc.get("kind") for doc in docs]
    return found[0]


def streams_container(pod: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in pod_security.containers(pod) if "streams" in c["image"]]
    assert len(found) == 1, [c["image"] for c in pod_security.containers(pod)]
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


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment in this container: the image's ENV, then the container's env."""
    environ = env_of(dockerfile())
    environ.update({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return environ


def server_config(container: dict[str, Any]) -> config.Config:
    """The server's configuration in this container: its environment and its
    ``args`` read as server flags."""
    return config.parse(container.get("args", []), environ=container_env(container))


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def port_number(containers: list[dict[str, Any]], port: int | str) -> int:
    """A port given by number or by the name of one of these containers' ports."""
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for c in containers for p in c.get("ports", [])
             if p.get("name") == port]  # fmt: skip
    assert len(found) == 1, (port, [c.get("ports") for c in containers])
    return int(found[0])


# -- schemas and Pod Security -------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", FILES)
def test_manifests_match_the_kubernetes_schemas(name: str, version: str) -> None:
    """Strict: an unknown field (a typo, or a field newer than the version) fails."""
    docs = documents(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_validator_rejects_a_misspelt_field() -> None:
    _, doc = workloads()[0]
    broken = copy.deepcopy(doc)
    container = streams_container(pod_of(broken))
    container["securityContex"] = container.pop("securityContext")
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContex"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("name", "doc"), workloads(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_pod_meets_the_restricted_pod_security_level(name: str, doc: dict[str, Any]) -> None:
    assert pod_security.violations(pod_of(doc)) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("c", "allowPrivilegeEscalation"), None, "allowPrivilegeEscalation must be false"),
        (("c", "capabilities"), {"drop": ["NET_RAW"]}, "capabilities.drop must contain ALL"),
        (("c", "capabilities"), {"drop": ["ALL"], "add": ["SYS_ADMIN"]}, "capabilities.add"),
        (("c", "privileged"), True, "privileged"),
        (("c", "runAsUser"), 0, "runAsUser 0"),
        (("c", "seccompProfile"), {"type": "Unconfined"}, "seccompProfile.type 'Unconfined'"),
        (("c", "runAsNonRoot"), False, "runAsNonRoot must be true"),
        (("pod", "hostNetwork"), True, "hostNetwork is true"),
        (("pod", "volumes"), [{"name": "h", "hostPath": {"path": "/"}}], "type ['hostPath']"),
    ],
)
def test_the_pod_security_check_sees_each_violation(
    path: tuple[str, str], value: Any, expected: str
) -> None:
    """Each rule, broken on a pod that passes, is reported."""
    for _, doc in workloads():
        pod = copy.deepcopy(pod_of(doc))
        where, field = path
        target = streams_container(pod).setdefault("securityContext", {})
        target = pod if where == "pod" else target
        if value is None:
            target.pop(field, None)
        else:
            target[field] = value
        found = pod_security.violations(pod)
        assert any(expected in v for v in found), (found, expected)


# -- the Streams container ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "doc"), workloads(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_streams_container_hardening_probes_and_volumes(name: str, doc: dict[str, Any]) -> None:
    pod = pod_of(doc)
    container = streams_container(pod)
    cfg = server_config(container)
    ctx = container["securityContext"]
    # Read-only root filesystem; the data folder and /tmp are writable volumes.
    assert ctx["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
    for path in (str(cfg.data), "/tmp"):
        assert path in mounts, (path, sorted(mounts))
        assert not mounts[path].get("readOnly"), path
    data = mounts[str(cfg.data)]["name"]
    if cfg.storage == "rocksdb":  # the one backend whose data lives in --data
        assert data in claims or "persistentVolumeClaim" in volumes[data], "data must persist"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # Runs as the image's user, which owns the data folder.
    uid = image_uid(dockerfile())
    assert ctx.get("runAsUser", pod["securityContext"].get("runAsUser")) == uid
    assert pod["securityContext"]["fsGroup"] == uid
    # Startup, readiness and liveness; liveness waits for startup, which allows
    # RocksDB a long recovery.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container, probe
    startup = container["startupProbe"]
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 120
    assert "initialDelaySeconds" not in container["livenessProbe"]
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    assert pod["terminationGracePeriodSeconds"] > cfg.shutdown_grace
    assert pod.get("automountServiceAccountToken") is False


@pytest.mark.parametrize(
    ("name", "doc"), workloads(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_probes_reach_the_server_where_it_listens(name: str, doc: dict[str, Any]) -> None:
    """The kubelet's gRPC probes dial the pod's IP: a server on loopback needs
    exec probes of the image's health check, which asks 127.0.0.1."""
    container = streams_container(pod_of(doc))
    cfg = server_config(container)
    host, port = host_port(cfg.listen)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        if host in LOOPBACK:
            command = probe["exec"]["command"]
            healthcheck = arguments(last(dockerfile(), "HEALTHCHECK").split("CMD", 1)[1].strip())
            assert command == healthcheck, (kind, command)
            assert default_target(container_env(container)) == f"127.0.0.1:{port}"
        else:
            assert port_number([container], probe["grpc"]["port"]) == port, kind
            assert probe["grpc"].get("service", "") in ("", "streams.v1.StreamsService")


@pytest.mark.parametrize(
    ("name", "doc"), workloads(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_metrics_port_is_declared_and_not_node_exporters(name: str, doc: dict[str, Any]) -> None:
    container = streams_container(pod_of(doc))
    cfg = server_config(container)
    assert cfg.metrics_listen
    _, port = host_port(cfg.metrics_listen)
    assert port != NODE_EXPORTER_PORT
    assert port_number([container], "metrics") == port
    for other in pod_security.containers(pod_of(doc)):
        ports = {p["containerPort"] for p in other.get("ports", [])}
        assert other is container or port not in ports, "a port the pod already uses"


@pytest.mark.parametrize(
    ("name", "doc"), workloads(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_listener_beyond_loopback_has_a_network_policy(name: str, doc: dict[str, Any]) -> None:
    """Every port Streams serves on beyond loopback is admitted only from named
    peers, and gRPC beyond loopback also asks for tokens."""
    container = streams_container(pod_of(doc))
    cfg = server_config(container)
    exposed = [
        host_port(address)
        for address in (cfg.listen, cfg.metrics_listen)
        if address and host_port(address)[0] not in LOOPBACK
    ]
    if host_port(cfg.listen)[0] not in LOOPBACK:
        assert cfg.auth_tokens is not None, "gRPC beyond loopback without tokens"
        mounted = [Path(m["mountPath"]) for m in container["volumeMounts"]]
        assert any(cfg.auth_tokens.is_relative_to(m) for m in mounted), cfg.auth_tokens
    labels = labels_of(doc)
    policies = [
        p
        for p in documents(name)
        if p["kind"] == "NetworkPolicy"
        and p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not exposed:
        return
    everyone = list(pod_security.containers(pod_of(doc)))
    assert policies, f"{name}: Streams listens on {exposed} with no NetworkPolicy"
    for _, port in exposed:
        rules = [
            rule
            for policy in policies
            for rule in policy["spec"].get("ingress", [])
            if not rule.get("ports")
            or port in [port_number(everyone, p["port"]) for p in rule["ports"]]
        ]
        assert rules, f"port {port}: no rule admits it"
        assert all(rule.get("from") for rule in rules), f"port {port} is open to every peer"


# -- the two examples ---------------------------------------------------------------------------


def test_sidecar_is_a_native_sidecar_on_loopback() -> None:
    docs = documents("sidecar.yaml")
    deployment = workload(docs, "Deployment")
    pod = pod_of(deployment)
    sidecar = streams_container(pod)
    # An init container that keeps running: started (and its startupProbe passed)
    # before the app, stopped after it.
    assert sidecar in pod.get("initContainers", []), "Streams must be an init container"
    assert sidecar["restartPolicy"] == "Always"
    assert "startupProbe" in sidecar
    apps = pod["containers"]
    assert apps and all("streams" not in c["image"] for c in apps)
    cfg = server_config(sidecar)
    host, port = host_port(cfg.listen)
    assert host == "127.0.0.1", "the sidecar serves the pod only"
    targets = [e["value"] for c in apps for e in c.get("env", []) if "TARGET" in e["name"]]
    assert targets and all(t == f"127.0.0.1:{port}" for t in targets), targets
    # Not a gRPC port others could be pointed at.
    assert all(p.get("name") != "grpc" for p in sidecar.get("ports", []))
    claims = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
            if "persistentVolumeClaim" in v} <= claims  # fmt: skip
    # One writer per volume.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_statefulset_has_a_headless_service_and_its_volume_claim() -> None:
    docs = documents("statefulset.yaml")
    statefulset = workload(docs, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    services = [d for d in docs if d["kind"] == "Service"]
    governing = [s for s in services if s["metadata"]["name"] == spec["serviceName"]]
    assert len(governing) == 1, "serviceName must name a Service of the manifest"
    service = governing[0]["spec"]
    assert service["clusterIP"] == "None", "a StatefulSet's governing Service is headless"
    assert service["selector"].items() <= labels_of(statefulset).items()
    container = streams_container(pod_of(statefulset))
    cfg = server_config(container)
    grpc = next(p for p in service["ports"] if p["name"] == "grpc")
    assert port_number([container], grpc["targetPort"]) == host_port(cfg.listen)[1]
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == str(cfg.data))
    assert data["name"] in claims


@pytest.mark.parametrize(
    ("name", "doc"), workloads(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_the_streams_container_runs_the_server_with_its_flags(
    name: str, doc: dict[str, Any]
) -> None:
    """Kubernetes ``args`` replace the image's CMD: with an image whose start is
    its CMD (no ENTRYPOINT), the container must also name the command, or it
    would try to execute its first flag."""
    argv = effective_argv(streams_container(pod_of(doc)))
    assert argv and argv[0] == "/app/.venv/bin/streams-server", (
        f"the container would run {argv!r}, not the server"
    )
    assert config.parse(argv[1:], environ={})


def test_scale_out_runs_stateless_gateways_over_a_3_node_jetstream_cluster() -> None:
    docs = documents("scale-out.yaml")
    deployment = workload(docs, "Deployment")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2, "one gateway is a single point of failure"
    cfg = server_config(streams_container(pod_of(deployment)))
    assert cfg.storage == "jetstream"
    assert cfg.storage_options["nats_url"], "the gateways need the NATS cluster's address"
    budget = workload(docs, "PodDisruptionBudget")["spec"]
    assert 1 <= budget["minAvailable"] < replicas
    assert budget["selector"]["matchLabels"].items() <= labels_of(deployment).items()
    # The chart's values: 3 servers, JetStream on files fsynced before each ack.
    with open(MANIFESTS / "nats" / "values.yaml") as f:
        values = yaml.safe_load(f)
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    jetstream = values["config"]["jetstream"]
    assert jetstream["enabled"] and jetstream["fileStore"]["enabled"]
    assert jetstream["merge"]["sync_interval"] == "always"
