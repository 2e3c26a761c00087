#!/usr/bin/env bash
# Start a local RabbitMQ broker on loopback for pagerelay's demo and tests.
#
# Installs Debian's rabbitmq-server when it is missing, enables the plugins pagerelay uses
# (consistent-hash exchange; management for operators and tests), starts the broker bound to
# 127.0.0.1 when it is not running, and waits until it answers. Idempotent; works as root on a
# fresh Debian machine without systemd.
#
#   deploy/rabbitmq/local-broker.sh           start (or confirm) the broker
#   deploy/rabbitmq/local-broker.sh --stop    stop it
set -euo pipefail

NODE_NAME=${RABBITMQ_NODENAME:-rabbit@localhost}
AMQP_PORT=${PAGERELAY_BROKER_PORT:-5672}
MGMT_PORT=${PAGERELAY_BROKER_MGMT_PORT:-15672}

log() { printf 'local-broker: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_broker() {
    if command -v rabbitmq-server >/dev/null 2>&1; then
        return
    fi
    log "installing rabbitmq-server from the distribution's packages"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    # policy-rc.d (present in containers) stops the package from starting the service itself;
    # we start the broker below with our own settings.
    as_root apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
}

write_config() {
    # Loopback only: AMQP, management, the Erlang distribution port and epmd.
    as_root mkdir -p /etc/rabbitmq
    as_root tee /etc/rabbitmq/rabbitmq.conf >/dev/null <<CONF
listeners.tcp.1 = 127.0.0.1:${AMQP_PORT}
management.tcp.ip = 127.0.0.1
management.tcp.port = ${MGMT_PORT}
loopback_users = none
# The demo and the test suite keep hundreds of short-lived queues; do not let the disk alarm
# (default 50 MB) or a low memory watermark stall a CI machine.
disk_free_limit.absolute = 200MB
vm_memory_high_watermark.relative = 0.6
CONF
    as_root tee /etc/rabbitmq/rabbitmq-env.conf >/dev/null <<CONF
NODENAME=${NODE_NAME}
NODE_IP_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CONF
    as_root tee /etc/rabbitmq/enabled_plugins >/dev/null <<CONF
[rabbitmq_consistent_hash_exchange,rabbitmq_management].
CONF
}

broker_answers() {
    as_root env ERL_EPMD_ADDRESS=127.0.0.1 rabbitmqctl -q -n "$NODE_NAME" status >/dev/null 2>&1
}

start_broker() {
    if broker_answers; then
        log "broker already running ($NODE_NAME, amqp://127.0.0.1:${AMQP_PORT})"
        return
    fi
    log "starting the broker"
    as_root env ERL_EPMD_ADDRESS=127.0.0.1 HOME=/var/lib/rabbitmq \
        rabbitmq-server -detached >/dev/null 2>&1 || true
    # await_startup needs the node registered with epmd, which takes a moment after -detached.
    local deadline=$((SECONDS + 180))
    until as_root env ERL_EPMD_ADDRESS=127.0.0.1 \
        rabbitmqctl -q -n "$NODE_NAME" --timeout 60 await_startup >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "the broker did not start within 180 s; see /var/log/rabbitmq/"
            exit 1
        fi
        sleep 1
    done
    log "broker ready ($NODE_NAME, amqp://127.0.0.1:${AMQP_PORT}, management http://127.0.0.1:${MGMT_PORT})"
}

stop_broker() {
    if broker_answers; then
        as_root env ERL_EPMD_ADDRESS=127.0.0.1 rabbitmqctl -q -n "$NODE_NAME" stop
        log "broker stopped"
    else
        log "broker not running"
    fi
}

case "${1:-start}" in
    start | "")
        install_broker
        write_config
        start_broker
        ;;
    --stop | stop)
        stop_broker
        ;;
    *)
        echo "usage: $0 [--stop]" >&2
        exit 64
        ;;
esac
