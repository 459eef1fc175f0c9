#!/usr/bin/env bash
# Quick start (`make demo`): builds the binaries and images, starts the compose cluster (certs, one
# LB, three runners), waits until it is healthy, registers the `hello` app and fn through the v2 API
# and calls it. Safe to run again: an up-to-date cluster is kept, the app and fn are reused.
# FERROFN_HA=1 (`make demo-ha`): the HA cluster instead (Postgres, two LBs behind nginx, three
# runner replicas; deploy/docker-compose.ha.yml), driven through nginx.
#   FERROFN_SKIP_BUILD=1  skip cargo and image builds (images must exist)
#   FERROFN_PROFILE=debug  node images from a debug build (default here: release, the speed users
#                          should see; `make test` uses debug images under its own tags)
#   other knobs: see deploy/lib.sh (FERROFN_PORT, FERROFN_CLUSTER, FERROFN_IOFS_DIR, ...)
set -euo pipefail
export FERROFN_PROFILE="${FERROFN_PROFILE:-release}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APP=hello
FN=hello
# The demo runs the images `make images` tags `latest` (the tests use a tag per checkout);
# FERROFN_IMAGE_TAG picks another tag (built, or expected with FERROFN_SKIP_BUILD=1, under it).
export FERROFN_IMAGE_TAG="${FERROFN_IMAGE_TAG:-latest}"
# The management API's bearer token: FERROFN_API_TOKEN if set, else one made on the first run and
# kept (mode 0600) so that later runs and `fn` contexts keep working (lib.sh reads TOKEN_FILE).
if [[ -z "${FERROFN_API_TOKEN:-}" ]]; then
  if [[ ! -s "$TOKEN_FILE" ]]; then
    mkdir -p "$(dirname "$TOKEN_FILE")"
    (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE")
    say "made an API token in $TOKEN_FILE"
  fi
  FERROFN_API_TOKEN="$(cat "$TOKEN_FILE")"
fi
export FERROFN_API_TOKEN
# The HA cluster's Postgres password: kept like the token, since the data volume keeps the password
# it was initialised with (a later `make demo-ha` on the same volume needs the same one); lib.sh reads
# PW_FILE when it exists.
if [[ $HA == 1 && -z "${FERROFN_DB_PASSWORD:-}" ]]; then
  mkdir -p "$(dirname "$PW_FILE")"
  (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$PW_FILE")
  say "made a Postgres password in $PW_FILE"
  FERROFN_DB_PASSWORD="$(cat "$PW_FILE")"
  export FERROFN_DB_PASSWORD
fi
FN_IMAGE="ferrofn/hello:$FERROFN_IMAGE_TAG"
BASE="http://$FERROFN_BIND:$FERROFN_PORT"
started=$SECONDS

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is it running? may you use $FERROFN_DOCKER_SOCK?)"
[[ ${#COMPOSE_CMD[@]} -gt 0 ]] || die "neither 'docker compose' nor 'docker-compose' is installed"
command -v curl >/dev/null || die "curl is not installed"
[[ -S "$FERROFN_DOCKER_SOCK" ]] || die "$FERROFN_DOCKER_SOCK is not a socket: set FERROFN_DOCKER_SOCK"

if [[ "${FERROFN_SKIP_BUILD:-0}" != 1 ]]; then
  say "building binaries (cargo build, $FERROFN_PROFILE; the first build takes several minutes)"
  (cd "$ROOT_DIR" && "${CARGO:-cargo}" build "${CARGO_PROFILE_ARGS[@]}" -p ferrofn-lb -p ferrofn-runner)
  (cd "$ROOT_DIR" && "${CARGO:-cargo}" build -p ferrofn-fn-hello)
  say "building images"
  FERROFN_SKIP_CARGO=1 bash "$DEPLOY_DIR/images.sh"
  if [[ $HA == 1 ]]; then
    bash "$DEPLOY_DIR/images-ha.sh"
  fi
  (cd "$ROOT_DIR" && "${CARGO:-cargo}" run -q -p ferrofn-tests --bin ferrofn-images -- --only hello)
fi
docker image inspect "$FN_IMAGE" >/dev/null 2>&1 || die "image $FN_IMAGE is missing (run without FERROFN_SKIP_BUILD)"
bash "$DEPLOY_DIR/up.sh"

# First "id" of a JSON document from the LB (the app or fn itself, or items[0]); "app_id" does not match.
json_id() { grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4; }
# `curl` returning "<status> <body>" so that 409 is not an error.
api() { # <method> <path> [json]
  local out
  out="$(curl -sS --max-time 10 -X "$1" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $FERROFN_API_TOKEN" ${3:+--data "$3"} \
    -w '\n%{http_code}' "$BASE$2")" || die "$1 $2 failed: no answer from the LB"
  API_STATUS="${out##*$'\n'}"
  API_BODY="${out%$'\n'*}"
}

say "registering app '$APP' and fn '$FN' ($FN_IMAGE)"
api POST /v2/apps "{\"name\":\"$APP\"}"
case "$API_STATUS" in
  200) ;;
  409) api GET "/v2/apps?name=$APP" ;;
  *) die "POST /v2/apps answered $API_STATUS: $API_BODY" ;;
esac
app_id="$(printf '%s' "$API_BODY" | json_id)"
[[ -n "$app_id" ]] || die "no app id in: $API_BODY"

api POST /v2/fns "{\"app_id\":\"$app_id\",\"name\":\"$FN\",\"image\":\"$FN_IMAGE\",\"memory\":128,\"timeout\":30}"
case "$API_STATUS" in
  200) ;;
  409) api GET "/v2/fns?app_id=$app_id&name=$FN" ;;
  *) die "POST /v2/fns answered $API_STATUS: $API_BODY" ;;
esac
fn_id="$(printf '%s' "$API_BODY" | json_id)"
[[ -n "$fn_id" ]] || die "no fn id in: $API_BODY"

say "invoking $FN ($fn_id)"
answer="$(curl -sS --max-time 60 -w '\n%{http_code}' -X POST -d '{"name":"ferrofn"}' "$BASE/invoke/$fn_id")" \
  || die "invoke failed: no answer from $BASE"
code="${answer##*$'\n'}"
body="${answer%$'\n'*}"
[[ "$code" == 200 ]] || die "invoke answered $code: $body"
printf '%s\n' "$body"
if [[ $HA == 1 ]]; then
  say "HA cluster up in $((SECONDS - started))s: nginx on $BASE in front of lb-1 and lb-2 (registry in Postgres), $FERROFN_RUNNERS runners. Call it again with:"
else
  say "cluster up in $((SECONDS - started))s. Call it again with:"
fi
printf "  curl -X POST -d '{\"name\":\"you\"}' %s/invoke/%s\n" "$BASE" "$fn_id"
say "the management API (/v2) needs the token in $TOKEN_FILE:"
printf '  curl -H "Authorization: Bearer $(cat %s)" %s/v2/apps\n' "$TOKEN_FILE" "$BASE"
printf '  fn create context %s --api-url %s --registry local && fn use context %s\n' "$FERROFN_CLUSTER" "$BASE" "$FERROFN_CLUSTER"
printf '  fn update context token "$(cat %s)"   # the fn CLI sends it as Authorization: Bearer\n' "$TOKEN_FILE"
printf '  (stop and remove everything: make down)\n'
