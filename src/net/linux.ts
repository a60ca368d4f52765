/**
 * A Linux `vxlan` device as a member of a virtual network, so unmodified programs on the machine
 * (ping, curl, nc) reach guests by IP. The device is one more VTEP of the network's overlay: it
 * gets the network's VNI, an address in the network's subnet, and one all-zero fdb entry per
 * remote VTEP (head-end replication, like ours); our VTEPs list it as a remote.
 *
 *   ip link add NAME type vxlan id VNI local ADDR dstport PORT [no]learning
 *   bridge fdb append 00:00:00:00:00:00 dev NAME dst REMOTE port RPORT   (per remote)
 *   ip addr add CIDR dev NAME; ip link set NAME up
 *
 * Needs root and iproute2. Caveat: Linux delivers VXLAN packets whose destination is an address
 * of its own network namespace straight to a local vxlan device ("local bypass") instead of
 * sending UDP, so the device cannot reach a VTEP (ours) bound to an address of the same
 * namespace: put the device in another namespace (`netns`), or pass `localBypass: false`
 * (kernel 6.6+ and an iproute2 that knows `nolocalbypass`).
 */
import { isIPv4 } from "node:net";
import { CommandFailure, hasProgram, requireRoot, runCommand } from "./command.js";
import { LinuxDeviceError, ToolMissingError, type LinuxStep } from "./errors.js";
import { normalizeMac } from "./frames.js";
import { parseCidr } from "./ipam.js";
import { MAX_VNI } from "./switch.js";
import { parseRemote, remoteId, VXLAN_PORT, type RemoteVtep } from "./vxlan.js";

export interface LinuxVxlanOptions {
  /** Device name (at most 15 characters). */
  name: string;
  vni: number;
  /** Underlay source address of the device (an address of its namespace). */
  local: string;
  /** UDP port the device listens on, and sends to for remotes given without a port (default 4789). */
  port?: number;
  /** Remote VTEPs: "a.b.c.d", "a.b.c.d:port" or objects. */
  remotes?: readonly (string | RemoteVtep)[];
  /** The device's address in the virtual network, with prefix: "10.10.0.250/24". */
  address?: string;
  /** The device's own MAC (default: random, chosen by the kernel). */
  mac?: string;
  /**
   * Learn remote MAC -> VTEP from received frames (default true). With learning the device follows
   * a migrated VM as soon as the target's announcement arrives; without it every unicast frame is
   * replicated to all remotes.
   */
  learning?: boolean;
  mtu?: number;
  /** Underlay device to send through (ip link ... dev). */
  dev?: string;
  /** Create the device in this network namespace (ip -n NS). */
  netns?: string;
  /** false: add `nolocalbypass` (needs kernel 6.6+ and a recent iproute2). Default: the kernel's default. */
  localBypass?: boolean;
}

export interface FdbEntry {
  mac: string;
  dst?: string;
  port?: number;
  /** Static (configured) rather than learned. */
  permanent: boolean;
}

const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

function ipArgs(netns: string | undefined, args: string[]): string[] {
  return netns === undefined ? args : ["-n", netns, ...args];
}

async function step(stepName: LinuxStep, program: string, args: string[], hint?: (stderr: string) => string | undefined): Promise<string> {
  try {
    return (await runCommand(program, args)).stdout;
  } catch (err) {
    if (err instanceof ToolMissingError) throw err;
    const stderr = err instanceof CommandFailure ? err.stderr : "";
    const extra = hint?.(stderr);
    throw new LinuxDeviceError(stepName, `${err instanceof Error ? err.message : String(err)}${extra === undefined ? "" : ` (${extra})`}`, err);
  }
}

function toRemote(r: string | RemoteVtep, defaultPort: number): RemoteVtep {
  try {
    if (typeof r === "string") return parseRemote(r, defaultPort);
    return parseRemote(remoteId(r), defaultPort);
  } catch (err) {
    throw new LinuxDeviceError("fdb", `bad remote ${typeof r === "string" ? r : remoteId(r)}`, err);
  }
}

/** A Linux vxlan device created by attachLinuxVxlan(). */
export class LinuxVxlanDevice {
  readonly name: string;
  readonly netns: string | undefined;
  readonly vni: number;
  readonly port: number;
  /** The device's MAC (read back after creation). */
  readonly mac: string;
  private removed = false;

  private constructor(name: string, netns: string | undefined, vni: number, port: number, mac: string) {
    this.name = name;
    this.netns = netns;
    this.vni = vni;
    this.port = port;
    this.mac = mac;
  }

  /** Creates, configures and brings up the device; on any failure the device is removed again. */
  static async attach(opts: LinuxVxlanOptions): Promise<LinuxVxlanDevice> {
    requireRoot("attaching a Linux vxlan device");
    if (!hasProgram("ip")) throw new ToolMissingError("ip", "iproute2");
    if (!hasProgram("bridge")) throw new ToolMissingError("bridge", "iproute2");
    if (!IFNAME_RE.test(opts.name)) throw new LinuxDeviceError("device-add", `'${opts.name}' is not a device name (1-15 of letters, digits, _ . -)`);
    if (!Number.isInteger(opts.vni) || opts.vni < 1 || opts.vni > MAX_VNI) throw new LinuxDeviceError("device-add", `VNI ${opts.vni} is outside 1..${MAX_VNI}`);
    if (!isIPv4(opts.local)) throw new LinuxDeviceError("device-add", `local '${opts.local}' is not an IPv4 address`);
    const port = opts.port ?? VXLAN_PORT;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new LinuxDeviceError("device-add", `port ${port} is outside 1..65535`);
    const remotes = (opts.remotes ?? []).map((r) => toRemote(r, port));
    if (opts.address !== undefined) {
      const slash = opts.address.indexOf("/");
      try {
        if (slash < 0 || !isIPv4(opts.address.slice(0, slash))) throw new Error("want a.b.c.d/len");
        parseCidr(`0.0.0.0/${opts.address.slice(slash + 1)}`);
      } catch (err) {
        throw new LinuxDeviceError("address", `'${opts.address}' is not an address with prefix like 10.10.0.250/24`, err);
      }
    }
    const ns = opts.netns;
    const add = ["link", "add", opts.name];
    if (opts.mac !== undefined) add.push("address", normalizeMac(opts.mac));
    if (opts.mtu !== undefined) add.push("mtu", String(opts.mtu));
    add.push("type", "vxlan", "id", String(opts.vni), "local", opts.local, "dstport", String(port), opts.learning === false ? "nolearning" : "learning");
    if (opts.dev !== undefined) add.push("dev", opts.dev);
    if (opts.localBypass === false) add.push("nolocalbypass");
    await step("device-add", "ip", ipArgs(ns, add), (stderr) => {
      if (/nolocalbypass/.test(stderr)) return "this iproute2 does not know nolocalbypass: put the device in its own network namespace instead";
      if (/File exists/.test(stderr)) return `a device named ${opts.name} exists, or another vxlan device uses VNI ${opts.vni} and port ${port}`;
      if (/Operation not supported|Unknown device type/.test(stderr)) return "the kernel lacks the vxlan module";
      return undefined;
    });
    let dev: LinuxVxlanDevice | undefined;
    try {
      const shown = await step("show", "ip", ipArgs(ns, ["-j", "link", "show", "dev", opts.name]));
      const mac = (JSON.parse(shown) as { address?: string }[])[0]?.address ?? "";
      dev = new LinuxVxlanDevice(opts.name, ns, opts.vni, port, mac);
      for (const r of remotes) await dev.addRemote(r);
      if (opts.address !== undefined) await step("address", "ip", ipArgs(ns, ["addr", "add", opts.address, "dev", opts.name]));
      await step("link-up", "ip", ipArgs(ns, ["link", "set", opts.name, "up"]));
      return dev;
    } catch (err) {
      await runCommand("ip", ipArgs(ns, ["link", "del", opts.name])).catch(() => undefined);
      throw err;
    }
  }

  /** Adds a remote VTEP (an all-zero fdb entry: broadcast and unknown unicast go there too). */
  async addRemote(remote: string | RemoteVtep): Promise<void> {
    const r = toRemote(remote, this.port);
    await step("fdb", "bridge", ipArgs(this.netns, ["fdb", "append", "00:00:00:00:00:00", "dev", this.name, "dst", r.address, "port", String(r.port)]));
  }

  async removeRemote(remote: string | RemoteVtep): Promise<void> {
    const r = toRemote(remote, this.port);
    await step("fdb", "bridge", ipArgs(this.netns, ["fdb", "del", "00:00:00:00:00:00", "dev", this.name, "dst", r.address, "port", String(r.port)]));
  }

  /** The device's forwarding database: remote entries and, with learning, learned MACs. */
  async fdb(): Promise<FdbEntry[]> {
    const out = await step("show", "bridge", ipArgs(this.netns, ["-j", "fdb", "show", "dev", this.name]));
    const rows = JSON.parse(out === "" ? "[]" : out) as { mac: string; dst?: string; port?: number; state?: string; flags?: string[] }[];
    return rows.map((r) => {
      const e: FdbEntry = { mac: r.mac, permanent: r.state === "permanent" };
      if (r.dst !== undefined) e.dst = r.dst;
      if (r.port !== undefined) e.port = r.port;
      return e;
    });
  }

  /** Deletes the device (idempotent; a device already gone is fine). */
  async remove(): Promise<void> {
    if (this.removed) return;
    try {
      await runCommand("ip", ipArgs(this.netns, ["link", "del", this.name]));
    } catch (err) {
      const stderr = err instanceof CommandFailure ? err.stderr : "";
      if (!/Cannot find device|does not exist|Cannot open network namespace/.test(stderr)) throw new LinuxDeviceError("device-remove", err instanceof Error ? err.message : String(err), err);
    }
    this.removed = true;
  }
}

/** Creates a Linux vxlan device in a virtual network (see LinuxVxlanDevice.attach). */
export function attachLinuxVxlan(opts: LinuxVxlanOptions): Promise<LinuxVxlanDevice> {
  return LinuxVxlanDevice.attach(opts);
}
