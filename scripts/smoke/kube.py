"""Rendered Kustomize output -> what `podman kube play` can run, and the parts it cannot, by hand.

Used by scripts/container_smoke.sh. `podman kube play` (4.3) runs Pods and Deployments with their
ConfigMaps and Secrets; it does not model Services, HPAs, PDBs, NetworkPolicies, Jobs, gRPC or exec
probes, or optional Secrets (it refuses a pod whose optional Secret is missing). So:

  play FILE OUT REPLICAS [DIR]      the Deployment (REPLICAS pods) and ConfigMaps for kube play. The
                                    optional auth Secret's volume becomes, without DIR, the empty
                                    directory Kubernetes mounts for a missing optional Secret; with DIR
                                    (holding the Secret's decoded keys) a read-only hostPath of DIR, the
                                    files Kubernetes projects: kube play 4.3 skips an optional Secret
                                    volume even when the Secret exists, and mounts a Secret's base64 text
                                    instead of its bytes. containerPorts are dropped: kube play 4.3
                                    publishes each on every host interface (Kubernetes publishes
                                    nothing), and the pods are reached at their own IPs
  env FILE VAR                      the scorer container's value of VAR
  probe FILE PROBE                  the scorer's PROBE (startupProbe, ...) exec command, one per line
  probe-grpc FILE PROBE             its gRPC probe: the port, then the service name ('' for the server)
  probe-budget FILE PROBE           its failureThreshold x periodSeconds
  volumes FILE                      the pod's volume names (kube play names its podman volumes so)
  job FILE                          the Job container's command, one per line
  recipe FILE OUT                   the trainer recipe the Job mounts, written to OUT
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

PLAYABLE = ("Deployment", "ConfigMap")
AUTH_SECRET = "star-scorer-auth"


def load(path: str) -> list[dict[str, Any]]:
    """The documents of one rendered overlay."""
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The first document of `kind`; exits with a message when there is none."""
    for d in docs:
        if d.get("kind") == kind:
            return d
    raise SystemExit(f"kube.py: no {kind} in the rendered manifests")


def scorer(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment's first container (the scorer)."""
    container: dict[str, Any] = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def playable(docs: list[dict[str, Any]], replicas: int, secret_dir: str | None) -> list[dict[str, Any]]:
    """What kube play runs: the Deployment and ConfigMaps, the optional auth Secret as Kubernetes would
    mount it (an empty directory when missing, its decoded keys when present)."""
    out = [copy.deepcopy(d) for d in docs if d.get("kind") in PLAYABLE]
    dep = find(out, "Deployment")
    dep["spec"]["replicas"] = replicas
    for c in dep["spec"]["template"]["spec"]["containers"]:
        c.pop("ports", None)
    for vol in dep["spec"]["template"]["spec"].get("volumes", []):
        secret = vol.get("secret") or {}
        if secret.get("secretName") == AUTH_SECRET and secret.get("optional"):
            vol.pop("secret")
            if secret_dir is None:
                vol["emptyDir"] = {}
            else:
                vol["hostPath"] = {"path": secret_dir, "type": "Directory"}
    return out


def env_value(docs: list[dict[str, Any]], name: str) -> str:
    for e in scorer(docs).get("env", []):
        if e.get("name") == name:
            return str(e.get("value", ""))
    return ""


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, docs = argv[0], load(argv[1])
    if cmd == "play":
        played = playable(docs, int(argv[3]), argv[4] if len(argv) > 4 else None)
        Path(argv[2]).write_text(yaml.safe_dump_all(played, sort_keys=False))
    elif cmd == "env":
        print(env_value(docs, argv[2]))
    elif cmd == "probe":
        print("\n".join(scorer(docs)[argv[2]]["exec"]["command"]))
    elif cmd == "probe-grpc":
        grpc = scorer(docs)[argv[2]]["grpc"]
        print(f"{grpc['port']}\n{grpc.get('service', '')}")
    elif cmd == "probe-budget":
        probe = scorer(docs)[argv[2]]
        print(int(probe.get("failureThreshold", 3)) * int(probe.get("periodSeconds", 10)))
    elif cmd == "volumes":
        spec = find(docs, "Deployment")["spec"]["template"]["spec"]
        print("\n".join(v["name"] for v in spec.get("volumes", [])))
    elif cmd == "job":
        c = find(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
        print("\n".join([*c.get("command", []), *c.get("args", [])]))
    elif cmd == "recipe":
        recipe = next(d for d in docs if d.get("kind") == "ConfigMap" and "recipe.yaml" in d.get("data", {}))
        Path(argv[2]).write_text(recipe["data"]["recipe.yaml"])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
