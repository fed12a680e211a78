#!/usr/bin/env bash
# Instructions per proxied request under callgrind: Portico edge vs nginx reverse proxy, same
# backend. Deterministic (about ±0.1% between runs for nginx, ±0.3% for Portico), so it is the
# figure to compare changes with; it does not see kernel time (bench/proxy.sh is the
# wall-clock side-by-side check).
#
# Method: each proxy runs alone under `valgrind --tool=callgrind`, in front of a backend nginx
# (`return 200 "ok\n"`, not under valgrind). After WARMUP requests the counters are zeroed
# (callgrind_control -z), then exactly N requests are driven with h2load (HTTP/1.1, keep-alive,
# CONNS connections), then the counters are dumped (callgrind_control -d). Ir/req is the dump's
# total divided by N: everything the proxy did during the load, timers and housekeeping
# included.
#
# Environment:
#   N            requests measured (default 20000)
#   WARMUP       requests before zeroing (default 2000)
#   CONNS        h2load connections (default 8)
#   TARGETS      which proxies (default "nginx portico")
#   PORTICO_BIN  use this binary instead of building target/dist/portico
#   OUT          where the callgrind files are kept (default /tmp/portico-callgrind); read
#                them with `callgrind_annotate --inclusive=yes OUT/portico.out`
set -euo pipefail

N=${N:-20000}
WARMUP=${WARMUP:-2000}
CONNS=${CONNS:-8}
TARGETS=${TARGETS:-nginx portico}
OUT=${OUT:-/tmp/portico-callgrind}

# Ports apart from bench/proxy.sh's, so both can run on one machine.
BACKEND_PORT=18181
NGINX_PORT=18182
PORTICO_PORT=18183
PORTICO_OPS_PORT=19190
PORTICO_HOST=bench.portico.localhost
REQ_PATH=/b/hello

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH="$PATH:/usr/sbin:/sbin"
# shellcheck source=bench/lib.sh
. "$REPO_ROOT/bench/lib.sh"

for tool in nginx h2load valgrind callgrind_control curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install nginx nghttp2-client valgrind curl)"
done

if [[ " $TARGETS " == *" portico "* ]]; then
  portico_bin
fi

TMP=$(mktemp -d /tmp/portico-callgrind.XXXXXX)
mkdir -p "$OUT"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # url [host]
  local i
  for i in $(seq 1 600); do
    if curl -s -o /dev/null ${2:+-H "Host: $2"} --max-time 2 "$1"; then return 0; fi
    sleep 0.1
  done
  return 1
}

# The same three configurations as bench/proxy.sh.
# shellcheck source=bench/proxy_configs.sh
. "$REPO_ROOT/bench/proxy_configs.sh"
write_nginx_confs

nginx -p "$TMP/backend" -e "$TMP/backend/error.log" -c "$TMP/backend.conf" -g 'daemon off;' \
  </dev/null >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BACKEND_PORT/" || die "backend nginx did not start"

# h2load --h1 -H 'Host: …' adds a second Host header, so the name goes in the URL and
# --connect-to picks the address.
load() { # target requests -> h2load output
  local url args=()
  case $1 in
    nginx) url="http://127.0.0.1:$NGINX_PORT$REQ_PATH" ;;
    portico) url="http://$PORTICO_HOST:$PORTICO_PORT$REQ_PATH"; args=(--connect-to="127.0.0.1:$PORTICO_PORT") ;;
  esac
  h2load --h1 -n "$2" -c "$CONNS" -t 1 "${args[@]}" "$url" 2>&1
}

# Sets TOTAL to the instructions of the measured requests. Not run in a subshell: the PID it
# starts must reach cleanup, and a failed step must stop the script.
measure() { # target
  local t=$1 pid out file ok
  case $t in
    nginx)
      valgrind --tool=callgrind --callgrind-out-file="$TMP/$t.cg" \
        nginx -p "$TMP/nginx-proxy" -e "$TMP/nginx-proxy/error.log" -c "$TMP/nginx-proxy.conf" \
        -g 'daemon off; master_process off;' </dev/null >"$TMP/$t.log" 2>&1 &
      pid=$!
      wait_http "http://127.0.0.1:$NGINX_PORT/" || die "nginx proxy did not start: $(tail -5 "$TMP/$t.log")"
      ;;
    portico)
      valgrind --tool=callgrind --callgrind-out-file="$TMP/$t.cg" \
        "$PORTICO_BIN" edge --config "$TMP/portico.yaml" --listen "127.0.0.1:$PORTICO_PORT" \
        --ops-listen "127.0.0.1:$PORTICO_OPS_PORT" --workers 1 --access-log off \
        </dev/null >"$TMP/$t.log" 2>&1 &
      pid=$!
      wait_http "http://127.0.0.1:$PORTICO_OPS_PORT/readyz" || die "Portico did not start: $(tail -5 "$TMP/$t.log")"
      ;;
  esac
  PIDS+=("$pid")
  load "$t" "$WARMUP" >"$TMP/$t.warmup"
  callgrind_control -z "$pid" >/dev/null
  out=$(load "$t" "$N")
  callgrind_control -d "$pid" >/dev/null
  ok=$(awk '/^status codes:/{print $3; exit}' <<<"$out")
  [ "$ok" = "$N" ] || { log "$t: not all $N requests got 2xx:"; log "$out"; }
  # The dump is the newest file of this process (the first is the one at exit, not yet).
  file=$(ls -t "$TMP/$t.cg".* 2>/dev/null | head -1)
  [ -n "$file" ] || die "$t: no callgrind dump"
  cp "$file" "$OUT/$t.out"
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  TOTAL=$(awk '/^(summary|totals):/{print $2; exit}' "$file")
}

declare -A IR
for t in $TARGETS; do
  log "measuring $t under callgrind ($WARMUP warm-up, $N measured, $CONNS connections)"
  measure "$t"
  total=$TOTAL
  IR[$t]=$(awk -v a="$total" -v n="$N" 'BEGIN{printf "%.0f", a/n}')
done

echo "== Instructions per request under callgrind (N=$N, $CONNS connections, keep-alive)"
for t in $TARGETS; do
  printf '%-8s %8s Ir/req   (%s)\n' "$t" "${IR[$t]}" "$OUT/$t.out"
done
if [ -n "${IR[nginx]:-}" ] && [ -n "${IR[portico]:-}" ]; then
  awk -v a="${IR[portico]}" -v b="${IR[nginx]}" 'BEGIN{printf "ratio portico/nginx: %.2f\n", a/b}'
fi
