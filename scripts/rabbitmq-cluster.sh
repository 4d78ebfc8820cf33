#!/usr/bin/env bash
# A local 3-node RabbitMQ cluster for tests and benchmarks, beside (never touching) the
# system node on 5672.
#
# Nodes lovense-c1..3@localhost listen for AMQP on 127.0.0.1:5681-5683 and for Erlang
# distribution on 25681-25683, and register with their own epmd on port 4381 (the system
# epmd on 4369 is never used). Each node has its own config file, data, log and pid file
# under $LOVENSE_CLUSTER_DIR (default /tmp/lovense-cluster); servers and CLI share one
# Erlang cookie through HOME=$LOVENSE_CLUSTER_DIR/home. Every process is started here,
# recorded by PID and ended by that PID: never pkill, never a CLI call without -n.
#
# Usage: scripts/rabbitmq-cluster.sh COMMAND
#   start            start a fresh cluster: 3 nodes, join c2 and c3 to c1, declare the
#                    worker's topology (scripts/declare_topology.py), then `check`
#   stop             stop every node gracefully (SIGKILL after 30 s), then the epmd
#   status           each node: running or down, its PID and AMQP port
#   url [N] | urls   node N's (default 1) AMQP URL | the three, comma-separated, as
#                    LOVENSE_AMQP_URL takes them
#   pid N            node N's beam PID
#   kill N           SIGKILL node N by its PID
#   stop-node N      stop node N gracefully (rabbitmqctl stop, then SIGTERM by PID)
#   start-node N     start node N again (it rejoins the cluster)
#   check [VHOST]    three running members; each quorum queue and stream has 3 members
#   ctl N ARGS...    rabbitmqctl -n <node N> ARGS (also: queues N ..., streams N ...)
#
# Environment: LOVENSE_CLUSTER_DIR, LOVENSE_CLUSTER_EPMD_PORT (4381), LOVENSE_SHARDS (4,
# the shards the topology is declared with), LOVENSE_CLUSTER_PYTHON (.venv/bin/python).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${LOVENSE_CLUSTER_DIR:-/tmp/lovense-cluster}"
bin="${RABBITMQ_BIN_DIR:-/usr/lib/rabbitmq/bin}"
epmd_port="${LOVENSE_CLUSTER_EPMD_PORT:-4381}"
python="${LOVENSE_CLUSTER_PYTHON:-$here/.venv/bin/python}"
shards="${LOVENSE_SHARDS:-4}"
all=(1 2 3)
#: Seconds a node may take to boot, and to stop before it is killed.
boot_timeout=60
stop_timeout=30

node() { echo "lovense-c$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$dir/c$1"; }
url_of() { echo "amqp://guest:guest@localhost:$(amqp_port "$1")/"; }
say() { echo "rabbitmq-cluster: $*" >&2; }
die() { say "$*"; exit 1; }
now_ms() { date +%s%3N; }

check_n() {
  case "${1:-}" in 1|2|3) ;; *) die "node number must be 1, 2 or 3, not '${1:-}'" ;; esac
}

# The environment every server and CLI call shares: our cookie, our epmd, our env file
# (instead of /etc/rabbitmq/rabbitmq-env.conf, which names the system node), and a CLI
# distribution port range of our own.
cluster_env() {
  export HOME="$dir/home"
  export ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export RABBITMQ_CTL_DIST_PORT_MIN=35781 RABBITMQ_CTL_DIST_PORT_MAX=35799
  # Never let erl start an epmd of its own: ours is started (and ended) by PID.
  export RABBITMQ_CTL_ERL_ARGS="-start_epmd false"
  unset RABBITMQ_NODENAME RABBITMQ_CONFIG_FILE RABBITMQ_ENABLED_PLUGINS_FILE ERL_FLAGS
}

node_env() {
  local n="$1" d
  d="$(node_dir "$n")"
  cluster_env
  RABBITMQ_NODENAME="$(node "$n")"
  RABBITMQ_NODE_PORT="$(amqp_port "$n")"
  RABBITMQ_DIST_PORT="$(dist_port "$n")"
  export RABBITMQ_NODENAME RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$d/data"
  export RABBITMQ_MNESIA_DIR="$d/data/$RABBITMQ_NODENAME"
  export RABBITMQ_PLUGINS_EXPAND_DIR="$d/data/plugins-expand"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/pid"
  # No scheduler busy-waiting: four BEAMs must not spin the machine's cores.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none \
-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
}

# A CLI tool against node N, always with -n and the cluster's environment.
cli() { local tool="$1" n="$2"; shift 2; (cluster_env; exec "$bin/$tool" -n "$(node "$n")" "$@"); }
ctl() { cli rabbitmqctl "$@"; }
queues() { cli rabbitmq-queues "$@"; }
streams() { cli rabbitmq-streams "$@"; }

# The PID in file $1 if it is alive and its /proc/PID/$2 (cmdline or environ) holds $3, so
# a PID the system has since reused is never signalled. (A node's name is set at run time,
# not on its command line: its environment names it.)
live_pid() {
  local file="$1" what="$2" mark="$3" pid
  [ -s "$file" ] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [ -n "$pid" ] && [ -r "/proc/$pid/$what" ] || return 1
  tr '\0' '\n' <"/proc/$pid/$what" 2>/dev/null | grep -qxF -- "$mark" || return 1
  echo "$pid"
}
node_pid() { live_pid "$(node_dir "$1")/pid" environ "RABBITMQ_NODENAME=$(node "$1")"; }
epmd_pid() { live_pid "$dir/epmd.pid" cmdline "$epmd_port"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_files() {
  mkdir -p "$dir/home"
  if [ ! -s "$dir/home/.erlang.cookie" ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -dc 'a-f0-9' | tr 'a-f' 'A-F' \
      >"$dir/home/.erlang.cookie")
  fi
  chmod 600 "$dir/home/.erlang.cookie"
  : >"$dir/rabbitmq-env.conf"
  echo '[rabbitmq_consistent_hash_exchange].' >"$dir/enabled_plugins"
  local n d
  for n in "${all[@]}"; do
    d="$(node_dir "$n")"
    mkdir -p "$d/data" "$d/log"
    # The system config pins 5672; this one names the node's own listener and nothing
    # else that listens (no management or Prometheus plugin is enabled).
    cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
log.console = false
log.file.level = info
CONF
    echo '[].' >"$d/advanced.config"
  done
}

start_epmd() {
  if epmd_pid >/dev/null; then return 0; fi
  port_open "$epmd_port" && die "port $epmd_port is taken by something else (not our epmd)"
  (exec setsid epmd -port "$epmd_port" -address 127.0.0.1 </dev/null >"$dir/epmd.log" 2>&1) &
  echo $! >"$dir/epmd.pid"
  for _ in $(seq 1 100); do port_open "$epmd_port" && return 0; sleep 0.05; done
  die "epmd did not listen on $epmd_port (see $dir/epmd.log)"
}

stop_epmd() {
  local pid
  if pid="$(epmd_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.05; done
  fi
  rm -f "$dir/epmd.pid"
}

# Launch node N in the background; its beam writes its PID to its pid file.
launch() {
  local n="$1" d
  d="$(node_dir "$n")"
  if node_pid "$n" >/dev/null; then die "$(node "$n") is already running"; fi
  port_open "$(amqp_port "$n")" && die "port $(amqp_port "$n") is taken by another process"
  rm -f "$d/pid"
  (node_env "$n"; cd "$d"
   exec setsid "$bin/rabbitmq-server" </dev/null >>"$d/log/stdout.log" 2>&1) &
  # The launcher (rabbitmq-server's shell, parent of the beam) only tells a failed boot early.
  echo $! >"$d/launcher.pid"
}

# Wait until node N's AMQP listener is open: the last boot step before "startup complete"
# (cheaper than a CLI call per node while three nodes boot on the same cores). Fail at once
# if the node's process is gone (a port taken, a bad config: its log says).
await_listener() {
  local n="$1" d deadline
  d="$(node_dir "$n")"
  deadline=$(( $(date +%s) + boot_timeout ))
  until node_pid "$n" >/dev/null && port_open "$(amqp_port "$n")"; do
    [ -d "/proc/$(cat "$d/launcher.pid")" ] \
      || die "$(node "$n") exited while booting (see $d/log/stdout.log)"
    [ "$(date +%s)" -lt "$deadline" ] \
      || die "$(node "$n") did not boot in ${boot_timeout}s (see $d/log)"
    sleep 0.1
  done
}

# Wait until node N has booted fully: its listener open, then the app running.
await_node() {
  await_listener "$1"
  ctl "$1" await_startup --timeout "$boot_timeout" >/dev/null \
    || die "$(node "$1") did not boot (see $(node_dir "$1")/log)"
}

# Join node N to c1: stop its app, join, start it again (start_app returns once it runs).
# RabbitMQ 3.10 now and then aborts a join while another node joins at the same moment
# (mnesia's schema_prepare): the node is reset and the join tried again, up to 3 times.
join() {
  local n="$1" try
  ctl "$n" await_startup --timeout "$boot_timeout" >/dev/null
  for try in 1 2 3; do
    ctl "$n" stop_app >/dev/null
    if ctl "$n" join_cluster "$(node 1)" >/dev/null 2>"$(node_dir "$n")/join.err"; then
      ctl "$n" start_app >/dev/null
      return 0
    fi
    say "$(node "$n") could not join (try $try): $(head -c 300 "$(node_dir "$n")/join.err")"
    ctl "$n" reset >/dev/null 2>&1 || true
    sleep "$try"
  done
  die "$(node "$n") could not join $(node 1) (see $(node_dir "$n")/join.err)"
}

# Run "$@" once per node in the background; fail if any failed.
each() {
  local fn="$1" pids=() n failed=0
  shift
  for n in "$@"; do "$fn" "$n" & pids+=($!); done
  for n in "${pids[@]}"; do wait "$n" || failed=1; done
  return "$failed"
}

# A start that fails stops whatever it started (the logs stay in $dir).
starting=0
on_exit() {
  local status=$?
  if [ "$status" != 0 ] && [ "$starting" = 1 ]; then
    starting=0
    say "start failed: stopping what it started (logs: $dir/c*/log)"
    cmd_stop quiet || true
  fi
}

cmd_start() {
  local t0 t1 t2 t3
  [ -x "$python" ] || die "no Python at $python (run make install, or set LOVENSE_CLUSTER_PYTHON)"
  [ -x "$bin/rabbitmq-server" ] || die "rabbitmq-server is not installed in $bin"
  t0=$(now_ms)
  starting=1
  trap on_exit EXIT
  cmd_stop quiet
  rm -rf "$dir/c1" "$dir/c2" "$dir/c3"
  write_files
  start_epmd
  for n in "${all[@]}"; do launch "$n"; done
  each await_listener "${all[@]}"
  t1=$(now_ms)
  each join 2 3
  t2=$(now_ms)
  LOVENSE_SHARDS="$shards" "$python" "$here/scripts/declare_topology.py" "$(url_of 1)" \
    || die "declaring the topology failed"
  t3=$(now_ms)
  cmd_check
  starting=0
  say "started in $(( $(now_ms) - t0 ))ms (boot $((t1 - t0)), join $((t2 - t1))," \
    "declare $((t3 - t2)), check $(( $(now_ms) - t3 ))): $(cmd_urls)"
}

# Wait for PID to end (up to stop_timeout seconds), then SIGKILL it.
await_exit() {
  local n="$1" pid="$2"
  for _ in $(seq 1 $((stop_timeout * 10))); do
    [ -d "/proc/$pid" ] || return 0
    sleep 0.1
  done
  say "$(node "$n") (pid $pid) did not stop in ${stop_timeout}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# Stop node N gracefully: its own CLI stop, or SIGTERM by its PID if the CLI cannot reach it.
stop_one() {
  local n="$1" pid
  pid="$(node_pid "$n")" || return 0
  ctl "$n" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  await_exit "$n" "$pid"
}

# Stop node N by SIGTERM to its PID: the beam shuts down as gracefully as on `rabbitmqctl
# stop`, and a whole cluster going away needs no CLI round trip per node.
term_one() {
  local n="$1" pid
  pid="$(node_pid "$n")" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  await_exit "$n" "$pid"
}

cmd_stop() {
  local t0
  t0=$(now_ms)
  [ -d "$dir" ] || return 0
  each term_one "${all[@]}"
  stop_epmd
  [ "${1:-}" = quiet ] || say "stopped in $(( $(now_ms) - t0 ))ms"
}

cmd_status() {
  local n pid
  for n in "${all[@]}"; do
    if pid="$(node_pid "$n")"; then
      echo "$(node "$n") running pid=$pid amqp=$(amqp_port "$n")"
    else
      echo "$(node "$n") down amqp=$(amqp_port "$n")"
    fi
  done
}

cmd_urls() {
  local n out=()
  for n in "${all[@]}"; do out+=("$(url_of "$n")"); done
  (IFS=,; echo "${out[*]}")
}

# Any running node, to ask about the cluster.
a_running_node() {
  local n
  for n in "${all[@]}"; do node_pid "$n" >/dev/null && { echo "$n"; return 0; }; done
  die "no node is running"
}

# Count the members a quorum_status / stream_status table lists (one JSON object each).
members() { "$python" -c 'import json, sys; print(len(json.load(sys.stdin)))'; }

check_queue() {
  local n="$1" vhost="$2" name="$3" type="$4" count
  case "$type" in
    quorum) count="$(queues "$n" quorum_status -p "$vhost" "$name" --formatter json | members)" ;;
    stream) count="$(streams "$n" stream_status -p "$vhost" "$name" --formatter json | members)" ;;
    *) return 0 ;;
  esac
  if [ "$count" != 3 ]; then
    echo "rabbitmq-cluster: $type $name has $count members, not 3" >&2
    return 1
  fi
  echo "$type $name: 3 members"
}

cmd_check() {
  local vhost="${1:-/}" n running listing name type failed=0 pids=()
  n="$(a_running_node)"
  running="$(ctl "$n" eval 'length(rabbit_nodes:all_running()).')"
  [ "$running" = 3 ] || { say "$running nodes running, not 3"; failed=1; }
  listing="$(ctl "$n" list_queues -q -s -p "$vhost" name type)"
  while read -r name type; do
    [ -n "$name" ] || continue
    check_queue "$n" "$vhost" "$name" "$type" & pids+=($!)
  done <<<"$listing"
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || die "check failed"
  echo "3 nodes running; every quorum queue and stream in vhost $vhost has 3 members"
}

main() {
  local command="${1:-}"
  [ $# -gt 0 ] && shift
  case "$command" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url) check_n "${1:-1}"; url_of "${1:-1}" ;;
    urls) cmd_urls ;;
    pid) check_n "${1:-}"; node_pid "$1" || die "$(node "$1") is not running" ;;
    kill)
      check_n "${1:-}"
      pid="$(node_pid "$1")" || die "$(node "$1") is not running"
      kill -KILL "$pid"
      while [ -d "/proc/$pid" ]; do sleep 0.05; done
      say "killed $(node "$1") (pid $pid)" ;;
    stop-node) check_n "${1:-}"; stop_one "$1" ;;
    start-node)
      check_n "${1:-}"
      start_epmd
      launch "$1"
      await_node "$1" ;;
    check) cmd_check "$@" ;;
    ctl) check_n "${1:-}"; ctl "$@" ;;
    queues) check_n "${1:-}"; queues "$@" ;;
    streams) check_n "${1:-}"; streams "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
