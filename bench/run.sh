#!/usr/bin/env bash
# `make bench`: release builds of the LB, runner and bench tool; the testfn image; a local cluster
# (one LB + two runners as processes on loopback, PLAINTEXT gRPC between them: fine for a benchmark
# on one host, not for production); then the contract run (`ferrofn-bench all` with RSS and CPU
# sampling), a large-body stream for the RSS comparison, the placement simulation and the criterion
# micro-benchmarks. Results go to bench-results/. Everything started here is stopped on exit.
# A figure with failed calls is INVALID (ferrofn-bench exits 3): the run still collects the other
# results and the /metrics, then exits 3 itself.
#
# Knobs (environment): BENCH_DURATION (conc, default 10s), BENCH_SEQ_N (1000), BENCH_COLD_N (10),
# BENCH_STREAM_SIZE (64MiB), BENCH_LARGE_SIZE (256MiB), BENCH_PLACER (naive), BENCH_SKIP_CRITERION=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
TRIPLE=x86_64-unknown-linux-gnu
REL="$ROOT/target/$TRIPLE/release"
OUT="$ROOT/bench-results"
DURATION="${BENCH_DURATION:-10s}"
SEQ_N="${BENCH_SEQ_N:-1000}"
COLD_N="${BENCH_COLD_N:-10}"
STREAM_SIZE="${BENCH_STREAM_SIZE:-64MiB}"
LARGE_SIZE="${BENCH_LARGE_SIZE:-256MiB}"
PLACER="${BENCH_PLACER:-naive}"
IMAGE=ferrofn/testfn:latest
RUN_ID="bench-$$"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferrofn-bench.XXXXXX")"
PIDS=()
RUNNER_NAMES=()

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# Stops the cluster: LB and runners (graceful, bounded), then any function container they left.
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

cleanup() {
    local status=$?
    stop_cluster
    set +e
    if [ "$status" != 0 ] && [ -d "$WORK" ]; then
        for f in "$WORK"/*.log; do [ -f "$f" ] && cp "$f" "$OUT/" 2>/dev/null; done
        log "failed; process logs copied to $OUT/"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs ferrofn-bench with its tables on the terminal and in OUTFILE. Exit status 3 (figures with
# failed calls, marked INVALID) is remembered and the run goes on, so that the remaining results
# and the processes' /metrics are still collected; any other failure stops the run.
INVALID=0
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
        *) die "ferrofn-bench $* failed (exit $rc)" ;;
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

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.txt "$OUT"/*.log "$OUT"/*.prom

log "release build of ferrofn-lb, ferrofn-runner, ferrofn-bench"
"$CARGO" build --release -p ferrofn-lb -p ferrofn-runner -p ferrofn-bench
log "function image $IMAGE"
"$CARGO" build -q -p ferrofn-fn-testfn
FERROFN_IMAGE_TAG=latest "$CARGO" run -q -p ferrofn-tests --bin ferrofn-images -- --only testfn

BENCH="$REL/ferrofn-bench"

# Runners: plaintext gRPC on loopback, ephemeral ports (they print grpc_addr= / http_addr=).
RUNNER_ADDRS=()
RUNNER_HTTP=()
for i in 1 2; do
    name="ferrofn-$RUN_ID-r$i"
    RUNNER_NAMES+=("$name")
    mkdir -p "$WORK/iofs$i"
    NO_COLOR=1 RUST_LOG=warn "$REL/ferrofn-runner" --plaintext --listen-address 127.0.0.1 \
        --grpc-port 0 --port 0 --runner-name "$name" --iofs-path "$WORK/iofs$i" \
        >"$WORK/runner$i.out" 2>"$WORK/runner$i.log" &
    PIDS+=($!)
    eval "RUNNER${i}_PID=$!"
    wait_for 30 "runner $i's address" grep -q '^http_addr=' "$WORK/runner$i.out"
    RUNNER_ADDRS+=("$(sed -n 's/^grpc_addr=//p' "$WORK/runner$i.out" | head -1)")
    RUNNER_HTTP+=("$(sed -n 's/^http_addr=//p' "$WORK/runner$i.out" | head -1)")
done
log "runners: ${RUNNER_ADDRS[*]} (plaintext)"

LB_PORT="$(free_port)"
LB="http://127.0.0.1:$LB_PORT"
FN_PORT="$LB_PORT" FERROFN_LISTEN_ADDRESS=127.0.0.1 FERROFN_PLAINTEXT=true FN_PLACER="$PLACER" \
    FN_RUNNER_ADDRESSES="$(IFS=,; echo "${RUNNER_ADDRS[*]}")" FN_DB_URL="sqlite3://$WORK/fn.db" \
    FN_LOG_LEVEL=warn NO_COLOR=1 "$REL/ferrofn-lb" >"$WORK/lb.log" 2>&1 &
LB_PID=$!
PIDS+=("$LB_PID")
wait_for 30 "the LB on $LB" curl -sf "$LB/version"
log "LB: $LB (pid $LB_PID, placer $PLACER)"

app_id="$(curl -sf -X POST "$LB/v2/apps" -H 'Content-Type: application/json' \
    -d '{"name":"ferrofn-bench"}' | jq -r .id)"
[ -n "$app_id" ] && [ "$app_id" != null ] || die "creating the app failed"
fn_id="$(curl -sf -X POST "$LB/v2/fns" -H 'Content-Type: application/json' \
    -d "{\"app_id\":\"$app_id\",\"name\":\"testfn\",\"image\":\"$IMAGE\",\"memory\":128,\"timeout\":60,\"idle_timeout\":30}" \
    | jq -r .id)"
[ -n "$fn_id" ] && [ "$fn_id" != null ] || die "creating the fn failed"
# Wait until the LB sees the runners up (its health loop probes every 2 s).
wait_for 30 "a first successful call" curl -sf -X POST "$LB/invoke/$fn_id" -d '{"echoContent":"x"}'
log "fn testfn: $fn_id"

WATCH=(--rss-pid "lb=$LB_PID" --rss-pid "runner1=$RUNNER1_PID" --rss-pid "runner2=$RUNNER2_PID"
       --fn-cpu-label "ferrofn.runner=${RUNNER_NAMES[0]}" --fn-cpu-label "ferrofn.runner=${RUNNER_NAMES[1]}")

log "contract run (floor, seq, sparse, conc $DURATION, stream $STREAM_SIZE, cold x$COLD_N)"
run_bench "$OUT/all.txt" "${WATCH[@]}" --json "$OUT/all.json" all --url "$LB" --fn-id "$fn_id" \
    --api-url "$LB" --seq-n "$SEQ_N" --duration "$DURATION" --size "$STREAM_SIZE" --cold-n "$COLD_N" \
    --idle-timeout 5

log "large-body stream ($LARGE_SIZE) for the RSS comparison"
run_bench "$OUT/stream-large.txt" "${WATCH[@]}" --json "$OUT/stream-large.json" stream --url "$LB" \
    --fn-id "$fn_id" --size "$LARGE_SIZE" --runs 1

# Peak RSS during the 64 MiB stream vs during the large one: streaming must not buffer bodies.
python3 - "$OUT/all.json" "$OUT/stream-large.json" <<'PY' | tee "$OUT/rss-stream.txt"
import json, sys
small = {f["label"]: f for f in json.load(open(sys.argv[1]))["rss"] if f["scenario"] == "stream"}
large = {f["label"]: f for f in json.load(open(sys.argv[2]))["rss"] if f["scenario"] == "stream"}
print("peak RSS while streaming (small body vs large body; limit: within 10%)")
for label in sorted(small):
    a, b = small[label].get("peak_kib"), large.get(label, {}).get("peak_kib")
    if not a or not b:
        continue
    ratio = b / a
    # A peak measured while transfers failed is not the peak of the transfer.
    failed = small[label].get("failed", 0) + large[label].get("failed", 0)
    if failed:
        verdict = f"INVALID ({failed} failed transfer{'' if failed == 1 else 's'})"
    else:
        verdict = "PASS" if ratio <= 1.10 else "FAIL"
    print(f"  {label:8} {a/1024:7.1f} MiB  {b/1024:7.1f} MiB  x{ratio:.3f}  {verdict}")
PY

for i in 1 2; do
    curl -sf "http://${RUNNER_HTTP[$((i-1))]}/metrics" >"$OUT/runner$i-metrics.prom" || true
done
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

stop_cluster

log "placement simulation"
"$BENCH" --json "$OUT/sim.json" sim | tee "$OUT/sim.txt"

if [ "${BENCH_SKIP_CRITERION:-0}" != 1 ]; then
    log "criterion micro-benchmarks"
    "$CARGO" bench -p ferrofn-bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3 \
        2>&1 | grep -v '^\s*\(Compiling\|Benchmarking\)' | tee "$OUT/criterion.txt"
fi

if [ "$INVALID" = 1 ]; then
    log "results in $OUT/, but figures had failed calls (marked INVALID): not a valid benchmark run"
    exit 3
fi
log "results in $OUT/"
