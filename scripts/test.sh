#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine (as root): starts the local RabbitMQ from the
# distribution's packages, then checks formatting and lints, builds, runs every test, checks every
# file under deploy/ (installing the checkers), and runs the slow tests that plain `cargo test`
# skips (#[ignore]: a three-node RabbitMQ cluster on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "local RabbitMQ"
deploy/rabbitmq/local-broker.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test"
cargo test --all-targets

step "deploy/: every file checked (scripts/check-deploy.sh)"
scripts/check-deploy.sh

step "slow tests: a three-node RabbitMQ cluster (cargo test --test scale_out -- --ignored)"
cargo test --test scale_out -- --ignored

step "all tests passed"
