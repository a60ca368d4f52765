#!/bin/sh
# hop-identity: gives a VM cloned from a template state its own identity.
# hop-identity --hostname H [--mac M] [--ip A/P] [--gw G] [--mount-disk]
set -u
HOST= MAC= IP= GW= MOUNT=
while [ $# -gt 0 ]; do
  case "$1" in
    --hostname) HOST="$2"; shift 2 ;;
    --mac) MAC="$2"; shift 2 ;;
    --ip) IP="$2"; shift 2 ;;
    --gw) GW="$2"; shift 2 ;;
    --mount-disk) MOUNT=1; shift ;;
    *) echo "hop-identity: unknown argument $1" >&2; exit 2 ;;
  esac
done
fail() { echo "hop-identity: $*" >&2; exit 1; }
[ -n "$HOST" ] && { hostname "$HOST" || fail "cannot set hostname"; }
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 down
  [ -n "$MAC" ] && { ip link set eth0 address "$MAC" || fail "cannot set MAC $MAC"; }
  ip link set eth0 up || fail "cannot bring eth0 up"
  ip addr flush dev eth0
  [ -n "$IP" ] && { ip addr add "$IP" dev eth0 || fail "cannot add address $IP"; }
  [ -n "$GW" ] && { ip route add default via "$GW" || fail "cannot add route via $GW"; }
elif [ -n "$MAC$IP" ]; then
  fail "no eth0"
fi
if [ -n "$MOUNT" ]; then
  [ -b /dev/sda ] || fail "no data disk /dev/sda"
  # The template was booted with another disk: forget anything cached about it.
  sync
  echo 3 > /proc/sys/vm/drop_caches
  blockdev --flushbufs /dev/sda 2>/dev/null
  echo 1 > /sys/class/block/sda/device/rescan 2>/dev/null
  # The rescan may re-create the device node: wait for it, then mount (retrying briefly).
  ok=
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    if [ -b /dev/sda ] && mount -t ext4 /dev/sda /data 2>/tmp/mount.err; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || fail "cannot mount /dev/sda on /data: $(cat /tmp/mount.err 2>/dev/null)"
fi
echo "identity: hostname=$HOST mac=$MAC ip=$IP gw=$GW disk=${MOUNT:+mounted}"
