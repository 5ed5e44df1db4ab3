#!/usr/bin/env bash
# Coverage-guided fuzzing of ShardKit's parsers of untrusted bytes (libFuzzer + AddressSanitizer).
#   bash scripts/fuzz.sh TARGET [SECONDS]    one target (default 600 s)
#   bash scripts/fuzz.sh all [SECONDS]       every target in turn, SECONDS each
#   bash scripts/fuzz.sh list                the targets
# Builds .build-fuzz/debug/shardkit-fuzz (skip with SHARDKIT_FUZZ_NO_BUILD=1), grows the working
# corpus .fuzz-work/TARGET (outside git) from Fuzz/corpus/TARGET, writes reproducers of crashes,
# timeouts and OOMs to Fuzz/crashes/TARGET/, and prints executions and coverage at the end.
# Extra libFuzzer flags: SHARDKIT_FUZZ_FLAGS="-jobs=2 -workers=2" etc. See Fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(safetensors json zip pickle pytorch manifest rules hdf5-report decoders)
BIN=.build-fuzz/debug/shardkit-fuzz

usage() { echo "usage: $0 TARGET|all|list [SECONDS]   targets: ${TARGETS[*]}" >&2; exit 64; }
[ $# -ge 1 ] || usage
what=$1
seconds=${2:-600}
if [ "$what" = list ]; then printf '%s\n' "${TARGETS[@]}"; exit 0; fi
if [ "$what" = all ]; then selected=("${TARGETS[@]}"); else
    [[ " ${TARGETS[*]} " == *" $what "* ]] || usage
    selected=("$what")
fi

if [ "${SHARDKIT_FUZZ_NO_BUILD:-0}" != 1 ]; then
    # -c debug: modules are built with -enable-testing (the @testable imports of the internal
    # parsers); -O: optimized all the same.
    swift build --scratch-path .build-fuzz --product shardkit-fuzz -c debug \
        -Xswiftc -O -Xswiftc -sanitize=fuzzer,address \
        -Xswiftc -DSHARDKIT_LIBFUZZER -Xswiftc -DSHARDKIT_FUZZ_TESTABLE 2>&1 \
        | grep -v 'Cannot export local symbol' || true
    [ -x "$BIN" ] || { echo "build failed" >&2; exit 1; }
fi

for t in "${selected[@]}"; do
    work=.fuzz-work/$t
    crashes=Fuzz/crashes/$t
    mkdir -p "$work" "$crashes"
    dict=()
    [ -f "Fuzz/dict/$t.dict" ] && dict=(-dict="Fuzz/dict/$t.dict")
    log=.fuzz-work/$t.log
    echo "== fuzzing $t for $seconds s (log: $log)"
    set +e
    # shellcheck disable=SC2086
    SHARDKIT_FUZZ_TARGET=$t ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1} \
        "$BIN" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$crashes/" "${dict[@]}" ${SHARDKIT_FUZZ_FLAGS:-} \
        "$work" "Fuzz/corpus/$t" > "$log" 2>&1
    status=$?
    set -e
    grep -E '^#[0-9]+' "$log" | tail -1 || true
    grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' "$log" || true
    echo "working corpus: $(find "$work" -type f | wc -l) files, $(du -sh "$work" | cut -f1)"
    if [ $status -ne 0 ]; then
        echo "!! $t: libFuzzer exited with status $status; reproducer(s) in $crashes:" >&2
        grep -E 'ERROR: |SUMMARY: |Test unit written to|Fatal error' "$log" | head -10 >&2 || true
        exit $status
    fi
done
