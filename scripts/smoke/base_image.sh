#!/usr/bin/env bash
# A local stand-in for the CUDA PyTorch base image (no container registry is reachable here):
# debootstrap a minimal Debian bookworm (its python3.11 is the project's Python), `podman import` it,
# then install the pinned CPU torch and every dependency of this package into /opt/venv from a
# wheelhouse that pip downloads on the host (through the host's own pip configuration: the local index
# and /opt/wheels where the CPU torch wheel lies). The image's pip is offline (PIP_NO_INDEX, a
# /opt/wheelhouse with setuptools and wheel for the Dockerfiles' `pip wheel .`), so both Dockerfiles
# build unchanged and without network, and find every dependency already installed, as they find torch
# in the real base. Usage: base_image.sh CACHE_DIR   -> prints the image name on its last line.
# The image is tagged by a hash of what goes into it and reused while it exists (an optimisation only:
# a fresh machine builds it, about 4 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="$1"
suite=bookworm
torch_pin="torch==2.13.0"
mkdir -p "$cache"
deps="$(python - <<'EOF'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
EOF
)"
key="$(printf '%s\n' "$suite" "$torch_pin" "$deps" | cat - "$0" | sha256sum | cut -c1-12)"
image="localhost/star-base:$key"
if podman image exists "$image"; then
  echo "base image $image exists (reused)" >&2
  echo "$image"
  exit 0
fi

rootfs_tar="$cache/rootfs-$suite.tar"
if [ ! -s "$rootfs_tar" ]; then
  echo "debootstrap $suite (minbase + python3.11) ..." >&2
  tmp="$(mktemp -d "$cache/rootfs.XXXXXX")"
  debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates \
    "$suite" "$tmp/root" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; echo "base_image: debootstrap failed" >&2; exit 1; }
  tar -C "$tmp/root" -cf "$rootfs_tar.part" . && mv "$rootfs_tar.part" "$rootfs_tar"
  rm -rf "$tmp"
fi
os_image="localhost/star-os:$suite"
podman image exists "$os_image" || podman import -q "$rootfs_tar" "$os_image" >/dev/null

wheels="$cache/wheelhouse-$key"
if [ ! -f "$wheels/.complete" ]; then
  echo "pip download: $torch_pin and the package's dependencies ..." >&2
  mkdir -p "$wheels/run" "$wheels/build"
  # shellcheck disable=SC2086
  python -m pip download -q --only-binary=:all: -d "$wheels/run" "$torch_pin" $deps 2>"$cache/pip.log" \
    || { grep -v "^WARNING" "$cache/pip.log" | tail -20 >&2; echo "base_image: pip download failed" >&2; exit 1; }
  python -m pip download -q --only-binary=:all: -d "$wheels/build" "setuptools>=69" wheel 2>>"$cache/pip.log"
  touch "$wheels/.complete"
fi

echo "installing the wheelhouse into $image ..." >&2
name="star-base-build-$key"
podman rm -f "$name" >/dev/null 2>&1 || true
podman run --name "$name" --network none -v "$wheels:/wheelhouse:ro" "$os_image" sh -ec '
  python3.11 -m venv /opt/venv
  /opt/venv/bin/pip install -q --no-index --find-links /wheelhouse/run /wheelhouse/run/*.whl
  mkdir -p /opt/wheelhouse && cp /wheelhouse/build/*.whl /opt/wheelhouse/
  ln -s /opt/venv/bin/python /usr/local/bin/python'
podman commit -q \
  --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV VIRTUAL_ENV=/opt/venv' --change 'ENV PIP_NO_INDEX=1' \
  --change 'ENV PIP_FIND_LINKS=/opt/wheelhouse' --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
  "$name" "$image" >/dev/null
podman rm "$name" >/dev/null
echo "$image"
