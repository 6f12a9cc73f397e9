#!/usr/bin/env bash
# Make sure the system packages the tests and the demo need are present, installing them when
# we can (root with apt-get) and otherwise saying exactly what is missing.
set -euo pipefail

have_rabbitmq() {
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1
}

if ! have_rabbitmq; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "rabbitmq-server is missing: installing it with apt-get" >&2
    apt-get update -q
    # The package starts a default node on 5672; we only use its binaries for isolated nodes.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
  else
    echo "error: rabbitmq-server is not installed. Install it (Debian/Ubuntu: 'sudo apt-get install rabbitmq-server')," >&2
    echo "       or point the tests at a TLS broker with AKMA_TEST_AMQP_URL and AKMA_TEST_PKI_DIR." >&2
    exit 1
  fi
fi
