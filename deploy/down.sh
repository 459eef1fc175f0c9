#!/usr/bin/env bash
# `make down`: removes the compose cluster and everything it made: its containers, the function
# containers its runners started (label ferrofn.runner=<cluster>-runner-N, or a mount from its iofs
# dir), its network, its volumes (certificates, the LB's database or Postgres' data) and the iofs dir.
# Safe when nothing is running. FERROFN_HA=1: the HA cluster (`make down` runs both).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v docker >/dev/null || die "docker is not installed"
# Compose refuses to read docker-compose.ha.yml without it; removing needs no password.
export FERROFN_DB_PASSWORD="${FERROFN_DB_PASSWORD:-unused}"

# Anything of this cluster at all? (containers of the compose project, its function containers,
# volumes, network, iofs dir). Nothing: say so and stop, without compose's "not found" noise.
# The function containers are listed now: the HA runners' names come from their containers.
fn_containers=()
while IFS= read -r id; do
  [[ -n "$id" ]] && fn_containers+=("$id")
done < <(function_containers)
leftovers="$(docker ps -aq --filter "label=com.docker.compose.project=$FERROFN_CLUSTER")"
leftovers+="${fn_containers[*]}"
leftovers+="$(docker volume ls -q --filter "name=^${FERROFN_CLUSTER}_")"
leftovers+="$(docker network ls -q --filter "name=^${FERROFN_CLUSTER}_cluster\$")"
if [[ -z "$leftovers" && ! -d "$FERROFN_IOFS_DIR" ]]; then
  say "cluster '$FERROFN_CLUSTER' is not running: nothing to remove"
  exit 0
fi

say "stopping cluster '$FERROFN_CLUSTER'"
# Runners first: on SIGTERM they drain and remove their own function containers.
compose stop --timeout 40 "${RUNNER_SERVICES[@]}" >/dev/null 2>&1 || true
compose down --volumes --remove-orphans --timeout 20 || true

# Function containers left behind (a runner killed with SIGKILL cannot clean up after itself).
left=()
for id in "${fn_containers[@]}"; do
  docker inspect "$id" >/dev/null 2>&1 && left+=("$id")
done
if [[ ${#left[@]} -gt 0 ]]; then
  say "removing ${#left[@]} function container(s)"
  docker rm -f -v "${left[@]}" >/dev/null
fi

# Compose names them <project>_<name>; `down --volumes` removes them, this covers an interrupted down.
for v in "${VOLUMES[@]}"; do
  docker volume rm "${FERROFN_CLUSTER}_$v" >/dev/null 2>&1 || true
done
docker network rm "${FERROFN_CLUSTER}_cluster" >/dev/null 2>&1 || true

if [[ -d "$FERROFN_IOFS_DIR" ]]; then
  rm -rf "$FERROFN_IOFS_DIR" 2>/dev/null || say "could not remove all of $FERROFN_IOFS_DIR (files of uid 1000/65532; remove it with sudo)"
fi
say "cluster '$FERROFN_CLUSTER' removed"
