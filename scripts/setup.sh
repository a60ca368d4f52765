#!/usr/bin/env bash
# Installs everything Hopvisor needs on a fresh Debian machine of this kind, idempotently:
# Debian packages (gcc-multilib for the static i386 guest tools, e2fsprogs for data disks,
# iproute2 and iputils-ping for virtual networking), npm dependencies, and the TypeScript build. The guest image
# itself (kernel, busybox, seabios from Debian's packages) is built on first use by
# `hop image build`, which this script runs too, so the first demo/test does not wait for it.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
dpkg -s gcc-multilib >/dev/null 2>&1 || need+=(gcc-multilib)
command -v mke2fs >/dev/null 2>&1 || [ -x /usr/sbin/mke2fs ] || need+=(e2fsprogs)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
# ping: the demo and the network tests ping guests from the host (through the Linux gateway).
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${need[*]}"
  apt-get update -qq || echo "setup: apt-get update reported an error; trying the install anyway" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi

echo "setup: building"
npx tsc -p tsconfig.json

node bin/hop.js image build
