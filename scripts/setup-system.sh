#!/bin/sh
# Debian packages agentcell needs on the host. Idempotent; installs only what is missing.
set -eu
need=""
command -v gcc >/dev/null 2>&1 || need="$need gcc libc6-dev"
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] || need="$need libc6-dev"
command -v python3.11 >/dev/null 2>&1 || need="$need python3.11 python3.11-venv"
[ -x /usr/bin/python3 ] || need="$need python3"
[ -x /usr/bin/node ] || need="$need nodejs"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then echo "setup: need root to install:$need" >&2; exit 1; fi
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
fi
