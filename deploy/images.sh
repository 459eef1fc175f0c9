#!/usr/bin/env bash
# Builds the cluster images ferrofn/lb and ferrofn/runner FROM scratch: the static binaries (debug
# info stripped) plus the few empty dirs they need. No registry is involved.
#   FERROFN_IMAGE_TAG=T   tag them T (default latest; the tests use a tag per checkout)
#   FERROFN_SKIP_CARGO=1  use the binaries already in target/ instead of running cargo build first
#   FERROFN_PROFILE=release  release binaries (default debug: see lib.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v docker >/dev/null || die "docker is not installed"
if [[ "${FERROFN_SKIP_CARGO:-0}" != 1 ]]; then
  say "building ferrofn-lb and ferrofn-runner (cargo build)"
  (cd "$ROOT_DIR" && "${CARGO:-cargo}" build "${CARGO_PROFILE_ARGS[@]}" -p ferrofn-lb -p ferrofn-runner)
fi

build_image() { # <binary> <dockerfile> <tag>
  local bin="$TARGET_BIN_DIR/$1" ctx
  [[ -x "$bin" ]] || die "$bin is missing: run cargo build -p $1"
  ctx="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand $ctx now
  trap "rm -rf '$ctx'" RETURN
  mkdir -p "$ctx/rootfs/tmp" "$ctx/empty"
  chmod 1777 "$ctx/rootfs/tmp"
  # Debug info is most of a debug binary; symbols stay for readable backtraces.
  if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$bin" "$ctx/rootfs/$1"
  else
    cp "$bin" "$ctx/rootfs/$1"
  fi
  cp "$DEPLOY_DIR/docker/$2" "$ctx/Dockerfile"
  local out
  # Quiet unless it fails (the 20.10 CLI also warns that the legacy builder is deprecated).
  if ! out="$(docker build --quiet --label ferrofn.built-by=ferrofn-deploy -t "$3" "$ctx" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "docker build of $3 failed"
  fi
  say "built $3 ($(docker image inspect --format '{{.Size}}' "$3" | awk '{printf "%.1f MB", $1/1e6}'))"
}

TAG="${FERROFN_IMAGE_TAG:-latest}"
build_image ferrofn-lb lb.Dockerfile "ferrofn/lb:$TAG"
build_image ferrofn-runner runner.Dockerfile "ferrofn/runner:$TAG"
# Images a rebuild superseded (untagged now); kept if a container still uses one.
docker image prune --force --filter label=ferrofn.built-by=ferrofn-deploy >/dev/null 2>&1 || true
