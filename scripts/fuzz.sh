#!/usr/bin/env bash
# Fuzzes pagerelay's three decoders of untrusted bytes with cargo-fuzz (libFuzzer), for a bounded
# time per target, and fails on any crash:
#
#   scripts/fuzz.sh                    60 s per target (what scripts/test.sh runs)
#   scripts/fuzz.sh 600                ten minutes per target
#   scripts/fuzz.sh 600 job_decode     one target
#
# Targets (fuzz/fuzz_targets/): job_decode (`Job::decode`: arbitrary body, routing key, content
# type, message_id), batch_reply_decode (`BatchReply::decode`: arbitrary status, headers and
# body for a small batch request) and park_bundle_decode (`bundle::decode`: an arbitrary park
# bundle body and declared count). Corpora grow in fuzz/corpus/<target> (ignored by git): the job
# target's is seeded from tests/corpus/jobs, the others' from fuzz/seeds. A crash is saved
# in fuzz/artifacts/<target>; reproduce it with `cargo fuzz run <target> <file>` (with the
# environment below).
#
# Works on a fresh machine: installs cargo-fuzz from crates.io when it is missing. The toolchain
# is stable, so RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the nightly-only flags it needs
# (-Zsanitizer, sanitizer-coverage). No sanitizer: pagerelay forbids unsafe code, so what is
# left to find is panics, aborts, overflows (debug assertions are on), hangs, runaway memory and
# broken invariants, which the targets assert; without ASan's instrumentation libFuzzer runs
# several times more inputs per second. The fuzz crate builds into its own target directory,
# $CARGO_TARGET_DIR/fuzz (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(job_decode batch_reply_decode park_bundle_decode)

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

export RUSTC_BOOTSTRAP=1
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    target_dir="$CARGO_TARGET_DIR/fuzz"
else
    target_dir="$PWD/fuzz/target"
fi

# Job seeds: every corpus body behind three selector bytes (see fuzz_targets/job_decode.rs):
# 0x00 no routing key, content type or message_id; 0x15 the corpus Page as routing key,
# application/json, an empty message_id; 0x26 another Page as routing key, JSON, "job-1".
seed_jobs() {
    local dir=fuzz/corpus/job_decode file name
    mkdir -p "$dir"
    for file in tests/corpus/jobs/valid/* tests/corpus/jobs/invalid/* tests/corpus/jobs/framing/*; do
        name=$(basename "$file")
        printf '\000' | cat - "$file" >"$dir/seed-00-$name"
        printf '\025' | cat - "$file" >"$dir/seed-15-$name"
        printf '\046' | cat - "$file" >"$dir/seed-26-$name"
    done
}

status=0
for target in "${targets[@]}"; do
    case "$target" in
    job_decode)
        seed_jobs
        corpora=(fuzz/corpus/job_decode)
        max_len=16384
        ;;
    batch_reply_decode)
        mkdir -p fuzz/corpus/batch_reply_decode
        corpora=(fuzz/corpus/batch_reply_decode fuzz/seeds/batch_reply_decode)
        max_len=8192
        ;;
    park_bundle_decode)
        mkdir -p fuzz/corpus/park_bundle_decode
        corpora=(fuzz/corpus/park_bundle_decode fuzz/seeds/park_bundle_decode)
        max_len=8192
        ;;
    *)
        echo "unknown fuzz target: $target" >&2
        exit 2
        ;;
    esac
    echo "==> fuzzing $target for ${seconds}s" >&2
    log=$(mktemp)
    if ! cargo fuzz run --sanitizer none --debug-assertions --target-dir "$target_dir" \
        "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 2>&1 | tee "$log" | grep -E '^(#[0-9]+ +(INITED|DONE)|stat::|==|SUMMARY|thread|Failing)' >&2; then
        :
    fi
    if ! grep -q 'Done [0-9]* runs in' "$log"; then
        echo "fuzz target $target failed; the last lines of its output:" >&2
        tail -n 40 "$log" >&2
        status=1
    fi
    rm -f "$log"
done
exit "$status"
