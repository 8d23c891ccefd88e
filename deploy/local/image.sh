#!/usr/bin/env bash
# Build the container image from the repository's Dockerfile without a Docker engine (`make image`):
#   1. a minimal Debian bookworm rootfs made with debootstrap (--variant=minbase, plus python3, python3-venv and
#      ca-certificates: the Dockerfile's BASE contract), from the pinned suite and mirror below, built once and
#      cached as a tarball under $HANZO_CACHE/image/ (the recipe's hash names it; a new recipe builds anew);
#   2. imported into buildah as the base image localhost/hanzo-base:bookworm-<recipe hash> (once);
#   3. `buildah bud --layers` of the Dockerfile with BASE set to that image, vfs storage and chroot isolation
#      (no daemon, no overlay or user namespaces needed), storage under $HANZO_CACHE/buildah/ so that a repeated
#      run reuses every unchanged layer.
# Needs root (debootstrap, and buildah without user namespaces) and network access to the Debian mirror and PyPI
# (the Dockerfile installs the locked dependencies). The host's CA bundle is mounted into the build's RUN steps
# (a TLS-inspecting proxy's CA is then trusted by pip and uv; nothing of it lands in the image).
#
# Usage: deploy/local/image.sh [TAG]            build (default TAG: localhost/hanzo-registry:dev); prints its ID last
#        deploy/local/image.sh --buildah ARGS   run buildah on the same storage (inspect, from, run, push, rmi ...)
# Env:   HANZO_CACHE (default ~/.cache/hanzo-registry), HANZO_DEBIAN_MIRROR (default: below).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_ROOT="${HANZO_CACHE:-$HOME/.cache/hanzo-registry}"
IMAGE_CACHE="$CACHE_ROOT/image"
BUILDAH_ROOT="$CACHE_ROOT/buildah"

# ---------------------------------------------------------------- pinned base recipe
SUITE="bookworm"
MIRROR="${HANZO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"   # the mirror apt uses here (sources.list.d)
VARIANT="minbase"
INCLUDE="python3,python3-venv,ca-certificates"
RECIPE_VERSION=1
KEY="$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$MIRROR" "$VARIANT" "$INCLUDE" | sha256sum | cut -c1-12)"
BASE_IMAGE="localhost/hanzo-base:$SUITE-$KEY"
BASE_TAR="$IMAGE_CACHE/base-$SUITE-$KEY.tar"

log() { printf '[%s] image: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

BUILDAH=(buildah --root "$BUILDAH_ROOT/storage" --runroot "$BUILDAH_ROOT/run" --storage-driver vfs)

if [[ ${1:-} == --buildah ]]; then
  shift
  exec "${BUILDAH[@]}" "$@"
fi
TAG="${1:-${HANZO_IMAGE_TAG:-localhost/hanzo-registry:dev}}"

command -v buildah >/dev/null || die "buildah is not installed: run \`make tools\` (deploy/local/tools.sh apt)"
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"
[[ -x $DEBOOTSTRAP ]] || die "debootstrap is not installed: run \`make tools\` (deploy/local/tools.sh apt)"
((EUID == 0)) || die "needs root: debootstrap creates device nodes and root-owned files, and buildah's vfs \
storage without user namespaces writes them as they are"

mkdir -p "$IMAGE_CACHE" "$BUILDAH_ROOT"
# One build at a time per cache (a test and `make image` may race); the lock goes with the process.
exec 9>"$IMAGE_CACHE/.lock"
flock 9

# ---------------------------------------------------------------- 1. the base rootfs (once)
if [[ ! -s $BASE_TAR ]]; then
  work="$(mktemp -d "$IMAGE_CACHE/.build-XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "debootstrap --variant=$VARIANT --include=$INCLUDE $SUITE from $MIRROR (once; cached as $BASE_TAR)"
  if ! "$DEBOOTSTRAP" --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$work/rootfs" "$MIRROR" \
      >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  # What a container image leaves out: apt's package lists and downloaded archives, logs.
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
         "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/log/"*.log
  tar -C "$work/rootfs" --numeric-owner --xattrs -cf "$work/base.tar" .
  mv "$work/base.tar" "$BASE_TAR"
  rm -rf "$work"
  trap - EXIT
fi

# ---------------------------------------------------------------- 2. the base image (once)
if ! "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  log "importing the rootfs as $BASE_IMAGE"
  ctr="$("${BUILDAH[@]}" from scratch)"
  "${BUILDAH[@]}" add "$ctr" "$BASE_TAR" / >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --os linux --arch "$(dpkg --print-architecture 2>/dev/null || echo amd64)" \
    --label "org.opencontainers.image.description=Debian $SUITE ($VARIANT, $INCLUDE) from $MIRROR" "$ctr"
  "${BUILDAH[@]}" commit --rm --quiet "$ctr" "$BASE_IMAGE" >/dev/null
fi

# ---------------------------------------------------------------- 3. the image
# The build's inputs (what .dockerignore lets in, and the base): when the image under TAG was built from the same
# ones, there is nothing to do. (`bud --layers` would find every layer cached too, but with vfs it still copies
# and deletes a full root filesystem per stage: minutes, not seconds.)
inputs="$(
  cd "$REPO"
  {
    printf '%s\n' "$BASE_IMAGE"
    sha256sum Dockerfile .dockerignore requirements.lock pyproject.toml README.md
    find services -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-32
)"
stamp="$IMAGE_CACHE/built-$(printf '%s' "$TAG" | tr -c 'A-Za-z0-9._-' '_')"
current="$("${BUILDAH[@]}" images --quiet --no-trunc "$TAG" 2>/dev/null | head -n 1 || true)"
if [[ -n $current && -f $stamp && "$(cat "$stamp")" == "$inputs $current" ]]; then
  log "$TAG is up to date (build inputs $inputs)"
  echo "$current"
  exit 0
fi
mounts=()
for ca in /etc/ssl/certs/ca-certificates.crt; do
  [[ -s $ca ]] && mounts+=(-v "$ca:$ca:ro")
done
log "buildah bud $TAG (BASE=$BASE_IMAGE; vfs, chroot isolation, --layers)"
"${BUILDAH[@]}" bud --isolation chroot --layers --quiet \
  --build-arg "BASE=$BASE_IMAGE" "${mounts[@]}" \
  -t "$TAG" -f "$REPO/Dockerfile" "$REPO" >&2
built="$("${BUILDAH[@]}" images --quiet --no-trunc "$TAG" | head -n 1)"
echo "$inputs $built" >"$stamp"
echo "$built"
