#!/usr/bin/env bash
# Make sure a RabbitMQ with the consistent-hash exchange plugin answers at every node of
# LOVENSE_AMQP_URL (default amqp://guest:guest@localhost:5672/; a comma-separated list of a
# cluster's nodes is checked node by node).
# Order: already running -> a local rabbitmq-server -> Docker Compose -> say what to install.
set -euo pipefail

urls="${LOVENSE_AMQP_URL:-amqp://guest:guest@localhost:5672/}"
here="$(cd "$(dirname "$0")/.." && pwd)"

# host:port of each entry (never its credentials).
nodes=()
IFS=',' read -r -a entries <<<"$urls"
for url in "${entries[@]}"; do
  url="${url#"${url%%[![:space:]]*}"}"; url="${url%"${url##*[![:space:]]}"}"
  hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
  host="${hostport%%:*}"; port="${hostport##*:}"
  if [ "$port" = "$host" ]; then case "$url" in amqps://*) port=5671 ;; *) port=5672 ;; esac; fi
  nodes+=("$host:$port")
done

reachable() { (exec 3<>"/dev/tcp/${1%%:*}/${1##*:}") 2>/dev/null; }
local_node() { case "${1%%:*}" in localhost|127.0.0.1) return 0 ;; *) return 1 ;; esac; }
down() { for node in "${nodes[@]}"; do reachable "$node" || echo "$node"; done; }
wait_up() {
  for _ in $(seq 1 90); do [ -z "$(down)" ] && return 0; sleep 1; done
  return 1
}

missing="$(down)"
if [ -n "$missing" ]; then
  # The system node (local, port 5672) is the one rabbitmq-server starts; with one address,
  # Docker Compose stands in for it. Other nodes of a list are started by whoever runs them.
  startable=1
  for node in $missing; do
    if ! { local_node "$node" && [ "${node##*:}" = 5672 ]; } && [ "${#nodes[@]}" -gt 1 ]; then
      startable=0
    fi
  done
  if [ "$startable" = 1 ] && [ "${#nodes[@]}" -eq 1 ] && ! local_node "${nodes[0]}"; then
    startable=0
  fi
  if [ "$startable" = 1 ] && command -v rabbitmq-server >/dev/null 2>&1; then
    echo "ensure-rabbitmq: starting the local rabbitmq-server" >&2
    rabbitmq-server -detached >/dev/null 2>&1 || true
  elif [ "$startable" = 1 ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
  then
    echo "ensure-rabbitmq: starting RabbitMQ with docker compose" >&2
    docker compose -f "$here/deploy/docker-compose.yml" up -d rabbitmq
  elif [ "${#nodes[@]}" -gt 1 ]; then
    echo "ensure-rabbitmq: no RabbitMQ answers at $(echo "$missing" | paste -sd, -), of the" \
      "nodes ${nodes[*]} in LOVENSE_AMQP_URL; start them (a local test cluster:" \
      "scripts/rabbitmq-cluster.sh) or drop them from the list" >&2
    exit 1
  else
    cat >&2 <<MSG
ensure-rabbitmq: no RabbitMQ answers at ${nodes[0]}, and neither rabbitmq-server nor a
running Docker engine is available to start one. Install one of:
  - RabbitMQ 3.10+:  apt-get install rabbitmq-server   (then run make again)
  - Docker:          https://docs.docker.com/engine/install/  (make uses deploy/docker-compose.yml)
or point LOVENSE_AMQP_URL at a RabbitMQ with the rabbitmq_consistent_hash_exchange plugin.
MSG
    exit 1
  fi
  wait_up || { echo "ensure-rabbitmq: RabbitMQ did not come up at $(down | tr '\n' ' ')" >&2
               exit 1; }
fi

system_node=0
for node in "${nodes[@]}"; do
  if local_node "$node" && { [ "${node##*:}" = 5672 ] || [ "${#nodes[@]}" -eq 1 ]; }; then
    system_node=1
  fi
done
if [ "$system_node" = 1 ] && command -v rabbitmqctl >/dev/null 2>&1; then
  # Wait until the node boots fully (the port opens before plugins load).
  rabbitmqctl await_startup >/dev/null 2>&1 || true
  if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
    echo "ensure-rabbitmq: enabling rabbitmq_consistent_hash_exchange" >&2
    rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
  fi
fi
echo "ensure-rabbitmq: RabbitMQ is up at ${nodes[*]}" >&2
