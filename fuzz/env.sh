# Sourced by run.sh: the flags cargo-fuzz passes for `--sanitizer none`, on the stable toolchain.
# SanitizerCoverage through LLVM's sancov-module pass: inline 8-bit edge counters, the PC table and
# comparison tracing are what libFuzzer's coverage guidance reads. All are stable `-C` options, so no
# `-Z` flag (and no nightly) is involved. RUSTFLAGS replaces .cargo/config.toml's `+crt-static`:
# libFuzzer is C++ and links dynamically against libstdc++.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(dirname "${BASH_SOURCE[0]}")/target}"
FUZZ_TRIPLE=x86_64-unknown-linux-gnu
