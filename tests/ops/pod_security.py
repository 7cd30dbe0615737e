"""The Kubernetes Pod Security Standards, "restricted" level (which includes
"baseline"), checked field by field on a pod spec, as the Pod Security admission
controller checks them (https://kubernetes.io/docs/concepts/security/pod-security-standards/).

``violations(pod)`` lists every rule a pod spec breaks, naming the container
and field; an empty list means the pod would be admitted into a namespace
labelled ``pod-security.kubernetes.io/enforce: restricted``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Restricted: the only volume types allowed.
VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
# Baseline: the sysctls a pod may set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of the pod: init (sidecars included), app and ephemeral."""
    for key in CONTAINER_LISTS:
        yield from pod.get(key) or []


def violations(pod: dict[str, Any]) -> list[str]:
    found: list[str] = []
    pod_ctx = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"pod: {flag} is true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= VOLUME_TYPES:
            found.append(f"volume {volume['name']!r}: type {sorted(kinds - VOLUME_TYPES)}")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"pod: sysctl {sysctl['name']!r} is not safe")
    found += _context_violations("pod", pod_ctx)
    for container in containers(pod):
        name = f"container {container['name']!r}"
        ctx = container.get("securityContext") or {}
        found += _context_violations(name, ctx)
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {ctx['procMount']!r}")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{name}: capabilities.drop must contain ALL")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"{name}: capabilities.add {sorted(added)}")
        # Restricted: runAsNonRoot true and seccomp set, on the container or else the pod.
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true (container or pod)")
        seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}
        if seccomp.get("type") not in SECCOMP_TYPES:
            found.append(f"{name}: seccompProfile.type must be RuntimeDefault or Localhost")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
    return found


def _context_violations(where: str, ctx: dict[str, Any]) -> list[str]:
    """The rules that apply alike to the pod's and each container's securityContext."""
    found: list[str] = []
    if (ctx.get("windowsOptions") or {}).get("hostProcess"):
        found.append(f"{where}: windowsOptions.hostProcess")
    if ctx.get("runAsUser") == 0:
        found.append(f"{where}: runAsUser 0")
    seccomp = (ctx.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        found.append(f"{where}: seccompProfile.type {seccomp!r}")
    apparmor = (ctx.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        found.append(f"{where}: appArmorProfile.type {apparmor!r}")
    selinux = ctx.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        found.append(f"{where}: seLinuxOptions.type {selinux['type']!r}")
    for field in ("user", "role"):
        if selinux.get(field):
            found.append(f"{where}: seLinuxOptions.{field} is set")
    return found
