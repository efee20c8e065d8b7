#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target for a bounded time (see docs/fuzzing.md).
#
#   FUZZ_SECONDS   seconds per target (default 30)
#   FUZZ_TIMEOUT   seconds one input may take before it counts as a hang (default 10)
#   FUZZ_TARGETS   space-separated subset of targets (default: all)
#
# Runs on the stable toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Zsanitizer).
# Each target starts from a copy of fuzz/corpus/<target> in a temporary directory, so the
# committed seeds never grow. Crashes are kept in fuzz/artifacts/<target>/. Exits non-zero
# if any target crashed, hung or failed to start.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_TIMEOUT=${FUZZ_TIMEOUT:-10}
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1
export DEBIAN_FRONTEND=noninteractive

# Builds on a shared machine take turns through one lock; CI machines need not have it.
lock=()
if command -v flock >/dev/null 2>&1; then
    lock=(flock "${HARPO_CARGO_LOCK:-/tmp/harpo-cargo.lock}")
fi

# libfuzzer-sys compiles libFuzzer itself (C++).
if ! command -v c++ >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq g++ >/dev/null
fi

if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    "${lock[@]}" cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

"${lock[@]}" cargo fuzz build
# The committed seeds still parse (valid-*) or are refused (bad-*) as their names say.
(cd fuzz && "${lock[@]}" cargo test --quiet --test seeds)

bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2086 # a list of names, split on whitespace
mapfile -t targets < <(printf '%s\n' ${FUZZ_TARGETS:-$(cargo fuzz list)})
failed=0
summary=()
for t in "${targets[@]}"; do
    if [ ! -x "$bin_dir/$t" ]; then
        summary+=("$t|skipped (not built: see docs/fuzzing.md)|-|-")
        continue
    fi
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    if [ -d "fuzz/corpus/$t" ]; then
        cp -R "fuzz/corpus/$t/." "$work/$t/"
    fi
    echo "==> $t: ${FUZZ_SECONDS}s from $(ls "$work/$t" | wc -l) seeds"
    log="$work/$t.log"
    status=ok
    # The options cargo-fuzz itself passes (detect_odr_violation); artifacts where
    # `cargo fuzz run` would put them.
    if ! ASAN_OPTIONS=detect_odr_violation=0 "$bin_dir/$t" \
        -max_total_time="$FUZZ_SECONDS" -timeout="$FUZZ_TIMEOUT" \
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
        "$work/$t" >"$log" 2>&1; then
        status=FAILED
        failed=1
        tail -n 60 "$log" >&2
    fi
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    secs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -n 1)
    if [ -z "$runs" ]; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    fi
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ -n "$crash" ]; then
        status="CRASH: $crash"
        echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $crash" >&2
    fi
    summary+=("$t|$status|${runs:-?}|${secs:-?}")
done

echo
printf '%-18s %12s %8s  %s\n' target executions seconds status
for row in "${summary[@]}"; do
    IFS='|' read -r t status runs secs <<<"$row"
    printf '%-18s %12s %8s  %s\n' "$t" "$runs" "$secs" "$status"
done
exit "$failed"
