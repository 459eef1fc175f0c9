#!/usr/bin/env bash
# `make down`: removes the compose cluster and everything it made: its containers, the function
# containers its runners started (label ferrofn.runner=<cluster>-runner-N), its network, its volumes
# (certificates, the LB's database) and the iofs dir. Safe when nothing is running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v docker >/dev/null || die "docker is not installed"

# Anything of this cluster at all? (containers of the compose project, its function containers,
# volumes, network, iofs dir). Nothing: say so and stop, without compose's "not found" noise.
leftovers="$(docker ps -aq --filter "label=com.docker.compose.project=$FERROFN_CLUSTER")"
for svc in "${RUNNER_SERVICES[@]}"; do
  leftovers+="$(docker ps -aq --filter "label=ferrofn.runner=$FERROFN_CLUSTER-$svc")"
done
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
fn_containers=()
for svc in "${RUNNER_SERVICES[@]}"; do
  while IFS= read -r id; do
    [[ -n "$id" ]] && fn_containers+=("$id")
  done < <(docker ps -aq --filter "label=ferrofn.runner=$FERROFN_CLUSTER-$svc")
done
if [[ ${#fn_containers[@]} -gt 0 ]]; then
  say "removing ${#fn_containers[@]} function container(s)"
  docker rm -f -v "${fn_containers[@]}" >/dev/null
fi

# Compose names them <project>_<name>; `down --volumes` removes them, this covers an interrupted down.
# `certs` is the single certificate volume of earlier releases.
for v in certs-ca certs-lb "${RUNNER_SERVICES[@]/#/certs-}" certs lb-data; do
  docker volume rm "${FERROFN_CLUSTER}_$v" >/dev/null 2>&1 || true
done
docker network rm "${FERROFN_CLUSTER}_cluster" >/dev/null 2>&1 || true

if [[ -d "$FERROFN_IOFS_DIR" ]]; then
  rm -rf "$FERROFN_IOFS_DIR" 2>/dev/null || say "could not remove all of $FERROFN_IOFS_DIR (files of uid 1000/65532; remove it with sudo)"
fi
say "cluster '$FERROFN_CLUSTER' removed"
