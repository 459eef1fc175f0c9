#!/usr/bin/env bash
# Builds every fuzz target once and runs each for N seconds (default 10); fails on the first crash,
# leaving the input under fuzz/artifacts/<target>/. Usage: fuzz/run.sh [seconds] [target...]
# Stable toolchain: see README.md (sanitizer-coverage through stable -C flags, no -Z, no nightly).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
shift || true
all=(call_json fdk_response engage api_bodies api_paths config frames)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# libfuzzer-sys compiles libFuzzer (C++) in its build script.
if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz: a C++ compiler is needed (Debian: apt-get install g++)" >&2
  exit 1
fi

source ./env.sh
echo "== fuzz: building ${#targets[@]} targets (release, sanitizer-coverage)"
cargo build --release --locked --target "$FUZZ_TRIPLE" $(printf -- '--bin %s ' "${targets[@]}")
bin_dir="$CARGO_TARGET_DIR/$FUZZ_TRIPLE/release"

failed=()
for t in "${targets[@]}"; do
  # New inputs go to a scratch corpus; the committed seeds (corpus/<t>) are only read.
  work="$CARGO_TARGET_DIR/corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  log="$CARGO_TARGET_DIR/fuzz-$t.log"
  echo "== fuzz: $t for ${secs}s"
  # Inputs that once crashed (regressions/<t>) are read too: every run replays them.
  dirs=("$work" "corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  if "$bin_dir/$t" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" "${dirs[@]}" >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec' "$log" | tr '\n' ' '
    echo
  else
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (input under fuzz/artifacts/$t/, log $log)" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
