# Shared settings of the deploy scripts (sourced, not run). Every knob is an environment variable with
# a default, so `make demo` needs none and the integration tests can run a second cluster beside it.
#   FERROFN_CLUSTER    compose project name; prefixes containers, networks, volumes and the runners'
#                      `ferrofn.runner` labels (default: ferrofn)
#   FERROFN_PORT       host port of the LB's HTTP API, bound on 127.0.0.1 only (default: 8080)
#   FERROFN_BIND       host address the LB port is published on (default: 127.0.0.1)
#   FERROFN_IOFS_DIR   host dir for the function containers' sockets; mounted at the same absolute
#                      path in the runners (default: /tmp/<cluster>-iofs)
#   FERROFN_DOCKER_SOCK  the engine's socket (default: /var/run/docker.sock)

#   FERROFN_HA=1       the HA cluster instead (docker-compose.ha.yml: Postgres, two LBs, nginx, a
#                      `runner` service scaled to FERROFN_RUNNERS, default 3); its defaults differ:
#                      cluster `ferrofn-ha`, port 8081 (nginx's), so both clusters can run at once

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
# Which build of ferrofn-lb / ferrofn-runner goes into the node images: `debug` (what `make test`
# builds anyway, so CI builds once) or `release` (what `make demo` uses: a debug build makes every
# call several times slower, ~3.5 ms instead of ~0.7 ms warm in the demo cluster).
FERROFN_PROFILE="${FERROFN_PROFILE:-debug}"
case "$FERROFN_PROFILE" in
  debug | release) ;;
  *) echo "FERROFN_PROFILE must be debug or release, not '$FERROFN_PROFILE'" >&2; exit 2 ;;
esac
TARGET_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/x86_64-unknown-linux-gnu/$FERROFN_PROFILE"
# `cargo build` arguments for that profile.
CARGO_PROFILE_ARGS=()
[[ "$FERROFN_PROFILE" == release ]] && CARGO_PROFILE_ARGS=(--release)

if [[ "${FERROFN_HA:-0}" == 1 ]]; then
  HA=1
  COMPOSE_FILE_PATH="$DEPLOY_DIR/docker-compose.ha.yml"
  export FERROFN_CLUSTER="${FERROFN_CLUSTER:-ferrofn-ha}"
  export FERROFN_PORT="${FERROFN_PORT:-8081}"
  FERROFN_RUNNERS="${FERROFN_RUNNERS:-3}"
  # One scalable service; its replicas' runner names are their hostnames (see runner_names).
  RUNNER_SERVICES=(runner)
  # Services with a health check that must pass, besides the runners.
  NODE_SERVICES=(postgres lb-1 lb-2)
  VOLUMES=(certs-ca certs-lb certs-runner pg-data)
else
  HA=0
  COMPOSE_FILE_PATH="$DEPLOY_DIR/docker-compose.yml"
  export FERROFN_CLUSTER="${FERROFN_CLUSTER:-ferrofn}"
  export FERROFN_PORT="${FERROFN_PORT:-8080}"
  FERROFN_RUNNERS=1
  RUNNER_SERVICES=(runner-1 runner-2 runner-3)
  NODE_SERVICES=(lb)
  # `certs` is the single certificate volume of earlier releases.
  VOLUMES=(certs-ca certs-lb certs-runner-1 certs-runner-2 certs-runner-3 certs lb-data)
fi
export FERROFN_BIND="${FERROFN_BIND:-127.0.0.1}"
# The LBs' API token and (HA) Postgres' password: the variables, else the files deploy/demo.sh makes on
# its first run (mode 0600), so that up.sh or compose.sh run by hand never recreate a node without them.
TOKEN_FILE="${FERROFN_TOKEN_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/ferrofn/$FERROFN_CLUSTER-api-token}"
PW_FILE="${FERROFN_DB_PASSWORD_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/ferrofn/$FERROFN_CLUSTER-db-password}"
if [[ -z "${FERROFN_API_TOKEN:-}" && -s "$TOKEN_FILE" ]]; then
  FERROFN_API_TOKEN="$(cat "$TOKEN_FILE")"
  export FERROFN_API_TOKEN
fi
if [[ $HA == 1 && -z "${FERROFN_DB_PASSWORD:-}" && -s "$PW_FILE" ]]; then
  FERROFN_DB_PASSWORD="$(cat "$PW_FILE")"
  export FERROFN_DB_PASSWORD
fi
export FERROFN_IOFS_DIR="${FERROFN_IOFS_DIR:-/tmp/$FERROFN_CLUSTER-iofs}"
export FERROFN_DOCKER_SOCK="${FERROFN_DOCKER_SOCK:-/var/run/docker.sock}"
# The runners run as uid 65532 with the socket's group added (see docker-compose.yml).
if [[ -S "$FERROFN_DOCKER_SOCK" ]]; then
  FERROFN_DOCKER_GID="$(stat -c %g "$FERROFN_DOCKER_SOCK")"
  export FERROFN_DOCKER_GID
fi


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

# The `ferrofn.runner` label values of this cluster's runners (one per line): <cluster>-<service> for
# the fixed runners of docker-compose.yml; for the HA cluster's replicas, which leave
# FERROFN_RUNNER_NAME unset, `<hostname>-9190` of every runner container that exists (running or not).
runner_names() {
  local svc id
  if [[ $HA == 1 ]]; then
    for id in $(docker ps -aq --filter "label=com.docker.compose.project=$FERROFN_CLUSTER" \
      --filter "label=com.docker.compose.service=runner"); do
      docker inspect --format '{{.Config.Hostname}}-9190' "$id" 2>/dev/null || true
    done
  else
    for svc in "${RUNNER_SERVICES[@]}"; do
      printf '%s-%s\n' "$FERROFN_CLUSTER" "$svc"
    done
  fi
}

# Function containers of this cluster's runners (ids, one per line): those labelled with one of
# runner_names, and any ferrofn function container with a bind mount from this cluster's iofs dir
# (the runner mounts <iofs>/<dir> into each), which also finds those of a runner container that no
# longer exists.
function_containers() {
  local name id
  {
    while IFS= read -r name; do
      [[ -n "$name" ]] && docker ps -aq --filter "label=ferrofn.runner=$name"
    done < <(runner_names)
    for id in $(docker ps -aq --filter label=ferrofn.managed=true); do
      if docker inspect --format '{{range .Mounts}}{{println .Source}}{{end}}' "$id" 2>/dev/null |
        awk -v d="$FERROFN_IOFS_DIR/" 'index($0, d) == 1 { f = 1 } END { exit !f }'; then
        printf '%s\n' "$id"
      fi
    done
  } | sort -u
}
