/**
 * The host agent's virtual networking (docs/networking.md): one learning switch whose ports are
 * the NICs of this host's VMs, one VXLAN endpoint joining it to the other hosts (one VNI per
 * virtual network), an address pool per network, and optionally a Linux gateway per network so
 * that programs on this machine reach guests by IP.
 *
 * Networks are defined in the datastore (`networks/NAME.json`, shared by the hosts of a shared
 * datastore; their address pools `networks/NAME.ipam.json` are shared too, under a lock file).
 * A host with no networks behaves as if this module did not exist: VM NICs stay unconnected.
 *
 * The migration hand-off (which the supervisor drives) is:
 *   target, prepare:      attachVm(standby, held): gets only frames the source forwards to it
 *   source, stop-and-copy: holdVm: frames for the VM are buffered
 *   source, COMPLETE sent: forwardVm(target VTEP): buffered and later frames go to the target
 *   target, VM resumed:   activateVm: MAC pinned here, RARP + gratuitous ARP, buffered frames delivered
 *   source, process gone: the port is detached (forwarding outlives it, for FORWARD_MS)
 *   abort:                source resumeVmHere (release, stop forwarding); target detaches
 */
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { HopError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import { parseInput } from "../common/validation.js";
import { runCommandSync } from "../net/command.js";
import { AddressPool, LinuxGateway, MAX_VNI, parseCidr, parseRemote, remoteId, VirtualSwitch, Vtep, VXLAN_PORT, type Allocation, type GatewayCounters, type MacEntry, type PortCounters, type SwitchCounters, type VtepCounters } from "../net/index.js";
import type { VmConfig } from "../vm/config.js";
import type { VmProcessHandle } from "./vmproc.js";

/** Guest MTU on a virtual network: 1500 less the 50 bytes VXLAN adds on a 1500-byte underlay. */
export const DEFAULT_GUEST_MTU = 1450;
/** Frames buffered for a VM while it is switched over (each side). */
export const HOLD_FRAMES = 1024;
/** How long a migration source forwards frames for the VM to its new host. */
export const FORWARD_MS = 3_000;
/** How long forwarding waits for frames the stopping VM hands back (so they go out first, in order). */
export const FENCE_WAIT_MS = 200;

const NETWORK_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const ipv4 = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}$/, "must be an IPv4 address");

/** A virtual network's definition (POST /v1/networks, `hop host serve --network`). */
export const networkSpecSchema = z
  .object({
    name: z.string().regex(NETWORK_NAME_RE, "network name must be 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit"),
    vni: z.number().int().min(1).max(MAX_VNI),
    /** The guests' subnet, e.g. 10.10.0.0/24. */
    subnet: z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/, "subnet must look like 10.10.0.0/24"),
    /** The guests' default gateway (default: the first address of the subnet); false: none. */
    gateway: z.union([ipv4, z.literal(false)]).optional(),
    mtu: z.number().int().min(576).max(9000).optional(),
  })
  .strict();
export type NetworkSpec = z.output<typeof networkSpecSchema>;

/** Body of POST /v1/networks: a definition, and whether this host gives the machine access to it. */
export const networkCreateSchema = networkSpecSchema.extend({ hostAccess: z.boolean().optional() }).strict();
export type NetworkCreateRequest = z.input<typeof networkCreateSchema>;

/** Parses `hop host serve --network NAME:VNI:CIDR[:GATEWAY]`. */
export function parseNetworkArg(text: string): NetworkSpec {
  const m = /^([^:]+):(\d+):([0-9./]+)(?::([0-9.]+|none))?$/.exec(text.trim());
  if (m === null) throw new HopError("BAD_NETWORK", `--network '${text}' must be NAME:VNI:SUBNET[:GATEWAY], e.g. net1:100:10.10.0.0/24`, { status: 400 });
  const spec = { name: m[1], vni: Number(m[2]), subnet: m[3], ...(m[4] !== undefined ? { gateway: m[4] === "none" ? false : m[4] } : {}) };
  return parseInput(networkSpecSchema, spec, "--network");
}

export interface HostAccessInfo {
  /** The gateway namespace and the root end of its link. */
  namespace: string;
  rootAddress: string;
  /** The address the gateway has in the virtual network (the guests' gateway). */
  address: string;
  counters: GatewayCounters;
}

export interface NetworkInfo extends NetworkSpec {
  mtu: number;
  /** VMs (and other ports) attached on this host. */
  ports: number;
  allocated: number;
  available: number;
  hostAccess?: HostAccessInfo;
}

export interface PortView {
  id: string;
  mac?: string;
  ip?: string;
  held: boolean;
  standby: boolean;
  counters: PortCounters;
}

export interface NetworkDetail extends NetworkInfo {
  portList: PortView[];
  macTable: MacEntry[];
  forwards: { mac: string; to: string; remainingMs: number; port: string }[];
  allocations: Allocation[];
  remotes: string[];
}

export interface NetworksResponse {
  networks: NetworkInfo[];
  /** This host's VXLAN endpoint ("address:port"), when it has an underlay. */
  vtep?: string;
  remotes: string[];
  counters: { switch: SwitchCounters; vtep?: VtepCounters };
}

/** The network routes of the host agent API (implemented by LocalSupervisor). */
export interface NetworkService {
  listNetworks(): Promise<NetworksResponse>;
  createNetwork(body: unknown): Promise<NetworkInfo>;
  getNetwork(name: string): Promise<NetworkDetail>;
}

export interface HostNetworkOptions {
  /** Where network definitions and address pools live (the datastore's `networks/`). */
  dir: string;
  /** This host's underlay address for VXLAN, "ADDR" or "ADDR:PORT" (default port 4789; 0: any). Absent: no overlay. */
  underlay?: string;
  /** The other hosts' VTEPs ("ADDR" or "ADDR:PORT"): every network is replicated to them. */
  remotes?: readonly string[];
  /** Networks to carry (created in the datastore when missing; must match when present). */
  networks?: readonly NetworkSpec[];
  /** Networks this host gives the machine access to (a Linux gateway each; root). */
  hostAccess?: readonly string[];
  log?: Logger;
}

interface Net {
  spec: NetworkSpec;
  pool: AddressPool;
  gateway?: LinuxGateway;
}

interface VmPort {
  id: string;
  network: string;
  proc: VmProcessHandle;
  /** Source of a live migration: settles once every frame sent to the VM before the hold was taken or bounced back. */
  fence?: Promise<void>;
  /** Forwarding asked for while the fence was still open (it starts when the fence settles). */
  pendingForward?: string;
}

export class NetworkError extends HopError {}

function portIdOf(vm: string): string {
  return `vm:${vm}`;
}

function sameSpec(a: NetworkSpec, b: NetworkSpec): boolean {
  return a.name === b.name && a.vni === b.vni && a.subnet === b.subnet && (a.gateway ?? null) === (b.gateway ?? null) && (a.mtu ?? DEFAULT_GUEST_MTU) === (b.mtu ?? DEFAULT_GUEST_MTU);
}

/** Gateways of every HostNetwork of this process, removed synchronously if the process exits without close(). */
const liveGateways = new Set<LinuxGateway>();
let exitHookInstalled = false;

function removeGatewaysSync(): void {
  for (const gw of liveGateways) {
    runCommandSync("ip", ["netns", "del", gw.netns]);
    runCommandSync("ip", ["link", "del", `${gw.name}-r`]);
  }
  liveGateways.clear();
}

export class HostNetwork {
  readonly sw: VirtualSwitch;
  private vtep: Vtep | undefined;
  private readonly nets = new Map<string, Net>();
  private readonly vmPorts = new Map<string, VmPort>();
  private remoteList: string[] = [];
  private readonly log: Logger | undefined;
  private creating = new Map<string, Promise<Net>>();
  private closed = false;

  constructor(private readonly opts: HostNetworkOptions) {
    this.log = opts.log;
    this.sw = new VirtualSwitch(opts.log !== undefined ? { log: opts.log } : {});
  }

  /** Opens the VXLAN endpoint, loads the datastore's networks, adds the configured ones, attaches host access. */
  async init(): Promise<void> {
    if (this.opts.underlay !== undefined) {
      // "ADDR" or "ADDR:PORT"; port 0 binds any free port (tests).
      const m = /^([0-9.]+)(?::(\d{1,5}))?$/.exec(this.opts.underlay.trim());
      const port = m?.[2] !== undefined ? Number(m[2]) : VXLAN_PORT;
      if (m === null || port > 65535) throw new NetworkError("BAD_UNDERLAY", `underlay '${this.opts.underlay}' must be ADDR or ADDR:PORT (an IPv4 address of this host)`, { status: 400 });
      const vtep = await Vtep.open({ address: m[1]!, port, ...(this.log !== undefined ? { log: this.log } : {}) });
      this.vtep = vtep;
      this.log?.info({ vtep: vtep.endpoint }, "VXLAN endpoint open");
    }
    this.remoteList = this.normalizeRemotes(this.opts.remotes ?? []);
    for (const spec of await this.storedSpecs()) await this.add(spec);
    for (const spec of this.opts.networks ?? []) await this.define(spec);
    for (const name of this.opts.hostAccess ?? []) await this.attachHostAccess(name);
  }

  /** This host's VXLAN endpoint ("address:port"), when it has an underlay. */
  get vtepEndpoint(): string | undefined {
    return this.vtep?.endpoint;
  }

  get hasNetworks(): boolean {
    return this.nets.size > 0;
  }

  /** Replaces the list of other hosts' VTEPs (for every network). */
  setRemotes(remotes: readonly string[]): void {
    this.remoteList = this.normalizeRemotes(remotes);
    for (const n of this.nets.values()) this.vtep?.setRemotes(n.spec.vni, this.remoteList);
  }

  private normalizeRemotes(remotes: readonly string[]): string[] {
    const port = this.vtep?.port ?? VXLAN_PORT;
    return [...new Set(remotes.map((r) => remoteId(parseRemote(r, port))))].filter((r) => r !== this.vtep?.endpoint);
  }

  // --- networks ---

  private specFile(name: string): string {
    return join(this.opts.dir, `${name}.json`);
  }

  private async storedSpecs(): Promise<NetworkSpec[]> {
    let names: string[];
    try {
      names = await readdir(this.opts.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    const out: NetworkSpec[] = [];
    for (const f of names.sort()) {
      if (!f.endsWith(".json") || f.endsWith(".ipam.json")) continue;
      const spec = await this.readSpec(f.slice(0, -5));
      if (spec !== undefined) out.push(spec);
    }
    return out;
  }

  private async readSpec(name: string): Promise<NetworkSpec | undefined> {
    if (!NETWORK_NAME_RE.test(name)) return undefined;
    let text: string;
    try {
      text = await readFile(this.specFile(name), "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    try {
      return parseInput(networkSpecSchema, JSON.parse(text), this.specFile(name));
    } catch (err) {
      this.log?.warn({ file: this.specFile(name), err: (err as Error).message }, "ignoring an invalid network definition");
      return undefined;
    }
  }

  private async writeSpec(spec: NetworkSpec): Promise<void> {
    await mkdir(this.opts.dir, { recursive: true });
    const file = this.specFile(spec.name);
    const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
    await writeFile(tmp, `${JSON.stringify(spec, null, 2)}\n`);
    await rename(tmp, file);
  }

  /** Carries a network on this host: switch network, VNI on the VXLAN endpoint, address pool. */
  private add(spec: NetworkSpec): Promise<Net> {
    const have = this.nets.get(spec.name);
    if (have !== undefined) {
      if (!sameSpec(have.spec, spec)) return Promise.reject(new NetworkError("NETWORK_CONFLICT", `network '${spec.name}' is defined as VNI ${have.spec.vni} ${have.spec.subnet} here, not VNI ${spec.vni} ${spec.subnet}`, { status: 409 }));
      return Promise.resolve(have);
    }
    const pending = this.creating.get(spec.name);
    if (pending !== undefined) return pending;
    const p = (async (): Promise<Net> => {
      const cidr = parseCidr(spec.subnet);
      if (cidr.prefixLength < 8 || cidr.prefixLength > 30) throw new NetworkError("BAD_NETWORK", `subnet ${spec.subnet}: the prefix must be /8 to /30`, { status: 400 });
      for (const other of this.nets.values()) {
        if (other.spec.vni === spec.vni) throw new NetworkError("NETWORK_CONFLICT", `VNI ${spec.vni} is used by network '${other.spec.name}'`, { status: 409 });
      }
      const pool = await AddressPool.open(join(this.opts.dir, `${spec.name}.ipam.json`), {
        network: spec.name,
        subnet: spec.subnet,
        ...(spec.gateway !== undefined ? { gateway: spec.gateway } : {}),
        shared: true,
      });
      this.sw.addNetwork(spec.name, spec.vni);
      if (this.vtep !== undefined) {
        this.vtep.connect(this.sw, spec.name);
        this.vtep.setRemotes(spec.vni, this.remoteList);
      }
      const net: Net = { spec, pool };
      this.nets.set(spec.name, net);
      this.log?.info({ network: spec.name, vni: spec.vni, subnet: spec.subnet, remotes: this.remoteList }, "virtual network up");
      return net;
    })();
    this.creating.set(spec.name, p);
    return p.finally(() => this.creating.delete(spec.name));
  }

  /** Defines a network in the datastore (or checks that the stored definition matches) and carries it here. */
  async define(spec: NetworkSpec): Promise<Net> {
    const stored = await this.readSpec(spec.name);
    if (stored !== undefined && !sameSpec(stored, spec)) {
      throw new NetworkError("NETWORK_CONFLICT", `network '${spec.name}' is defined in the datastore as VNI ${stored.vni} ${stored.subnet}${stored.gateway !== undefined ? ` gateway ${String(stored.gateway)}` : ""}; it cannot be redefined`, { status: 409 });
    }
    const net = await this.add(spec);
    if (stored === undefined) await this.writeSpec(spec);
    return net;
  }

  /**
   * The network `name`, loaded from the datastore if this host does not carry it yet; with
   * `spec` (an incoming migration's), created from it when the datastore does not have it.
   */
  async ensure(name: string, spec?: NetworkSpec): Promise<Net> {
    const have = this.nets.get(name);
    if (have !== undefined) {
      if (spec !== undefined && !sameSpec(have.spec, spec)) throw new NetworkError("NETWORK_CONFLICT", `network '${name}' is VNI ${have.spec.vni} ${have.spec.subnet} here, but VNI ${spec.vni} ${spec.subnet} where the VM comes from`, { status: 409 });
      return have;
    }
    const stored = await this.readSpec(name);
    if (stored !== undefined) {
      if (spec !== undefined && !sameSpec(stored, spec)) throw new NetworkError("NETWORK_CONFLICT", `network '${name}' is VNI ${stored.vni} ${stored.subnet} in this datastore, but VNI ${spec.vni} ${spec.subnet} where the VM comes from`, { status: 409 });
      return this.add(stored);
    }
    if (spec !== undefined) return this.define(spec);
    throw new NetworkError("NETWORK_NOT_FOUND", `no virtual network '${name}' (create it with POST /v1/networks or hop host serve --network)`, { status: 404 });
  }

  /** The definition of a network this host carries (what an incoming migration's target needs). */
  spec(name: string): NetworkSpec | undefined {
    return this.nets.get(name)?.spec;
  }

  mtuOf(name: string): number {
    return this.nets.get(name)?.spec.mtu ?? DEFAULT_GUEST_MTU;
  }

  /** Creates a network (API): defined in the datastore, carried here, with host access if asked. */
  async create(body: unknown): Promise<NetworkInfo> {
    const r = parseInput(networkCreateSchema, body, "body");
    const { hostAccess, ...spec } = r;
    // An identical definition is accepted again (idempotent); a different one is a conflict.
    await this.define(spec);
    if (hostAccess === true) await this.attachHostAccess(spec.name);
    return this.info(spec.name);
  }

  /** Gives programs on this machine access to a network (a Linux gateway with the network's gateway address). */
  async attachHostAccess(name: string): Promise<HostAccessInfo> {
    const net = await this.ensure(name);
    if (net.gateway !== undefined) return this.accessInfo(net)!;
    if (net.pool.gateway === undefined) throw new NetworkError("NETWORK_NO_GATEWAY", `network '${name}' has no gateway address for host access`, { status: 409 });
    const gw = await LinuxGateway.attach({
      name: `hg${randomBytes(3).toString("hex")}`,
      sw: this.sw,
      network: name,
      address: `${net.pool.gateway}/${net.pool.prefixLength}`,
      portId: `gw:${name}`,
      ...(this.log !== undefined ? { log: this.log } : {}),
    });
    net.gateway = gw;
    liveGateways.add(gw);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.on("exit", removeGatewaysSync);
    }
    return this.accessInfo(net)!;
  }

  private accessInfo(net: Net): HostAccessInfo | undefined {
    const gw = net.gateway;
    if (gw === undefined || net.pool.gateway === undefined) return undefined;
    return { namespace: gw.netns, rootAddress: gw.rootAddress, address: `${net.pool.gateway}/${net.pool.prefixLength}`, counters: gw.counters() };
  }

  private net(name: string): Net {
    const n = this.nets.get(name);
    if (n === undefined) throw new NetworkError("NETWORK_NOT_FOUND", `no virtual network '${name}' on this host`, { status: 404 });
    return n;
  }

  info(name: string): NetworkInfo {
    const n = this.net(name);
    const access = this.accessInfo(n);
    return {
      ...n.spec,
      mtu: n.spec.mtu ?? DEFAULT_GUEST_MTU,
      ports: [...this.vmPorts.values()].filter((p) => p.network === name).length + (n.gateway !== undefined ? 1 : 0),
      allocated: n.pool.list().length,
      available: n.pool.available(),
      ...(access !== undefined ? { hostAccess: access } : {}),
    };
  }

  async list(): Promise<NetworksResponse> {
    await Promise.all([...this.nets.values()].map((n) => n.pool.refresh().catch(() => undefined)));
    const vtep = this.vtep;
    return {
      networks: [...this.nets.keys()].sort().map((n) => this.info(n)),
      ...(vtep !== undefined ? { vtep: vtep.endpoint } : {}),
      remotes: [...this.remoteList],
      counters: { switch: this.sw.counters(), ...(vtep !== undefined ? { vtep: vtep.counters() } : {}) },
    };
  }

  async detail(name: string): Promise<NetworkDetail> {
    const n = this.net(name);
    await n.pool.refresh().catch(() => undefined);
    const ids = [...this.vmPorts.values()].filter((p) => p.network === name).map((p) => p.id);
    if (n.gateway !== undefined) ids.push(n.gateway.portId);
    const portList: PortView[] = ids
      .filter((id) => this.sw.hasPort(id))
      .map((id) => {
        const i = this.sw.portInfo(id);
        return { id, ...(i.mac !== undefined ? { mac: i.mac } : {}), ...(i.ip !== undefined ? { ip: i.ip } : {}), held: i.held, standby: i.standby, counters: this.sw.portCounters(id) };
      });
    return {
      ...this.info(name),
      portList,
      macTable: this.sw.macTable(name),
      forwards: this.sw.forwards(name),
      allocations: n.pool.list(),
      remotes: this.vtep?.remotes(n.spec.vni).map(remoteId) ?? [],
    };
  }

  // --- addresses ---

  /** An address for a VM (idempotent per owner); `requested` is an address ("10.10.0.5" or "10.10.0.5/24"). */
  async allocate(network: string, owner: string, requested?: string): Promise<Allocation> {
    const net = await this.ensure(network);
    const want = requested?.split("/")[0];
    if (requested !== undefined && requested.includes("/") && Number(requested.split("/")[1]) !== net.pool.prefixLength) {
      throw new NetworkError("BAD_ADDRESS", `${requested}: network '${network}' is ${net.spec.subnet} (use /${net.pool.prefixLength} or no prefix)`, { status: 400 });
    }
    return net.pool.allocate(owner, want);
  }

  async release(network: string, owner: string): Promise<void> {
    const net = this.nets.get(network) ?? (await this.ensure(network).catch(() => undefined));
    await net?.pool.release(owner);
  }

  // --- VM ports ---

  /**
   * Connects a VM process's NIC to its network's switch port. "active": a VM that runs here
   * (MAC pinned); "standby": the target of a migration (see HostNetwork's comment), held.
   */
  attachVm(config: VmConfig, proc: VmProcessHandle, mode: "active" | "standby"): void {
    const network = config.network;
    if (network === undefined) return;
    this.net(network);
    const id = portIdOf(config.name);
    const old = this.vmPorts.get(id);
    if (old !== undefined) {
      if (!old.proc.exited && old.proc !== proc) throw new NetworkError("NET_PORT_BUSY", `VM '${config.name}' already has a port (process ${old.proc.pid ?? "?"})`, { status: 409 });
      this.detachPort(old);
    }
    if (this.sw.hasPort(id)) this.sw.detachPort(id);
    const ip = config.ip?.split("/")[0];
    this.sw.attachPort(id, network, (frame) => void proc.sendFrame(frame), {
      mac: config.mac,
      ...(ip !== undefined ? { ip } : {}),
      ...(mode === "standby" ? { standby: true, hold: HOLD_FRAMES } : {}),
    });
    const port: VmPort = { id, network, proc };
    this.vmPorts.set(id, port);
    proc.onFrame = (frame, bounced) => {
      if (bounced) this.sw.redeliver(id, frame);
      else this.sw.input(id, frame);
    };
    proc.once("exit", () => {
      if (this.vmPorts.get(id) === port) this.detachPort(port);
    });
    this.log?.debug({ vm: config.name, network, mode }, "VM NIC attached");
  }

  private detachPort(port: VmPort): void {
    this.startForward(port);
    this.vmPorts.delete(port.id);
    this.sw.detachPort(port.id);
    if (port.proc.onFrame !== undefined) port.proc.onFrame = undefined;
  }

  private port(vm: string): VmPort | undefined {
    return this.vmPorts.get(portIdOf(vm));
  }

  /**
   * Source: the VM stops for its switchover; frames for it are buffered. With `fence` (live
   * migration: the VM process hands back frames that reach it once stopped), a fence request
   * marks the end of the frames already on their way to the VM; forwarding waits for it.
   */
  holdVm(vm: string, fence = false): void {
    const p = this.port(vm);
    if (p === undefined) return;
    this.sw.holdPort(p.id, HOLD_FRAMES);
    if (fence) {
      p.fence = p.proc.request({ op: "nicFence" }, 10_000).then(
        () => undefined,
        () => undefined,
      );
    }
  }

  /**
   * Source: the VM is committed to `to` (its host's VTEP): buffered and later frames for it go
   * there. Waits (at most FENCE_WAIT_MS) for the frames the VM process hands back, which are
   * older than the buffered ones and go first.
   */
  forwardVm(vm: string, to: string | undefined): void {
    const p = this.port(vm);
    if (p === undefined || to === undefined || this.vtep === undefined) return;
    p.pendingForward = to;
    const fence = p.fence;
    if (fence === undefined) {
      this.startForward(p);
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, FENCE_WAIT_MS);
      timer.unref();
    });
    void Promise.race([fence, waited]).then(() => {
      clearTimeout(timer);
      this.startForward(p);
    });
  }

  private startForward(p: VmPort): void {
    const to = p.pendingForward;
    if (to === undefined) return;
    delete p.pendingForward;
    if (!this.sw.hasPort(p.id)) return;
    try {
      this.sw.forwardPort(p.id, to, FORWARD_MS);
    } catch (err) {
      this.log?.warn({ port: p.id, to, err: (err as Error).message }, "forwarding to the migration target failed");
    }
  }

  /** Source: the migration failed and the VM runs on here: deliver what was buffered, stop forwarding. */
  resumeVmHere(vm: string): void {
    const p = this.port(vm);
    if (p === undefined) return;
    delete p.pendingForward;
    delete p.fence;
    this.sw.cancelForward(p.id);
    this.sw.releasePort(p.id);
  }

  /** Target: the VM runs here now: pin its MAC, announce it, deliver what was buffered. */
  activateVm(vm: string): void {
    const p = this.port(vm);
    if (p === undefined) return;
    try {
      this.sw.activatePort(p.id);
      this.sw.announce(p.id);
    } catch (err) {
      this.log?.warn({ vm, err: (err as Error).message }, "activating the migrated VM's port failed");
    }
    this.sw.releasePort(p.id);
  }

  /** Detaches a VM's port (e.g. an incoming migration that was dropped). */
  detachVm(vm: string, proc?: VmProcessHandle): void {
    const p = this.port(vm);
    if (p !== undefined && (proc === undefined || p.proc === proc)) this.detachPort(p);
  }

  /** Removes the Linux gateways (first thing on shutdown: they are state outside this process). */
  async removeHostAccess(): Promise<void> {
    for (const n of this.nets.values()) {
      const gw = n.gateway;
      if (gw === undefined) continue;
      delete n.gateway;
      liveGateways.delete(gw);
      try {
        await gw.remove();
      } catch (err) {
        this.log?.warn({ network: n.spec.name, err: (err as Error).message }, "removing the Linux gateway failed");
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.removeHostAccess();
    for (const p of [...this.vmPorts.values()]) this.detachPort(p);
    this.sw.close();
    await this.vtep?.close();
  }
}
