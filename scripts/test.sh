#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine (as root): starts the local RabbitMQ from the
# distribution's packages and promtool, then checks formatting and lints, checks and tests the
# Prometheus rules, builds, runs every test (the fault suite at its reduced sizes among them),
# checks every file under deploy/ (installing the checkers), runs the slow tests that plain
# `cargo test` skips (#[ignore]: a three-node RabbitMQ cluster on loopback), and fuzzes the three
# decoders of untrusted bytes for 60 s each (scripts/fuzz.sh, installing cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian ships promtool only inside the prometheus package, whose server would listen on *:9090.
# Only promtool is wanted: keep the server from starting now (policy-rc.d, already present in
# containers) and at boot (disabled where systemd runs). Idempotent: nothing happens when
# promtool is there.
install_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        return
    fi
    local policy=/usr/sbin/policy-rc.d added=0 status=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq || status=$?
    if [ "$status" -eq 0 ]; then
        as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null || status=$?
    fi
    if [ "$added" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    if [ "$status" -ne 0 ]; then
        echo "cannot install promtool (Debian's prometheus package)" >&2
        return "$status"
    fi
    if [ -d /run/systemd/system ]; then
        as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
}

step "local RabbitMQ"
deploy/rabbitmq/local-broker.sh

step "promtool"
install_promtool
promtool --version 2>&1 | head -n 1

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "promtool check rules"
promtool check rules deploy/prometheus/*.rules.yml

step "promtool test rules"
promtool test rules deploy/prometheus/tests/*.yml

# tests/observability.rs runs `promtool check metrics` on a real scrape of a running daemon.
step "cargo test"
cargo test --all-targets

step "deploy/: every file checked (scripts/check-deploy.sh)"
scripts/check-deploy.sh

step "slow tests: a three-node RabbitMQ cluster (cargo test --test scale_out -- --ignored)"
cargo test --test scale_out -- --ignored

step "fuzz: the job, reply and park bundle decoders, 60 s each (scripts/fuzz.sh)"
scripts/fuzz.sh 60

step "all tests passed"
