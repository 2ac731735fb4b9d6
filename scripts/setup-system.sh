#!/bin/sh
# Debian packages agentcell needs on the host. Idempotent; installs only what is missing.
set -eu
need=""
command -v gcc >/dev/null 2>&1 || need="$need gcc libc6-dev"
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] || need="$need libc6-dev"
command -v python3.11 >/dev/null 2>&1 || need="$need python3.11 python3.11-venv"
# the gateway's hot modules are compiled by mypyc (scripts/compile_gateway.py): Python's headers
python3.11 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  >/dev/null 2>&1 || need="$need python3.11-dev"
[ -x /usr/bin/python3 ] || need="$need python3"
[ -x /usr/bin/node ] || need="$need nodejs"
# egress tests run curl inside sandboxes
command -v curl >/dev/null 2>&1 || need="$need curl"
# template builds and run-time installs run pip (`python3 -m pip`) and npm inside sandboxes
/usr/bin/python3 -c 'import pip' >/dev/null 2>&1 || need="$need python3-pip"
[ -x /usr/bin/npm ] || need="$need npm"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
# per-session workspace tmpfs on shared function instances: nsenter + mount into the instance
command -v nsenter >/dev/null 2>&1 || need="$need util-linux"
[ -x /usr/bin/mount ] || need="$need mount"
# run_code inside sandboxes (the base template): ipykernel, and the libraries of rich output
/usr/bin/python3 -c 'import ipykernel' >/dev/null 2>&1 || need="$need python3-ipykernel"
for mod in matplotlib numpy pandas; do
  /usr/bin/python3 -c "import $mod" >/dev/null 2>&1 || need="$need python3-$mod"
done
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then echo "setup: need root to install:$need" >&2; exit 1; fi
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
fi
