#!/usr/bin/env bash
# Starts the compose cluster from existing images (deploy/images.sh builds them) and waits until the
# health checks of the three runners and of the LB pass and the LB answers on its published port,
# printing progress. Used by deploy/demo.sh and by the integration tests (tests/src/cluster.rs).
#   FERROFN_WAIT_SECS  how long to wait for health (default 120)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WAIT_SECS="${FERROFN_WAIT_SECS:-120}"
BASE="http://$FERROFN_BIND:$FERROFN_PORT"

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is it running? may you use $FERROFN_DOCKER_SOCK?)"
[[ ${#COMPOSE_CMD[@]} -gt 0 ]] || die "neither 'docker compose' nor 'docker-compose' is installed"
command -v curl >/dev/null || die "curl is not installed"
[[ -S "$FERROFN_DOCKER_SOCK" ]] || die "$FERROFN_DOCKER_SOCK is not a socket: set FERROFN_DOCKER_SOCK"
# depends_on: {condition: service_completed_successfully} (the certs step) needs compose >= 1.29.
if [[ "${COMPOSE_CMD[0]}" == docker-compose ]]; then
  v="$(docker-compose version --short 2>/dev/null || echo 0)"
  v="${v#v}"
  IFS=. read -r major minor _ <<<"$v"
  if (( major < 1 || (major == 1 && minor < 29) )); then
    die "docker-compose $v is too old: 1.29 or later (or the 'docker compose' plugin) is needed"
  fi
fi
for image in "ferrofn/lb:${FERROFN_IMAGE_TAG:-latest}" "ferrofn/runner:${FERROFN_IMAGE_TAG:-latest}"; do
  docker image inspect "$image" >/dev/null 2>&1 || die "image $image is missing: run bash deploy/images.sh"
done

# World-writable like /tmp: the runners (uid 65532) create one dir per function container in it,
# and the functions (uid 1000) their sockets.
mkdir -p "$FERROFN_IOFS_DIR"
chmod 1777 "$FERROFN_IOFS_DIR"

say "starting cluster '$FERROFN_CLUSTER' (LB on $BASE)"
# The certs service runs first (depends_on: service_completed_successfully, compose >= 1.29).
compose up -d --remove-orphans

say "waiting for the cluster to be healthy (up to ${WAIT_SECS}s)"
deadline=$((SECONDS + WAIT_SECS))
tty=0
[[ -t 2 ]] && tty=1
last=""
while :; do
  line=""
  healthy=0
  for svc in "${RUNNER_SERVICES[@]}"; do
    id="$(compose ps -q "$svc" 2>/dev/null || true)"
    state=missing
    if [[ -n "$id" ]]; then
      state="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)"
    fi
    [[ "$state" == healthy ]] && healthy=$((healthy + 1))
    line+="$svc=$state "
  done
  # The LB's own health check (its `probe` subcommand), then its published port from here.
  lb_id="$(compose ps -q lb 2>/dev/null || true)"
  lb=missing
  if [[ -n "$lb_id" ]]; then
    lb="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$lb_id" 2>/dev/null || echo missing)"
  fi
  if [[ "$lb" == healthy ]]; then
    curl -fsS -o /dev/null --max-time 2 "$BASE/version" 2>/dev/null || lb=unpublished
  fi
  line+="lb=$lb"
  # One updating line on a terminal, one line per change in logs.
  if [[ $tty == 1 ]]; then
    printf '\r  %s   ' "$line" >&2
  elif [[ "$line" != "$last" ]]; then
    printf '  %s\n' "$line" >&2
  fi
  last="$line"
  if [[ $healthy -eq ${#RUNNER_SERVICES[@]} && "$lb" == healthy ]]; then
    [[ $tty == 1 ]] && printf '\n' >&2
    break
  fi
  if (( SECONDS >= deadline )); then
    [[ $tty == 1 ]] && printf '\n' >&2
    compose ps >&2 || true
    compose logs --tail 30 >&2 || true
    die "cluster '$FERROFN_CLUSTER' was not healthy within ${WAIT_SECS}s ($line); logs above"
  fi
  sleep 1
done
say "cluster '$FERROFN_CLUSTER' is healthy"
