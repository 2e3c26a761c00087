#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine (as root): starts the local RabbitMQ from the
# distribution's packages, then checks formatting and lints, builds, and runs every test.
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

step "all tests passed"
