#!/bin/busybox sh
# Hopvisor guest init (PID 1): mounts, modules, network from the kernel command line,
# data disk, guest agent, kvd, then the ready line and a console shell.
/bin/busybox mkdir -p /proc /sys /dev /tmp /data /run /usr/bin /usr/sbin /sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
export PATH=/usr/bin:/usr/sbin:/bin:/sbin

HOSTNAME=guest IP= GW= MAC= DISK=
for kv in $(cat /proc/cmdline); do
  case "$kv" in
    hop.hostname=*) HOSTNAME="${kv#hop.hostname=}" ;;
    hop.ip=*) IP="${kv#hop.ip=}" ;;
    hop.gw=*) GW="${kv#hop.gw=}" ;;
    hop.mac=*) MAC="${kv#hop.mac=}" ;;
    hop.disk=*) DISK="${kv#hop.disk=}" ;;
  esac
done
hostname "$HOSTNAME"

# An idle guest should not wake up on its own: every wake-up costs the host CPU (the kernel's
# 250 Hz tick is the floor). Off: kcompactd's proactive compaction check (every 500 ms) and the
# soft-lockup watchdog (meaningless in a VM); the vmstat refresh runs every 10 s instead of 1 s.
echo 0 > /proc/sys/vm/compaction_proactiveness
echo 10 > /proc/sys/vm/stat_interval
echo 0 > /proc/sys/kernel/watchdog

modprobe virtio_pci 2>/dev/null
modprobe virtio_net 2>/dev/null || modprobe ne2k-pci 2>/dev/null
modprobe ata_piix 2>/dev/null
modprobe sd_mod 2>/dev/null
modprobe crc32c_generic 2>/dev/null
modprobe ext4 2>/dev/null

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  [ -n "$MAC" ] && ip link set eth0 address "$MAC"
  ip link set eth0 up
  [ -n "$IP" ] && ip addr add "$IP" dev eth0
  [ -n "$GW" ] && ip route add default via "$GW"
fi

# Wait briefly for the disk to appear (libata probes asynchronously).
if [ "$DISK" = mount ]; then
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/sda ] && break; sleep 0.2; done
  mount -t ext4 /dev/sda /data || echo "hop-init: could not mount /dev/sda on /data" > /dev/ttyS0
fi

hopagent /dev/ttyS1 </dev/null >/dev/null 2>&1 &
kvd -p 7000 </dev/null >/dev/null 2>&1 &

echo "HOPVISOR-READY hostname=$HOSTNAME" > /dev/ttyS0
while true; do
  setsid cttyhack sh -l < /dev/ttyS0 > /dev/ttyS0 2>&1
  sleep 0.1
done
