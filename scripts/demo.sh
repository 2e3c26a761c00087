#!/usr/bin/env bash
# The main job, end to end on this machine: a real RabbitMQ on loopback, the Graph API simulator,
# the pagerelay daemon, a sample workload, and a summary of what happened to every job.
#
#   scripts/demo.sh          run the demo, print the summary, stop pagerelay and graph-sim
#   scripts/demo.sh --keep   leave pagerelay and graph-sim running afterwards (stop: --stop)
#   scripts/demo.sh --stop   stop what --keep left running
#
# Works as root on a fresh Debian machine: installs RabbitMQ and curl from the distribution's
# packages when they are missing. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=target/demo
PREFIX=demo
ADMIN_PORT=${DEMO_ADMIN_PORT:-9464}
SIM_PORT=${DEMO_SIM_PORT:-8090}
PAGES=50
GOOD_JOBS=5000
TINY_PAGE_JOBS=100

log() { printf '\n==> %s\n' "$*" >&2; }

stop_running() {
    for pidfile in "$DIR/pagerelay.pid" "$DIR/graph-sim.pid"; do
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

if [ "${1:-}" = "--stop" ]; then
    stop_running
    echo "stopped"
    exit 0
fi
KEEP=false
[ "${1:-}" = "--keep" ] && KEEP=true

log "local RabbitMQ"
deploy/rabbitmq/local-broker.sh
if ! command -v curl >/dev/null 2>&1; then
    log "installing curl"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi

log "building pagerelay and graph-sim"
cargo build --bins --quiet
BIN=target/debug

stop_running
mkdir -p "$DIR"
rm -f "$DIR"/*.log

log "removing the previous demo's queues (prefix '$PREFIX')"
for kind in queues exchanges; do
    curl -fsS -u guest:guest "http://127.0.0.1:15672/api/$kind/%2F?columns=name" |
        { grep -o "\"name\":\"$PREFIX\.[^\"]*\"" || true; } | cut -d'"' -f4 |
        while read -r name; do
            curl -fsS -u guest:guest -X DELETE "http://127.0.0.1:15672/api/$kind/%2F/$name" >/dev/null
        done
done

# ---- the Pages: 50 with a healthy audience, one (the last) with an audience of 1 ----
page_id() { printf '10485760%07d' "$1"; }
TINY=$(page_id $PAGES)
: >"$DIR/sim-pages.toml"
: >"$DIR/tokens.toml"
: >"$DIR/pages.toml"
for i in $(seq 1 $PAGES); do
    id=$(page_id "$i")
    audience=10000
    [ "$id" = "$TINY" ] && audience=1
    printf '[[pages]]\nid = "%s"\ntoken = "demo-token-%s"\naudience = %s\n\n' "$id" "$id" "$audience" >>"$DIR/sim-pages.toml"
    printf '"%s" = "demo-token-%s"\n' "$id" "$id" >>"$DIR/tokens.toml"
    printf '[[pages]]\nid = "%s"\naudience = %s\n\n' "$id" "$audience" >>"$DIR/pages.toml"
done

cat >"$DIR/pagerelay.toml" <<EOF
# Written by scripts/demo.sh. Use it to look around: pagerelay -c $DIR/pagerelay.toml check-config
pages_file = "pages.toml"
tokens_file = "tokens.toml"

[amqp]
prefix = "$PREFIX"

[graph]
base_url = "http://127.0.0.1:$SIM_PORT"

[retry]
tiers = ["1s", "5s", "30s", "2m", "10m", "1h"]

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[logging]
format = "pretty"
EOF

log "starting graph-sim on 127.0.0.1:$SIM_PORT (5 % transient errors, 1 % null items)"
"$BIN/graph-sim" --listen "127.0.0.1:$SIM_PORT" --pages "$DIR/sim-pages.toml" --seed 7 \
    --latency-p50-ms 20 --latency-p99-ms 120 \
    --item-transient-rate 0.05 --item-null-rate 0.01 \
    >"$DIR/graph-sim.log" 2>&1 &
echo $! >"$DIR/graph-sim.pid"

log "starting pagerelay (admin on http://127.0.0.1:$ADMIN_PORT)"
"$BIN/pagerelay" --config "$DIR/pagerelay.toml" run >"$DIR/pagerelay.log" 2>&1 &
echo $! >"$DIR/pagerelay.pid"
trap '$KEEP || stop_running' EXIT
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || {
    echo "pagerelay did not become ready; see $DIR/pagerelay.log" >&2
    exit 1
}

log "publishing the workload"
JOBS="$DIR/jobs.jsonl"
: >"$JOBS"
job() { # page recipient job_id [text]
    printf '{"page_id":"%s","job_id":"%s","recipient":{"id":"%s"},"messaging_type":"UPDATE","message":{"text":"%s","metadata":"%s"}}\n' \
        "$1" "$3" "$2" "${4:-Your order $3 has shipped.}" "$3"
}
for n in $(seq 1 $GOOD_JOBS); do
    job "$(page_id $(((n % (PAGES - 1)) + 1)))" "$((6543210000 + n % 700))" "order-$n" >>"$JOBS"
done
for n in $(seq 1 $TINY_PAGE_JOBS); do
    job "$TINY" "$((7000000000 + n))" "tiny-$n" >>"$JOBS"
done
# Jobs the Graph API refuses for good (reserved recipients of the simulator).
for r in 5510000000000551 1000000002018001 1000000002018278 2000000001545041; do
    for n in 1 2; do job "$(page_id 1)" "$r" "refused-$r-$n" >>"$JOBS"; done
done
# Jobs that are not jobs, and a Page pagerelay does not know.
job "$(page_id 2)" 6543210001 "too-long" "$(head -c 2001 /dev/zero | tr '\0' x)" >>"$JOBS"
printf '{"page_id":"%s","job_id":"no-recipient","messaging_type":"UPDATE","message":{"text":"hi"}}\n' "$(page_id 2)" >>"$JOBS"
printf 'this is not JSON\n' >>"$JOBS"
for n in 1 2 3; do job 999999999999999 6543210002 "unknown-page-$n" >>"$JOBS"; done
"$BIN/pagerelay" --config "$DIR/pagerelay.toml" --log-format pretty publish "$JOBS"

# The tiny Page may send 190 a day, 19 of them at once: most of its jobs are parked.
EXPECT_DEAD=$((8 + 3 + 3))
metric() { # name [label filter]: sums the matching samples
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v name="$1" -v filter="${2:-}" '$1 ~ "^"name"({|$)" && index($1, filter) { sum += $2 } END { printf "%d", sum }'
}
log "waiting for $GOOD_JOBS deliveries, $EXPECT_DEAD dead letters and the tiny Page's parking"
for _ in $(seq 1 300); do
    delivered=$(metric pagerelay_operations_total 'outcome="delivered"')
    dead=$(metric pagerelay_dead_letters_total)
    parked=$(metric pagerelay_parked_total)
    [ "$delivered" -ge "$GOOD_JOBS" ] && [ "$dead" -ge "$EXPECT_DEAD" ] && [ "$parked" -ge 50 ] && break
    sleep 1
done
sleep 2

SIM_STATS=$(curl -fsS "http://127.0.0.1:$SIM_PORT/_sim/stats")
sim_total() { echo "$SIM_STATS" | grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }

cat <<EOF

================================ pagerelay demo ================================
published                 $(wc -l <"$JOBS") jobs over $PAGES Pages (+1 unknown Page)
delivered (pagerelay)     $(metric pagerelay_operations_total 'outcome="delivered"')
delivered (graph-sim)     $(sim_total delivered)   <- the simulator's own record
retried                   $(metric pagerelay_operations_total 'outcome="retried"')   (transient errors and null items, then delivered)
parked                    $(metric pagerelay_parked_total)   (Page $TINY has an audience of 1: 190 calls a day,
                                 19 at once; the rest wait in delay tiers for its budget)
dead-lettered             $(metric pagerelay_dead_letters_total)
$(for reason in permanent invalid unknown_page; do printf '  %-22s  %s\n' "$reason" "$(metric pagerelay_dead_letters_total "reason=\"$reason\"")"; done)
613 replies from Graph    $(sim_total throttled_613)

Where to look:
  dead letters     queue $PREFIX.dead on the broker; each carries x-pagerelay-reason and
                   the Graph error (management UI: http://127.0.0.1:15672, guest/guest)
  the daemon       $DIR/pagerelay.log
  admin endpoints  http://127.0.0.1:$ADMIN_PORT/metrics  /readyz  /pages
  settings         pagerelay -c $DIR/pagerelay.toml check-config
EOF
if $KEEP; then
    echo "pagerelay and graph-sim keep running; stop them with: scripts/demo.sh --stop"
else
    echo "(pagerelay and graph-sim stop now; run with --keep to explore the admin endpoints)"
fi
