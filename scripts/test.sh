#!/usr/bin/env bash
# Runs every portico test. Installs what the tests need first, when missing,
# so it passes on a fresh machine that has only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
# tests/jwt.rs, tests/fleet.rs: real redis-server instances for shared
# revocation (plain, TLS, Cluster, and sentinels run as `redis-server
# --sentinel`); redis-cli creates the Cluster. openssl makes RSA test keys.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
fi

cargo test --all-targets "$@"
