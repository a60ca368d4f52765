#!/usr/bin/env bash
# Installs everything Hopvisor needs on a fresh Debian machine of this kind, idempotently:
# Debian packages (gcc-multilib for the static i386 guest tools, e2fsprogs for data disks,
# iproute2 and iputils-ping for virtual networking, chromium for the web client's end-to-end test),
# npm dependencies, the TypeScript build and the web client (web/dist). The guest image
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
# chromium: the web client's end-to-end test drives it headless (playwright-core, no browser download).
# HOP_SKIP_CHROMIUM=1 skips it where the tests do not run (that test then says it is skipped).
if [ "${HOP_SKIP_CHROMIUM:-}" != 1 ] && [ ! -x /usr/bin/chromium ]; then need+=(chromium); fi
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

# The web client (web/dist, served by the manager): rebuilt when its sources, the API types it
# shares or the dependencies changed since the last build.
web_stale() {
  [ ! -f web/dist/index.html ] && return 0
  [ -n "$(find web -path web/dist -prune -o -path web/node_modules -prune -o -type f -newer web/dist/index.html -print -quit)" ] && return 0
  for f in package-lock.json src/cluster/api-types.ts src/cluster/api-base.ts src/cluster/types.ts src/cluster/store/store.ts src/migration/report.ts; do
    [ "$f" -nt web/dist/index.html ] && return 0
  done
  return 1
}
if web_stale; then
  echo "setup: building the web client"
  npm run --silent build:web
fi

node bin/hop.js image build
