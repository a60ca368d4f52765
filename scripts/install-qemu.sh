#!/usr/bin/env bash
# Installs QEMU for the side-by-side migration benchmark (benchmarks/qemu.ts): Debian's
# qemu-system-x86 package, which provides qemu-system-i386. Nothing is downloaded from
# anywhere but the machine's configured apt sources. Does nothing if QEMU is already there.
set -euo pipefail

if command -v qemu-system-i386 >/dev/null 2>&1; then
  echo "install-qemu: $(qemu-system-i386 --version | head -n 1) already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-qemu: apt-get is not available; install QEMU (qemu-system-i386) with this system's package manager" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-qemu: qemu-system-i386 is missing (run as root, or: sudo apt-get install qemu-system-x86)" >&2
  exit 1
fi

echo "install-qemu: installing Debian package qemu-system-x86"
apt-get update -qq || echo "install-qemu: apt-get update reported an error; trying the install anyway" >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86

if ! command -v qemu-system-i386 >/dev/null 2>&1; then
  echo "install-qemu: qemu-system-x86 installed but qemu-system-i386 is still not on PATH" >&2
  exit 1
fi
echo "install-qemu: $(qemu-system-i386 --version | head -n 1)"
