#!/usr/bin/env bash
# Config propagation latency, control plane -> edges, and an edge's cold start from its
# last-known-good file. Everything on 127.0.0.1.
#
# Propagation: a Portico control cluster (CONTROL_NODES = 3 by default, or 1) and 1, then 10,
# then 50 edge processes (`portico edge --control ... --workers 1 --access-log off`, enrolled
# with one edge join token, spread over all control nodes: each edge picks one of them). The
# store holds APIS APIs; each measured write replaces one of them (PUT /v1/apis/{id} on the
# leader's admin API, content different on every write), sequentially, one write at a time.
# For each write, bench/propagation_load.rs takes the revision R from the acknowledgement, then
# at once asks every edge `GET /status?wait_revision=R` on its ops listener (a long poll that
# answers as soon as the edge serves R or later, at once if it already does): one keep-alive
# connection per edge, all requests written by one thread right after the acknowledgement, and
# each answer timed by a thread per connection. The write's propagation time is the time the
# last edge answered minus the time the acknowledgement had been read. Before each phase the
# script waits until `/v1/cluster/edges` shows every edge connected and at the cluster's
# revision, and every edge's own /status agrees.
#
# Cold start: afterwards every edge and every control node is stopped, and edge 1 (its data
# directory holds its identity and a last-known-good file with the whole config: APIS + 1 APIs)
# is started COLD_REPS times. Each time, the time from just before the process is spawned to the
# first `200 ok` of a request proxied by it (API `cold`, route GET /hello, `http_proxy` to a
# backend in the load generator) is measured; then the edge is killed (SIGKILL).
#
# Also reported per phase: CPU of the control nodes and of all edges per write (schedstat; it
# includes the warm-up writes), how much CPU anything else on the machine used meanwhile
# (other_pct, of all CPUs), steal, whether a rustc or cargo process ran when the phase started
# or ended, and the three other processes that used the most CPU (from /proc/PID/stat; processes
# that ended during the phase are not seen): on a shared machine, trust phases with little of
# any of these.
#
# Prints figures only; it never fails on a threshold. It exits non-zero only if something
# cannot be set up (a port is taken, the cluster does not form, an edge does not connect).
#
# Environment:
#   WRITES         measured writes per phase (default 300)
#   WARMUP         unmeasured writes before each phase (default 20)
#   EDGE_COUNTS    edge counts, ascending (default "1 10 50"); edges stay up from one phase to
#                  the next, more are started
#   APIS           APIs in the store; writes replace them in turn (default 100). 0 = every
#                  write creates a new API (the store grows during the run)
#   OBJECT_BYTES   size of each API definition (default 300)
#   CONTROL_NODES  3 (default) or 1
#   COLD_REPS      cold starts (default 20; 0 skips the cold-start phase)
#   ENROL_BATCH    new edges started at once; each batch enrols before the next (default 16)
#   PORTICO_BIN    use this binary instead of building target/dist/portico
#   BENCH_TMPDIR   where the nodes and edges keep their data (default /var/tmp; a real disk, not
#                  tmpfs: control nodes and edges fsync)
#   RUN_TIMEOUT    seconds allowed per load run (default 900)
#   KEEP_WORK      1 = keep the temporary directory (logs, data) at exit, for debugging
set -euo pipefail

WRITES=${WRITES:-300}
WARMUP=${WARMUP:-20}
EDGE_COUNTS=${EDGE_COUNTS:-"1 10 50"}
APIS=${APIS:-100}
OBJECT_BYTES=${OBJECT_BYTES:-300}
CONTROL_NODES=${CONTROL_NODES:-3}
COLD_REPS=${COLD_REPS:-20}
ENROL_BATCH=${ENROL_BATCH:-16}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
START_TIMEOUT=90  # seconds, for the cluster to form and for edges to connect

RAFT_PORTS=(28441 28442 28443)   # UDP (QUIC): Raft and edge sync
ADMIN_PORTS=(28071 28072 28073)
EDGE_PORT_BASE=28100             # edge i (1-based) listens on BASE + i
OPS_PORT_BASE=28300              # and its ops listener on BASE + i
BACKEND_PORT=28090               # the cold-start phase's backend (in the load generator)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=bench/lib.sh
. "$REPO_ROOT/bench/lib.sh"

case $CONTROL_NODES in 1 | 3) ;; *) die "CONTROL_NODES must be 1 or 3" ;; esac
MAX_EDGES=0
for n in $EDGE_COUNTS; do
  [ "$n" -gt "$MAX_EDGES" ] || die "EDGE_COUNTS must be ascending"
  MAX_EDGES=$n
done
[ "$MAX_EDGES" -le 150 ] || die "at most 150 edges (port ranges)"
if [ "$MAX_EDGES" -eq 0 ] && [ "$COLD_REPS" -gt 0 ]; then MAX_EDGES=1; fi

for tool in curl python3 rustc ss pgrep ps timeout; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

BUILT=${PORTICO_BIN:+prebuilt $PORTICO_BIN}
portico_bin
if [ -z "$BUILT" ]; then
  BUILT="cargo build --profile dist at $(cd "$REPO_ROOT" && git rev-parse --short HEAD)"
  if [ -n "$(cd "$REPO_ROOT" && git status --porcelain -- src node control proto Cargo.toml Cargo.lock)" ]; then
    BUILT+=" plus uncommitted changes"
  fi
fi

# ---------------------------------------------------------------------------------------
# Work directory and cleanup
# ---------------------------------------------------------------------------------------
BASE_TMP=${BENCH_TMPDIR:-/var/tmp}
WORK=$(mktemp -d "$BASE_TMP/portico-propagation-bench.XXXXXX")
PIDS=()
LOAD_PID=
cleanup() {
  set +e  # stop and remove everything, whatever fails
  if [ -n "$LOAD_PID" ]; then
    # `timeout`, the load generator under it, and the edge the load generator may have started
    # (cold start), by PID.
    local gen kids=
    for gen in $(ps -o pid= --ppid "$LOAD_PID" 2>/dev/null); do
      kids+=" $gen $(ps -o pid= --ppid "$gen" 2>/dev/null | tr '\n' ' ')"
    done
    kill "$LOAD_PID" 2>/dev/null || true
    # shellcheck disable=SC2086
    if [ -n "${kids// /}" ]; then kill -9 $kids 2>/dev/null || true; fi
  fi
  stop_pids "${PIDS[@]}"
  if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

warn_if_tmpfs

log "building the load generator (rustc -O bench/propagation_load.rs)"
rustc --edition 2021 -O "$REPO_ROOT/bench/propagation_load.rs" -o "$WORK/propagation_load" >&2
LOAD="$WORK/propagation_load"

TCP_PORTS=("${ADMIN_PORTS[@]:0:$CONTROL_NODES}" "$BACKEND_PORT")
for i in $(seq 1 "$MAX_EDGES"); do
  TCP_PORTS+=($((EDGE_PORT_BASE + i)) $((OPS_PORT_BASE + i)))
done
for port in "${TCP_PORTS[@]}"; do
  if ss -Htln "sport = :$port" | grep -q .; then die "TCP port $port is taken"; fi
done
for port in "${RAFT_PORTS[@]:0:$CONTROL_NODES}"; do
  if ss -Huln "sport = :$port" | grep -q .; then die "UDP port $port is taken"; fi
done

# Runs the load generator with a time limit, its output to FILE, in the background: `wait` is
# interrupted by a signal (a foreground command would delay the traps until it ends).
load_run() { # FILE ARGS...
  local file=$1 rc=0
  shift
  timeout "$RUN_TIMEOUT" "$LOAD" "$@" >"$file" &
  LOAD_PID=$!
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=
  return "$rc"
}

# ---------------------------------------------------------------------------------------
# Control plane: init + start node 1, then joins (learner, then voter once caught up)
# ---------------------------------------------------------------------------------------
export PORTICO_LOG=${PORTICO_LOG:-warn}
# shellcheck source=bench/portico_cluster.sh
. "$REPO_ROOT/bench/portico_cluster.sh"
CLUSTER_RAFT_PORTS=("${RAFT_PORTS[@]}")
CLUSTER_ADMIN_PORTS=("${ADMIN_PORTS[@]}")
portico_cluster_start c "$CONTROL_NODES"
CONTROL_PIDS=("${CLUSTER_PIDS[@]}")
log "control plane: $CONTROL_NODES voter(s), leader node $LEADER_ID serves $LEADER_ADMIN"
CONTROLS=$(printf '127.0.0.1:%s,' "${RAFT_PORTS[@]:0:$CONTROL_NODES}")
CONTROLS=${CONTROLS%,}

admin() { # METHOD PATH [BODY]
  curl -sf -m 10 -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    ${3:+--data-binary "$3"} "http://$LEADER_ADMIN$2"
}

JOIN_EDGE=$(PORTICO_TOKEN=$TOKEN "$PORTICO_BIN" token create edges --role edge \
  --server "$LEADER_ADMIN" | sed -n 1p)
[ -n "$JOIN_EDGE" ] || die "portico token create --role edge printed no join token"

# The cold-start API, then the APIs the writes replace.
admin PUT /v1/apis/cold \
  "{\"id\":\"cold\",\"kind\":\"http\",\"routes\":[{\"key\":\"GET /hello\",\"integration\":{\"type\":\"http_proxy\",\"uri\":\"http://127.0.0.1:$BACKEND_PORT/hello\"}}],\"stages\":[{\"name\":\"prod\"}]}" \
  >/dev/null || die "cannot create the API cold"
if [ "$APIS" -gt 0 ]; then
  load_run "$WORK/seed.out" seed --admin "$LEADER_ADMIN" --token "$TOKEN" --apis "$APIS" \
    --object-bytes "$OBJECT_BYTES" || die "seeding failed"
fi

# ---------------------------------------------------------------------------------------
# Edges
# ---------------------------------------------------------------------------------------
EDGE_PIDS=()
EDGES_UP=0
edge_args() { # i
  printf '%s\n' edge --control "$CONTROLS" --data "$WORK/edge$1" \
    --listen "127.0.0.1:$((EDGE_PORT_BASE + $1))" --ops-listen "127.0.0.1:$((OPS_PORT_BASE + $1))" \
    --workers 1 --access-log off
}
# Starts (and enrols) edges up to N, ENROL_BATCH at a time: each batch has enrolled before the
# next starts. A control node serves at most 32 connections without a certificate at once
# (ServeLimits::max_anonymous), and an edge whose enrolment is refused exits; starting 40
# edges at once made some of them exit.
start_edges() { # up to N
  local i j deadline
  for i in $(seq $((EDGES_UP + 1)) "$1"); do
    mapfile -t args < <(edge_args "$i")
    "$PORTICO_BIN" "${args[@]}" --region eu --join-token "$JOIN_EDGE" \
      >"$WORK/edge$i.out" 2>"$WORK/edge$i.log" &
    disown $!
    EDGE_PIDS+=($!)
    PIDS+=($!)
    if [ $(( (i - EDGES_UP) % ENROL_BATCH )) -eq 0 ] || [ "$i" -eq "$1" ]; then
      deadline=$((SECONDS + START_TIMEOUT))
      for j in $(seq $((i - (i - EDGES_UP - 1) % ENROL_BATCH)) "$i"); do
        until grep -q 'Enrolled as edge' "$WORK/edge$j.out" 2>/dev/null; do
          kill -0 "${EDGE_PIDS[$((j - 1))]}" 2>/dev/null \
            || die "edge $j exited: $(tail -n 5 "$WORK/edge$j.log")"
          [ $SECONDS -lt $deadline ] || die "edge $j did not enrol in ${START_TIMEOUT}s"
          sleep 0.1
        done
      done
    fi
  done
  EDGES_UP=$1
}

# Waits until /v1/cluster/edges shows N edges, all connected and at the cluster's revision, and
# every edge's own /status says the same; then writes the edge list (ops address, control node
# it syncs from) to $WORK/edges.txt.
wait_edges() { # N
  local n=$1 deadline=$((SECONDS + START_TIMEOUT)) answer
  while :; do
    local i
    for i in "${!EDGE_PIDS[@]}"; do
      kill -0 "${EDGE_PIDS[$i]}" 2>/dev/null \
        || die "edge $((i + 1)) exited: $(tail -n 5 "$WORK/edge$((i + 1)).log" "$WORK/edge$((i + 1)).out")"
    done
    cluster_alive_or_die
    if answer=$(admin GET /v1/cluster/edges 2>/dev/null) \
      && printf '%s' "$answer" >"$WORK/edges.json" \
      && python3 - "$WORK" "$n" "$OPS_PORT_BASE" <<'PY'
import json, re, sys, urllib.request
work, n, ops_base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = json.load(open(f"{work}/edges.json"))
items = {e["id"]: e for e in d["items"]}
rev = d["revision"]
lines = []
for i in range(1, n + 1):
    try:
        out = open(f"{work}/edge{i}.out").read()
    except OSError:
        sys.exit(1)
    m = re.search(r"Enrolled as edge (\S+) ", out)
    if not m or m.group(1) not in items:
        sys.exit(1)
    e = items[m.group(1)]
    if e["status"] != "connected" or e["revision"] != rev:
        sys.exit(1)
    try:
        s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ops_base + i}/status", timeout=2))
    except Exception:
        sys.exit(1)
    if s.get("revision") != rev:
        sys.exit(1)
    lines.append(f"127.0.0.1:{ops_base + i} node{e['node']}")
if len([e for e in d["items"] if e["status"] == "connected"]) != n:
    sys.exit(1)
open(f"{work}/edges.txt", "w").write("\n".join(lines) + "\n")
PY
    then
      return 0
    fi
    [ $SECONDS -lt $deadline ] || die "the edges did not all connect and catch up in ${START_TIMEOUT}s: $(printf '%s' "${answer:-}" | head -c 2000)"
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------------------
# Measurement helpers (cpu_ns and cpu_jiffies are in bench/lib.sh)
# ---------------------------------------------------------------------------------------
# Whether a compiler ran, checked when a phase starts and when it ends only (is_running in
# bench/lib.sh says why); other_pct and the busiest other processes name whatever else ran.
watch_begin() {
  RUSTC_AT_START=$(is_running rustc)
  CARGO_AT_START=$(is_running cargo)
}
watch_end() { # -> "rustc=y|n cargo=y|n", y if running at the start or now
  local r=$RUSTC_AT_START c=$CARGO_AT_START
  [ "$r" = y ] || r=$(is_running rustc)
  [ "$c" = y ] || c=$(is_running cargo)
  echo "rustc=$r cargo=$c"
}

# CPU ticks of every process, to name what else ran during a phase: snapshot FILE, then
# busiest_others FILE PID... (the PIDs to leave out) prints the top 3 other processes by CPU,
# as a share of one CPU between the two snapshots (those that ended meanwhile are not seen).
proc_snapshot() {
  python3 - "$1" <<'PY'
import glob, json, os, sys, time
snap = {"_at": ["", time.monotonic(), ""]}
for path in glob.glob("/proc/[0-9]*/stat"):
    if path.split("/")[2] == str(os.getpid()):
        continue
    try:
        raw = open(path).read()
    except OSError:
        continue
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    snap[path.split("/")[2]] = [comm, int(fields[11]) + int(fields[12]), fields[1]]
json.dump(snap, open(sys.argv[1], "w"))
PY
}
busiest_others() {
  local before=$1
  shift
  proc_snapshot "$before.after"
  python3 - "$before" "$before.after" "$@" <<'PY'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
wall_s, ours = b.pop("_at")[1] - a.pop("_at")[1], set(sys.argv[3:])
rows = []
for pid, (comm, ticks, ppid) in b.items():
    # Ours: the nodes and edges, the load generator, this script and its subshells.
    if pid in ours or ppid in ours or comm.startswith("propagation_loa"):
        continue
    used = ticks - a.get(pid, [comm, 0])[1]
    share = used / wall_s  # ticks are 1/100 s: ticks per second = percent of one CPU
    if share >= 2:
        rows.append((share, f"{comm}[{pid}] {share:.0f}%"))
rows.sort(reverse=True)
print(", ".join(r for _, r in rows[:3]) or "none above 2%")
PY
}

NCPU=$(nproc)
RESULTS="$WORK/results.txt"
: >"$RESULTS"

echo "== Config propagation: Portico control plane ($CONTROL_NODES node(s)) -> edges, 127.0.0.1"
echo "machine: $NCPU CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
echo "portico: $BUILT"
echo "data: $WORK ($FS_TYPE)"
if [ "$APIS" -gt 0 ]; then objects="store of $APIS APIs (+1), each write replaces one"; else objects="every write a new API"; fi
echo "load: $WARMUP warm-up + $WRITES measured writes per phase, sequential; $objects ($OBJECT_BYTES bytes); edges sync from: $CONTROLS; leader: node $LEADER_ID"
echo "before: $(uptime | sed 's/^ *//')"
echo

# ---------------------------------------------------------------------------------------
# Propagation phases
# ---------------------------------------------------------------------------------------
for n in $EDGE_COUNTS; do
  log "starting edges up to $n"
  start_edges "$n"
  wait_edges "$n"
  sleep 1
  watch_begin
  proc_snapshot "$WORK/procs"
  read -r busy0 steal0 < <(cpu_jiffies)
  c0=$(cpu_ns "${CONTROL_PIDS[@]}"); e0=$(cpu_ns "${EDGE_PIDS[@]}")
  t0=$(date +%s%N)
  load_run "$WORK/load.out" propagate --admin "$LEADER_ADMIN" --token "$TOKEN" \
    --edges "$WORK/edges.txt" --writes "$WRITES" --warmup "$WARMUP" --tag "e$n" \
    --apis "$APIS" --object-bytes "$OBJECT_BYTES" || die "the load run with $n edges failed"
  out=$(cat "$WORK/load.out")
  t1=$(date +%s%N)
  c1=$(cpu_ns "${CONTROL_PIDS[@]}"); e1=$(cpu_ns "${EDGE_PIDS[@]}")
  read -r busy1 steal1 < <(cpu_jiffies)
  seen=$(watch_end)
  head_line=$(printf '%s\n' "$out" | head -1)
  client_ms=$(printf '%s\n' "$head_line" | sed -n 's/.*client_cpu_ms=\([0-9]*\).*/\1/p')
  wall_ms=$(( (t1 - t0) / 1000000 + 1 ))
  busy_ms=$(( (busy1 - busy0) * 10 ))
  other_ms=$(( busy_ms - (c1 - c0 + e1 - e0) / 1000000 - ${client_ms:-0} ))
  if [ "$other_ms" -lt 0 ]; then other_ms=0; fi
  total_writes=$((WRITES + WARMUP))
  extra="control_cpu_us_per_write=$(( (c1 - c0) / 1000 / total_writes ))"
  extra+=" edges_cpu_us_per_write=$(( (e1 - e0) / 1000 / total_writes ))"
  extra+=" other_pct=$(( 100 * other_ms / (wall_ms * NCPU) ))"
  extra+=" steal_pct=$(( 100 * (steal1 - steal0) * 10 / (wall_ms * NCPU) ))"
  extra+=" $seen"
  printf 'phase=propagation %s %s\n' "$head_line" "$extra" | tee -a "$RESULTS"
  printf '%s\n' "$out" | tail -n +2
  echo "  other processes (share of one CPU): $(busiest_others "$WORK/procs" "$$" "${CONTROL_PIDS[@]}" "${EDGE_PIDS[@]}")"
done
echo "after : $(uptime | sed 's/^ *//')"

# ---------------------------------------------------------------------------------------
# Cold start from last-known-good, control plane down
# ---------------------------------------------------------------------------------------
if [ "$COLD_REPS" -gt 0 ]; then
  if [ "$EDGES_UP" -eq 0 ]; then start_edges 1; wait_edges 1; fi
  cold_apis=$(curl -sf -m 3 "http://127.0.0.1:$((OPS_PORT_BASE + 1))/status" | json_eval 'd["apis"]')
  log "stopping every edge and control node"
  stop_pids "${EDGE_PIDS[@]}"
  stop_pids "${CONTROL_PIDS[@]}"
  lkg=$(find "$WORK/edge1" -maxdepth 1 -name 'last-known-good*' -printf '%f %s bytes\n' | head -1)
  echo
  echo "== Cold start: edge 1 from its last-known-good file ($lkg, $cold_apis APIs), control plane stopped"
  mapfile -t args < <(edge_args 1)
  watch_begin
  proc_snapshot "$WORK/procs"
  t0=$(date +%s%N)
  read -r busy0 steal0 < <(cpu_jiffies)
  load_run "$WORK/load.out" coldstart --listen "127.0.0.1:$((EDGE_PORT_BASE + 1))" \
    --host cold.portico.localhost --path /prod/hello --expect ok \
    --backend "127.0.0.1:$BACKEND_PORT" --reps "$COLD_REPS" --log "$WORK/cold.log" \
    -- "$PORTICO_BIN" "${args[@]}" || die "the cold-start run failed: $(tail -n 5 "$WORK/cold.log")"
  out=$(cat "$WORK/load.out")
  read -r busy1 steal1 < <(cpu_jiffies)
  t1=$(date +%s%N)
  seen=$(watch_end)
  wall_ms=$(( (t1 - t0) / 1000000 + 1 ))
  # Busy share of all CPUs during the cold starts (the edges' start-up and the poller included).
  busy_pct=$(( 100 * (busy1 - busy0) * 10 / (wall_ms * NCPU) ))
  printf 'phase=coldstart %s busy_pct=%s steal_pct=%s %s\n' "$(printf '%s\n' "$out" | head -1)" \
    "$busy_pct" "$(( 100 * (steal1 - steal0) * 10 / (wall_ms * NCPU) ))" "$seen" | tee -a "$RESULTS"
  printf '%s\n' "$out" | tail -n +2
  echo "  other processes (share of one CPU): $(busiest_others "$WORK/procs" "$$")"
fi

# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
echo
python3 - "$RESULTS" <<'PY'
import sys
rows = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in open(sys.argv[1])]
ms = lambda v: f"{int(v) / 1000:.1f}"
prop = [r for r in rows if r["phase"] == "propagation"]
if prop:
    print("Propagation, acknowledgement -> every edge serves the revision (ms):")
    print()
    print("| edges | writes | p50 | p90 | p99 | max | first edge p50 | ack p50 | control cpu ms/write | edges cpu ms/write | other % | rustc/cargo seen | late | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in prop:
        print(f"| {r['edges']} | {r['ok']} | {ms(r['p50_us'])} | {ms(r['p90_us'])} | {ms(r['p99_us'])} | {ms(r['max_us'])} | "
              f"{ms(r['first_p50_us'])} | {ms(r['ack_p50_us'])} | {ms(r['control_cpu_us_per_write'])} | {ms(r['edges_cpu_us_per_write'])} | "
              f"{r['other_pct']} | {r['rustc']}/{r['cargo']} | {r['late']} | {r['errors']} |")
    ten = [r for r in prop if r["edges"] == "10"]
    if ten:
        p99 = int(ten[0]["p99_us"]) / 1000
        print()
        print(f"Issue target, p99 <= 50 ms with 10 edges: p99 {p99:.1f} ms, {'met' if p99 <= 50 else 'NOT met'}")
cold = [r for r in rows if r["phase"] == "coldstart"]
if cold:
    r = cold[0]
    print()
    print(f"Cold start, spawn -> first proxied 200 ({r['reps']} starts): p50 {ms(r['ready_p50_us'])} ms, p90 {ms(r['ready_p90_us'])} ms, "
          f"max {ms(r['ready_max_us'])} ms, listener up p50 {ms(r['listening_p50_us'])} ms; rustc/cargo seen {r['rustc']}/{r['cargo']}")
    print(f"Issue target, <= 100 ms: max {ms(r['ready_max_us'])} ms, {'met' if int(r['ready_max_us']) <= 100000 else 'NOT met'} "
          f"(p50 {'met' if int(r['ready_p50_us']) <= 100000 else 'NOT met'})")
PY
