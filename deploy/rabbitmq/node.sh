#!/usr/bin/env bash
# Extra, isolated RabbitMQ nodes on loopback, for tests that stop, restart or cluster brokers
# without disturbing the main local broker (deploy/rabbitmq/local-broker.sh).
#
#   deploy/rabbitmq/node.sh start NAME PORT   start node NAME@localhost with AMQP on 127.0.0.1:PORT,
#                                            management on PORT+10000, distribution on PORT+20000
#   deploy/rabbitmq/node.sh stop NAME         stop it (its data stays, so start brings it back)
#   deploy/rabbitmq/node.sh kill NAME         stop it hard (SIGKILL), as a crash would
#   deploy/rabbitmq/node.sh join NAME SEED    make NAME join SEED's cluster (both running)
#   deploy/rabbitmq/node.sh forget NAME       stop it and delete its data
#
# Each node keeps its data, logs and settings under $PAGERELAY_NODES_DIR/NAME (default
# /tmp/pagerelay-nodes); all share one Erlang cookie there, so they can cluster. Needs the
# rabbitmq-server package (local-broker.sh installs it). Runs as root.
set -euo pipefail

BASE=${PAGERELAY_NODES_DIR:-/tmp/pagerelay-nodes}
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
CTL=/usr/lib/rabbitmq/bin/rabbitmqctl

usage() {
    sed -n '4,12p' "$0" >&2
    exit 64
}

node_env() { # NAME: the environment every command about NAME runs with
    local name=$1 dir="$BASE/$1"
    export HOME="$BASE" ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_NODENAME="$name@localhost"
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/pid"
}

ctl() { # NAME args...
    local name=$1
    shift
    (node_env "$name" && "$CTL" -q -n "$name@localhost" "$@")
}

start() {
    local name=$1 port=$2 dir="$BASE/$1"
    [ -x "$SERVER" ] || {
        echo "node.sh: rabbitmq-server is not installed; run deploy/rabbitmq/local-broker.sh" >&2
        exit 1
    }
    mkdir -p "$dir/mnesia" "$dir/log"
    if [ ! -f "$BASE/.erlang.cookie" ]; then
        head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$BASE/.erlang.cookie"
        chmod 400 "$BASE/.erlang.cookie"
    fi
    : >"$dir/rabbitmq-env.conf"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$port
management.tcp.ip = 127.0.0.1
management.tcp.port = $((port + 10000))
loopback_users = none
disk_free_limit.absolute = 50MB
CONF
    echo "[rabbitmq_consistent_hash_exchange,rabbitmq_management]." >"$dir/enabled_plugins"
    echo "$port" >"$dir/port"
    if ctl "$name" status >/dev/null 2>&1; then
        return
    fi
    (
        node_env "$name"
        export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port"
        export RABBITMQ_DIST_PORT=$((port + 20000))
        export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        "$SERVER" -detached >/dev/null 2>&1
    )
    local deadline=$((SECONDS + 120))
    until ctl "$name" --timeout 30 await_startup >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "node.sh: $name did not start; see $dir/log" >&2
            exit 1
        fi
        sleep 0.5
    done
}

stop() {
    local name=$1
    ctl "$name" stop >/dev/null 2>&1 || true
    # stop returns once the node is down; make sure of it.
    local pidfile="$BASE/$name/pid"
    if [ -f "$pidfile" ]; then
        local pid
        pid=$(cat "$pidfile")
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$pidfile"
    fi
}

hard_kill() {
    local pidfile="$BASE/$1/pid"
    if [ -f "$pidfile" ]; then
        kill -9 "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}

case "${1:-}" in
    start) [ $# -eq 3 ] || usage; start "$2" "$3" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    kill) [ $# -eq 2 ] || usage; hard_kill "$2" ;;
    join)
        [ $# -eq 3 ] || usage
        ctl "$2" stop_app
        ctl "$2" join_cluster "$3@localhost"
        ctl "$2" start_app
        ;;
    forget) [ $# -eq 2 ] || usage; stop "$2"; rm -rf "${BASE:?}/$2" ;;
    *) usage ;;
esac
