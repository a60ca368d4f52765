/**
 * Multi-host test harness: N "hosts" as Linux network namespaces, each with one veth link to a
 * bridge in the root namespace, addresses 10.x.y.N/24 (the bridge has 10.x.y.254, and optionally
 * .253, … so processes in the root namespace reach them). Commands and long-running processes (host agents) run inside a
 * host with exec()/spawn(); a host's link can be shaped with tc (netem delay/loss, tbf rate).
 *
 * teardown() kills what spawn() started, deletes the namespaces, links and bridge; it is
 * idempotent, runs from withHarness()'s finally, and is also registered for process exit and
 * SIGINT/SIGTERM, so nothing is left behind when a test fails. Needs root and iproute2.
 */
import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { randomBytes } from "node:crypto";
import { CommandFailure, hasProgram, isRoot, requireRoot, runCommand, runCommandSync, type CommandResult } from "./command.js";
import { HarnessError, ToolMissingError } from "./errors.js";
import { formatIpv4Address, parseIpv4Address } from "./frames.js";

export { isRoot };

/** Why root-only tests cannot run here (for node:test's `skip`), or false when they can. */
export function skipReasonUnlessRoot(): string | false {
  if (!isRoot()) return `needs root for network namespaces, veth and vxlan devices (running as uid ${process.getuid?.() ?? "?"})`;
  if (!hasProgram("ip")) return "needs iproute2 ('ip' is not installed; apt-get install iproute2)";
  return false;
}

export interface HarnessOptions {
  /** Number of hosts (namespaces), 1..99. */
  hosts: number;
  /** Name prefix of everything created (default "hopt-" + 4 random hex digits); at most 10 characters. */
  prefix?: string;
  /** A /24 for the underlay (default: a random 10.x.y.0/24 no route or address of this machine overlaps). */
  subnet?: string;
  /**
   * Addresses the bridge gets in the root namespace: .254, .253, … (default 1; 0 for none). Each
   * can host one more VTEP of the same UDP port in the root namespace (a "host" without a namespace).
   */
  rootAddresses?: number;
}

export interface HarnessHost {
  /** 1..N */
  index: number;
  /** "h1" … */
  name: string;
  /** The namespace: PREFIX-hN. */
  netns: string;
  /** The host's underlay address, 10.x.y.N. */
  address: string;
  /** Its link inside the namespace ("eth0"). */
  device: string;
  /** The link's other end, in the root namespace on the bridge: PREFIX-vN. */
  peerDevice: string;
}

export interface ShapeOptions {
  /** netem delay (needs sch_netem). */
  delayMs?: number;
  jitterMs?: number;
  /** netem random loss, percent. */
  lossPercent?: number;
  /** tbf rate limit. */
  rateKbit?: number;
  /** tbf bucket size (default: rate for 10 ms, at least 1600 bytes). */
  burstBytes?: number;
  /** tbf queue latency bound (default 50 ms). */
  latencyMs?: number;
  /** Which way: "out" of the host, "in" to it, or "both" (default). */
  direction?: "in" | "out" | "both";
}

export type HostRef = number | string | HarnessHost;

interface Created {
  netns: string[];
  links: string[];
}

const live = new Set<NetnsHarness>();
let hooksInstalled = false;

function exitHook(): void {
  for (const h of live) h.teardownSync();
}

function signalHook(signal: NodeJS.Signals): void {
  exitHook();
  process.removeListener(signal, signalHook);
  // Default action of the signal (terminate) unless somebody else handles it.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on("exit", exitHook);
  process.on("SIGINT", signalHook);
  process.on("SIGTERM", signalHook);
}

function removeHooks(): void {
  if (!hooksInstalled || live.size > 0) return;
  hooksInstalled = false;
  process.removeListener("exit", exitHook);
  process.removeListener("SIGINT", signalHook);
  process.removeListener("SIGTERM", signalHook);
}

/**
 * A random 10.x.y.0/24 that no address or route of this machine (this network namespace)
 * overlaps, with x in 200..254; `exclude` lists /24s to avoid as well. Needs iproute2.
 */
export async function freeSubnet(exclude: readonly string[] = []): Promise<string> {
  const used: { base: number; len: number }[] = [];
  const addrs = JSON.parse((await runCommand("ip", ["-j", "-4", "addr", "show"])).stdout || "[]") as { addr_info?: { local?: string; prefixlen?: number }[] }[];
  for (const a of addrs) for (const i of a.addr_info ?? []) if (i.local !== undefined) used.push({ base: parseIpv4Address(i.local), len: i.prefixlen ?? 32 });
  const routes = JSON.parse((await runCommand("ip", ["-j", "-4", "route", "show", "table", "all"])).stdout || "[]") as { dst?: string }[];
  for (const r of routes) {
    if (r.dst === undefined || r.dst === "default") continue;
    const [a, l] = r.dst.split("/");
    try {
      used.push({ base: parseIpv4Address(a!), len: l === undefined ? 32 : Number(l) });
    } catch {
      // not an IPv4 route
    }
  }
  for (const e of exclude) {
    const [a, l] = e.split("/");
    used.push({ base: parseIpv4Address(a!), len: l === undefined ? 32 : Number(l) });
  }
  const overlaps = (base: number): boolean =>
    used.some((u) => {
      const len = Math.min(u.len, 24);
      const size = 2 ** (32 - len);
      return Math.floor(u.base / size) === Math.floor(base / size);
    });
  for (let i = 0; i < 64; i++) {
    const r = randomBytes(2);
    const base = parseIpv4Address(`10.${200 + (r[0]! % 55)}.${r[1]!}.0`);
    if (!overlaps(base)) return `${formatIpv4Address(base)}/24`;
  }
  throw new HarnessError("setup", "found no free 10.x.y.0/24 for the harness underlay (pass subnet)");
}

function failure(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class NetnsHarness {
  readonly prefix: string;
  /** The underlay /24, e.g. "10.213.7.0/24". */
  readonly subnet: string;
  readonly bridge: string;
  /** The bridge's first address in the root namespace (10.x.y.254), if it has one. */
  readonly rootAddress: string | undefined;
  /** All of the bridge's addresses: 10.x.y.254, .253, … */
  readonly rootAddresses: readonly string[];
  readonly hosts: HarnessHost[] = [];
  private readonly created: Created = { netns: [], links: [] };
  private readonly children = new Set<ChildProcess>();
  private tornDown = false;

  private constructor(prefix: string, subnet: string, rootAddresses: string[]) {
    this.prefix = prefix;
    this.subnet = subnet;
    this.bridge = `${prefix}-br`;
    this.rootAddresses = rootAddresses;
    this.rootAddress = rootAddresses[0];
  }

  /** Creates the namespaces, bridge and links; on a failure everything created so far is removed. */
  static async create(opts: HarnessOptions): Promise<NetnsHarness> {
    requireRoot("the network namespace harness");
    if (!hasProgram("ip")) throw new ToolMissingError("ip", "iproute2");
    if (!Number.isInteger(opts.hosts) || opts.hosts < 1 || opts.hosts > 99) throw new HarnessError("setup", `hosts ${opts.hosts} is outside 1..99`);
    const prefix = opts.prefix ?? `hopt-${randomBytes(2).toString("hex")}`;
    if (!/^[a-z][a-z0-9-]{0,9}$/.test(prefix)) throw new HarnessError("setup", `prefix '${prefix}' must be 1-10 of a-z 0-9 - (interface names are at most 15 characters)`);
    let subnet = opts.subnet ?? (await freeSubnet());
    const m = /^(\d+\.\d+\.\d+)\.0\/24$/.exec(subnet);
    if (m === null) throw new HarnessError("setup", `subnet '${subnet}' must be a /24 like 10.213.7.0/24`);
    subnet = `${m[1]!}.0/24`;
    const net = m[1]!;
    const nRoot = opts.rootAddresses ?? 1;
    if (!Number.isInteger(nRoot) || nRoot < 0 || nRoot + opts.hosts > 253) throw new HarnessError("setup", `rootAddresses ${nRoot} is outside 0..${253 - opts.hosts}`);
    const rootAddresses = Array.from({ length: nRoot }, (_, i) => `${net}.${254 - i}`);
    const h = new NetnsHarness(prefix, subnet, rootAddresses);
    live.add(h);
    installHooks();
    try {
      await h.ip(["link", "add", h.bridge, "type", "bridge"]);
      h.created.links.push(h.bridge);
      for (const a of rootAddresses) await h.ip(["addr", "add", `${a}/24`, "dev", h.bridge]);
      await h.ip(["link", "set", h.bridge, "up"]);
      for (let i = 1; i <= opts.hosts; i++) {
        const host: HarnessHost = { index: i, name: `h${i}`, netns: `${prefix}-h${i}`, address: `${net}.${i}`, device: "eth0", peerDevice: `${prefix}-v${i}` };
        const tmp = `${prefix}-p${i}`;
        await h.ip(["netns", "add", host.netns]);
        h.created.netns.push(host.netns);
        await h.ip(["link", "add", host.peerDevice, "type", "veth", "peer", "name", tmp]);
        h.created.links.push(host.peerDevice);
        await h.ip(["link", "set", tmp, "netns", host.netns]);
        await h.ip(["-n", host.netns, "link", "set", tmp, "name", host.device]);
        await h.ip(["-n", host.netns, "addr", "add", `${host.address}/24`, "dev", host.device]);
        await h.ip(["-n", host.netns, "link", "set", host.device, "up"]);
        await h.ip(["-n", host.netns, "link", "set", "lo", "up"]);
        await h.ip(["link", "set", host.peerDevice, "master", h.bridge, "up"]);
        h.hosts.push(host);
      }
    } catch (err) {
      await h.teardown().catch(() => undefined);
      throw err instanceof HarnessError || err instanceof ToolMissingError ? err : new HarnessError("setup", failure(err), err);
    }
    return h;
  }

  private async ip(args: string[]): Promise<void> {
    try {
      await runCommand("ip", args);
    } catch (err) {
      if (err instanceof ToolMissingError) throw err;
      throw new HarnessError("setup", failure(err), err);
    }
  }

  host(ref: HostRef): HarnessHost {
    if (typeof ref === "object") return ref;
    const h = typeof ref === "number" ? this.hosts[ref - 1] : this.hosts.find((x) => x.name === ref || x.netns === ref);
    if (h === undefined) throw new HarnessError("exec", `no host ${String(ref)} (have ${this.hosts.map((x) => x.name).join(", ")})`);
    return h;
  }

  /** Runs a program inside a host's namespace (ip netns exec) and returns its output; a non-zero exit throws. */
  async exec(ref: HostRef, argv: readonly string[], opts: { timeoutMs?: number } = {}): Promise<CommandResult> {
    const host = this.host(ref);
    if (argv.length === 0) throw new HarnessError("exec", "empty command");
    try {
      return await runCommand("ip", ["netns", "exec", host.netns, ...argv], opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs });
    } catch (err) {
      throw new HarnessError("exec", `in ${host.name}: ${failure(err)}`, err);
    }
  }

  /**
   * Starts a long-running program inside a host's namespace (e.g. a host agent). `ip netns exec`
   * execs the program, so the child's pid is the program's. Killed at teardown if still running.
   */
  spawn(ref: HostRef, argv: readonly string[], opts: SpawnOptions = {}): ChildProcess {
    const host = this.host(ref);
    if (this.tornDown) throw new HarnessError("spawn", "the harness is torn down");
    if (argv.length === 0) throw new HarnessError("spawn", "empty command");
    const child = spawn("ip", ["netns", "exec", host.netns, ...argv], { stdio: ["ignore", "pipe", "pipe"], ...opts });
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    child.once("error", () => this.children.delete(child));
    return child;
  }

  /**
   * Shapes a host's link with tc: netem for delay/jitter/loss, tbf for rate (under the netem when
   * both are asked). Replaces any previous shaping of that link.
   */
  async shape(ref: HostRef, opts: ShapeOptions): Promise<void> {
    const host = this.host(ref);
    const dir = opts.direction ?? "both";
    const targets: string[][] = [];
    if (dir !== "in") targets.push(["-n", host.netns]);
    if (dir !== "out") targets.push([]);
    const netem: string[] = [];
    if (opts.delayMs !== undefined) netem.push("delay", `${opts.delayMs}ms`, ...(opts.jitterMs === undefined ? [] : [`${opts.jitterMs}ms`]));
    if (opts.lossPercent !== undefined) netem.push("loss", `${opts.lossPercent}%`);
    let tbf: string[] = [];
    if (opts.rateKbit !== undefined) {
      const burst = opts.burstBytes ?? Math.max(1600, Math.ceil((opts.rateKbit * 1000) / 8 / 100));
      tbf = ["tbf", "rate", `${opts.rateKbit}kbit`, "burst", String(burst), "latency", `${opts.latencyMs ?? 50}ms`];
    }
    if (netem.length === 0 && tbf.length === 0) throw new HarnessError("shape", "nothing to shape (give delayMs, lossPercent or rateKbit)");
    for (const nsArgs of targets) {
      const dev = nsArgs.length === 0 ? host.peerDevice : host.device;
      await this.unshapeDevice(nsArgs, dev);
      try {
        if (netem.length > 0) {
          await runCommand("tc", [...nsArgs, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", ...netem]);
          if (tbf.length > 0) await runCommand("tc", [...nsArgs, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", ...tbf]);
        } else {
          await runCommand("tc", [...nsArgs, "qdisc", "add", "dev", dev, "root", "handle", "1:", ...tbf]);
        }
      } catch (err) {
        const stderr = err instanceof CommandFailure ? err.stderr : "";
        const hint = /qdisc kind is unknown/.test(stderr) ? ` (this kernel lacks sch_${netem.length > 0 ? "netem" : "tbf"}: modprobe sch_${netem.length > 0 ? "netem" : "tbf"})` : "";
        throw new HarnessError("shape", `${host.name} ${dev}: ${failure(err)}${hint}`, err);
      }
    }
  }

  /** Removes the shaping of a host's link (both ways). */
  async unshape(ref: HostRef): Promise<void> {
    const host = this.host(ref);
    await this.unshapeDevice(["-n", host.netns], host.device);
    await this.unshapeDevice([], host.peerDevice);
  }

  private async unshapeDevice(nsArgs: string[], dev: string): Promise<void> {
    try {
      await runCommand("tc", [...nsArgs, "qdisc", "del", "dev", dev, "root"]);
    } catch (err) {
      const stderr = err instanceof CommandFailure ? err.stderr : "";
      if (!/No such file|Cannot delete qdisc with handle of zero|Cannot find specified qdisc/.test(stderr)) throw new HarnessError("shape", `removing shaping of ${dev}: ${failure(err)}`, err);
    }
  }

  /** tc qdisc show of a host's link (inside the namespace, or the root-side peer with `peer`). */
  async qdiscs(ref: HostRef, peer = false): Promise<string> {
    const host = this.host(ref);
    const args = peer ? ["qdisc", "show", "dev", host.peerDevice] : ["-n", host.netns, "qdisc", "show", "dev", host.device];
    return (await runCommand("tc", args)).stdout;
  }

  /** Names this harness created that still exist (namespaces and root-namespace links). */
  async leftovers(): Promise<string[]> {
    const out: string[] = [];
    const ns = (await runCommand("ip", ["netns", "list"])).stdout;
    for (const line of ns.split("\n")) {
      const name = line.split(" ")[0] ?? "";
      if (name.startsWith(`${this.prefix}-`)) out.push(name);
    }
    const links = JSON.parse((await runCommand("ip", ["-j", "link", "show"])).stdout || "[]") as { ifname: string }[];
    for (const l of links) if (l.ifname.startsWith(`${this.prefix}-`)) out.push(l.ifname);
    return out;
  }

  /**
   * Kills spawned processes (SIGTERM, then SIGKILL after 2 s), deletes namespaces, links and the
   * bridge. Idempotent; every step is tried even when one fails, then the failures are thrown.
   */
  async teardown(): Promise<void> {
    if (this.tornDown) return;
    this.tornDown = true;
    const errors: string[] = [];
    await Promise.all(
      [...this.children].map(async (c) => {
        if (c.exitCode !== null || c.signalCode !== null || c.pid === undefined) return;
        const exited = new Promise<void>((r) => c.once("exit", () => r()));
        c.kill("SIGTERM");
        const t = setTimeout(() => c.kill("SIGKILL"), 2000);
        await exited;
        clearTimeout(t);
      }),
    );
    this.children.clear();
    for (const ns of [...this.created.netns].reverse()) {
      try {
        await runCommand("ip", ["netns", "del", ns]);
      } catch (err) {
        const stderr = err instanceof CommandFailure ? err.stderr : "";
        if (!/No such file or directory/.test(stderr)) errors.push(failure(err));
      }
    }
    for (const link of [...this.created.links].reverse()) {
      try {
        await runCommand("ip", ["link", "del", link]);
      } catch (err) {
        const stderr = err instanceof CommandFailure ? err.stderr : "";
        if (!/Cannot find device|does not exist|No such device/.test(stderr)) errors.push(failure(err));
      }
    }
    this.created.netns.length = 0;
    this.created.links.length = 0;
    live.delete(this);
    removeHooks();
    if (errors.length > 0) throw new HarnessError("teardown", errors.join("; "));
  }

  /** teardown() for process-exit handlers: synchronous, best effort. */
  teardownSync(): void {
    if (this.tornDown) return;
    this.tornDown = true;
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    this.children.clear();
    for (const ns of [...this.created.netns].reverse()) runCommandSync("ip", ["netns", "del", ns]);
    for (const link of [...this.created.links].reverse()) runCommandSync("ip", ["link", "del", link]);
    this.created.netns.length = 0;
    this.created.links.length = 0;
    live.delete(this);
  }
}

/** Creates a harness, runs `fn`, and tears the harness down whatever happens (fn's error wins). */
export async function withHarness<T>(opts: HarnessOptions, fn: (h: NetnsHarness) => Promise<T>): Promise<T> {
  const h = await NetnsHarness.create(opts);
  let result: T;
  try {
    result = await fn(h);
  } catch (err) {
    await h.teardown().catch(() => undefined);
    throw err;
  }
  await h.teardown();
  return result;
}
