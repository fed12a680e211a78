# Sourced by bench/raft.sh and bench/propagation.sh: starts a Portico control plane on
# 127.0.0.1, the way an operator would (`control init` + `start` for node 1, then a join token
# and `control join` for each other node, each a learner first and a voter once caught up).
#
# The caller provides: PORTICO_BIN, WORK, START_TIMEOUT, the array PIDS (every started process
# is added to it, for the caller's cleanup), the functions log, die and json_eval (from
# bench/lib.sh), and the arrays CLUSTER_RAFT_PORTS and CLUSTER_ADMIN_PORTS (one port per node).
#
# portico_cluster_start PREFIX NODES starts NODES voters with data in $WORK/PREFIX1.. and logs in
# $WORK/PREFIX1.log.., and sets TOKEN (an admin token), CLUSTER_PIDS (the nodes' PIDs in node
# order), LEADER_ADMIN (host:port), LEADER_ID and LEADER_PID.

cluster_status() { # ADMIN_PORT
  curl -sf -m 3 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/v1/cluster/status"
}

# Number of voters (leader included) that the node on admin port $1 reports.
cluster_voters() {
  cluster_status "$1" 2>/dev/null \
    | json_eval 'sum(1 for m in d["members"] if m["role"] in ("leader", "voter"))' 2>/dev/null \
    || echo 0
}

# Dies if a control node has exited.
cluster_alive_or_die() {
  local pid
  for pid in "${CLUSTER_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a Portico control node exited: $(tail -n 5 "$WORK/$CLUSTER_PREFIX"*.log)"
  done
}

cluster_wait_voters() { # ADMIN_PORT WANTED
  local deadline=$((SECONDS + START_TIMEOUT))
  until [ "$(cluster_voters "$1")" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || die "the Portico cluster did not reach $2 voters in ${START_TIMEOUT}s (logs in $WORK/$CLUSTER_PREFIX*.log)"
    cluster_alive_or_die
    sleep 0.2
  done
}

portico_cluster_start() { # PREFIX NODES
  CLUSTER_PREFIX=$1
  local nodes=$2 i join status
  CLUSTER_PIDS=()
  "$PORTICO_BIN" control init --data "$WORK/${CLUSTER_PREFIX}1" --cluster-name bench \
    --raft-listen "127.0.0.1:${CLUSTER_RAFT_PORTS[0]}" \
    --admin-listen "127.0.0.1:${CLUSTER_ADMIN_PORTS[0]}" >"$WORK/${CLUSTER_PREFIX}1.init" 2>&1 \
    || die "portico control init failed: $(cat "$WORK/${CLUSTER_PREFIX}1.init")"
  TOKEN=$(grep -o 'ptk_[A-Za-z0-9_-]*' "$WORK/${CLUSTER_PREFIX}1.init" | head -1)
  [ -n "$TOKEN" ] || die "no admin token in the output of portico control init"
  "$PORTICO_BIN" control start --data "$WORK/${CLUSTER_PREFIX}1" >"$WORK/${CLUSTER_PREFIX}1.log" 2>&1 &
  disown $!
  CLUSTER_PIDS+=($!)
  PIDS+=($!)
  cluster_wait_voters "${CLUSTER_ADMIN_PORTS[0]}" 1

  if [ "$nodes" -gt 1 ]; then
    join=$(PORTICO_TOKEN=$TOKEN "$PORTICO_BIN" token create joiner --role join \
      --server "127.0.0.1:${CLUSTER_ADMIN_PORTS[0]}" | grep -o 'ptk_[A-Za-z0-9_-]*' | head -1)
    [ -n "$join" ] || die "portico token create --role join printed no token"
    for ((i = 1; i < nodes; i++)); do
      "$PORTICO_BIN" control join --data "$WORK/$CLUSTER_PREFIX$((i + 1))" \
        --seed "127.0.0.1:${CLUSTER_ADMIN_PORTS[0]}" --join-token "$join" \
        --raft-listen "127.0.0.1:${CLUSTER_RAFT_PORTS[$i]}" \
        --admin-listen "127.0.0.1:${CLUSTER_ADMIN_PORTS[$i]}" >"$WORK/$CLUSTER_PREFIX$((i + 1)).log" 2>&1 &
      disown $!
      CLUSTER_PIDS+=($!)
      PIDS+=($!)
      cluster_wait_voters "${CLUSTER_ADMIN_PORTS[0]}" $((i + 1))
    done
  fi

  status=$(cluster_status "${CLUSTER_ADMIN_PORTS[0]}")
  LEADER_ADMIN=$(printf '%s' "$status" \
    | json_eval '[m["admin_addr"] for m in d["members"] if m["id"] == d["leader"]][0]')
  LEADER_ADMIN=${LEADER_ADMIN#http://}
  LEADER_ID=$(printf '%s' "$status" | json_eval 'd["leader"]')
  LEADER_PID=
  for ((i = 0; i < nodes; i++)); do
    if [ "$LEADER_ADMIN" = "127.0.0.1:${CLUSTER_ADMIN_PORTS[$i]}" ]; then
      LEADER_PID=${CLUSTER_PIDS[$i]}
    fi
  done
  [ -n "$LEADER_PID" ] || die "the Portico leader's admin address $LEADER_ADMIN is not one of ours"
}
