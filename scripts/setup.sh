#!/usr/bin/env bash
# Installs the Debian packages ShardKit builds against, if any is missing. Needs root (or sudo) only
# when something must be installed.
set -euo pipefail
need=()
for pkg in libopenblas-dev libhdf5-dev zlib1g-dev pkg-config strace; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "error: swift is not on PATH (ShardKit needs Swift 6.0 or newer)" >&2; exit 1; }
