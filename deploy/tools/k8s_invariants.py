"""Invariants of our rendered Kubernetes manifests that schema validation cannot see.

Usage: python deploy/tools/k8s_invariants.py [--min-startup-s 600] rendered.yaml [...]
(`-` reads standard input). Prints one line per violation; exit status 1 when there is any.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
QUEUE_METRIC = "star_queue_depth"
GATEWAY_COMMAND = "star-gateway"


@dataclass(frozen=True)
class InvariantConfig:
    """Thresholds the checks use."""

    min_startup_s: int = 120
    """Startup-probe budget (failureThreshold x periodSeconds) a model-serving container must allow."""
    client_label: tuple[str, str] = ("star.dev/scorer-client", "true")
    """The pod label the scorer's NetworkPolicy admits on the gRPC port."""
    optional_switches: tuple[tuple[str, str], ...] = (("STAR_AUTH_TOKENS_FILE", "STAR_AUTH_TOKENS_OPTIONAL"),)
    """(variable, switch): a variable may point into an optional Secret or ConfigMap only when the
    container sets its switch to 1, which tells the program that an empty mount is expected."""
    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain, for the Service names a TLS certificate documents."""
    gateway_client_label: tuple[str, str] = ("star.dev/gateway-client", "true")
    """The pod label the gateway's NetworkPolicy admits on its HTTP port."""
    monitoring_namespace: str = "monitoring"
    """The namespace that may scrape metrics."""


def load_docs(texts: Iterable[str]) -> list[dict[str, Any]]:
    """Parse multi-document YAML, dropping empty documents."""
    return [d for t in texts for d in yaml.safe_load_all(t) if d]


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template spec of a workload, else None."""
    if doc.get("kind") not in WORKLOADS:
        return None
    spec: dict[str, Any] = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    return labels


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", []) or []
    yield from spec.get("containers", []) or []


def container_commands(docs: list[dict[str, Any]]) -> list[list[str]]:
    """Every command line (command + args) a container or exec probe of the manifests runs."""
    out: list[list[str]] = []
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for c in containers(spec):
            cmd = list(c.get("command", []) or []) + list(c.get("args", []) or [])
            if cmd:
                out.append([str(x) for x in cmd])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                exec_ = (c.get(probe) or {}).get("exec")
                if exec_:
                    out.append([str(x) for x in exec_.get("command", [])])
    return out


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", {}) or {}
    if selector.get("matchExpressions"):
        return False  # not used by our manifests; treat as not understood
    return all(labels.get(k) == v for k, v in match.items())


def runs_gateway(spec: dict[str, Any]) -> bool:
    """Whether a pod runs star-gateway (an HTTP proxy: no model, no accelerator)."""
    return any((c.get("command") or [None])[0] == GATEWAY_COMMAND for c in spec.get("containers", []) or [])


def _check_images(doc: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    for c in containers(spec):
        image = str(c.get("image", ""))
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" in image:
            continue
        if ":" not in last:
            yield f"{_name(doc)}: container {c['name']} image {image!r} has no tag"
        elif last.endswith(":latest"):
            yield f"{_name(doc)}: container {c['name']} image {image!r} uses 'latest'"


def _check_probes(doc: dict[str, Any], spec: dict[str, Any], cfg: InvariantConfig) -> Iterator[str]:
    for c in spec.get("containers", []) or []:
        ports = {p.get("containerPort") for p in c.get("ports", []) or []}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = (c.get(probe) or {}).get("grpc")
            if grpc is None:
                continue
            port = grpc.get("port")
            if not isinstance(port, int) or isinstance(port, bool):
                yield f"{_name(doc)}: {c['name']} {probe} gRPC port {port!r} must be a number"
            elif port not in ports:
                yield f"{_name(doc)}: {c['name']} {probe} gRPC port {port} not in {sorted(ports)}"
        if doc["kind"] == "Deployment" and c.get("livenessProbe"):
            startup = c.get("startupProbe")
            if not startup:
                yield f"{_name(doc)}: {c['name']} has a liveness probe but no startup probe"
            else:
                budget = int(startup.get("failureThreshold", 3)) * int(startup.get("periodSeconds", 10))
                if budget < cfg.min_startup_s:
                    yield (
                        f"{_name(doc)}: {c['name']} startup probe allows {budget}s, "
                        f"under the {cfg.min_startup_s}s model loading needs"
                    )


def _check_resources(doc: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    for c in containers(spec):
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if not req or not lim:
            yield f"{_name(doc)}: container {c['name']} needs both resource requests and limits"
        for key in set(req) | set(lim):
            if key.endswith("/gpu") and str(req.get(key)) != str(lim.get(key)):
                yield f"{_name(doc)}: {c['name']} {key} requests {req.get(key)} != limits {lim.get(key)}"


def _check_security(doc: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    pod_sc = spec.get("securityContext") or {}
    for c in containers(spec):
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if non_root is not True or user in (None, 0):
            yield f"{_name(doc)}: {c['name']} must run as a non-root numeric user (runAsNonRoot, runAsUser)"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{_name(doc)}: {c['name']} must set allowPrivilegeEscalation: false"


def _check_shm(doc: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    volumes = {v["name"]: v for v in spec.get("volumes", []) or []}
    for c in spec.get("containers", []) or []:
        if (c.get("command") or [None])[0] == GATEWAY_COMMAND:
            continue  # no model: PyTorch's shared memory is not used
        mounts = [m for m in c.get("volumeMounts", []) or [] if m.get("mountPath") == "/dev/shm"]
        if not mounts:
            yield f"{_name(doc)}: {c['name']} mounts no /dev/shm (the runtime default is 64 MiB)"
            continue
        vol = volumes.get(mounts[0]["name"], {})
        if (vol.get("emptyDir") or {}).get("medium") != "Memory":
            yield f"{_name(doc)}: {c['name']} /dev/shm must be an emptyDir with medium: Memory"


_TRUE = ("1", "true", "yes", "on")
OUTPUT_FLAGS = ("--out", "--output", "--output-dir")


def _env(c: dict[str, Any]) -> dict[str, str]:
    return {str(e["name"]): str(e["value"]) for e in c.get("env", []) or [] if "value" in e}


def _mount_of(c: dict[str, Any], path: str) -> tuple[str, str] | None:
    """(volume name, path inside the volume) of `path` in container `c`, by its longest mount; None when
    `path` is not under any mount."""
    best: tuple[int, str, str] | None = None
    for m in c.get("volumeMounts", []) or []:
        root = str(m["mountPath"]).rstrip("/")
        if path == root or path.startswith(root + "/"):
            sub = str(m.get("subPath", "")).strip("/")
            rest = path[len(root) :].strip("/")
            inner = "/".join(x for x in (sub, rest) if x)
            if best is None or len(root) > best[0]:
                best = (len(root), str(m["name"]), inner)
    return None if best is None else (best[1], best[2])


def _check_optional_mounts(doc: dict[str, Any], spec: dict[str, Any], cfg: InvariantConfig) -> Iterator[str]:
    """A variable pointing into an optional Secret/ConfigMap volume: Kubernetes mounts an empty directory
    when the object is missing, so the program must be told that this is expected (the switch)."""
    volumes = {v["name"]: v for v in spec.get("volumes", []) or []}
    switches = dict(cfg.optional_switches)
    for c in containers(spec):
        env = _env(c)
        for var, value in env.items():
            where = _mount_of(c, value) if value.startswith("/") else None
            if where is None:
                continue
            vol = volumes.get(where[0], {})
            source = vol.get("secret") or vol.get("configMap")
            if not source or not source.get("optional"):
                continue
            kind = "Secret" if "secret" in vol else "ConfigMap"
            obj = source.get("secretName") or source.get("name")
            switch = switches.get(var)
            if switch is None:
                yield (
                    f"{_name(doc)}: {c['name']} {var}={value} points into the optional {kind} {obj}, which "
                    "is mounted empty when missing, and no switch tells the program that is expected"
                )
            elif env.get(switch, "").lower() not in _TRUE:
                yield (
                    f"{_name(doc)}: {c['name']} {var}={value} points into the optional {kind} {obj} "
                    f"(mounted empty when missing) but {switch} is not 1: the container fails without it"
                )


def init_outputs(cmd: list[str]) -> list[str]:
    """The paths a command writes its results to: the directory after --out/--output/--output-dir,
    or, for star-toy-build, the model directories it writes inside it."""
    out = None
    for i, arg in enumerate(cmd):
        flag, eq, val = arg.partition("=")
        if flag in OUTPUT_FLAGS:
            out = val if eq else (cmd[i + 1] if i + 1 < len(cmd) else None)
    if out is None:
        return []
    if cmd and cmd[0] == "star-toy-build":
        only = next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--only"), None)
        parts = [only.replace("-", "_")] if only else ["guard", "chat", "fooled_guard", "data"]
        return [f"{out.rstrip('/')}/{p}" for p in parts]
    return [out]


def _check_init_outputs(doc: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    """What an init container writes into a shared volume must be what the main containers read there."""
    mains = spec.get("containers", []) or []
    for init in spec.get("initContainers", []) or []:
        cmd = [str(x) for x in [*(init.get("command") or []), *(init.get("args") or [])]]
        written = [w for w in (_mount_of(init, p) for p in init_outputs(cmd)) if w is not None]
        if not written:
            continue
        volumes = {v for v, _ in written}
        reads = [
            (c["name"], var, value, where)
            for c in mains
            for var, value in _env(c).items()
            if value.startswith("/") and (where := _mount_of(c, value)) is not None and where[0] in volumes
        ]
        shown = ", ".join(init_outputs(cmd))
        if not reads:
            yield f"{_name(doc)}: init container {init['name']} writes {shown}, which no container reads"
        for cname, var, value, (vol, inner) in reads:
            if not any(v == vol and (inner == w or inner.startswith(w + "/")) for v, w in written):
                yield (
                    f"{_name(doc)}: {cname} reads {var}={value}, but init container {init['name']} "
                    f"writes {shown}"
                )


def service_dns_names(doc: dict[str, Any], docs: list[dict[str, Any]], cfg: InvariantConfig) -> list[str]:
    """The fully qualified DNS names of the Services that select this workload's pods: the names a
    server certificate documents (deploy/README.md)."""
    labels = pod_labels(doc)
    out = []
    for s in docs:
        selector = s.get("spec", {}).get("selector") if s.get("kind") == "Service" else None
        if selector and _selects({"matchLabels": selector}, labels):
            ns = s["metadata"].get("namespace", "default")
            out.append(f"{s['metadata']['name']}.{ns}.svc.{cfg.cluster_domain}")
    return out


def _check_tls_probe_name(
    doc: dict[str, Any], spec: dict[str, Any], docs: list[dict[str, Any]], cfg: InvariantConfig
) -> Iterator[str]:
    """An exec probe that checks the server certificate over TLS must expect one of the Services' DNS
    names (the names the certificate is documented to carry), set explicitly."""
    for c in spec.get("containers", []) or []:
        env = _env(c)
        if not env.get("STAR_TLS_CERT"):
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            cmd = [str(x) for x in ((c.get(probe) or {}).get("exec") or {}).get("command", [])]
            if not any(x.endswith("healthcheck.py") for x in cmd):
                continue
            name = next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--server-name"), None)
            name = name or env.get("STAR_TLS_SERVER_NAME")
            documented = service_dns_names(doc, docs, cfg)
            if not name:
                yield (
                    f"{_name(doc)}: {c['name']} {probe} checks the certificate over TLS but sets no "
                    f"STAR_TLS_SERVER_NAME (one of {documented})"
                )
            elif name not in documented:
                yield (
                    f"{_name(doc)}: {c['name']} {probe} expects the certificate name {name!r}, not a "
                    f"documented one ({', '.join(documented) or 'no Service selects the pods'})"
                )


def _check_rollout(doc: dict[str, Any]) -> Iterator[str]:
    strategy = doc.get("spec", {}).get("strategy") or {}
    ru = strategy.get("rollingUpdate") or {}
    if strategy.get("type") == "Recreate":
        return
    if str(ru.get("maxSurge")) != "0" or str(ru.get("maxUnavailable")) in ("0", "None", "0%"):
        yield (
            f"{_name(doc)}: one accelerator per pod needs rollingUpdate maxSurge 0 and maxUnavailable >= 1 "
            f"(got {ru})"
        )


def _check_pdbs(docs: list[dict[str, Any]]) -> Iterator[str]:
    for d in docs:
        if d.get("kind") == "PodDisruptionBudget":
            fields = [f for f in ("minAvailable", "maxUnavailable") if d.get("spec", {}).get(f) is not None]
            if len(fields) != 1:
                yield f"{_name(d)}: set exactly one of minAvailable / maxUnavailable (found {fields})"


def _check_deployment_peers(
    dep: dict[str, Any], docs: list[dict[str, Any]], cfg: InvariantConfig
) -> Iterator[str]:
    labels = pod_labels(dep)
    name = _name(dep)
    services = [
        d
        for d in docs
        if d.get("kind") == "Service"
        and d.get("spec", {}).get("selector")
        and _selects({"matchLabels": d["spec"]["selector"]}, labels)
    ]
    if not any(s["spec"].get("clusterIP") != "None" for s in services):
        yield f"{name}: no ClusterIP Service selects its pods"
    if not any(s["spec"].get("clusterIP") == "None" for s in services):
        yield f"{name}: no headless Service selects its pods (client-side load balancing)"
    ports = {
        p.get("name"): p.get("containerPort")
        for c in pod_spec(dep)["containers"]  # type: ignore[index]
        for p in c.get("ports", []) or []
    }
    for s in services:
        for p in s["spec"].get("ports", []):
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str) and tp not in ports:
                yield f"{_name(s)}: targetPort {tp!r} names no containerPort of {name}"
            if isinstance(tp, int) and tp not in ports.values():
                yield f"{_name(s)}: targetPort {tp} is no containerPort of {name}"
    if not any(
        d.get("kind") == "PodDisruptionBudget" and _selects(d["spec"].get("selector", {}), labels)
        for d in docs
    ):
        yield f"{name}: no PodDisruptionBudget covers its pods"
    hpas = [
        d
        for d in docs
        if d.get("kind") == "HorizontalPodAutoscaler"
        and d["spec"].get("scaleTargetRef", {}).get("name") == dep["metadata"]["name"]
    ]
    if not hpas:
        yield f"{name}: no HorizontalPodAutoscaler scales it"
    for h in hpas:
        if h.get("apiVersion") != "autoscaling/v2":
            yield f"{_name(h)}: use autoscaling/v2"
        metrics = [
            m.get("pods", {}).get("metric", {}).get("name")
            for m in h["spec"].get("metrics", [])
            if m.get("type") == "Pods"
        ]
        if QUEUE_METRIC not in metrics:
            yield f"{_name(h)}: must scale on the Pods metric {QUEUE_METRIC}"
    yield from _check_network_policy(dep, docs, cfg)


def _check_network_policy(
    dep: dict[str, Any], docs: list[dict[str, Any]], cfg: InvariantConfig
) -> Iterator[str]:
    labels = pod_labels(dep)
    grpc_ports = {
        p["containerPort"]
        for c in pod_spec(dep)["containers"]  # type: ignore[index]
        for p in c.get("ports", []) or []
        if p.get("name") == "grpc"
    }
    policies = [
        d
        for d in docs
        if d.get("kind") == "NetworkPolicy" and _selects(d["spec"].get("podSelector", {}), labels)
    ]
    if not policies:
        yield f"{_name(dep)}: no NetworkPolicy selects its pods"
    key, value = cfg.client_label
    for np in policies:
        if "Ingress" not in np["spec"].get("policyTypes", ["Ingress"]):
            yield f"{_name(np)}: must restrict Ingress"
        for rule in np["spec"].get("ingress", []) or []:
            rule_ports = {p.get("port") for p in rule.get("ports", []) or []}
            if rule_ports and not (rule_ports & grpc_ports):
                continue  # a rule for another port (metrics)
            peers = rule.get("from") or []
            if not peers:
                yield f"{_name(np)}: a rule opens the gRPC port to everyone"
            for peer in peers:
                sel = peer.get("podSelector")
                if sel is None or "ipBlock" in peer or "namespaceSelector" in peer:
                    yield f"{_name(np)}: gRPC peers must be pod selectors of trainer pods, got {peer}"
                elif (sel.get("matchLabels") or {}) != {key: value}:
                    yield f"{_name(np)}: gRPC peer selector must be exactly {key}={value}, got {sel}"


def serves_star_api(spec: dict[str, Any]) -> bool:
    """Whether a pod serves the STAR gRPC API (a container port named grpc), not a guard engine."""
    return any(
        p.get("name") == "grpc" for c in spec.get("containers", []) or [] for p in c.get("ports", []) or []
    )


def _check_engine_peers(dep: dict[str, Any], docs: list[dict[str, Any]]) -> Iterator[str]:
    """A guard engine behind the scorer (vLLM): a Service, a PDB and a NetworkPolicy admitting only pods."""
    labels = pod_labels(dep)
    name = _name(dep)
    if not any(
        d.get("kind") == "Service" and _selects({"matchLabels": d["spec"].get("selector") or {}}, labels)
        for d in docs
    ):
        yield f"{name}: no Service selects its pods"
    if not any(
        d.get("kind") == "PodDisruptionBudget" and _selects(d["spec"].get("selector", {}), labels)
        for d in docs
    ):
        yield f"{name}: no PodDisruptionBudget covers its pods"
    policies = [
        d
        for d in docs
        if d.get("kind") == "NetworkPolicy" and _selects(d["spec"].get("podSelector", {}), labels)
    ]
    if not policies:
        yield f"{name}: no NetworkPolicy selects its pods"
    for np in policies:
        for rule in np["spec"].get("ingress", []) or []:
            peers = rule.get("from") or []
            if not peers or any("podSelector" not in p or "ipBlock" in p for p in peers):
                yield f"{_name(np)}: the engine must admit only pod selectors (the scorer), got {peers}"


def _check_gateway_peers(
    dep: dict[str, Any], docs: list[dict[str, Any]], cfg: InvariantConfig
) -> Iterator[str]:
    """star-gateway: a ClusterIP Service, a PodDisruptionBudget, a readiness probe on /readyz (ready
    only while the scorer answers), the scorer-client label (the scorer's NetworkPolicy admits it), and
    a NetworkPolicy admitting only labelled gateway clients and the monitoring namespace."""
    labels = pod_labels(dep)
    name = _name(dep)
    spec = pod_spec(dep) or {}
    if not any(
        d.get("kind") == "Service"
        and d["spec"].get("clusterIP") != "None"
        and _selects({"matchLabels": d["spec"].get("selector") or {}}, labels)
        for d in docs
    ):
        yield f"{name}: no ClusterIP Service selects its pods"
    if not any(
        d.get("kind") == "PodDisruptionBudget" and _selects(d["spec"].get("selector", {}), labels)
        for d in docs
    ):
        yield f"{name}: no PodDisruptionBudget covers its pods"
    key, value = cfg.client_label
    if labels.get(key) != value:
        yield f"{name}: gateway pods need the label {key}={value} to reach the scorer"
    for c in spec.get("containers", []) or []:
        ready = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
        if ready != "/readyz":
            yield f"{name}: {c['name']} readiness probe must GET /readyz (ready while the scorer answers)"
    policies = [
        d
        for d in docs
        if d.get("kind") == "NetworkPolicy" and _selects(d["spec"].get("podSelector", {}), labels)
    ]
    if not policies:
        yield f"{name}: no NetworkPolicy selects its pods"
    gkey, gvalue = cfg.gateway_client_label
    allowed = [
        {"podSelector": {"matchLabels": {gkey: gvalue}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cfg.monitoring_namespace}}},
    ]
    for np in policies:
        if "Ingress" not in np["spec"].get("policyTypes", ["Ingress"]):
            yield f"{_name(np)}: must restrict Ingress"
        for rule in np["spec"].get("ingress", []) or []:
            peers = rule.get("from") or []
            if not peers:
                yield f"{_name(np)}: a rule opens the gateway to everyone"
            for peer in peers:
                if peer not in allowed:
                    yield (
                        f"{_name(np)}: gateway peers must be {gkey}={gvalue} pods or the "
                        f"{cfg.monitoring_namespace} namespace, got {peer}"
                    )


def _check_clients(docs: list[dict[str, Any]], cfg: InvariantConfig) -> Iterator[str]:
    key, value = cfg.client_label
    for d in docs:
        if d.get("kind") == "Job" and pod_labels(d).get(key) != value:
            yield f"{_name(d)}: trainer pods need the label {key}={value} to reach the scorer"


def check(docs: list[dict[str, Any]], cfg: InvariantConfig | None = None) -> list[str]:
    """All violations found in one rendered overlay."""
    cfg = cfg or InvariantConfig()
    out: list[str] = []
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        out += _check_images(doc, spec)
        out += _check_probes(doc, spec, cfg)
        out += _check_resources(doc, spec)
        out += _check_security(doc, spec)
        out += _check_shm(doc, spec)
        out += _check_optional_mounts(doc, spec, cfg)
        out += _check_init_outputs(doc, spec)
        out += _check_tls_probe_name(doc, spec, docs, cfg)
        if doc["kind"] == "Deployment" and runs_gateway(spec):
            out += _check_gateway_peers(doc, docs, cfg)
        elif doc["kind"] == "Deployment":
            out += _check_rollout(doc)
            if serves_star_api(spec):
                out += _check_deployment_peers(doc, docs, cfg)
            else:
                out += _check_engine_peers(doc, docs)
    out += _check_pdbs(docs)
    out += _check_clients(docs, cfg)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check invariants of rendered STAR Kubernetes manifests.")
    ap.add_argument("files", nargs="+", help="rendered manifests (kubectl kustomize output); '-' = stdin")
    ap.add_argument(
        "--min-startup-s",
        type=int,
        default=InvariantConfig.min_startup_s,
        help="least startup-probe budget in seconds (failureThreshold x periodSeconds)",
    )
    args = ap.parse_args(argv)
    texts = [sys.stdin.read() if f == "-" else Path(f).read_text() for f in args.files]
    problems = check(load_docs(texts), InvariantConfig(min_startup_s=args.min_startup_s))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
