#!/usr/bin/env bash
# Build the exporter and demo images with docker or podman, whichever works here.
#
#   image/build.sh [build]   build both images (default)
#   image/build.sh base      only make sure a base image is there (pull, or build a local one)
#   image/build.sh env       print KEY=VALUE lines describing the runtime (used by tests/image)
#
# Runtime choice: a docker client that reaches an engine (`docker info`), else podman. Podman runs
# with its own containers.conf/storage.conf (runc, cgroupfs, ulimits; why: docs/image.md,
# "Podman settings") and keeps its images under $IMAGE_CACHE_DIR (default <repo>/.cache/image),
# so a local base image is built once and reused.
#
# Base image: $BASE_IMAGE (default python:3.12-slim). When it is neither present nor pullable
# (no registry reachable), a local base is made with debootstrap (Debian bookworm minbase +
# python3, python3-venv, python3-pip, ca-certificates) and imported as $LOCAL_BASE_IMAGE.
#
# Environment (all optional):
#   IMAGE_RUNTIME=docker|podman   force a runtime
#   BASE_IMAGE                    base for both images (default python:3.12-slim)
#   LOCAL_BASE=1                  skip the pull attempt and use/build the local Debian base
#   IMAGE_NAME, DEMO_IMAGE_NAME   image names (default gunicorn-prometheus-exporter[-demo])
#   IMAGE_VERSION                 tag (default: version in exporter/pyproject.toml, else 0.3.0)
#   EXPORTER_DIR                  package sources to build (default <repo>/exporter)
#   IMAGE_CACHE_DIR               podman storage + debootstrap cache (default <repo>/.cache/image)
#   DEBIAN_MIRROR                 default http://deb.debian.org/debian
#   PIP_CERT                      CA bundle handed to pip inside the build (build secret)
#   PULL_TIMEOUT                  seconds for the base pull attempt (default 60)
#
# Exit status: 0 ok, 1 a build failed, 3 a prerequisite is missing (no runtime, no debootstrap,
# not root, no exporter/pyproject.toml).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE_DIR="$REPO/image"
CACHE="${IMAGE_CACHE_DIR:-$REPO/.cache/image}"
IMAGE_NAME="${IMAGE_NAME:-gunicorn-prometheus-exporter}"
DEMO_IMAGE_NAME="${DEMO_IMAGE_NAME:-gunicorn-prometheus-exporter-demo}"
BASE_IMAGE="${BASE_IMAGE:-python:3.12-slim}"
LOCAL_BASE_IMAGE="${LOCAL_BASE_IMAGE:-localhost/gunicorn-prometheus-exporter-base:bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
PULL_TIMEOUT="${PULL_TIMEOUT:-60}"

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# A missing prerequisite (runtime, debootstrap, root, sources): exit 3, so that tests can skip.
missing() { log "error: $*"; exit 3; }

image_version() {
  if [ -n "${IMAGE_VERSION:-}" ]; then echo "$IMAGE_VERSION"; return; fi
  local v=""
  if [ -f "$REPO/exporter/pyproject.toml" ]; then
    v="$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$REPO/exporter/pyproject.toml" | head -n1)"
  fi
  echo "${v:-0.3.0}"
}

# ---------------------------------------------------------------------------------------------
# Runtime detection and podman settings
# ---------------------------------------------------------------------------------------------
podman_setup() {
  # Short, per-repo runtime dir (unix socket paths must stay < 108 chars).
  local hash base
  hash="$(printf '%s' "$CACHE" | sha256sum | cut -c1-10)"
  if [ -w /run ]; then base="/run/gpe-$hash"; else base="${TMPDIR:-/tmp}/gpe-$hash"; fi
  PODMAN_STATE="$base"
  local graphroot="$CACHE/podman/storage"
  # A new (or deleted, e.g. by `make clean`) storage dir: the runtime state of the old one is stale.
  if [ ! -d "$graphroot" ] || [ -z "$(ls -A "$graphroot" 2>/dev/null)" ]; then
    rm -rf "$base/run" "$base/tmp"
  fi
  mkdir -p "$graphroot" "$base/conf"
  # After a reboot (or on a machine restored from a snapshot) the per-boot state is stale:
  # drop it so podman refreshes, as it would with a fresh /run.
  local boot_id=""
  boot_id="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)"
  if [ -n "$boot_id" ] && [ "$(cat "$base/boot_id" 2>/dev/null || true)" != "$boot_id" ]; then
    rm -rf "$base/run" "$base/tmp"
    echo "$boot_id" >"$base/boot_id"
  fi
  mkdir -p "$base/run" "$base/tmp"
  cat >"$base/conf/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$base/tmp"
EOF
  cat >"$base/conf/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$graphroot"
runroot = "$base/run"

[storage.options.overlay]
# No private bind mount of the storage dir on itself: .cache/ stays removable with rm -rf.
skip_mount_home = "true"
EOF
  export CONTAINERS_CONF="$base/conf/containers.conf"
  export CONTAINERS_STORAGE_CONF="$base/conf/storage.conf"
}

detect_runtime() {
  local want="${IMAGE_RUNTIME:-}"
  if [ -z "$want" ] || [ "$want" = docker ]; then
    if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; then
      RUNTIME=docker; return 0
    fi
    [ "$want" = docker ] && missing "IMAGE_RUNTIME=docker but no docker engine answers (docker info)"
  fi
  if command -v podman >/dev/null 2>&1; then
    RUNTIME=podman
    podman_setup
    return 0
  fi
  missing "no container runtime: neither a docker engine nor podman (run image/install-tools.sh as root)"
}

rt() { "$RUNTIME" "$@"; }

image_exists() {
  if [ "$RUNTIME" = podman ]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

qualify() {
  # podman: a short name like python:3.12-slim needs a registry (no short-name aliases here).
  local ref="$1" first="${1%%/*}"
  if [ "$RUNTIME" = podman ]; then
    if [ "$first" = "$ref" ]; then ref="docker.io/library/$ref"
    elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then ref="docker.io/$ref"; fi
  fi
  echo "$ref"
}

# ---------------------------------------------------------------------------------------------
# Base image
# ---------------------------------------------------------------------------------------------
build_local_base() {
  command -v debootstrap >/dev/null 2>&1 || missing "debootstrap missing (run image/install-tools.sh as root)"
  [ "$(id -u)" -eq 0 ] || missing "building the local base needs root (debootstrap)"
  local t0 rootfs
  t0=$(date +%s)
  mkdir -p "$CACHE/debs"
  rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs'" EXIT
  log "building local base $LOCAL_BASE_IMAGE: debootstrap --variant=minbase $DEBIAN_SUITE (+python3)"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  # Trim like debian:*-slim: no docs, man pages, locales, apt lists or package cache.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/root/.cache
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  find "$rootfs/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
  echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" >"$rootfs/etc/apt/sources.list"
  local quiet=()
  [ "$RUNTIME" = podman ] && quiet=(--quiet)
  tar -C "$rootfs" --numeric-owner -cf - . | rt import "${quiet[@]}" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$LOCAL_BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "local base built in $(( $(date +%s) - t0 ))s"
}

ensure_base() {
  local ref
  ref="$(qualify "$BASE_IMAGE")"
  if [ "${LOCAL_BASE:-0}" != 1 ]; then
    if image_exists "$ref"; then BASE_REF="$ref"; return 0; fi
    # A failed pull is remembered for a day: no registry, no waiting for it on every build.
    local marker="$CACHE/pull-failed-$(printf '%s' "$ref" | tr -c 'a-zA-Z0-9._-' '_')"
    if [ -n "$(find "$marker" -mmin -1440 2>/dev/null)" ]; then
      log "not pulling $ref (failed within the last day, see $CACHE/pull.log; rm $marker to retry)"
    else
      log "pulling $ref (timeout ${PULL_TIMEOUT}s)"
      if timeout "$PULL_TIMEOUT" "$RUNTIME" pull -q "$ref" >/dev/null 2>"$CACHE/pull.log"; then
        rm -f "$marker"
        BASE_REF="$ref"; return 0
      fi
      touch "$marker"
      log "cannot pull $ref ($(tail -n1 "$CACHE/pull.log" | cut -c1-160)); using a local Debian base"
    fi
  fi
  if ! image_exists "$LOCAL_BASE_IMAGE"; then build_local_base; else log "reusing $LOCAL_BASE_IMAGE"; fi
  BASE_REF="$LOCAL_BASE_IMAGE"
}

# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
make_context() {
  # A small build context: exporter/ sources (no caches, builds or venvs) and image/.
  local src="${EXPORTER_DIR:-$REPO/exporter}"
  [ -f "$src/pyproject.toml" ] || missing "$src/pyproject.toml missing: nothing to build yet"
  CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/gpe-context.XXXXXX")"
  mkdir -p "$CONTEXT/exporter"
  cp -r "$IMAGE_DIR" "$CONTEXT/image"
  tar -C "$src" -cf - \
    --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' --exclude='.venv' \
    --exclude='./build' --exclude='./dist' --exclude='.pytest_cache' --exclude='.mypy_cache' \
    --exclude='.ruff_cache' --exclude='.tox' --exclude='.coverage' --exclude='htmlcov' \
    . | tar -C "$CONTEXT/exporter" -xf -
}

build_one() {
  local dockerfile="$1" name="$2" version="$3" t0
  t0=$(date +%s)
  local args=(build -f "$CONTEXT/image/$dockerfile" -t "$name:$version" -t "$name:latest"
    --build-arg "BASE_IMAGE=$BASE_REF"
    --build-arg "VERSION=$version"
    --build-arg "VCS_REF=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    --build-arg "BUILD_DATE=$BUILD_DATE")
  local cert="${PIP_CERT:-}"
  if [ -z "$cert" ] && [ -s /etc/ssl/certs/ca-certificates.crt ]; then cert=/etc/ssl/certs/ca-certificates.crt; fi
  [ -n "$cert" ] && args+=(--secret "id=pip_cert,src=$cert")
  if [ "$RUNTIME" = podman ]; then
    # docker format keeps HEALTHCHECK; the base is local or already pulled.
    args+=(--format docker --pull=never --layers)
  else
    export DOCKER_BUILDKIT=1
  fi
  log "building $name:$version from $dockerfile on $BASE_REF"
  rt "${args[@]}" "$CONTEXT" >"$CACHE/build-$name.log" 2>&1 \
    || { tail -n 40 "$CACHE/build-$name.log" >&2; die "build of $name failed (log: $CACHE/build-$name.log)"; }
  log "built $name:$version in $(( $(date +%s) - t0 ))s"
}

cmd_env() {
  echo "RUNTIME=$RUNTIME"
  echo "IMAGE=$IMAGE_NAME:$(image_version)"
  echo "DEMO_IMAGE=$DEMO_IMAGE_NAME:$(image_version)"
  echo "LOCAL_BASE_IMAGE=$LOCAL_BASE_IMAGE"
  echo "IMAGE_CACHE_DIR=$CACHE"
  if [ "$RUNTIME" = podman ]; then
    echo "CONTAINERS_CONF=$CONTAINERS_CONF"
    echo "CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF"
    echo "PODMAN_STATE=$PODMAN_STATE"
  fi
}

main() {
  local cmd="${1:-build}"
  mkdir -p "$CACHE"
  detect_runtime
  case "$cmd" in
    env) cmd_env ;;
    base) ensure_base; echo "$BASE_REF" ;;
    build)
      local version
      version="$(image_version)"
      # The commit's date, not the clock: unchanged sources reuse every cached layer.
      BUILD_DATE="$(TZ=UTC git -C "$REPO" log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || true)"
      BUILD_DATE="${BUILD_DATE:-unknown}"
      ensure_base
      make_context
      # shellcheck disable=SC2064
      trap "rm -rf '$CONTEXT'" EXIT
      build_one Dockerfile "$IMAGE_NAME" "$version"
      build_one Dockerfile.demo "$DEMO_IMAGE_NAME" "$version"
      if [ "$RUNTIME" = podman ]; then
        # Our own storage: drop superseded (dangling) images a day old; recent ones are the
        # layer cache of the next build.
        podman image prune -f --filter until=24h >/dev/null 2>&1 || true
      fi
      rt images --format '{{.Repository}}:{{.Tag}} {{.Size}}' 2>/dev/null \
        | grep -E "(^|/)($IMAGE_NAME|$DEMO_IMAGE_NAME):$version |gunicorn-prometheus-exporter-base|python" >&2 || true
      ;;
    *) die "unknown command '$cmd' (build|base|env)" ;;
  esac
}

main "$@"
