/**
 * Host access to a virtual network from the machine's own (root) network namespace, where
 * unmodified programs run: `ping 10.10.0.5` just works.
 *
 * Why not a Linux vxlan device in the root namespace talking to our VTEP: Linux delivers VXLAN
 * packets for an address of its own namespace straight to a local vxlan device ("local bypass")
 * instead of sending UDP, so such a device never reaches a VTEP of the same namespace (kernels
 * 6.6+ can turn that off with `nolocalbypass`, which older iproute2 does not know).
 *
 * So the device lives in a small gateway namespace instead:
 *
 *   root ns: route SUBNET via NS_ADDR ── veth NAME-r (ROOT_ADDR) ═╗
 *   gateway ns NAME: veth NAME-n (NS_ADDR), ip_forward=1,         ║
 *                    vxlan hop0 (address in SUBNET), fdb -> ROOT_ADDR:PORT
 *   root ns: a UDP socket on ROOT_ADDR:PORT, attached to the switch as a port of the network
 *
 * The gateway is a port of the local switch (not a remote VTEP), so it reaches guests on every
 * host through the switch and its overlay. Guests answer clients in the root namespace (source
 * ROOT_ADDR, a link-local address) through their default gateway, which must be the device's
 * address (make it the network's IPAM gateway), or through a route to the link subnet.
 */
import * as dgram from "node:dgram";
import { randomBytes } from "node:crypto";
import type { Logger } from "../common/log.js";
import { CommandFailure, hasProgram, requireRoot, runCommand } from "./command.js";
import { LinuxDeviceError, ToolMissingError } from "./errors.js";
import { completeL4Checksum, formatIpv4Address, parseIpv4Address } from "./frames.js";
import { parseCidr } from "./ipam.js";
import { LinuxVxlanDevice } from "./linux.js";
import type { VirtualSwitch } from "./switch.js";
import { decodeVxlan, encodeVxlan, VXLAN_PORT } from "./vxlan.js";

export interface LinuxGatewayOptions {
  /** Base name, at most 13 characters: the namespace is NAME, the veth ends NAME-r and NAME-n. */
  name: string;
  sw: VirtualSwitch;
  network: string;
  /** The device's address in the virtual network, with prefix ("10.10.0.1/24"): the guests' gateway. */
  address: string;
  /** Switch port id (default "gw:NAME"). */
  portId?: string;
  /** A /30 for the veth link (default: a random 169.254.x.y/30). */
  linkSubnet?: string;
  /** UDP port of the tunnel between the device and the switch port (default 4789). */
  port?: number;
  /** Add the route to the virtual subnet in the root namespace (default true). */
  route?: boolean;
  /** The device's MAC (default: the kernel's random one). */
  mac?: string;
  log?: Logger;
}

export interface GatewayCounters {
  /** Frames from the device into the switch. */
  rxFrames: number;
  /** Frames from the switch to the device. */
  txFrames: number;
  /** Packets on the tunnel socket that were not VXLAN from the device with the network's VNI. */
  dropped: number;
  sendErrors: number;
}

const NAME_RE = /^[a-z][a-z0-9-]{0,12}$/;

async function ip(args: string[], what: "device-add" | "address" | "link-up" = "device-add"): Promise<void> {
  try {
    await runCommand("ip", args);
  } catch (err) {
    if (err instanceof ToolMissingError) throw err;
    throw new LinuxDeviceError(what, `gateway: ${err instanceof Error ? err.message : String(err)}`, err);
  }
}

/** A Linux gateway into a virtual network (see the file comment). */
export class LinuxGateway {
  readonly name: string;
  readonly netns: string;
  readonly portId: string;
  /** The veth end in the root namespace, and the tunnel socket's address. */
  readonly rootAddress: string;
  /** The veth end in the gateway namespace (the device's underlay address). */
  readonly nsAddress: string;
  /** The virtual subnet routed through the gateway. */
  readonly subnet: string;
  readonly device: LinuxVxlanDevice;
  private readonly sw: VirtualSwitch;
  private readonly sock: dgram.Socket;
  private readonly c: GatewayCounters = { rxFrames: 0, txFrames: 0, dropped: 0, sendErrors: 0 };
  private removed = false;

  private constructor(init: { name: string; portId: string; rootAddress: string; nsAddress: string; subnet: string; device: LinuxVxlanDevice; sw: VirtualSwitch; sock: dgram.Socket }) {
    this.name = init.name;
    this.netns = init.name;
    this.portId = init.portId;
    this.rootAddress = init.rootAddress;
    this.nsAddress = init.nsAddress;
    this.subnet = init.subnet;
    this.device = init.device;
    this.sw = init.sw;
    this.sock = init.sock;
  }

  /** Creates the namespace, link, device, tunnel socket, switch port and route; undoes all of it on failure. */
  static async attach(opts: LinuxGatewayOptions): Promise<LinuxGateway> {
    requireRoot("attaching a Linux gateway");
    if (!hasProgram("ip")) throw new ToolMissingError("ip", "iproute2");
    if (!NAME_RE.test(opts.name)) throw new LinuxDeviceError("device-add", `gateway name '${opts.name}' must be 1-13 of a-z 0-9 - (interface names are at most 15 characters)`);
    const { vni } = opts.sw.network(opts.network);
    const slash = opts.address.indexOf("/");
    let subnet: string;
    try {
      if (slash < 0) throw new Error("no prefix length");
      const addr = parseIpv4Address(opts.address.slice(0, slash));
      const len = Number(opts.address.slice(slash + 1));
      if (!Number.isInteger(len) || len < 8 || len > 30) throw new Error("want a.b.c.d/len with len 8..30");
      const size = 2 ** (32 - len);
      subnet = `${formatIpv4Address(addr - (addr % size))}/${len}`;
    } catch (err) {
      throw new LinuxDeviceError("address", `'${opts.address}' is not an address with prefix like 10.10.0.1/24`, err);
    }
    let link: number;
    if (opts.linkSubnet !== undefined) {
      const c = (() => {
        try {
          return parseCidr(opts.linkSubnet);
        } catch (err) {
          throw new LinuxDeviceError("address", `link subnet '${opts.linkSubnet}' is not a /30`, err);
        }
      })();
      if (c.prefixLength !== 30) throw new LinuxDeviceError("address", `link subnet '${opts.linkSubnet}' is not a /30`);
      link = c.base;
    } else {
      const r = randomBytes(2);
      link = parseIpv4Address(`169.254.${1 + (r[0]! % 253)}.${(r[1]! & 0x3f) * 4}`);
    }
    const rootAddress = formatIpv4Address(link + 1);
    const nsAddress = formatIpv4Address(link + 2);
    const port = opts.port ?? VXLAN_PORT;
    const name = opts.name;
    const portId = opts.portId ?? `gw:${name}`;
    const rootDev = `${name}-r`;
    const nsDev = `${name}-n`;
    let sock: dgram.Socket | undefined;
    let portAttached = false;
    let nsCreated = false;
    let rootDevCreated = false;
    try {
      await ip(["netns", "add", name]);
      nsCreated = true;
      await ip(["link", "add", rootDev, "type", "veth", "peer", "name", nsDev]);
      rootDevCreated = true;
      await ip(["link", "set", nsDev, "netns", name]);
      await ip(["addr", "add", `${rootAddress}/30`, "dev", rootDev], "address");
      await ip(["link", "set", rootDev, "up"], "link-up");
      await ip(["-n", name, "addr", "add", `${nsAddress}/30`, "dev", nsDev], "address");
      await ip(["-n", name, "link", "set", nsDev, "up"], "link-up");
      await ip(["-n", name, "link", "set", "lo", "up"], "link-up");
      await ip(["-n", name, "route", "add", "default", "via", rootAddress], "address");
      try {
        await runCommand("ip", ["netns", "exec", name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
      } catch (err) {
        throw new LinuxDeviceError("link-up", `gateway: enabling forwarding in ${name} failed`, err);
      }

      // The tunnel end in the root namespace: a switch port speaking VXLAN to the device only.
      const s = dgram.createSocket({ type: "udp4" });
      sock = s;
      await new Promise<void>((resolve, reject) => {
        s.once("error", reject);
        s.bind({ address: rootAddress, port, exclusive: true }, () => {
          s.off("error", reject);
          resolve();
        });
      }).catch((err: unknown) => {
        throw new LinuxDeviceError("device-add", `gateway: binding the tunnel socket to ${rootAddress}:${port} failed`, err);
      });
      const device = await LinuxVxlanDevice.attach({
        name: "hop0",
        netns: name,
        vni,
        local: nsAddress,
        port,
        remotes: [`${rootAddress}:${port}`],
        address: opts.address,
        learning: false,
        ...(opts.mac === undefined ? {} : { mac: opts.mac }),
      });
      const gw = new LinuxGateway({ name, portId, rootAddress, nsAddress, subnet, device, sw: opts.sw, sock: s });
      const onSent = (err: Error | null): void => {
        if (err !== null) gw.c.sendErrors++;
      };
      opts.sw.attachPort(
        portId,
        opts.network,
        (frame) => {
          gw.c.txFrames++;
          try {
            s.send(encodeVxlan(vni, frame), port, nsAddress, onSent);
          } catch {
            gw.c.sendErrors++;
          }
        },
        { mac: device.mac, ip: opts.address.slice(0, slash) },
      );
      portAttached = true;
      s.on("message", (msg, rinfo) => {
        if (rinfo.address !== nsAddress) {
          gw.c.dropped++;
          return;
        }
        try {
          const d = decodeVxlan(msg);
          if (d.vni !== vni) {
            gw.c.dropped++;
            return;
          }
          gw.c.rxFrames++;
          // The kernel leaves TCP/UDP checksums of locally sent packets to the NIC (veth
          // offload): nothing on the way completes them, so the gateway does, as a NIC would.
          completeL4Checksum(d.frame);
          opts.sw.input(portId, d.frame);
        } catch {
          gw.c.dropped++;
        }
      });
      s.on("error", (err) => opts.log?.warn({ err, gateway: name }, "gateway socket error"));
      if (opts.route !== false) await ip(["route", "add", subnet, "via", nsAddress, "dev", rootDev], "address");
      opts.log?.info({ gateway: name, network: opts.network, subnet, address: opts.address }, "Linux gateway attached");
      return gw;
    } catch (err) {
      if (portAttached) opts.sw.detachPort(portId);
      sock?.close();
      if (nsCreated) await runCommand("ip", ["netns", "del", name]).catch(() => undefined);
      if (rootDevCreated) await runCommand("ip", ["link", "del", rootDev]).catch(() => undefined);
      throw err;
    }
  }

  counters(): GatewayCounters {
    return { ...this.c };
  }

  /** Detaches the port, closes the socket, deletes the namespace (with the device) and the link (with the route). Idempotent. */
  async remove(): Promise<void> {
    if (this.removed) return;
    this.removed = true;
    this.sw.detachPort(this.portId);
    await new Promise<void>((resolve) => this.sock.close(() => resolve()));
    const errors: string[] = [];
    for (const args of [
      ["netns", "del", this.netns],
      ["link", "del", `${this.name}-r`],
    ]) {
      try {
        await runCommand("ip", args);
      } catch (err) {
        const stderr = err instanceof CommandFailure ? err.stderr : "";
        if (!/No such file|Cannot find device/.test(stderr)) errors.push(err instanceof Error ? err.message : String(err));
      }
    }
    if (errors.length > 0) throw new LinuxDeviceError("device-remove", `gateway ${this.name}: ${errors.join("; ")}`);
  }
}

/** Creates a Linux gateway into a virtual network (see LinuxGateway.attach). */
export function attachLinuxGateway(opts: LinuxGatewayOptions): Promise<LinuxGateway> {
  return LinuxGateway.attach(opts);
}
