#!/usr/bin/env bash
# The deployment for real: build both images with rootful podman, play the rendered cpu-dev overlay
# with `podman kube play` (with and without the auth Secret) and check it through the network path a
# cluster would use. Run by .ci/run; needs root and the Debian package archive (podman is installed if
# missing: a missing podman is a failure, never a skip). About 4 minutes on 2 cores with the base image
# cached, 8 without (benchmarks/RESULTS.md). deploy/README.md ("What the smoke test plays") follows it
# step by step.
#
# `podman kube play` (4.3, Debian bookworm) runs the Deployment's pods with their ConfigMaps, Secrets,
# security context, read-only root and volumes. What it does not model, this script does by hand and
# says so in its output ("by hand:"):
#   - optional Secrets: kube play refuses a pod whose Secret is missing; Kubernetes mounts an empty
#     directory, so the script plays that empty directory (scripts/smoke/kube.py);
#   - gRPC and exec probes: kube play ignores them; the script runs each probe of the manifest itself
#     (gRPC: grpc.health.v1 at the pod's IP, port and service; exec: `podman exec` of the command);
#   - Services: the headless Service's DNS answer (every ready pod) is an /etc/hosts entry per pod in
#     the client container; the Job: its container, command and recipe run with `podman run`;
#   - containerPorts: kube play 4.3 would publish them on every host interface, so they are dropped
#     and pods are reached at their IPs on podman's kube network (nothing listens on the host).
# Not played: gpu-prod (GPU, PVC), NetworkPolicy, HPA, PDB; vllm-cpu (a real vLLM takes minutes to
# start on 2 cores: overlays/vllm is validated by scripts/validate_k8s.sh, its backend by
# tests/test_vllm_real.py).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
t0=$SECONDS
cache="${STAR_SMOKE_CACHE:-/var/cache/star-smoke}"
work="$(mktemp -d /tmp/star-smoke.XXXXXX)"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
label="star-smoke=1"
scorer_image=ghcr.io/star-guard/star-scorer:0.1.0
trainer_image=ghcr.io/star-guard/star-trainer:0.1.0
headless=star-scorer-headless.star.svc.cluster.local

say() { printf '[%3ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { printf '[%3ds] container_smoke: FAIL: %s\n' $((SECONDS - t0)) "$*" >&2; exit 1; }
check() { python scripts/smoke/checks.py "$@" || die "check '$1' failed"; }
kube() { python scripts/smoke/kube.py "$@"; }
logs_have() { podman logs "$1" >"$work/logs.txt" 2>&1; grep -q -- "$2" "$work/logs.txt"; }

# -- 1. podman and its settings ---------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (rootful podman)"
need=(podman runc buildah debootstrap netavark aardvark-dns)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing podman from Debian (missing: ${missing[*]})"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      podman runc buildah debootstrap netavark aardvark-dns uidmap fuse-overlayfs iptables; } \
    >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; die "cannot install podman with apt-get (log above)"; }
fi
command -v kubectl >/dev/null || die "kubectl is needed to render the overlays (kubectl kustomize)"
# runc (crun cannot set up this sandbox's cgroups), and ulimits the sandbox's hard limits allow: podman's
# defaults (nofile 1048576, nproc 4194304) are above them, and runc then fails with EPERM.
hard_nofile="$(ulimit -Hn)"; [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
nofile=$((hard_nofile < 65536 ? hard_nofile : 65536))
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

remove_pods() {  # the scorer pods kube play made from cpu-dev (this script's, or an earlier run's)
  podman pod ps -q --filter label=app.kubernetes.io/name=star-scorer | xargs -r podman pod rm -f -t 0 >/dev/null 2>&1
  podman ps -aq --filter "label=$label" | xargs -r podman rm -f -t 0 >/dev/null 2>&1
}
remove_volumes() {  # the podman volumes kube play made of the pods' emptyDirs (--down removes them too)
  local v
  for v in $(kube volumes "$work/cpu-dev.yaml" 2>/dev/null); do podman volume rm -f "$v" >/dev/null 2>&1 || true; done
}
cleanup() {
  remove_pods
  remove_volumes
  [ -n "${STAR_SMOKE_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
if [ -n "$(podman pod ps -q --filter label=app.kubernetes.io/name=star-scorer)" ]; then
  say "removing star-scorer pods left by an earlier run"
  remove_pods
fi
say "podman $(podman version --format '{{.Client.Version}}'), runtime runc, nofile $nofile"

# -- 2. images --------------------------------------------------------------------------------------
base="$(bash scripts/smoke/base_image.sh "$cache" | tail -1)"
say "base image $base"
for what in scorer trainer; do
  podman build -q --format docker --build-arg BASE_IMAGE="$base" -f "deploy/docker/Dockerfile.$what" \
    -t "ghcr.io/star-guard/star-$what:0.1.0" . >"$work/build-$what.log" 2>&1 \
    || { tail -30 "$work/build-$what.log" >&2; die "Dockerfile.$what does not build"; }
done
say "built $scorer_image and $trainer_image from the unchanged Dockerfiles (BASE_IMAGE=$base)"

# -- helpers on played pods -------------------------------------------------------------------------
ip_of() {  # pod name -> its IP on the kube network
  podman inspect "$(podman pod inspect "$1" --format '{{.InfraContainerID}}')" \
    --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}'
}
play() {  # play NAME REPLICAS [SECRET_DIR]: cpu-dev, adapted for kube play (scripts/smoke/kube.py), played
  kube play "$work/cpu-dev.yaml" "$work/play-$1.yaml" "$2" ${3:+"$3"}
  # kube play returns once init containers have finished and the pod runs: 3 minutes is plenty.
  timeout 180 podman kube play "$work/play-$1.yaml" >"$work/play-$1.log" 2>&1 \
    || { tail -20 "$work/play-$1.log" >&2; die "podman kube play ($1) failed or its init containers took over 180s"; }
}
down() {
  podman kube play --down "$work/play-$1.yaml" >/dev/null 2>&1
  remove_pods
  remove_volumes
}
grpc_probe() {  # grpc_probe IP PROBE [TIMEOUT]: the manifest's gRPC probe, as the kubelet would run it
  local spec; mapfile -t spec < <(kube probe-grpc "$work/cpu-dev.yaml" "$2")
  python deploy/docker/healthcheck.py --address "$1:${spec[0]}" --service "${spec[1]:-}" --timeout "${3:-5}"
}
wait_ready() {  # wait_ready POD: the manifest's startup then readiness probe, run by hand
  local ip budget t=$SECONDS
  ip="$(ip_of "$1")"
  budget="$(kube probe-budget "$work/cpu-dev.yaml" startupProbe)"
  until grpc_probe "$ip" startupProbe 3 2>/dev/null; do
    if [ $((SECONDS - t)) -ge "$budget" ] || [ "$(podman inspect "$1-scorer" --format '{{.RestartCount}}')" -ge 2 ]; then
      podman logs "$1-scorer" 2>&1 | tail -20 >&2
      die "$1: the startup probe did not pass (restarts: $(podman inspect "$1-scorer" --format '{{.RestartCount}}'))"
    fi
    sleep 1
  done
  grpc_probe "$ip" readinessProbe || die "$1: the readiness probe fails"
  grpc_probe "$ip" livenessProbe || die "$1: the liveness probe fails"
  say "by hand: $1 ($ip) passed the manifest's gRPC startup, readiness and liveness probes after $((SECONDS - t))s"
}

kubectl kustomize deploy/k8s/overlays/cpu-dev >"$work/cpu-dev.yaml"
mkdir -m 0777 "$work/io"  # shared with the containers' non-root user
check inputs "$work/in-8.jsonl" 8 >/dev/null
check inputs "$work/in-drain.jsonl" 300 >/dev/null
check inputs "$work/io/in-run.jsonl" 600 >/dev/null

# -- 3. cpu-dev without the auth Secret ---------------------------------------------------------------
say "play cpu-dev, 1 replica, no auth Secret (by hand: the empty directory Kubernetes mounts for it)"
play noauth 1
wait_ready star-scorer-pod-0
logs_have star-scorer-pod-0-scorer '"auth is off: --auth-tokens-file' \
  || die "the scorer does not warn that it runs without auth"
say "the scorer warns: auth is off (no Secret)"
hc="$(podman image inspect "$scorer_image" --format '{{join .Config.Healthcheck.Test " "}}')"
[ -n "$hc" ] || die "the scorer image has no HEALTHCHECK"
# kube play drops the image's HEALTHCHECK (probes replace it in Kubernetes): run its command in the pod.
# shellcheck disable=SC2086
podman exec star-scorer-pod-0-scorer ${hc#CMD } || die "the image's healthcheck ($hc) is not SERVING"
say "image HEALTHCHECK ($hc) in the pod: SERVING"
ip0="$(ip_of star-scorer-pod-0)"
check engine "$ip0:50051" "$work/in-8.jsonl"
check metrics "http://$ip0:9090/metrics"
down noauth

# -- 4. cpu-dev with the auth Secret, then SIGTERM --------------------------------------------------
say "play cpu-dev, 1 replica, with the auth Secret (by hand: its key \`tokens\` as Kubernetes projects it)"
token="smoke-token-$RANDOM$RANDOM"
mkdir -p "$work/secret" && printf '%s\n' "$token" >"$work/secret/tokens" && chmod 0444 "$work/secret/tokens"
play auth 1 "$work/secret"
wait_ready star-scorer-pod-0
ip0="$(ip_of star-scorer-pod-0)"
check auth "$ip0:50051" "$token"
check drain "$ip0:50051" "$work/in-drain.jsonl" star-scorer-pod-0-scorer "$token"
for _ in $(seq 60); do logs_have star-scorer-pod-0-scorer '"msg": "stopped", "drained": true' && break; sleep 1; done
logs_have star-scorer-pod-0-scorer '"msg": "stopped", "drained": true' \
  || { podman logs star-scorer-pod-0-scorer 2>&1 | tail -5 >&2; die "SIGTERM did not drain and stop the scorer"; }
say "SIGTERM: every in-flight request answered, then the scorer logged \"stopped\", drained, and exited"
down auth

# -- 5. two replicas behind the headless Service, one SIGKILLed mid-run --------------------------------
say "play cpu-dev, 2 replicas; by hand: $headless answers both pod IPs (/etc/hosts in the client)"
play two 2
wait_ready star-scorer-pod-0
wait_ready star-scorer-pod-1
ip0="$(ip_of star-scorer-pod-0)"; ip1="$(ip_of star-scorer-pod-1)"
client() {  # client OUT ADDRESS: star-client score in the trainer image on the kube network
  podman run --rm --label "$label" --network podman-default-kube-network --read-only --user 10001 \
    --add-host "$headless:$ip0" --add-host "$headless:$ip1" -v "$work/io:/io:Z" --tmpfs /tmp \
    "$trainer_image" star-client score --server "$2" --in /io/in-run.jsonl --out "/io/$1" --max-in-flight 64
}
client ref.jsonl "$ip0:50051" 2>"$work/client-ref.log" || { cat "$work/client-ref.log" >&2; die "star-client (one replica) failed"; }
client two.jsonl "dns:///$headless:50051" 2>"$work/client-two.log" &
pid=$!
for _ in $(seq 300); do
  n="$(check counter "http://$ip1:9090/metrics" star_cuts_scored_total)"
  [ "${n:-0}" -gt 0 ] && break
  sleep 0.1
done
[ "${n:-0}" -gt 0 ] || die "the second replica got no work: dns:/// did not spread the run"
podman kill --signal KILL star-scorer-pod-1-scorer >/dev/null
say "SIGKILL star-scorer-pod-1 after it scored $n cuts of the run"
wait "$pid" || { cat "$work/client-two.log" >&2; die "star-client over dns:/// failed after a replica was killed"; }
check same "$work/io/ref.jsonl" "$work/io/two.jsonl"
down two

# -- 6. the TLS overlay's probes with a throwaway CA ------------------------------------------------
kubectl kustomize deploy/k8s/overlays/gpu-prod-tls >"$work/tls.yaml"
# deploy/README.md documents the one name the server certificate must carry: the headless Service's.
name="$headless"
check pki "$work/pki" "$name"
tls_env=()
for v in STAR_TLS_CERT STAR_TLS_KEY STAR_TLS_CLIENT_CA STAR_TLS_SERVER_NAME; do
  val="$(kube env "$work/tls.yaml" "$v")"; [ -n "$val" ] && tls_env+=(-e "$v=$val")
done
exec_probe() {  # exec_probe CONTAINER PROBE: the overlay's exec probe, as the kubelet runs it
  local cmd; mapfile -t cmd < <(kube probe "$work/tls.yaml" "$2")
  podman exec "$1" "${cmd[@]}"
}
tls_probe() {  # tls_probe CERT_DIR -> 0 when all three exec probes of gpu-prod-tls pass
  local ctr="star-smoke-tls-$1" ok=0 p
  podman run -d --name "$ctr" --label "$label" --network podman-default-kube-network --read-only \
    --tmpfs /tmp -v "$work/pki/$1:/etc/star/tls:ro,Z" "${tls_env[@]}" -e STAR_GUARD=/opt/star/toy-guard \
    -e STAR_HOST=0.0.0.0 "$scorer_image" >/dev/null 2>&1
  for _ in $(seq 120); do logs_have "$ctr" '"msg": "serving"' && break; sleep 1; done
  logs_have "$ctr" '"msg": "serving"' || { cat "$work/logs.txt" >&2; die "the TLS scorer did not start"; }
  for p in startupProbe readinessProbe livenessProbe; do
    exec_probe "$ctr" "$p" 2>>"$work/tls-$1.log" || ok=1
  done
  podman rm -f -t 0 "$ctr" >/dev/null 2>&1
  return "$ok"
}
say "by hand: gpu-prod-tls's exec probes (STAR_TLS_SERVER_NAME=$(kube env "$work/tls.yaml" STAR_TLS_SERVER_NAME)) against the scorer image, throwaway CA"
tls_probe good || { tail -3 "$work/tls-good.log" >&2; die "TLS probes fail with a certificate that names $name"; }
say "certificate naming $name: startup, readiness and liveness probes pass"
if tls_probe bad; then die "TLS probes pass with a certificate that lacks $name"; fi
say "certificate without it: the probes fail ($(tail -1 "$work/tls-bad.log"))"

# -- 7. the trainer Job, by hand --------------------------------------------------------------------
say "by hand: the trainer Job (kube play runs no Jobs): its command and recipe in the trainer image"
play job 1
wait_ready star-scorer-pod-0
ip0="$(ip_of star-scorer-pod-0)"
kube recipe "$work/cpu-dev.yaml" "$work/recipe.yaml"
mapfile -t job_cmd < <(kube job "$work/cpu-dev.yaml")
podman run --rm --label "$label" --network podman-default-kube-network --read-only --user 10001 \
  --add-host "$headless:$ip0" -v "$work/recipe.yaml:/etc/star/recipe/recipe.yaml:ro,Z" \
  -v "$repo/star_toy/models:/models:ro,Z" --tmpfs /work --tmpfs /tmp \
  "$trainer_image" "${job_cmd[@]}" --set model=/models/chat --set data=/models/data/finetune.jsonl \
  --set dtype=float32 --set 'mixed_precision="no"' --set max_examples=16 \
  --set max_length=256 --set batch_size=4 --set grad_accum=1 --set epochs=1 --set save_every=0 \
  --set torch_threads=1 --set progress=false >"$work/train.log" 2>&1 \
  || { tail -30 "$work/train.log" >&2; die "star-train in the trainer image failed"; }
summary="$(tail -1 "$work/train.log")"
python -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["finished"] and r["steps"] > 0 else 1)' \
  "$summary" || die "star-train did not finish: $summary"
cuts="$(check counter "http://$ip0:9090/metrics" star_cuts_scored_total)"
[ "${cuts:-0}" -gt 0 ] || die "star-train finished but the scorer scored nothing"
say "star-train (${job_cmd[*]} + --set overrides) finished against $headless: the scorer scored $cuts cuts"
say "  $summary"
down job

say "PASS: container smoke test in $((SECONDS - t0))s"
