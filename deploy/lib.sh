# Shared settings of the deploy scripts (sourced, not run). Every knob is an environment variable with
# a default, so `make demo` needs none and the integration tests can run a second cluster beside it.
#   FERROFN_CLUSTER    compose project name; prefixes containers, networks, volumes and the runners'
#                      `ferrofn.runner` labels (default: ferrofn)
#   FERROFN_PORT       host port of the LB's HTTP API, bound on 127.0.0.1 only (default: 8080)
#   FERROFN_BIND       host address the LB port is published on (default: 127.0.0.1)
#   FERROFN_IOFS_DIR   host dir for the function containers' sockets; mounted at the same absolute
#                      path in the runners (default: /tmp/<cluster>-iofs)
#   FERROFN_DOCKER_SOCK  the engine's socket (default: /var/run/docker.sock)

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
COMPOSE_FILE_PATH="$DEPLOY_DIR/docker-compose.yml"
TARGET_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/x86_64-unknown-linux-gnu/debug"

export FERROFN_CLUSTER="${FERROFN_CLUSTER:-ferrofn}"
export FERROFN_PORT="${FERROFN_PORT:-8080}"
export FERROFN_BIND="${FERROFN_BIND:-127.0.0.1}"
export FERROFN_IOFS_DIR="${FERROFN_IOFS_DIR:-/tmp/$FERROFN_CLUSTER-iofs}"
export FERROFN_DOCKER_SOCK="${FERROFN_DOCKER_SOCK:-/var/run/docker.sock}"
# The runners run as uid 65532 with the socket's group added (see docker-compose.yml).
if [[ -S "$FERROFN_DOCKER_SOCK" ]]; then
  FERROFN_DOCKER_GID="$(stat -c %g "$FERROFN_DOCKER_SOCK")"
  export FERROFN_DOCKER_GID
fi

RUNNER_SERVICES=(runner-1 runner-2 runner-3)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case "$FERROFN_IOFS_DIR" in
  /*) ;;
  *) die "FERROFN_IOFS_DIR must be an absolute path (it is mounted at the same path in the runners): $FERROFN_IOFS_DIR" ;;
esac

# `docker compose` (v2 plugin) if present, else the v1 `docker-compose` binary.
if docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  COMPOSE_CMD=()
fi

compose() {
  [[ ${#COMPOSE_CMD[@]} -gt 0 ]] || die "neither 'docker compose' nor 'docker-compose' is installed"
  "${COMPOSE_CMD[@]}" --project-name "$FERROFN_CLUSTER" --file "$COMPOSE_FILE_PATH" "$@"
}
