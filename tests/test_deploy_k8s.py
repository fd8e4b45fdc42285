"""Kubernetes manifests: every overlay renders, validates for 1.29-1.33 and keeps our invariants."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "tools"))

import k8s_invariants as inv  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None or shutil.which("kubernetes-validate") is None,
    reason="kubectl and kubernetes-validate are needed to render and validate the manifests",
)
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "k8s" / "overlays").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Run the validation script once; return each rendered overlay's documents."""
    out = tmp_path_factory.mktemp("rendered")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "validate_k8s.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in [*OVERLAYS, "multinode"]:
        assert f"ok   {name} " in proc.stdout
    return {p.stem: inv.load_docs([p.read_text()]) for p in out.glob("*.yaml")}


def _find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def _scorer(docs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = _find(docs, "Deployment", "star-scorer")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"])


def test_expected_overlays_exist() -> None:
    assert {"cpu-dev", "cpu-dev-gateway", "gpu-prod", "gpu-prod-tls", "gpu-vllm"} <= set(OVERLAYS)


def test_every_overlay_is_clean(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        assert (
            inv.check(docs, inv.InvariantConfig(min_startup_s=600 if name.startswith("gpu") else 120)) == []
        )


def test_gpu_prod_shape(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-prod"]
    c = _scorer(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 600
    assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "star.v1.ScorerService"}
    spec = _find(docs, "Deployment")["spec"]["template"]["spec"]
    guard = next(v for v in spec["volumes"] if v["name"] == "guard")
    assert guard == {
        "name": "guard",
        "persistentVolumeClaim": {"claimName": "star-guard-weights", "readOnly": True},
    }
    assert any(m["name"] == "guard" and m["readOnly"] for m in c["volumeMounts"])
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    hpa = _find(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert set(_find(docs, "PodDisruptionBudget")["spec"]) == {
        "maxUnavailable",
        "selector",
        "unhealthyPodEvictionPolicy",
    }
    assert all(d["metadata"].get("namespace") == "star" for d in docs if d["kind"] != "Namespace")


def test_cpu_dev_serves_the_shipped_toy_guard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """No init container: the scorer reads the toy guard its image links at /opt/star/toy-guard (the
    Dockerfile's RUN step checks the link), so nothing is trained or copied at pod start."""
    spec = _find(rendered["cpu-dev"], "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    assert "nvidia.com/gpu" not in str(spec)
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    assert env["STAR_GUARD"] == "/opt/star/toy-guard"
    assert (
        "test -f /opt/star/toy-guard/model.safetensors"
        in (ROOT / "deploy" / "docker" / "Dockerfile.scorer").read_text()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_auth_is_optional_in_every_overlay(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """The tokens file lives in an optional Secret: the scorer must be told that an empty mount means no
    auth, or every overlay crash-loops until the Secret is created."""
    c = _scorer(rendered[overlay])
    env = {e["name"]: e.get("value") for e in c["env"]}
    if "STAR_AUTH_TOKENS_FILE" in env:
        assert env["STAR_AUTH_TOKENS_OPTIONAL"] == "1"


def _gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _find(docs, "Deployment", "star-gateway")


def test_gateway_overlay_runs_star_gateway_from_the_scorer_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """components/gateway (in overlays/cpu-dev-gateway): `star-gateway` from the scorer image (its wheel
    ships the gateway and the console script), configured by STAR_GATEWAY_* variables to reach the
    headless scorer Service, probed on /healthz and /readyz, admitted by the scorer's NetworkPolicy."""
    docs = rendered["cpu-dev-gateway"]
    dep = _gateway(docs)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["star-gateway"] and c["image"] == _scorer(docs)["image"]
    assert 'star-gateway = "star_gateway.cli:main"' in (ROOT / "pyproject.toml").read_text()
    config = _find(docs, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])["data"]
    assert config["STAR_GATEWAY_SCORER"] == "dns:///star-scorer-headless:50051"
    assert config["STAR_GATEWAY_UPSTREAM"].startswith("http") and config["STAR_GATEWAY_PORT"] == "8080"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    scorer_np = _find(docs, "NetworkPolicy", "star-scorer")
    assert any(
        inv._selects(peer["podSelector"], labels)
        for rule in scorer_np["spec"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer
    )
    assert _find(docs, "Service", "star-gateway")["spec"]["ports"][0]["port"] == 8080
    assert "star-gateway" not in str(rendered["cpu-dev"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: _gateway(d)["spec"]["template"]["metadata"]["labels"].clear(), "to reach the scorer"),
        (
            lambda d: _gateway(d)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"][
                "httpGet"
            ].update(path="/healthz"),
            "must GET /readyz",
        ),
        (
            lambda d: _find(d, "NetworkPolicy", "star-gateway")["spec"]["ingress"][0]["from"].append(
                {"ipBlock": {"cidr": "0.0.0.0/0"}}
            ),
            "gateway peers must be",
        ),
        (lambda d: d.remove(_find(d, "PodDisruptionBudget", "star-gateway")), "no PodDisruptionBudget"),
        (lambda d: d.remove(_find(d, "Service", "star-gateway")), "no ClusterIP Service"),
    ],
)
def test_invariant_checker_catches_gateway_mistakes(
    rendered: dict[str, list[dict[str, Any]]], edit: Any, message: str
) -> None:
    problems = _broken(rendered["cpu-dev-gateway"], edit)
    assert any(message in p for p in problems), problems


def test_tls_overlay_swaps_probes_for_exec(rendered: dict[str, list[dict[str, Any]]]) -> None:
    c = _scorer(rendered["gpu-prod-tls"])
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["STAR_TLS_CERT"] == "/etc/star/tls/tls.crt"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in c[probe] and c[probe]["exec"]["command"][1] == "/opt/star/healthcheck.py"
    # the probe checks the headless Service's DNS name, the name trainers dial (base/recipe.yaml)
    assert env["STAR_TLS_SERVER_NAME"] == "star-scorer-headless.star.svc.cluster.local"
    recipe = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "recipe.yaml").read_text())
    assert recipe["scorer"] == f"{env['STAR_TLS_SERVER_NAME']}:50051"


# -- the invariant checker must catch each kind of mistake --------------------------------------------


def _broken(docs: list[dict[str, Any]], edit: Any) -> list[str]:
    docs = copy.deepcopy(docs)
    edit(docs)
    return inv.check(docs, inv.InvariantConfig(min_startup_s=600))


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _scorer(docs)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: _container(d)["startupProbe"]["grpc"].update(port="grpc"), "must be a number"),
        (lambda d: _container(d)["livenessProbe"]["grpc"].update(port=8080), "port 8080 not in"),
        (
            lambda d: _container(d)["resources"]["requests"].update({"nvidia.com/gpu": "2"}),
            "requests 2 != limits 1",
        ),
        (lambda d: _find(d, "PodDisruptionBudget")["spec"].update(minAvailable=1), "exactly one"),
        (lambda d: _container(d)["startupProbe"].update(failureThreshold=10), "under the 600s"),
        (lambda d: _container(d).update(image="ghcr.io/star-guard/star-scorer:latest"), "uses 'latest'"),
        (lambda d: _container(d).update(image="ghcr.io/star-guard/star-scorer"), "has no tag"),
        (
            lambda d: _find(d, "Deployment")["spec"]["template"]["spec"]["securityContext"].update(
                runAsUser=0
            ),
            "non-root",
        ),
        (
            lambda d: _find(d, "Deployment")["spec"]["strategy"]["rollingUpdate"].update(maxSurge=1),
            "maxSurge 0",
        ),
        (
            lambda d: _find(d, "Deployment")["spec"]["template"]["spec"]["volumes"].__setitem__(
                [v["name"] for v in _find(d, "Deployment")["spec"]["template"]["spec"]["volumes"]].index(
                    "dshm"
                ),
                {"name": "dshm", "emptyDir": {}},
            ),
            "medium: Memory",
        ),
        (lambda d: d.remove(_find(d, "Service", "star-scorer-headless")), "no headless Service"),
        (
            lambda d: _find(d, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"].update(
                name="cpu"
            ),
            "star_queue_depth",
        ),
        (lambda d: _find(d, "NetworkPolicy")["spec"]["ingress"][0].update({"from": []}), "to everyone"),
        (
            lambda d: _find(d, "NetworkPolicy")["spec"]["ingress"][0]["from"].append(
                {"ipBlock": {"cidr": "0.0.0.0/0"}}
            ),
            "pod selectors",
        ),
        (lambda d: _find(d, "Job")["spec"]["template"]["metadata"]["labels"].clear(), "trainer pods need"),
    ],
)
def test_invariant_checker_catches(
    rendered: dict[str, list[dict[str, Any]]], edit: Any, message: str
) -> None:
    problems = _broken(rendered["gpu-prod"], edit)
    assert any(message in p for p in problems), problems


def test_strict_schema_rejects_unknown_fields(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = copy.deepcopy(rendered["cpu-dev"])
    _container(docs)["startupProbes"] = {"grpc": {"port": 50051}}  # a typo a lax check would let through
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", "1.29.0", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0


# -- the three shapes of bug the played deployment showed (issue 24) --------------------------------


def _env_list(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = _scorer(docs)["env"]
    return env


def _drop_env(docs: list[dict[str, Any]], name: str) -> None:
    env = _env_list(docs)
    env[:] = [e for e in env if e["name"] != name]


def _set_env(docs: list[dict[str, Any]], name: str, value: str) -> None:
    _drop_env(docs, name)
    _env_list(docs).append({"name": name, "value": value})


def _toy_init(out_args: list[str]) -> Any:
    """cpu-dev as it was: an init container building the toy guard into the guard volume."""

    def edit(docs: list[dict[str, Any]]) -> None:
        spec = _find(docs, "Deployment")["spec"]["template"]["spec"]
        init = copy.deepcopy(spec["containers"][0])
        init.update(name="build-toy-guard", command=["star-toy-build", *out_args])
        for key in ("env", "ports", "startupProbe", "readinessProbe", "livenessProbe"):
            init.pop(key, None)
        init["volumeMounts"] = [{"name": "guard", "mountPath": "/guards"}]
        spec["initContainers"] = [init]
        _set_env(docs, "STAR_GUARD", "/guards/guard")

    return edit


@pytest.mark.parametrize(
    ("overlay", "edit", "message"),
    [
        # 1. the tokens file in the optional auth Secret without the switch: crash-loop without it
        (
            "gpu-prod",
            lambda d: _drop_env(d, "STAR_AUTH_TOKENS_OPTIONAL"),
            "STAR_AUTH_TOKENS_OPTIONAL is not 1",
        ),
        ("cpu-dev", lambda d: _set_env(d, "STAR_AUTH_TOKENS_OPTIONAL", "0"), "mounted empty when missing"),
        ("gpu-prod", lambda d: _set_env(d, "STAR_POLICY_FILE", "/etc/star/auth/policy"), "no switch"),
        # 2. the init container writes /guards/guard/guard; the scorer reads /guards/guard
        ("cpu-dev", _toy_init(["--out", "/guards/guard"]), "but init container build-toy-guard writes"),
        ("cpu-dev", _toy_init(["--out=/guards/guard", "--only", "guard"]), "writes /guards/guard/guard"),
        # 3. the TLS probe expects a name no documented certificate name matches
        ("gpu-prod-tls", lambda d: _drop_env(d, "STAR_TLS_SERVER_NAME"), "sets no STAR_TLS_SERVER_NAME"),
        (
            "gpu-prod-tls",
            lambda d: _set_env(d, "STAR_TLS_SERVER_NAME", "star-scorer"),
            "not a documented one",
        ),
    ],
)
def test_invariant_checker_catches_the_played_bugs(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, edit: Any, message: str
) -> None:
    problems = _broken(rendered[overlay], edit)
    assert any(message in p for p in problems), problems


def test_an_init_container_writing_what_the_scorer_reads_is_clean(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    problems = _broken(rendered["cpu-dev"], _toy_init(["--out", "/guards", "--only", "guard"]))
    assert not [p for p in problems if "init container" in p], problems


def test_tls_names_are_the_services_dns_names(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-prod-tls"]
    names = inv.service_dns_names(_find(docs, "Deployment"), docs, inv.InvariantConfig())
    assert set(names) == {
        "star-scorer.star.svc.cluster.local",
        "star-scorer-headless.star.svc.cluster.local",
    }


def test_vllm_overlay_fronts_a_vllm_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu-vllm"]
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("star-scorer")
    )
    assert config["data"]["STAR_BACKEND"] == "vllm"
    assert config["data"]["STAR_REMOTE_URL"] == "http://star-guard-vllm:8000"
    assert "nvidia.com/gpu" not in str(_scorer(docs)["resources"])  # the scorer needs no GPU here
    engine = _find(docs, "Deployment", "star-guard-vllm")["spec"]["template"]["spec"]["containers"][0]
    assert (
        engine["command"][:2] == ["vllm", "serve"] and engine["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )
    service = _find(docs, "Service", "star-guard-vllm")
    assert service["spec"]["ports"][0]["port"] == 8000


# -- scripts/smoke/kube.py: what podman kube play is given ------------------------------------------


def test_smoke_play_models_the_optional_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sys.path.insert(0, str(ROOT / "scripts" / "smoke"))
    import kube

    def auth_volume(played: list[dict[str, Any]]) -> dict[str, Any]:
        spec = _find(played, "Deployment")["spec"]["template"]["spec"]
        assert all("ports" not in c for c in spec["containers"])  # kube play 4.3 would publish them
        return next(v for v in spec["volumes"] if v["name"] == "auth")

    docs = rendered["cpu-dev"]
    assert auth_volume(kube.playable(docs, 2, None)) == {"name": "auth", "emptyDir": {}}
    with_secret = auth_volume(kube.playable(docs, 1, "/tmp/secret"))
    assert with_secret == {"name": "auth", "hostPath": {"path": "/tmp/secret", "type": "Directory"}}
    assert {d["kind"] for d in kube.playable(docs, 1, None)} == {"Deployment", "ConfigMap"}
