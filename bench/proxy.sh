#!/usr/bin/env bash
# Side-by-side proxy benchmark: backend direct vs nginx reverse proxy vs Portico edge.
#
# Method (see bench/README.md): pinned cores (load generator + backend on CPU0, proxy under
# test on CPU1), interleaved rounds, CPU microseconds per request of the proxy taken from
# /proc/PID/task/*/schedstat, then open-loop fixed-rate latency at half the nginx capacity
# (bench/fixed_rate.rs, built here with rustc).
#
# Prints figures only; it never fails on a threshold.
#
# Environment:
#   ROUNDS        saturation rounds (default 5)
#   DURATION      seconds per saturation run (default 10)
#   LAT_ROUNDS    fixed-rate latency rounds (default 5: on a shared VM one p99 can be several
#                 times the next round's)
#   LAT_DURATION  seconds per fixed-rate run (default 15)
#   LAT_RATE      fixed rate in req/s (default: half the median nginx-proxy saturation req/s)
#   PORTICO_BIN   use this binary instead of building target/dist/portico
#   SKIP_PORTICO  1 = only direct and nginx (no build, no Portico)
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
LAT_ROUNDS=${LAT_ROUNDS:-5}
LAT_DURATION=${LAT_DURATION:-15}
LAT_RATE=${LAT_RATE:-}
SKIP_PORTICO=${SKIP_PORTICO:-0}
CONNS=32
LAT_CONNS=32

LOAD_CPU=0      # wrk / fixed_rate
BACKEND_CPU=0   # backend nginx during proxy runs (moved to PROXY_CPU for the direct run)
PROXY_CPU=1     # proxy under test

BACKEND_PORT=18081
NGINX_PORT=18082
PORTICO_PORT=18083
PORTICO_OPS_PORT=19090
PORTICO_HOST=bench.portico.localhost
REQ_PATH=/b/hello

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO_ROOT/bench/lib.sh"

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
PATH="$PATH:/usr/sbin:/sbin"

ensure_apt_tools() {
  local missing=0
  command -v nginx >/dev/null 2>&1 || missing=1
  command -v wrk >/dev/null 2>&1 || missing=1
  if [ "$missing" -eq 1 ]; then
    log "installing nginx and wrk with apt-get"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y nginx wrk
  fi
  command -v nginx >/dev/null 2>&1 || die "nginx not found after install"
  command -v wrk >/dev/null 2>&1 || die "wrk not found after install"
  command -v taskset >/dev/null 2>&1 || die "taskset (util-linux) not found"
  command -v curl >/dev/null 2>&1 || die "curl not found"
}

# The open-loop generator for the fixed-rate phase (one std-only file, like the control-plane
# benchmarks' generators).
build_fixed_rate() {
  command -v rustc >/dev/null 2>&1 || die "rustc not found (needed for bench/fixed_rate.rs)"
  rustc --edition 2021 -O "$REPO_ROOT/bench/fixed_rate.rs" -o "$TMP/fixed_rate" >&2 \
    || die "building bench/fixed_rate.rs failed"
}

# ---------------------------------------------------------------------------------------
# Temp dir, processes, cleanup
# ---------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/portico-bench.XXXXXX)
BACKEND_MASTER=
NGINX_MASTER=
PORTICO_PID=
cleanup() {
  local p
  for p in $PORTICO_PID $NGINX_MASTER $BACKEND_MASTER; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in $PORTICO_PID $NGINX_MASTER $BACKEND_MASTER; do
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
for port in $BACKEND_PORT $NGINX_PORT; do
  port_free "$port" || die "port $port is already in use"
done
if [ "$SKIP_PORTICO" != 1 ]; then
  for port in $PORTICO_PORT $PORTICO_OPS_PORT; do
    port_free "$port" || die "port $port is already in use"
  done
fi

wait_http() { # url [host] -> waits up to 30 s for any HTTP answer
  local url=$1 host=${2:-} i
  for i in $(seq 1 300); do
    if curl -s -o /dev/null ${host:+-H "Host: $host"} --max-time 1 "$url"; then return 0; fi
    sleep 0.1
  done
  return 1
}

STARTED_PID=
start_nginx() { # name conf -> sets STARTED_PID (not in a subshell, so we can wait for it)
  local name=$1 conf=$2
  mkdir -p "$TMP/$name"
  nginx -t -q -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$conf" >&2
  nginx -p "$TMP/$name" -e "$TMP/$name/error.log" -c "$conf" -g 'daemon off;' \
    </dev/null >"$TMP/$name/stdout.log" 2>&1 &
  STARTED_PID=$!
}

nginx_pids() { # master -> master + workers
  echo "$1"
  pgrep -P "$1" || true
}

# shellcheck source=bench/proxy_configs.sh
. "$REPO_ROOT/bench/proxy_configs.sh"

# ---------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------
# CPU of processes: cpu_ns (bench/lib.sh) sums schedstat over their threads.

# /proc/stat, all CPUs, in jiffies: "total:steal:softirq:busy" (busy = user+nice+system+irq+softirq)
procstat() {
  awk '/^cpu /{t=0; for(i=2;i<=9;i++) t+=$i; print t ":" $9 ":" $8 ":" ($2+$3+$4+$7+$8); exit}' /proc/stat
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# CPU of the load generator: `times` (a builtin, so no fork) reports the CPU of the shell's
# reaped children; the delta around a run is the load generator's CPU plus a few ms of helpers.
times_ns() { # file written by `times` -> children user+sys in ns
  awk 'NR==2{ s=0; for(i=1;i<=2;i++){ v=$i; m=v; sub(/m.*/,"",m); sub(/^[0-9]+m/,"",v); sub(/s$/,"",v); s+=m*60+v } printf "%.0f", s*1e9 }' "$1"
}

# "steal%/softirq%/other%" of both CPUs between two procstat samples; other% = CPU used by
# anything other than the load generator, backend and proxy (approximate: tick-based).
cpu_shares() { # st0 st1 ours_ns
  awk -v a="$1" -v b="$2" -v ours="$3" -v hz="$CLK_TCK" 'BEGIN{
    split(a,x,":"); split(b,y,":"); d=y[1]-x[1];
    if (d<=0) { print "-"; exit }
    other = 100*((y[4]-x[4])*1e9/hz - ours)/(d*1e9/hz); if (other < 0) other = 0;
    printf "%.1f/%.0f/%.0f", 100*(y[2]-x[2])/d, 100*(y[3]-x[3])/d, other }'
}

# wrk latency token (e.g. 123.45us, 1.20ms, 2.00s) -> microseconds
to_us() {
  awk -v v="$1" 'BEGIN{
    n=v; sub(/[a-z]+$/,"",n); u=v; sub(/^[0-9.]+/,"",u);
    if(u=="us") m=1; else if(u=="ms") m=1000; else if(u=="s") m=1000000; else if(u=="m") m=60000000; else m=1;
    printf "%.0f", n*m }'
}

pin_backend() { local p; for p in $(nginx_pids "$BACKEND_MASTER"); do taskset -pc "$1" "$p" >/dev/null; done; }
pin_nginx_proxy() { local p; for p in $(nginx_pids "$NGINX_MASTER"); do taskset -pc "$1" "$p" >/dev/null; done; }
pin_portico() { taskset -apc "$1" "$PORTICO_PID" >/dev/null; }

target_url() {
  case $1 in
    direct) echo "http://127.0.0.1:$BACKEND_PORT$REQ_PATH" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PORT$REQ_PATH" ;;
    portico) echo "http://127.0.0.1:$PORTICO_PORT$REQ_PATH" ;;
  esac
}
target_host() { # Host header value ("" = derived from URL)
  if [ "$1" = portico ]; then echo "$PORTICO_HOST"; else echo ""; fi
}
proxy_pids() {
  case $1 in
    nginx) nginx_pids "$NGINX_MASTER" ;;
    portico) echo "$PORTICO_PID" ;;
    *) ;;
  esac
}
# Pin for a run of the given target.
pin_for() {
  case $1 in
    direct) pin_backend "$PROXY_CPU" ;;
    nginx) pin_backend "$BACKEND_CPU"; pin_nginx_proxy "$PROXY_CPU" ;;
    portico) pin_backend "$BACKEND_CPU"; pin_portico "$PROXY_CPU" ;;
  esac
}

# Was a compiler (rustc) running when a run started or ended? "y" marks a disturbed run.
# Checked at both ends only: a sampler during the run (pgrep every 0.5 s, as this script had)
# is itself the disturbance: it added about 1.5 ms to both proxies' fixed-rate p99 (0.9 ms
# without it). Whatever else runs during a run, a compiler included, shows in other%.
COMPILE_RUNS=0
rustc_watch_begin() { RUSTC_AT_START=$(is_running rustc); }
rustc_watch_end() { # -> echoes y or n
  if [ "$RUSTC_AT_START" = y ]; then echo y; else is_running rustc; fi
}

declare -A RPS P50 P99 PX_US BE_US BAD STEAL RUSTC
run_sat() { # target round
  local t=$1 r=$2 url host out px0 px1 be0 be1 st0 st1 pxp
  url=$(target_url "$t"); host=$(target_host "$t")
  pin_for "$t"
  pxp=$(proxy_pids "$t" | tr '\n' ' ')
  local c1
  rustc_watch_begin
  be0=$(cpu_ns $(nginx_pids "$BACKEND_MASTER"))
  px0=0; [ -n "$pxp" ] && px0=$(cpu_ns $pxp)
  st0=$(procstat)
  times >"$TMP/times0"
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
        ${host:+-H "Host: $host"} "$url" 2>&1) || true
  times >"$TMP/times1"
  st1=$(procstat)
  be1=$(cpu_ns $(nginx_pids "$BACKEND_MASTER"))
  px1=0; [ -n "$pxp" ] && px1=$(cpu_ns $pxp)
  c1=$(rustc_watch_end)
  if [ "$c1" = y ]; then RUSTC[$t,$r]=y; COMPILE_RUNS=$((COMPILE_RUNS + 1)); else RUSTC[$t,$r]=n; fi

  local reqs rps p50 p99 non2xx sockerr
  reqs=$(awk '/requests in/{print $1; exit}' <<<"$out")
  rps=$(awk '/^Requests\/sec:/{print $2; exit}' <<<"$out")
  p50=$(awk '/^ +50%/{print $2; exit}' <<<"$out")
  p99=$(awk '/^ +99%/{print $2; exit}' <<<"$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' <<<"$out")
  sockerr=$(awk '/Socket errors:/{sub(/^ *Socket errors: */,""); print; exit}' <<<"$out")
  if [ -z "$reqs" ] || [ -z "$rps" ]; then
    log "wrk output for $t (round $r) could not be parsed:"; log "$out"
    reqs=0; rps=0; p50=0us; p99=0us
  fi
  RPS[$t,$r]=$(printf '%.0f' "$rps")
  P50[$t,$r]=$(to_us "$p50")
  P99[$t,$r]=$(to_us "$p99")
  if [ "$reqs" -gt 0 ]; then
    BE_US[$t,$r]=$(awk -v a="$be0" -v b="$be1" -v n="$reqs" 'BEGIN{printf "%.2f", (b-a)/n/1000}')
    if [ -n "$pxp" ]; then
      PX_US[$t,$r]=$(awk -v a="$px0" -v b="$px1" -v n="$reqs" 'BEGIN{printf "%.2f", (b-a)/n/1000}')
    else
      PX_US[$t,$r]=-
    fi
  else
    BE_US[$t,$r]=-; PX_US[$t,$r]=-
  fi
  local lg_ns
  lg_ns=$(( $(times_ns "$TMP/times1") - $(times_ns "$TMP/times0") ))
  STEAL[$t,$r]=$(cpu_shares "$st0" "$st1" $(( lg_ns + (be1 - be0) + (px1 - px0) )))
  BAD[$t,$r]="${non2xx:-0}"
  if [ -n "$sockerr" ]; then BAD[$t,$r]="${BAD[$t,$r]} sock[$sockerr]"; fi
}

median() { # values... (non-numeric ignored)
  printf '%s\n' "$@" | { grep -E '^-?[0-9.]+$' || true; } | sort -g | awk '{a[NR]=$1}
    END{ if(NR==0) print "n/a"; else if(NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b>0) printf "%.3f", a/b; else print "-" }'; }

# ---------------------------------------------------------------------------------------
# Start
# ---------------------------------------------------------------------------------------
ensure_apt_tools

TARGETS=(direct nginx)
if [ "$SKIP_PORTICO" != 1 ]; then
  TARGETS+=(portico)
  PORTICO_REV=$(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo "no git")
  if [ -n "$(cd "$REPO_ROOT" && git status --porcelain -- src node proto control Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    PORTICO_REV="$PORTICO_REV + uncommitted changes"
  fi
  if [ -z "${PORTICO_BIN:-}" ]; then
    PORTICO_REV="built from $PORTICO_REV"
  else
    PORTICO_REV="prebuilt PORTICO_BIN; repo is at $PORTICO_REV"
  fi
  portico_bin
fi

build_fixed_rate

write_nginx_confs
start_nginx backend "$TMP/backend.conf"; BACKEND_MASTER=$STARTED_PID
wait_http "http://127.0.0.1:$BACKEND_PORT/" || die "backend nginx did not start: $(cat "$TMP/backend/error.log" 2>/dev/null)"
start_nginx nginx-proxy "$TMP/nginx-proxy.conf"; NGINX_MASTER=$STARTED_PID
wait_http "http://127.0.0.1:$NGINX_PORT/" || die "nginx proxy did not start: $(cat "$TMP/nginx-proxy/error.log" 2>/dev/null)"

PORTICO_NOTE=""
if [ "$SKIP_PORTICO" != 1 ]; then
  "$PORTICO_BIN" edge --config "$TMP/portico.yaml" --listen "127.0.0.1:$PORTICO_PORT" \
    --ops-listen "127.0.0.1:$PORTICO_OPS_PORT" --workers 1 --access-log off \
    </dev/null >"$TMP/portico.log" 2>&1 &
  PORTICO_PID=$!
  ready=0
  for _ in $(seq 1 300); do
    if curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$PORTICO_OPS_PORT/readyz"; then ready=1; break; fi
    kill -0 "$PORTICO_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$ready" != 1 ]; then
    log "Portico did not become ready (readyz). Log:"; tail -n 40 "$TMP/portico.log" >&2 || true
    die "Portico did not start"
  fi
fi

# Sanity: one request per target, show status + body.
echo "== Sanity check (one request each)"
for t in "${TARGETS[@]}"; do
  host=$(target_host "$t")
  res=$(curl -s --max-time 5 -o "$TMP/body.$t" -w '%{http_code}' ${host:+-H "Host: $host"} "$(target_url "$t")" || true)
  printf '  %-8s %s  status=%s body=%q\n' "$t" "$(target_url "$t")" "$res" "$(head -c 200 "$TMP/body.$t" 2>/dev/null)"
  if [ "$res" != 200 ]; then
    echo "  WARNING: $t did not answer 200; its figures below are not comparable"
    [ "$t" = portico ] && PORTICO_NOTE="sanity request returned status $res"
  fi
done

# Warm-up (connections, upstream pools, page cache), 2 s each, not recorded.
for t in "${TARGETS[@]}"; do
  pin_for "$t"; host=$(target_host "$t")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s ${host:+-H "Host: $host"} "$(target_url "$t")" >/dev/null 2>&1 || true
done


# ---------------------------------------------------------------------------------------
# Saturation rounds
# ---------------------------------------------------------------------------------------
echo
echo "== Saturation: wrk -t1 -c$CONNS -d${DURATION}s --latency, $ROUNDS interleaved rounds"
echo "   pinning: wrk CPU$LOAD_CPU; direct: backend CPU$PROXY_CPU; proxies: proxy CPU$PROXY_CPU, backend CPU$BACKEND_CPU"
echo "   proxy_us = CPU µs/request of the proxy (all its processes/threads); backend_us likewise for the backend nginx"
echo "   st/si/other% = % of both CPUs' time during the run in steal / softirq / other processes than wrk, backend, proxy"
echo "   rustc = a compiler was running when the run started or ended"
echo "   bad = non-2xx/3xx responses [socket errors]"
fmt='%-8s %10s %9s %9s %9s %11s %8s %12s %5s  %s\n'
for r in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do run_sat "$t" "$r"; done
  echo
  echo "Round $r"
  printf "$fmt" target 'req/s' 'p50_us' 'p99_us' proxy_us backend_us px/be st/si/other% rustc bad
  for t in "${TARGETS[@]}"; do
    printf "$fmt" "$t" "${RPS[$t,$r]}" "${P50[$t,$r]}" "${P99[$t,$r]}" "${PX_US[$t,$r]}" \
      "${BE_US[$t,$r]}" "$(ratio "${PX_US[$t,$r]}" "${BE_US[$t,$r]}")" "${STEAL[$t,$r]}" "${RUSTC[$t,$r]}" "${BAD[$t,$r]}"
  done
  if [ "$SKIP_PORTICO" != 1 ]; then
    echo "  portico/nginx CPU per request: $(ratio "${PX_US[portico,$r]}" "${PX_US[nginx,$r]}")"
  fi
done

declare -A MED_RPS MED_PX MED_BE MED_P50 MED_P99
for t in "${TARGETS[@]}"; do
  v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${RPS[$t,$r]}"); done; MED_RPS[$t]=$(median "${v[@]}")
  v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${PX_US[$t,$r]}"); done; MED_PX[$t]=$(median "${v[@]}")
  v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${BE_US[$t,$r]}"); done; MED_BE[$t]=$(median "${v[@]}")
  v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${P50[$t,$r]}"); done; MED_P50[$t]=$(median "${v[@]}")
  v=(); for r in $(seq 1 "$ROUNDS"); do v+=("${P99[$t,$r]}"); done; MED_P99[$t]=$(median "${v[@]}")
done
per_round_ratio_median() { # num_target num_arr den_target den_arr
  local -n A=$2 B=$4; local r v=()
  for r in $(seq 1 "$ROUNDS"); do v+=("$(ratio "${A[$1,$r]}" "${B[$3,$r]}")"); done
  median "${v[@]}"
}
R_NGX_BE=$(per_round_ratio_median nginx PX_US nginx BE_US)
R_POR_BE=n/a; R_POR_NGX=n/a
if [ "$SKIP_PORTICO" != 1 ]; then
  R_POR_BE=$(per_round_ratio_median portico PX_US portico BE_US)
  R_POR_NGX=$(per_round_ratio_median portico PX_US nginx PX_US)
fi

echo
echo "Medians over $ROUNDS rounds"
printf "$fmt" target 'req/s' 'p50_us' 'p99_us' proxy_us backend_us '' '' '' ''
for t in "${TARGETS[@]}"; do
  printf "$fmt" "$t" "${MED_RPS[$t]}" "${MED_P50[$t]}" "${MED_P99[$t]}" "${MED_PX[$t]}" "${MED_BE[$t]}" '' '' '' ''
done
echo "Ratios (median of per-round ratios, CPU µs per request):"
echo "  portico / nginx   : $R_POR_NGX"
echo "  portico / backend : $R_POR_BE"
echo "  nginx / backend   : $R_NGX_BE"
echo "  (wrk p50/p99 at saturation include queueing and coordinated omission; use the fixed-rate figures below for latency)"

# ---------------------------------------------------------------------------------------
# Fixed-rate latency (open loop)
# ---------------------------------------------------------------------------------------
if [ -z "$LAT_RATE" ]; then
  LAT_RATE=$(awk -v m="${MED_RPS[nginx]}" 'BEGIN{ if (m ~ /^[0-9.]+$/) printf "%d", m/2; else print 0 }')
fi
declare -A L50 L99 LBAD
LAT_DESC=
echo
if [ "$LAT_RATE" -le 0 ]; then
  echo "== Fixed-rate latency skipped (rate=$LAT_RATE)"
else
  LAT_DESC="bench/fixed_rate.rs: $LAT_CONNS connections, each on its own schedule (wrk2-style), ${LAT_DURATION}s; latency from the scheduled send time"
  echo "== Fixed-rate latency at $LAT_RATE req/s (half the median nginx-proxy saturation req/s), $LAT_ROUNDS interleaved rounds"
  echo "   $LAT_DESC"
  lfmt='%-6s %-8s %10s %10s %10s %9s %12s %5s  %s\n'
  printf "$lfmt" round target 'p50_us' 'p99_us' 'req/s' proxy_us st/si/other% rustc 'bad'
  for r in $(seq 1 "$LAT_ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      pin_for "$t"; host=$(target_host "$t"); url=$(target_url "$t")
      pxp=$(proxy_pids "$t" | tr '\n' ' ')
      rustc_watch_begin
      be0=$(cpu_ns $(nginx_pids "$BACKEND_MASTER"))
      px0=0; [ -n "$pxp" ] && px0=$(cpu_ns $pxp)
      st0=$(procstat)
      times >"$TMP/times0"
      # ADDR HOST PATH RATE SECONDS CONNECTIONS -> "p50_us p99_us req/s bad requests"
      addr=${url#http://}; addr=${addr%%/*}
      out=$(timeout $((LAT_DURATION + 30)) taskset -c "$LOAD_CPU" "$TMP/fixed_rate" "$addr" "${host:-$addr}" "$REQ_PATH" \
            "$LAT_RATE" "$LAT_DURATION" "$LAT_CONNS" 2>"$TMP/fixed_rate.$t.$r.err") || true
      if [[ "$out" =~ ^[0-9]+\ [0-9]+\ [0-9]+\ [0-9]+\ [0-9]+$ ]]; then
        read -r "L50[$t,$r]" "L99[$t,$r]" lrps "LBAD[$t,$r]" lreqs <<<"$out"
      else
        L50[$t,$r]=-; L99[$t,$r]=-; lrps=-; lreqs=0
        LBAD[$t,$r]="fixed_rate failed: $(head -c 200 "$TMP/fixed_rate.$t.$r.err")"
      fi
      times >"$TMP/times1"
      st1=$(procstat)
      be1=$(cpu_ns $(nginx_pids "$BACKEND_MASTER"))
      px1=0; [ -n "$pxp" ] && px1=$(cpu_ns $pxp)
      lg_ns=$(( $(times_ns "$TMP/times1") - $(times_ns "$TMP/times0") ))
      shares=$(cpu_shares "$st0" "$st1" $(( lg_ns + (be1 - be0) + (px1 - px0) )))
      lpx=-
      if [ -n "$pxp" ] && [[ "${lreqs:-}" =~ ^[0-9]+$ ]] && [ "$lreqs" -gt 0 ]; then
        lpx=$(awk -v a="$px0" -v b="$px1" -v n="$lreqs" 'BEGIN{printf "%.2f", (b-a)/n/1000}')
      fi
      lc=$(rustc_watch_end)
      if [ "$lc" = y ]; then COMPILE_RUNS=$((COMPILE_RUNS + 1)); fi
      printf "$lfmt" "$r" "$t" "${L50[$t,$r]}" "${L99[$t,$r]}" "$lrps" "$lpx" "$shares" "$lc" "${LBAD[$t,$r]}"
    done
  done
  echo "Medians (of $LAT_ROUNDS rounds):"
  for t in "${TARGETS[@]}"; do
    v50=(); v99=()
    for r in $(seq 1 "$LAT_ROUNDS"); do v50+=("${L50[$t,$r]}"); v99+=("${L99[$t,$r]}"); done
    printf '  %-8s p50 %s us   p99 %s us\n' "$t" "$(median "${v50[@]}")" "$(median "${v99[@]}")"
  done
fi

# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
echo
echo "== Summary"
echo "date        : $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "kernel      : $(uname -r)"
echo "cpu         : $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), nproc $(nproc)"
echo "tools       : $(wrk --version 2>&1 | head -1 | awk '{print "wrk", $2}'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), latency: bench/fixed_rate.rs"
if [ "$SKIP_PORTICO" != 1 ]; then
  echo "portico     : $PORTICO_BIN ($PORTICO_REV)"
fi
echo "settings    : ROUNDS=$ROUNDS DURATION=${DURATION}s conns=$CONNS; fixed rate $LAT_RATE req/s, ${LAT_ROUNDS}x${LAT_DURATION}s"
for t in "${TARGETS[@]}"; do
  printf 'median %-8s: %s req/s, proxy %s us/req, backend %s us/req\n' "$t" "${MED_RPS[$t]}" "${MED_PX[$t]}" "${MED_BE[$t]}"
done
echo "ratio portico/nginx   CPU/req: $R_POR_NGX"
echo "ratio portico/backend CPU/req: $R_POR_BE"
echo "ratio nginx/backend   CPU/req: $R_NGX_BE"
if [ -n "$LAT_DESC" ]; then
  for t in "${TARGETS[@]}"; do
    v50=(); v99=()
    for r in $(seq 1 "$LAT_ROUNDS"); do v50+=("${L50[$t,$r]}"); v99+=("${L99[$t,$r]}"); done
    printf 'fixed %s req/s %-8s: p50 %s us, p99 %s us\n' "$LAT_RATE" "$t" "$(median "${v50[@]}")" "$(median "${v99[@]}")"
  done
fi
if [ "$COMPILE_RUNS" != 0 ]; then
  echo "note        : a rustc process was running in $COMPILE_RUNS run(s) (rustc=y); those figures are disturbed"
else
  echo "note        : no rustc process seen at the start or end of any run"
fi
[ -n "$PORTICO_NOTE" ] && echo "note        : Portico $PORTICO_NOTE"
if [ "$SKIP_PORTICO" != 1 ]; then
  any_bad=0
  for k in "${!BAD[@]}"; do
    case $k in portico,*) [ "${BAD[$k]}" != 0 ] && any_bad=1 ;; esac
  done
  for k in "${!LBAD[@]}"; do
    case $k in portico,*) [ "${LBAD[$k]}" != 0 ] && any_bad=1 ;; esac
  done
  if [ "$any_bad" = 1 ] || [ -n "$PORTICO_NOTE" ]; then
    echo "note        : Portico returned non-2xx responses or socket errors; last lines of its log:"
    tail -n 20 "$TMP/portico.log" | sed 's/^/    /'
  fi
fi
exit 0
