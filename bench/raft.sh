#!/usr/bin/env bash
# Control-plane commit latency and write throughput: a 3-node Portico cluster vs a 3-node etcd
# 3.4 cluster, side by side in one run, on 127.0.0.1, fsync on in both.
#
# Both get the same logical writes (bench/raft_load.rs): distinct ~300-byte objects (an API
# definition as JSON), PUT /v1/apis/{id} to Portico's leader, and a put of key apis/{id} through
# etcd's v3 JSON gateway (POST /v3/kv/put) to etcd's leader, each client on one keep-alive
# HTTP/1.1 connection. Both answer after a quorum commit. Per round: SEQ_WRITES writes from one
# client (commit latency), then CONC_WRITES writes from CLIENTS clients (throughput). Rounds
# alternate which system goes first. Also reported: CPU time of all three nodes of the system
# under test per write (from /proc/PID/task/*/schedstat), and how much CPU anything else on the
# machine used meanwhile (other_pct, of all CPUs) and the hypervisor's steal (steal_pct): on a
# shared machine, compare rounds with little of either.
#
# Prints figures only; it never fails on a threshold. It exits non-zero only if something
# cannot be set up (a port is taken, a cluster does not form).
#
# Environment:
#   ROUNDS        rounds (default 2)
#   SEQ_WRITES    writes from 1 client per round (default 1000)
#   CONC_WRITES   writes from CLIENTS clients per round (default 2000)
#   CLIENTS       concurrent clients (default 8)
#   OBJECT_BYTES  size of each object (default 300)
#   WARMUP        unmeasured writes before each run (default 50)
#   FIXED_KEYS    0 (default) = every write is a new object, as the issue asks; K = each run's
#                 writes cycle over K objects (updates whose content differs per write), so the
#                 stored state stays small: isolates replication and storage from costs that
#                 grow with the number of stored objects
#   PORTICO_BIN   use this binary instead of building target/dist/portico
#   BENCH_TMPDIR  where the clusters keep their data (default /var/tmp; must be a real disk,
#                 not tmpfs, or fsync costs nothing)
#   STRACE        1 = afterwards, count the syscalls of each leader (strace -c -f) over 300
#                 more sequential writes (slows those writes; figures not used above)
#   RUN_TIMEOUT   seconds allowed per load run (default 600)
set -euo pipefail

ROUNDS=${ROUNDS:-2}
SEQ_WRITES=${SEQ_WRITES:-1000}
CONC_WRITES=${CONC_WRITES:-2000}
CLIENTS=${CLIENTS:-8}
OBJECT_BYTES=${OBJECT_BYTES:-300}
WARMUP=${WARMUP:-50}
FIXED_KEYS=${FIXED_KEYS:-0}
STRACE=${STRACE:-0}
STRACE_WRITES=300
RUN_TIMEOUT=${RUN_TIMEOUT:-600}   # seconds, per load run
START_TIMEOUT=60  # seconds, for a cluster to form

ETCD_CLIENT_PORTS=(23791 23792 23793)
ETCD_PEER_PORTS=(23801 23802 23803)
PORTICO_RAFT_PORTS=(27441 27442 27443)   # UDP (QUIC)
PORTICO_ADMIN_PORTS=(27071 27072 27073)

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=bench/lib.sh
. "$REPO_ROOT/bench/lib.sh"

SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
PATH="$PATH:/usr/sbin:/sbin"

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  log "installing etcd-server and etcd-client with apt-get"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y etcd-server etcd-client
fi
command -v etcd >/dev/null 2>&1 || die "etcd not found after install"
for tool in curl python3 rustc ss; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
if [ "$STRACE" = 1 ]; then command -v strace >/dev/null 2>&1 || die "strace not found"; fi

portico_bin

# ---------------------------------------------------------------------------------------
# Work directory and cleanup
# ---------------------------------------------------------------------------------------
BASE_TMP=${BENCH_TMPDIR:-/var/tmp}
WORK=$(mktemp -d "$BASE_TMP/portico-raft-bench.XXXXXX")
PIDS=()
cleanup() {
  stop_pids "${PIDS[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

warn_if_tmpfs

log "building the load generator (rustc -O bench/raft_load.rs)"
rustc --edition 2021 -O "$REPO_ROOT/bench/raft_load.rs" -o "$WORK/raft_load" >&2
LOAD="$WORK/raft_load"

for port in "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" "${PORTICO_ADMIN_PORTS[@]}"; do
  if ss -Htln "sport = :$port" | grep -q .; then die "TCP port $port is taken"; fi
done
for port in "${PORTICO_RAFT_PORTS[@]}"; do
  if ss -Huln "sport = :$port" | grep -q .; then die "UDP port $port is taken"; fi
done

# ---------------------------------------------------------------------------------------
# etcd: 3 members, default durability (fsync on), warn logs
# ---------------------------------------------------------------------------------------
ETCD_PIDS=()
INITIAL_CLUSTER=""
for i in 0 1 2; do
  INITIAL_CLUSTER+="${INITIAL_CLUSTER:+,}e$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
done
for i in 0 1 2; do
  etcd --name "e$((i + 1))" --data-dir "$WORK/etcd$((i + 1))" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
    --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-token portico-bench \
    --initial-cluster-state new \
    --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) \
    --logger zap --log-level warn \
    >"$WORK/etcd$((i + 1)).log" 2>&1 &
  disown $!  # stopped by PID in cleanup; no job notices
  ETCD_PIDS+=($!)
  PIDS+=($!)
done

etcd_status() { curl -sf -m 2 -X POST -d '{}' "http://127.0.0.1:$1/v3/maintenance/status"; }

ETCD_LEADER_PORT=
ETCD_LEADER_PID=
deadline=$((SECONDS + START_TIMEOUT))
while [ -z "$ETCD_LEADER_PORT" ]; do
  [ $SECONDS -lt $deadline ] || die "etcd did not elect a leader in ${START_TIMEOUT}s (logs in $WORK/etcd*.log)"
  for i in 0 1 2; do
    kill -0 "${ETCD_PIDS[$i]}" 2>/dev/null || die "etcd member $((i + 1)) exited: $(tail -5 "$WORK/etcd$((i + 1)).log")"
    if s=$(etcd_status "${ETCD_CLIENT_PORTS[$i]}" 2>/dev/null) \
       && [ "$(printf '%s' "$s" | json_eval 'd["header"]["member_id"] == d.get("leader")')" = True ]; then
      ETCD_LEADER_PORT=${ETCD_CLIENT_PORTS[$i]}
      ETCD_LEADER_PID=${ETCD_PIDS[$i]}
    fi
  done
  [ -n "$ETCD_LEADER_PORT" ] || sleep 0.2
done
log "etcd: 3 members up, leader serves 127.0.0.1:$ETCD_LEADER_PORT"

# ---------------------------------------------------------------------------------------
# Portico: init + start node 1, then two joins (learner, then voter once caught up)
# ---------------------------------------------------------------------------------------
export PORTICO_LOG=${PORTICO_LOG:-warn}
# shellcheck source=bench/portico_cluster.sh
. "$REPO_ROOT/bench/portico_cluster.sh"
CLUSTER_RAFT_PORTS=("${PORTICO_RAFT_PORTS[@]}")
CLUSTER_ADMIN_PORTS=("${PORTICO_ADMIN_PORTS[@]}")
portico_cluster_start p 3
PORTICO_PIDS=("${CLUSTER_PIDS[@]}")
PORTICO_LEADER_PID=$LEADER_PID
log "portico: 3 voters, leader serves $LEADER_ADMIN"

# ---------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------
# cpu_ns and cpu_jiffies are in bench/lib.sh.

# p50/p99 of a 4 KiB append + fdatasync in the data directory: the floor of any commit here.
disk_floor() {
  python3 - "$1" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
buf = b"\0" * 4096
samples = []
for _ in range(300):
    t = time.perf_counter_ns()
    os.write(fd, buf)
    os.fdatasync(fd)
    samples.append(time.perf_counter_ns() - t)
os.close(fd)
os.unlink(sys.argv[1])
samples.sort()
print(f"4 KiB append + fdatasync p50 {samples[len(samples) // 2] / 1000:.0f} us, p99 {samples[int(len(samples) * 0.99)] / 1000:.0f} us")
PY
}

NCPU=$(nproc)
RESULTS="$WORK/results.txt"
: >"$RESULTS"
# run SYSTEM PHASE ROUND WRITES CLIENTS
run() {
  local system=$1 phase=$2 round=$3 writes=$4 clients=$5 addr pids token=() line
  local tag="r${round}${phase:0:1}" before after t0 t1 busy0 steal0 busy1 steal1
  if [ "$system" = etcd ]; then
    addr="127.0.0.1:$ETCD_LEADER_PORT"; pids=("${ETCD_PIDS[@]}")
  else
    addr=$LEADER_ADMIN; pids=("${PORTICO_PIDS[@]}"); token=(--token "$TOKEN")
  fi
  before=$(cpu_ns "${ETCD_PIDS[@]}" "${PORTICO_PIDS[@]}")
  read -r busy0 steal0 < <(cpu_jiffies)
  local sut0; sut0=$(cpu_ns "${pids[@]}")
  t0=$(date +%s%N)
  line=$(timeout "$RUN_TIMEOUT" "$LOAD" --system "$system" --addr "$addr" "${token[@]}" \
    --writes "$writes" --clients "$clients" --tag "$tag" --object-bytes "$OBJECT_BYTES" \
    --warmup "$WARMUP" --keys "$FIXED_KEYS") || { log "warning: $system $phase round $round failed"; return 0; }
  t1=$(date +%s%N)
  local sut1; sut1=$(cpu_ns "${pids[@]}")
  read -r busy1 steal1 < <(cpu_jiffies)
  after=$(cpu_ns "${ETCD_PIDS[@]}" "${PORTICO_PIDS[@]}")
  # CPU per write of the system under test (all 3 nodes); includes the warm-up writes' share.
  line+=" cpu_us_per_write=$(( (sut1 - sut0) / 1000 / (writes + WARMUP) ))"
  # What else ran meanwhile: all CPUs' busy time minus both clusters and the load generator,
  # as a share of the run's wall time on all CPUs; and the steal.
  local client_ms wall_ms busy_ms other_ms
  client_ms=$(printf '%s\n' "$line" | sed -n 's/.*client_cpu_ms=\([0-9]*\).*/\1/p')
  wall_ms=$(( (t1 - t0) / 1000000 + 1 ))
  busy_ms=$(( (busy1 - busy0) * 10 ))
  other_ms=$(( busy_ms - (after - before) / 1000000 - ${client_ms:-0} ))
  if [ "$other_ms" -lt 0 ]; then other_ms=0; fi  # tick granularity
  line+=" other_pct=$(( 100 * other_ms / (wall_ms * NCPU) ))"
  line+=" steal_pct=$(( 100 * (steal1 - steal0) * 10 / (wall_ms * NCPU) ))"
  printf 'round=%s phase=%s %s\n' "$round" "$phase" "$line" | tee -a "$RESULTS"
}

echo "== Control plane commit latency: Portico (3 nodes) vs etcd $(etcd --version | awk '/etcd Version/ {print $3}') (3 nodes), 127.0.0.1, fsync on"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
echo "data: $WORK ($FS_TYPE); the fsync floor there: $(disk_floor "$WORK/fsync-probe")"
if [ "$FIXED_KEYS" -gt 0 ]; then objects="each run cycling over $FIXED_KEYS objects (updates)"; else objects="every write a new object"; fi
echo "load: $SEQ_WRITES writes from 1 client, then $CONC_WRITES writes from $CLIENTS clients, per round; $ROUNDS rounds; $OBJECT_BYTES-byte objects, $objects; $WARMUP warm-up writes per run"
echo
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order=(etcd portico); else order=(portico etcd); fi
  for system in "${order[@]}"; do run "$system" seq "$round" "$SEQ_WRITES" 1; done
  for system in "${order[@]}"; do run "$system" conc "$round" "$CONC_WRITES" "$CLIENTS"; done
done

echo
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    rows.append(dict(kv.split("=", 1) for kv in line.split()))
def med(system, phase, key):
    vals = [float(r[key]) for r in rows if r["system"] == system and r["phase"] == phase and r.get(key) not in (None, "NaN", "nan")]
    return statistics.median(vals) if vals else float("nan")
print("Medians over rounds (latency in microseconds; cpu = CPU time of all 3 nodes per write;")
print("other % = CPU used by anything but the two clusters and the load generator, of all CPUs):")
print()
print("| phase | system | p50 | p90 | p99 | mean | writes/s | cpu us/write | other % | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for phase, label in (("seq", "1 client"), ("conc", "concurrent")):
    for system in ("etcd", "portico"):
        errs = sum(int(r["errors"]) for r in rows if r["system"] == system and r["phase"] == phase)
        clients = next((r["clients"] for r in rows if r["phase"] == phase), "?")
        print(f"| {label} ({clients}) | {system} | {med(system, phase, 'p50_us'):.0f} | {med(system, phase, 'p90_us'):.0f} | "
              f"{med(system, phase, 'p99_us'):.0f} | {med(system, phase, 'mean_us'):.0f} | {med(system, phase, 'wps'):.0f} | "
              f"{med(system, phase, 'cpu_us_per_write'):.0f} | {med(system, phase, 'other_pct'):.0f} | {errs} |")
print()
print("Ratios portico/etcd, per round then median (latency: < 1 means Portico is faster; writes/s: > 1 means Portico is faster):")
for phase in ("seq", "conc"):
    parts = []
    for key in ("p50_us", "p99_us", "wps", "cpu_us_per_write"):
        ratios = []
        for r in sorted({x["round"] for x in rows}):
            e = [float(x[key]) for x in rows if x["round"] == r and x["phase"] == phase and x["system"] == "etcd"]
            p = [float(x[key]) for x in rows if x["round"] == r and x["phase"] == phase and x["system"] == "portico"]
            if e and p and e[0] > 0:
                ratios.append(p[0] / e[0])
        per_round = " ".join(f"{x:.2f}" for x in ratios)
        parts.append(f"{key.replace('_us', '').replace('_per_write', '/write')} {statistics.median(ratios):.2f} ({per_round})" if ratios else f"{key} -")
    print(f"  {phase:4s}: " + "; ".join(parts))
PY

if [ "$STRACE" = 1 ]; then
  for system in portico etcd; do
    if [ "$system" = etcd ]; then pid=$ETCD_LEADER_PID; addr="127.0.0.1:$ETCD_LEADER_PORT"; token=();
    else pid=$PORTICO_LEADER_PID; addr=$LEADER_ADMIN; token=(--token "$TOKEN"); fi
    echo
    echo "== strace -c -f of the $system leader over $STRACE_WRITES sequential writes (by calls)"
    strace -qq -c -f -S calls -p "$pid" -o "$WORK/strace.$system" &
    spid=$!
    sleep 1
    timeout "$RUN_TIMEOUT" "$LOAD" --system "$system" --addr "$addr" "${token[@]}" \
      --writes "$STRACE_WRITES" --clients 1 --tag "st${system:0:1}" \
      --object-bytes "$OBJECT_BYTES" --warmup 0 --keys "$FIXED_KEYS" >/dev/null || true
    kill -INT "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    awk -v n="$STRACE_WRITES" '$NF ~ /^(fsync|fdatasync|sync_file_range|pwrite64|write|writev|sendmsg|sendto|futex)$/ && $4 ~ /^[0-9]+$/ {
      printf "  %-16s %7d calls  %6.2f per write\n", $NF, $4, $4 / n }' "$WORK/strace.$system"
  done
fi
