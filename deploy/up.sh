#!/usr/bin/env bash
# Starts the compose cluster from existing images (deploy/images.sh builds them) and waits until the
# health checks of the three runners and of the LB pass and the LB answers on its published port,
# printing progress. FERROFN_HA=1: the HA cluster (deploy/images-ha.sh builds its two extra images);
# it waits for Postgres, both LBs, FERROFN_RUNNERS runner replicas and then nginx's published port. Used by deploy/demo.sh and by the integration tests (tests/src/cluster.rs).
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
images=(lb runner)
[[ $HA == 1 ]] && images+=(postgres nginx)
for image in "${images[@]}"; do
  image="ferrofn/$image:${FERROFN_IMAGE_TAG:-latest}"
  docker image inspect "$image" >/dev/null 2>&1 ||
    die "image $image is missing: run bash deploy/images.sh$([[ $HA == 1 ]] && echo ' and deploy/images-ha.sh')"
done

# World-writable like /tmp: the runners (uid 65532) create one dir per function container in it,
# and the functions (uid 1000) their sockets.
mkdir -p "$FERROFN_IOFS_DIR"
chmod 1777 "$FERROFN_IOFS_DIR"

# The certs service runs first (depends_on: service_completed_successfully, compose >= 1.29).
if [[ $HA == 1 ]]; then
  say "starting HA cluster '$FERROFN_CLUSTER' (nginx on $BASE, $FERROFN_RUNNERS runners)"
  compose up -d --remove-orphans --scale "runner=$FERROFN_RUNNERS"
else
  say "starting cluster '$FERROFN_CLUSTER' (LB on $BASE)"
  compose up -d --remove-orphans
fi

# Health of a service: `healthy` when it has `want` containers and each passes its health check.
service_state() { # <service> <want>
  local ids id n=0 bad="" st
  ids="$(compose ps -q "$1" 2>/dev/null || true)"
  for id in $ids; do
    n=$((n + 1))
    st="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)"
    [[ "$st" == healthy ]] || bad="$st"
  done
  if [[ $n -eq 0 ]]; then
    echo missing
  elif [[ -n "$bad" ]]; then
    echo "$bad"
  elif [[ $n -ne $2 ]]; then
    echo "$n/$2"
  else
    echo healthy
  fi
}

say "waiting for the cluster to be healthy (up to ${WAIT_SECS}s)"
deadline=$((SECONDS + WAIT_SECS))
tty=0
[[ -t 2 ]] && tty=1
last=""
while :; do
  line=""
  healthy=0
  wanted=0
  for svc in "${RUNNER_SERVICES[@]}" "${NODE_SERVICES[@]}"; do
    want=1
    [[ $HA == 1 && "$svc" == runner ]] && want=$FERROFN_RUNNERS
    state="$(service_state "$svc" "$want")"
    wanted=$((wanted + 1))
    [[ "$state" == healthy ]] && healthy=$((healthy + 1))
    line+="$svc=$state "
  done
  # Then the published port from here (the LB's, or nginx's in front of the LBs).
  front=waiting
  if [[ $healthy -eq $wanted ]]; then
    if curl -fsS -o /dev/null --max-time 2 "$BASE/version" 2>/dev/null; then
      front=healthy
    else
      front=unpublished
    fi
  fi
  line+="$([[ $HA == 1 ]] && echo nginx || echo port)=$front"
  # One updating line on a terminal, one line per change in logs.
  if [[ $tty == 1 ]]; then
    printf '\r  %s   ' "$line" >&2
  elif [[ "$line" != "$last" ]]; then
    printf '  %s\n' "$line" >&2
  fi
  last="$line"
  if [[ "$front" == healthy ]]; then
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
