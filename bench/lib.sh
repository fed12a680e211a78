# Sourced by the benchmark scripts (proxy.sh, callgrind.sh, raft.sh, propagation.sh): the
# helpers they share. The caller sets REPO_ROOT before sourcing it (and WORK before calling
# warn_if_tmpfs).

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Evaluates the Python expression $1 on the JSON document on stdin (bound to `d`), prints it.
json_eval() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Sets PORTICO_BIN: checks the given one, or builds target/dist/portico
# (`cargo build --profile dist`).
portico_bin() {
  local target_dir
  if [ -n "${PORTICO_BIN:-}" ]; then
    [ -x "$PORTICO_BIN" ] || die "PORTICO_BIN=$PORTICO_BIN is not executable"
    return 0
  fi
  log "building portico (cargo build --profile dist)"
  (cd "$REPO_ROOT" && cargo build --profile dist >&2)
  target_dir=${CARGO_TARGET_DIR:-target}
  case $target_dir in /*) ;; *) target_dir="$REPO_ROOT/$target_dir" ;; esac
  PORTICO_BIN="$target_dir/dist/portico"
}

# y if a process named $1 (rustc, cargo) is running, else n. The scripts ask when a run starts
# and when it ends, never during one: a pgrep every 0.5 s scans /proc on a core the run uses,
# and in proxy.sh it was the largest disturbance of the latency it measured.
is_running() {
  if pgrep -x "$1" >/dev/null 2>&1; then echo y; else echo n; fi
}

stop_pids() { # PID...: SIGTERM, up to 10 s, then SIGKILL
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

# Sets FS_TYPE to the file system of $WORK, and warns if it is tmpfs.
warn_if_tmpfs() {
  FS_TYPE=$(stat -f -c %T "$WORK")
  if [ "$FS_TYPE" = tmpfs ]; then
    log "warning: $WORK is on tmpfs: fsync costs nothing there; set BENCH_TMPDIR to a disk"
  fi
}

cpu_ns() { # PID...: nanoseconds on CPU of all their threads (/proc/PID/task/*/schedstat)
  local total=0 pid f v
  for pid in "$@"; do
    for f in /proc/"$pid"/task/*/schedstat; do
      read -r v _ <"$f" 2>/dev/null || continue
      total=$((total + v))
    done
  done
  echo "$total"
}

# "busy steal" jiffies (USER_HZ) of all CPUs, from /proc/stat: busy is user, nice, system, irq
# and softirq (not idle, iowait or steal).
cpu_jiffies() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat
}
