#!/usr/bin/env bash
# Make sure a RabbitMQ with the consistent-hash exchange plugin answers at
# LOVENSE_AMQP_URL (default amqp://guest:guest@localhost:5672/).
# Order: one already running -> a local rabbitmq-server -> Docker Compose -> say what to install.
set -euo pipefail

url="${LOVENSE_AMQP_URL:-amqp://guest:guest@localhost:5672/}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$host" ] && port=5672
here="$(cd "$(dirname "$0")/.." && pwd)"

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
wait_up() {
  for _ in $(seq 1 90); do reachable && return 0; sleep 1; done
  return 1
}
local_broker() { [ "$host" = "localhost" ] || [ "$host" = "127.0.0.1" ]; }

if ! reachable; then
  if local_broker && command -v rabbitmq-server >/dev/null 2>&1; then
    echo "ensure-rabbitmq: starting the local rabbitmq-server" >&2
    rabbitmq-server -detached >/dev/null 2>&1 || true
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "ensure-rabbitmq: starting RabbitMQ with docker compose" >&2
    docker compose -f "$here/deploy/docker-compose.yml" up -d rabbitmq
  else
    cat >&2 <<MSG
ensure-rabbitmq: no RabbitMQ answers at $host:$port, and neither rabbitmq-server nor a
running Docker engine is available to start one. Install one of:
  - RabbitMQ 3.10+:  apt-get install rabbitmq-server   (then run make again)
  - Docker:          https://docs.docker.com/engine/install/  (make uses deploy/docker-compose.yml)
or point LOVENSE_AMQP_URL at a RabbitMQ with the rabbitmq_consistent_hash_exchange plugin.
MSG
    exit 1
  fi
  wait_up || { echo "ensure-rabbitmq: RabbitMQ did not come up on $host:$port" >&2; exit 1; }
fi

if local_broker && command -v rabbitmqctl >/dev/null 2>&1; then
  # Wait until the node boots fully (the port opens before plugins load).
  rabbitmqctl await_startup >/dev/null 2>&1 || true
  if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
    echo "ensure-rabbitmq: enabling rabbitmq_consistent_hash_exchange" >&2
    rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
  fi
fi
echo "ensure-rabbitmq: RabbitMQ is up at $host:$port" >&2
