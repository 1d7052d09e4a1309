#!/usr/bin/env bash
# Installs the servers the metadata-store tests run against (Redis and etcd),
# through the system package manager, when they are missing. Run by tox before the unit tests.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server etcd-client)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
else
    echo "install-servers: need ${missing[*]}; run as root or install them yourself" >&2
    exit 1
fi
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
        || { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; }
else
    echo "install-servers: need ${missing[*]} and know only apt-get; install them yourself" >&2
    exit 1
fi
echo "install-servers: installed ${missing[*]}"
