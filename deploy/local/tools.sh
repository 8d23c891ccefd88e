#!/usr/bin/env bash
# Install the reference OCI client/registry tools used by the tests (pinned, idempotent):
#   Go (built from the Go module proxy into $CACHE/bin):
#     oci-conformance       OCI distribution-spec conformance runner (go build)
#     oci-conformance.test  same suite as a `go test -c` binary (legacy "go test" mode)
#     crane, oras, cosign, notation (signatures), syft (SBOM reference), helm, kubeconform (the chart)
#     built in parallel, each cached by version
#   Debian bookworm (apt): skopeo, docker-registry (CNCF Distribution, /usr/bin/docker-registry),
#     podman, buildah, umoci, debootstrap, chromium + chromium-driver, postgresql
#     (docker-registry and postgresql are never started as system services)
# Usage: deploy/local/tools.sh [go] [apt]      (default: both)
# Writes $STATE/tools.env with HANZO_TOOL_* paths.
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------- pinned versions
# The conformance module has no semver tags: the proxy serves pseudo-versions only.
CONFORMANCE_VERSION="v0.0.0-20260831232431-97274622c111"
CRANE_VERSION="v0.22.1"          # github.com/google/go-containerregistry
ORAS_VERSION="v1.3.6"            # oras.land/oras
COSIGN_VERSION="v3.1.3"          # github.com/sigstore/cosign/v3
NOTATION_VERSION="v1.3.2"        # github.com/notaryproject/notation
SYFT_VERSION="v1.57.2"           # github.com/anchore/syft
HELM_VERSION="v4.3.2"            # helm.sh/helm/v4
KUBECONFORM_VERSION="v0.8.0"     # github.com/yannh/kubeconform
# Debian bookworm versions; if the archive has moved on (security update) the
# current bookworm candidate is installed instead, with a warning.
declare -A APT_PIN=(
  [skopeo]="1.9.3+ds1-1+b10"
  [docker-registry]="2.8.2+ds1-1"
  [podman]="4.3.1+ds1-8+deb12u1+b3"
  [buildah]="1.28.2+ds1-3+deb12u1+b3"
  [umoci]="0.4.7+ds-3+b7"
  [debootstrap]="1.0.128+nmu2+deb12u2"
  [chromium]="156.0.8078.114-1~deb12u1"         # the console's end-to-end tests (headless)
  [chromium-driver]="156.0.8078.114-1~deb12u1"  # Selenium's system driver: no browser download
  [postgresql]="15+248+deb12u2"                 # FerretDB's PostgreSQL backend (measured against SQLite)
)
APT_PKGS=(skopeo docker-registry podman buildah umoci debootstrap chromium chromium-driver postgresql)

do_go=0 do_apt=0
if (($# == 0)); then set -- go apt; fi
for arg in "$@"; do
  case "$arg" in
    go) do_go=1 ;;
    apt) do_apt=1 ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (expected: go apt)" ;;
  esac
done

mkdir -p "$BIN" "$STATE" "$CACHE/logs" "$CACHE/src" "$CACHE/build"
exec 9>"$CACHE/tools.lock"
flock -w 1800 9 || die "timed out waiting for $CACHE/tools.lock"

run_build() { # NAME CMD...
  local name=$1; shift
  local blog="$CACHE/logs/build-$name.log" t0=$SECONDS
  log "building $name (log: $blog) ..."
  # Run in a background subshell and wait: the step keeps `set -e` semantics
  # (which an `if ! cmd` context would silently switch off inside functions).
  local rc=0
  ("$@") >"$blog" 2>&1 </dev/null &
  wait $! || rc=$?
  if ((rc)); then
    tail -n 40 "$blog" >&2
    die "build of $name failed (full log: $blog)"
  fi
  log "built $name in $((SECONDS - t0))s"
}

# link NAME VERSIONED : point $BIN/NAME at $BIN/VERSIONED
link() { ln -sfn "$2" "$BIN/$1"; }

# go_tool NAME PKG VERSION : go install PKG@VERSION as $BIN/NAME-VERSION (+ symlink NAME)
go_tool() {
  local name=$1 pkg=$2 ver=$3 out="$BIN/$1-$3"
  if [[ ! -x $out ]]; then
    command -v go >/dev/null || die "go is required to build $name"
    _gt() {
      local tmp="$CACHE/build/$name"
      rm -rf "$tmp" && mkdir -p "$tmp"
      CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags='-s -w' "$pkg@$ver"
      mv "$tmp/$(basename "$pkg")" "$out"
    }
    run_build "$name" _gt
  fi
  link "$name" "$(basename "$out")"
}

# go_src_tool NAME MODULE SUBPKG VERSION : build MODULE@VERSION's SUBPKG inside its downloaded source. For
# modules whose version list the proxy refuses: `go install m@v` asks for that list (deprecation notices).
go_src_tool() {
  local name=$1 mod=$2 sub=$3 ver=$4 out="$BIN/$1-$4"
  if [[ ! -x $out ]]; then
    command -v go >/dev/null || die "go is required to build $name"
    _gst() {
      local dir src="$CACHE/src/$name-$ver"
      dir="$(go mod download -json "$mod@$ver" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"]) if "Dir" in d else sys.exit("go mod download: " + d.get("Error", "no Dir"))')"
      rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
      (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out.tmp" "./$sub" && mv "$out.tmp" "$out")
    }
    run_build "$name" _gst
  fi
  link "$name" "$(basename "$out")"
}

install_conformance() {
  local ver=$CONFORMANCE_VERSION
  local bin="$BIN/oci-conformance-$ver" tbin="$BIN/oci-conformance-$ver.test"
  if [[ ! -x $bin || ! -x $tbin ]]; then
    command -v go >/dev/null || die "go is required to build the conformance suite"
    _conf() {
      local dir src="$CACHE/src/conformance-$ver"
      dir="$(go mod download -json "github.com/opencontainers/distribution-spec/conformance@$ver" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"]) if "Dir" in d else sys.exit("go mod download: " + d.get("Error", "no Dir"))')"
      rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
      (
        cd "$src"
        CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" . && mv "$bin.tmp" "$bin"
        CGO_ENABLED=0 go test -c -trimpath -o "$tbin.tmp" . && mv "$tbin.tmp" "$tbin"
      )
    }
    run_build conformance _conf
  fi
  link oci-conformance "$(basename "$bin")"
  link oci-conformance.test "$(basename "$tbin")"
}

install_apt() {
  local missing=() p
  for p in "${APT_PKGS[@]}"; do
    if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      local have
      have="$(dpkg-query -W -f='${Version}' "$p")"
      [[ $have == "${APT_PIN[$p]}" ]] || log "apt: $p $have installed (pin ${APT_PIN[$p]}); keeping it"
    else
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "apt: ${APT_PKGS[*]} already installed"
  else
    ((EUID == 0)) || die "apt packages missing (${missing[*]}) and not root"
    log "apt: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    local specs=()
    for p in "${missing[@]}"; do
      if apt-cache madison "$p" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -qxF "${APT_PIN[$p]}"; then
        specs+=("$p=${APT_PIN[$p]}")
      else
        log "apt: WARNING: $p=${APT_PIN[$p]} no longer in the archive; installing the current candidate"
        specs+=("$p")
      fi
    done
    # Keep maintainer scripts from starting services (docker-registry ships one).
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${specs[@]}" \
      >"$CACHE/logs/apt-install.log" 2>&1 </dev/null || rc=$?
    ((added_policy)) && rm -f "$policy"
    if ((rc)); then
      tail -n 40 "$CACHE/logs/apt-install.log" >&2
      die "apt-get install failed (log: $CACHE/logs/apt-install.log)"
    fi
  fi
  # docker-registry must not run as a service: disable its unit / init script if present.
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  fi
  if [[ -x /etc/init.d/docker-registry ]]; then
    if /etc/init.d/docker-registry status >/dev/null 2>&1; then
      /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null; then
      update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
  fi
}

# Builds run side by side (go's build cache is safe to share); each is cached by version, so a warm
# machine only re-links. The apt install runs meanwhile.
pids=()
bg() { "$@" & pids+=($!); }
if ((do_go)); then
  bg install_conformance
  bg go_tool crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
  bg go_tool oras oras.land/oras/cmd/oras "$ORAS_VERSION"
  bg go_tool cosign github.com/sigstore/cosign/v3/cmd/cosign "$COSIGN_VERSION"
  bg go_src_tool notation github.com/notaryproject/notation cmd/notation "$NOTATION_VERSION"
  bg go_tool syft github.com/anchore/syft/cmd/syft "$SYFT_VERSION"
  bg go_tool helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"
  bg go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
fi
((do_apt)) && bg install_apt
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
((failed == 0)) || die "a tool install failed (logs: $CACHE/logs/build-*.log, $CACHE/logs/apt-install.log)"

cat >"$STATE/tools.env.tmp" <<EOF
HANZO_TOOL_CONFORMANCE=$BIN/oci-conformance
HANZO_TOOL_CONFORMANCE_TEST=$BIN/oci-conformance.test
HANZO_TOOL_CRANE=$BIN/crane
HANZO_TOOL_ORAS=$BIN/oras
HANZO_TOOL_COSIGN=$BIN/cosign
HANZO_TOOL_NOTATION=$BIN/notation
HANZO_TOOL_SYFT=$BIN/syft
HANZO_TOOL_HELM=$BIN/helm
HANZO_TOOL_KUBECONFORM=$BIN/kubeconform
HANZO_TOOL_SKOPEO=/usr/bin/skopeo
HANZO_TOOL_DOCKER_REGISTRY=/usr/bin/docker-registry
HANZO_TOOL_PODMAN=/usr/bin/podman
HANZO_TOOL_BUILDAH=/usr/bin/buildah
HANZO_TOOL_UMOCI=/usr/bin/umoci
EOF
mv "$STATE/tools.env.tmp" "$STATE/tools.env"
log "tools ready; env file: $STATE/tools.env"
