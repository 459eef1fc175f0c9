#!/usr/bin/env bash
# `make bench`: one run that measures every performance target of issue 11 and ends with the TARGETS
# table (PASS / FAIL / INVALID / SKIPPED per target; bench-results/targets.txt and targets.json).
#
# Release builds of the LB, runner and bench tool; the testfn image; then, one cluster at a time:
#  1. plaintext loopback cluster (processes, PLAINTEXT gRPC: fine for a benchmark on one host, not
#     for production): runners r1 r2 and LB-A over them. `ferrofn-bench all` (floor, seq, sparse,
#     conc with RSS and CPU sampling, 64 MiB stream, cold), a large-body stream for the RSS
#     comparison, and the load step on a fresh fn (containers counted). Then runner r3 and three
#     more LBs sharing the runners, each with its own registry: LB-1 over r1 and LB-3 over r1 r2 r3
#     (`conc`: calls/s with 1 and 3 runners), LB-F over r1 r2 with FERROFN_ENGAGE_FRAME_BYTES=10240
#     (the 64 MiB stream with Fn's 10 KiB Engage data frames).
#  2. mTLS loopback cluster: certificates from `ferrofn-lb certs`, LB + 2 runners; `seq` and `conc`
#     with RSS and CPU sampling.
#  3. the compose demo cluster (deploy/docker-compose.yml through deploy/up.sh: LB + 3 runners, mTLS,
#     node images from the release binaries of step 0, under their own tag and project name so a
#     running `make demo` is not touched): `seq` through its published port, then deploy/down.sh.
#  4. the placement simulation and the criterion micro-benchmarks.
#  5. `ferrofn-bench targets` over the JSON reports in bench-results/.
# Everything started here (processes, function containers, the compose cluster) is stopped on exit.
# A figure with failed calls is INVALID (ferrofn-bench exits 3): the run still collects the other
# results, prints the TARGETS and exits 3 itself; a scenario that could not run at all makes it exit 1
# (its targets are SKIPPED with the reason).
#
# Knobs (environment): BENCH_DURATION (each conc, default 10s), BENCH_SEQ_N (1000), BENCH_COLD_N (10),
# BENCH_STREAM_SIZE (64MiB), BENCH_LARGE_SIZE (256MiB), BENCH_PLACER (naive), BENCH_STEP_DURATION
# (10s), BENCH_SKIP_COMPOSE=1, BENCH_SKIP_CRITERION=1, BENCH_PROFILE=1 (strace/perf runs, below),
# BENCH_BIN_DIR (run the loopback clusters with the ferrofn-lb and ferrofn-runner found there, e.g.
# an earlier build's, instead of this checkout's release build: before/after comparisons),
# BENCH_LOG (RUST_LOG filter of the loopback LBs and runners; default warn,ferrofn_runner=info: the
# runners log their containers' lives and each failed call with its cause, nothing per served call;
# the logs are copied to bench-results/ when the run fails or has failed calls).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
TRIPLE=x86_64-unknown-linux-gnu
REL="$ROOT/target/$TRIPLE/release"
NODE_BIN="${BENCH_BIN_DIR:-$REL}"
OUT="$ROOT/bench-results"
DURATION="${BENCH_DURATION:-10s}"
SEQ_N="${BENCH_SEQ_N:-1000}"
COLD_N="${BENCH_COLD_N:-10}"
STREAM_SIZE="${BENCH_STREAM_SIZE:-64MiB}"
LARGE_SIZE="${BENCH_LARGE_SIZE:-256MiB}"
PLACER="${BENCH_PLACER:-naive}"
STEP_DURATION="${BENCH_STEP_DURATION:-10s}"
LOG_FILTER="${BENCH_LOG:-warn,ferrofn_runner=info}"
CLIENTS=16
# Fn's Engage data frames (10 KiB), for the LB that streams the way Fn's does.
FN_FRAME_BYTES=10240
IMAGE=ferrofn/testfn:latest
RUN_ID="bench-$$"
# The compose cluster: its own project (prefix of its containers, volumes, network and runner labels)
# and node image tag, so that a `make demo` cluster and its `latest` images stay as they are.
COMPOSE_CLUSTER="ferrofn-$RUN_ID"
COMPOSE_TAG=bench
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferrofn-bench.XXXXXX")"
PIDS=()
RUNNER_NAMES=()
COMPOSE_UP=0
COMPOSE_ENV=()
BENCH=""
TARGETS_DONE=0

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# Stops the processes started so far: LBs and runners (graceful, bounded), then any function
# container their runners left.
stop_cluster() {
    set +e
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    # Bounded wait for the graceful stop (runners drain and remove their containers), then KILL.
    for _ in $(seq 1 100); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    # Function containers of this run's runners, should a runner have died without draining.
    for name in "${RUNNER_NAMES[@]}"; do
        ids="$(docker ps -aq --filter "label=ferrofn.runner=$name")"
        [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
    done
    PIDS=()
    RUNNER_NAMES=()
    set -e
}

compose_down() {
    [ "$COMPOSE_UP" = 1 ] || return 0
    log "compose cluster: down"
    env "${COMPOSE_ENV[@]}" bash deploy/down.sh >>"$WORK/compose.log" 2>&1 ||
        log "deploy/down.sh failed for $COMPOSE_CLUSTER (see $OUT/compose.log)"
    # The node images were built for this run from its release binaries: nothing else uses them.
    docker image rm "ferrofn/lb:$COMPOSE_TAG" "ferrofn/runner:$COMPOSE_TAG" >>"$WORK/compose.log" 2>&1 ||
        log "could not remove ferrofn/lb:$COMPOSE_TAG, ferrofn/runner:$COMPOSE_TAG (see $OUT/compose.log)"
    COMPOSE_UP=0
}

cleanup() {
    local status=$?
    stop_cluster
    set +e
    compose_down
    if [ "$status" != 0 ] && [ -d "$WORK" ]; then
        for f in "$WORK"/*.log; do [ -f "$f" ] && cp "$f" "$OUT/" 2>/dev/null; done
        log "failed; process logs copied to $OUT/"
        # What finished is still judged: the targets whose figures are missing are SKIPPED.
        if [ "$TARGETS_DONE" = 0 ] && [ -n "$BENCH" ] && [ -f "$OUT/all.json" ]; then
            "$BENCH" --allow-failures targets --results "$OUT" | tee "$OUT/targets.txt"
        fi
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs ferrofn-bench with its tables on the terminal and in OUTFILE. Exit status 3 (figures with
# failed calls, marked INVALID) is remembered and the run goes on, so that the remaining results
# and the processes' /metrics are still collected. Any other failure (a scenario that could not run;
# the tool still writes the JSON of what finished) is remembered too: the targets that need the
# missing figures are SKIPPED, and the run exits 1 at the end.
INVALID=0
ERRORS=0
run_bench() {
    local out="$1" rc
    shift
    set +e
    "$BENCH" "$@" | tee "$out"
    rc=${PIPESTATUS[0]}
    set -e
    case "$rc" in
        0) ;;
        3) INVALID=1; log "figures with failed calls (INVALID) in $out; collecting the rest" ;;
        *) ERRORS=1; log "ferrofn-bench $* failed (exit $rc); going on, its targets will be SKIPPED" ;;
    esac
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Polls `cmd` until it succeeds or `secs` pass.
wait_for() {
    local secs="$1" what="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
        sleep 0.1
    done
}

# Starts a runner on loopback (ephemeral ports; it prints grpc_addr= / http_addr=): plaintext, or
# mTLS with the files `ferrofn-lb certs` wrote into CERTS. Sets R_PID, R_GRPC, R_HTTP.
start_runner() { # NAME [CERTS]
    local name="$1" certs="${2:-}"
    local tls=(--plaintext)
    if [ -n "$certs" ]; then
        tls=(--tls-ca "$certs/ca.pem" --tls-cert "$certs/runner-$name.pem" --tls-key "$certs/runner-$name-key.pem")
    fi
    RUNNER_NAMES+=("$name")
    mkdir -p "$WORK/iofs-$name"
    NO_COLOR=1 RUST_LOG="$LOG_FILTER" "$NODE_BIN/ferrofn-runner" "${tls[@]}" --listen-address 127.0.0.1 \
        --grpc-port 0 --port 0 --runner-name "$name" --iofs-path "$WORK/iofs-$name" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    R_PID=$!
    PIDS+=("$R_PID")
    wait_for 30 "runner $name's address" grep -q '^http_addr=' "$WORK/$name.out"
    R_GRPC="$(sed -n 's/^grpc_addr=//p' "$WORK/$name.out" | head -1)"
    R_HTTP="$(sed -n 's/^http_addr=//p' "$WORK/$name.out" | head -1)"
}

# Starts an LB on loopback over RUNNERS (comma-separated host:port), with its own sqlite registry
# and any extra VAR=VALUE settings. Sets L_PID and L_URL.
start_lb() { # NAME RUNNERS [VAR=VALUE ...]
    local name="$1" runners="$2" port
    shift 2
    port="$(free_port)"
    env "$@" FN_PORT="$port" FERROFN_LISTEN_ADDRESS=127.0.0.1 FN_PLACER="$PLACER" \
        FN_RUNNER_ADDRESSES="$runners" FN_DB_URL="sqlite3://$WORK/$name.db" \
        FN_LOG_LEVEL=warn RUST_LOG="$LOG_FILTER" NO_COLOR=1 "$NODE_BIN/ferrofn-lb" >"$WORK/$name.log" 2>&1 &
    L_PID=$!
    PIDS+=("$L_PID")
    L_URL="http://127.0.0.1:$port"
    wait_for 30 "LB $name on $L_URL" curl -sf "$L_URL/version"
}

# True once the LB at BASE sees every runner it is configured with up (its health loop probes every
# 1-2 s), so that a scenario over N runners really spreads over N.
all_runners_up() { # BASE
    curl -sf "$1/health/ready" | jq -e '.runners_up > 0 and .runners_up == .runners_configured'
}

# Registers fn NAME (the testfn image) in app ferrofn-bench (created if missing) on the LB at BASE
# and prints its id. Extra curl arguments (the bearer token) follow.
new_fn() { # BASE NAME [CURL_ARGS...]
    local base="$1" name="$2" app id
    shift 2
    app="$(curl -sf "$@" "$base/v2/apps?name=ferrofn-bench" | jq -r '.items[0].id // empty')"
    if [ -z "$app" ]; then
        app="$(curl -sf "$@" -X POST "$base/v2/apps" -H 'Content-Type: application/json' \
            -d '{"name":"ferrofn-bench"}' | jq -r .id)"
    fi
    [ -n "$app" ] && [ "$app" != null ] || die "creating the app on $base failed"
    id="$(curl -sf "$@" -X POST "$base/v2/fns" -H 'Content-Type: application/json' \
        -d "{\"app_id\":\"$app\",\"name\":\"$name\",\"image\":\"$IMAGE\",\"memory\":128,\"timeout\":60,\"idle_timeout\":30}" \
        | jq -r .id)"
    [ -n "$id" ] && [ "$id" != null ] || die "creating fn $name on $base failed"
    printf '%s\n' "$id"
}

# Waits until the LB at BASE sees its runners and fn ID answers.
wait_ready() { # BASE FN_ID
    wait_for 30 "$1 to see all its runners up" all_runners_up "$1"
    wait_for 60 "a first successful call of $2 on $1" curl -sf -X POST "$1/invoke/$2" -d '{"echoContent":"x"}'
}

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log "$OUT"/*.prom "$OUT"/*.skipped

log "release build of ferrofn-lb, ferrofn-runner, ferrofn-bench"
"$CARGO" build --release -p ferrofn-lb -p ferrofn-runner -p ferrofn-bench
log "function image $IMAGE"
"$CARGO" build -q -p ferrofn-fn-testfn
FERROFN_IMAGE_TAG=latest "$CARGO" run -q -p ferrofn-tests --bin ferrofn-images -- --only testfn

BENCH="$REL/ferrofn-bench"
MEASURE_START=$SECONDS

# ---- 1. Plaintext loopback cluster -------------------------------------------------------------
start_runner "ferrofn-$RUN_ID-r1"; RUNNER1_PID=$R_PID; R1="$R_GRPC"; R1_HTTP="$R_HTTP"
start_runner "ferrofn-$RUN_ID-r2"; RUNNER2_PID=$R_PID; R2="$R_GRPC"; R2_HTTP="$R_HTTP"
log "plaintext runners: r1 $R1, r2 $R2"
start_lb lb "$R1,$R2" FERROFN_PLAINTEXT=true
LB="$L_URL"; LB_PID=$L_PID
fn_id="$(new_fn "$LB" testfn)"
wait_ready "$LB" "$fn_id"
log "LB-A: $LB (pid $LB_PID, placer $PLACER, runners r1 r2), fn testfn: $fn_id"

WATCH=(--rss-pid "lb=$LB_PID" --rss-pid "runner1=$RUNNER1_PID" --rss-pid "runner2=$RUNNER2_PID"
       --fn-cpu-label "ferrofn.runner=${RUNNER_NAMES[0]}" --fn-cpu-label "ferrofn.runner=${RUNNER_NAMES[1]}")

log "contract run (floor, seq, sparse, conc $DURATION, stream $STREAM_SIZE, cold x$COLD_N)"
run_bench "$OUT/all.txt" "${WATCH[@]}" --json "$OUT/all.json" all --url "$LB" --fn-id "$fn_id" \
    --api-url "$LB" --seq-n "$SEQ_N" --clients "$CLIENTS" --duration "$DURATION" \
    --size "$STREAM_SIZE" --cold-n "$COLD_N" --idle-timeout 5

log "large-body stream ($LARGE_SIZE) for the RSS comparison"
run_bench "$OUT/stream-large.txt" "${WATCH[@]}" --json "$OUT/stream-large.json" stream --url "$LB" \
    --fn-id "$fn_id" --size "$LARGE_SIZE" --runs 1

# Peak RSS during the 64 MiB stream vs during the large one, per process (streaming must not buffer
# bodies). No verdict here: the placer picks the runner of each transfer, so a runner that carried
# none in one of the two streams shows its idle memory there. Target 8b of the TARGETS compares the
# LB and the largest runner.
python3 - "$OUT/all.json" "$OUT/stream-large.json" <<'PY' | tee "$OUT/rss-stream.txt" || true
import json, sys
small = {f["label"]: f for f in json.load(open(sys.argv[1])).get("rss", []) if f["scenario"] == "stream"}
large = {f["label"]: f for f in json.load(open(sys.argv[2])).get("rss", []) if f["scenario"] == "stream"}
print("peak RSS while streaming, per process (small body vs large body; the verdict is target 8b)")
for label in sorted(small):
    a, b = small[label].get("peak_kib"), large.get(label, {}).get("peak_kib")
    if not a or not b:
        continue
    # A peak measured while transfers failed is not the peak of the transfer.
    failed = small[label].get("failed", 0) + large[label].get("failed", 0)
    note = f"  INVALID ({failed} failed transfer{'' if failed == 1 else 's'})" if failed else ""
    print(f"  {label:8} {a/1024:7.1f} MiB  {b/1024:7.1f} MiB  x{b / a:.3f}{note}")
PY

curl -sf "http://$R1_HTTP/metrics" >"$OUT/runner1-metrics.prom" || true
curl -sf "http://$R2_HTTP/metrics" >"$OUT/runner2-metrics.prom" || true
curl -sf "$LB/metrics" >"$OUT/lb-metrics.prom" || true

if [ "${BENCH_PROFILE:-0}" = 1 ]; then
    # Where the warm-call time goes: syscalls per call (strace -c; it slows the processes, so it
    # gets its own run) and a CPU profile (perf; release binaries are stripped, so user-space
    # frames resolve to the binary only, kernel frames to symbols).
    log "profile: strace -c over 500 sequential calls"
    STRACES=()
    for spec in "lb:$LB_PID" "runner1:$RUNNER1_PID" "runner2:$RUNNER2_PID"; do
        strace -c -f -o "$OUT/strace-${spec%%:*}.txt" -p "${spec#*:}" 2>/dev/null &
        STRACES+=($!)
    done
    sleep 1 # strace attaches asynchronously and has no readiness signal
    run_bench "$OUT/strace-seq.txt" seq --url "$LB" --fn-id "$fn_id" --n 500 --warmup 0
    kill -INT "${STRACES[@]}" 2>/dev/null || true
    wait "${STRACES[@]}" 2>/dev/null || true
    if command -v perf >/dev/null; then
        log "profile: perf over 3000 sequential calls"
        perf record -q -F 4000 -g -o "$WORK/perf.data" -p "$LB_PID,$RUNNER1_PID,$RUNNER2_PID" \
            >/dev/null 2>&1 &
        PERF=$!
        sleep 1
        run_bench "$OUT/perf-seq.txt" seq --url "$LB" --fn-id "$fn_id" --n 3000
        kill -INT "$PERF"; wait "$PERF" || true
        perf report -i "$WORK/perf.data" --no-children --sort pid,dso --stdio -g none 2>/dev/null \
            | grep -v '^$' | head -40 >"$OUT/perf-dso.txt" || true
        perf report -i "$WORK/perf.data" --no-children --sort comm,sym --stdio -g none 2>/dev/null \
            | grep -v '^$' | head -80 >"$OUT/perf-sym.txt" || true
    fi
fi

# The load step: a fn never called, so no runner has a container for it; 16 clients at once.
step_fn="$(new_fn "$LB" step)"
log "load step: $CLIENTS clients at once on a fresh fn ($step_fn) for $STEP_DURATION, containers counted"
run_bench "$OUT/step.txt" "${WATCH[@]}" --json "$OUT/step.json" step --url "$LB" --fn-id "$step_fn" \
    --clients "$CLIENTS" --duration "$STEP_DURATION" --containers-label "ferrofn.fn_id=$step_fn"

start_runner "ferrofn-$RUN_ID-r3"; R3="$R_GRPC"
start_lb lb-1 "$R1" FERROFN_PLAINTEXT=true; LB1="$L_URL"
start_lb lb-3 "$R1,$R2,$R3" FERROFN_PLAINTEXT=true; LB3="$L_URL"
start_lb lb-f "$R1,$R2" FERROFN_PLAINTEXT=true FERROFN_ENGAGE_FRAME_BYTES="$FN_FRAME_BYTES"; LBF="$L_URL"
fn_1="$(new_fn "$LB1" testfn)"
fn_3="$(new_fn "$LB3" testfn)"
fn_f="$(new_fn "$LBF" testfn)"
for spec in "$LB1 $fn_1" "$LB3 $fn_3" "$LBF $fn_f"; do
    # shellcheck disable=SC2086 # two words: base URL and fn id
    wait_ready $spec
done
log "more LBs on the same runners (own registries): LB-1 over r1, LB-3 over r1 r2 r3 (r3 $R3), LB-F over r1 r2 with $FN_FRAME_BYTES-byte Engage frames"

log "calls/s at $CLIENTS clients, 1 runner (LB-1, conc $DURATION)"
run_bench "$OUT/conc-1runner.txt" --json "$OUT/conc-1runner.json" conc --url "$LB1" --fn-id "$fn_1" \
    --clients "$CLIENTS" --duration "$DURATION"
log "calls/s at $CLIENTS clients, 3 runners (LB-3, conc $DURATION)"
run_bench "$OUT/conc-3runners.txt" --json "$OUT/conc-3runners.json" conc --url "$LB3" --fn-id "$fn_3" \
    --clients "$CLIENTS" --duration "$DURATION"
log "stream $STREAM_SIZE through LB-F (FERROFN_ENGAGE_FRAME_BYTES=$FN_FRAME_BYTES)"
run_bench "$OUT/stream-frames10k.txt" --json "$OUT/stream-frames10k.json" stream --url "$LBF" \
    --fn-id "$fn_f" --size "$STREAM_SIZE" --runs 3

log "plaintext cluster: stop"
stop_cluster

# ---- 2. mTLS loopback cluster ------------------------------------------------------------------
T1="ferrofn-$RUN_ID-t1"
T2="ferrofn-$RUN_ID-t2"
log "mTLS cluster: certificates (ferrofn-lb certs), LB + 2 runners"
"$NODE_BIN/ferrofn-lb" certs --out "$WORK/certs" --runner-names "$T1,$T2" >"$WORK/certs.log" 2>&1 ||
    die "ferrofn-lb certs failed: $(cat "$WORK/certs.log")"
start_runner "$T1" "$WORK/certs"; TLS1_PID=$R_PID; TA1="$R_GRPC"
start_runner "$T2" "$WORK/certs"; TLS2_PID=$R_PID; TA2="$R_GRPC"
start_lb lb-tls "$TA1,$TA2" FERROFN_TLS_CA="$WORK/certs/ca.pem" FERROFN_TLS_CERT="$WORK/certs/lb.pem" \
    FERROFN_TLS_KEY="$WORK/certs/lb-key.pem"
LBT="$L_URL"; LBT_PID=$L_PID
fn_t="$(new_fn "$LBT" testfn)"
wait_ready "$LBT" "$fn_t"
log "mTLS LB: $LBT (pid $LBT_PID, runners $TA1 $TA2), fn testfn: $fn_t"
TLS_WATCH=(--rss-pid "lb-tls=$LBT_PID" --rss-pid "runner-tls1=$TLS1_PID" --rss-pid "runner-tls2=$TLS2_PID")
log "mTLS: seq x$SEQ_N"
run_bench "$OUT/tls-seq.txt" "${TLS_WATCH[@]}" --json "$OUT/tls-seq.json" seq --url "$LBT" \
    --fn-id "$fn_t" --n "$SEQ_N"
log "mTLS: conc $CLIENTS clients $DURATION with CPU sampling"
run_bench "$OUT/tls-conc.txt" "${TLS_WATCH[@]}" --json "$OUT/tls-conc.json" conc --url "$LBT" \
    --fn-id "$fn_t" --clients "$CLIENTS" --duration "$DURATION"
log "mTLS cluster: stop"
stop_cluster

# ---- 3. The compose demo cluster ---------------------------------------------------------------
if [ "${BENCH_SKIP_COMPOSE:-0}" = 1 ]; then
    log "compose demo cluster: skipped (BENCH_SKIP_COMPOSE=1)"
    echo "BENCH_SKIP_COMPOSE=1" >"$OUT/compose-seq.skipped"
else
    COMPOSE_PORT="$(free_port)"
    COMPOSE_TOKEN="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
    COMPOSE_ENV=(FERROFN_CLUSTER="$COMPOSE_CLUSTER" FERROFN_PORT="$COMPOSE_PORT"
                 FERROFN_IMAGE_TAG="$COMPOSE_TAG" FERROFN_PROFILE=release FERROFN_API_TOKEN="$COMPOSE_TOKEN"
                 FERROFN_TOKEN_FILE="$WORK/compose-token")
    log "compose demo cluster: node images from the release binaries (ferrofn/lb:$COMPOSE_TAG, ferrofn/runner:$COMPOSE_TAG)"
    compose_ok=1
    env "${COMPOSE_ENV[@]}" FERROFN_SKIP_CARGO=1 bash deploy/images.sh >>"$WORK/compose.log" 2>&1 || compose_ok=0
    if [ "$compose_ok" = 1 ]; then
        log "compose demo cluster: up ($COMPOSE_CLUSTER, LB on 127.0.0.1:$COMPOSE_PORT, 3 runners, mTLS)"
        COMPOSE_UP=1
        env "${COMPOSE_ENV[@]}" bash deploy/up.sh >>"$WORK/compose.log" 2>&1 || compose_ok=0
    fi
    if [ "$compose_ok" = 1 ]; then
        CB="http://127.0.0.1:$COMPOSE_PORT"
        AUTH=(-H "Authorization: Bearer $COMPOSE_TOKEN")
        fn_c="$(new_fn "$CB" testfn "${AUTH[@]}")"
        wait_ready "$CB" "$fn_c"
        log "compose: seq x$SEQ_N through the published port ($CB, fn $fn_c)"
        run_bench "$OUT/compose-seq.txt" --json "$OUT/compose-seq.json" seq --url "$CB" \
            --fn-id "$fn_c" --n "$SEQ_N"
    else
        ERRORS=1
        cp "$WORK/compose.log" "$OUT/" 2>/dev/null || true
        echo "the compose cluster did not come up (compose.log)" >"$OUT/compose-seq.skipped"
        log "compose demo cluster failed to start; see $OUT/compose.log"
    fi
    compose_down
fi
MEASURED_S=$((SECONDS - MEASURE_START))

# ---- 4. Placement simulation and micro-benchmarks ----------------------------------------------
log "placement simulation"
"$BENCH" --json "$OUT/sim.json" sim | tee "$OUT/sim.txt"

if [ "${BENCH_SKIP_CRITERION:-0}" != 1 ]; then
    log "criterion micro-benchmarks"
    "$CARGO" bench -p ferrofn-bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3 \
        2>&1 | grep -v '^\s*\(Compiling\|Benchmarking\)' | tee "$OUT/criterion.txt"
fi

# ---- 5. TARGETS --------------------------------------------------------------------------------
log "targets (clusters measured in ${MEASURED_S}s; whole run after the build $((SECONDS - MEASURE_START))s)"
set +e
"$BENCH" --json "$OUT/targets.json" targets --results "$OUT" | tee "$OUT/targets.txt"
rc=${PIPESTATUS[0]}
set -e
TARGETS_DONE=1
[ "$rc" = 0 ] || [ "$rc" = 3 ] || ERRORS=1
[ "$rc" = 3 ] && INVALID=1

if [ "$ERRORS" = 1 ]; then
    log "results in $OUT/, but a scenario could not run (its targets are SKIPPED)"
    exit 1
fi
if [ "$INVALID" = 1 ]; then
    log "results in $OUT/, but figures had failed calls (marked INVALID): not a valid benchmark run"
    exit 3
fi
log "results in $OUT/"
