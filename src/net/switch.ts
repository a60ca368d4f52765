/**
 * The per-host virtual switch: a learning L2 switch with one forwarding domain per virtual
 * network. VM NICs are ports (a callback delivers frames to the VM process); the overlay (VXLAN
 * endpoint) is each network's uplink. A frame entering a network only ever leaves through that
 * network's ports or uplink: there is no code path from one network's state to another's.
 *
 * Nothing here throws on the data path: bad frames are counted and dropped. The switch does not
 * copy frames; the same Buffer may be handed to several ports and must be treated as read-only.
 */
import type { Logger } from "../common/log.js";
import { AnnounceError, ForwardError, NetworkAddError, NetworkInUseError, PortAttachError, UnknownNetworkError, UnknownPortError } from "./errors.js";
import { announceFrames, ETH_HEADER_BYTES, isMulticastMac, isMulticastMacKey, isValidIpv4Address, macKey, macKeyOf, macKeyToString, normalizeMac } from "./frames.js";

/** Largest VXLAN network identifier (24 bits). VNI 0 is not used. */
export const MAX_VNI = 0xffffff;
/** Default ageing of learned MAC entries (Linux bridges: 300 s). */
export const DEFAULT_AGING_MS = 300_000;
/** Default largest frame a port may send: 1514 + an 802.1Q tag + slack for FCS-less NICs. */
export const DEFAULT_MAX_FRAME_BYTES = 1522;
/** Default bound of learned MACs per network (against MAC flooding). */
export const DEFAULT_MAX_MACS = 4096;

/** Delivers a frame to a port's VM (or test callback). Must not keep and mutate the buffer. */
export type FrameSink = (frame: Buffer) => void;

/** A network's way off this host: the VXLAN endpoint. */
export interface Uplink {
  /** A frame for a MAC not on this host: the uplink sends it to the learned remote, or replicates it. */
  output(frame: Buffer): void;
  /** A frame for one given remote endpoint (forwarding after a migration); `remote` as given to forwardPort. */
  outputTo(frame: Buffer, remote: string): void;
}

/**
 * Hands a frame received from the overlay to the switch (returned by setUplink). `forwarded`:
 * the frame was forwarded by a migration source (VXLAN_FLAG_FORWARDED): it is for the migrated
 * VM's port here, even one still on standby, and its source MAC is not learned.
 */
export type UplinkIngress = (frame: Uint8Array, forwarded?: boolean) => void;

export interface NetworkInfo {
  name: string;
  vni: number;
}

export interface SwitchOptions {
  /** Learned MAC entries expire after this long without a frame from that MAC (default 300 s). */
  agingMs?: number;
  /** Most learned MACs per network (default 4096); beyond it new MACs are not learned (flooded). */
  maxMacsPerNetwork?: number;
  /** Frames larger than this are dropped (default 1522). */
  maxFrameBytes?: number;
  /** Clock (ms), for tests. */
  now?: () => number;
  log?: Logger;
}

export interface PortOptions {
  /** The NIC's MAC: pinned to this port while it is attached (never aged, never moved by learning), used by announce(). */
  mac?: string;
  /** The guest's IPv4 address: announce() adds a gratuitous ARP for it. */
  ip?: string;
  /** Attach held (as holdPort(id, hold)): the target of a migration attaches its port this way. */
  hold?: number;
  /**
   * The port of a VM that is migrating in (needs `mac`): its MAC is not pinned and the port gets
   * no flooded frames, so traffic for the VM still goes where the VM runs; it gets only the frames
   * a migration source forwards to that MAC (held, with `hold`). activatePort() makes it a normal
   * port when the VM runs here.
   */
  standby?: boolean;
}

export interface AnnounceOptions {
  /** How many rounds of announcement frames (default 3). The first is sent at once. */
  rounds?: number;
  /** Delay before the second round; doubles each round (default 50 ms). */
  intervalMs?: number;
}

export interface PortCounters {
  /** Frames the VM sent into the switch. */
  rxFrames: number;
  rxBytes: number;
  /** Frames delivered to the VM (including held frames once released). */
  txFrames: number;
  txBytes: number;
  /** Frames from this port dropped as malformed (runt, giant, multicast source). */
  rxDropped: number;
  /** Frames buffered while the port was held. */
  held: number;
  /** Held frames dropped because the hold buffer was full (oldest first). */
  heldDropped: number;
  /** The deliver callback threw. */
  deliverErrors: number;
}

export interface SwitchCounters {
  /** Frames flooded (broadcast, multicast, unknown unicast). */
  flooded: number;
  unknownUnicast: number;
  /** Frames handed to an uplink (output). */
  toUplink: number;
  /** Frames received from an uplink. */
  fromUplink: number;
  /** Frames sent to a migrated VM's new host (forwardPort). */
  forwarded: number;
  /** Frames forwarded by a migration source that reached the port of their MAC here. */
  forwardedIn: number;
  /** Dropped: shorter than an Ethernet header. */
  runts: number;
  /** Dropped: longer than maxFrameBytes. */
  giants: number;
  /** Dropped: the source MAC is a group address. */
  badSource: number;
  /** Dropped: unicast to the port it came from, or from the uplink to a MAC behind the uplink. */
  filtered: number;
  /** Dropped: frames input on a port id that is not attached. */
  unknownPort: number;
  /** MACs not learned because the network's table was full. */
  tableFull: number;
  /** A frame with a source MAC pinned to another port (not re-learned). */
  pinnedConflicts: number;
}

export type MacLocation = { kind: "port"; port: string } | { kind: "uplink" };

export interface MacEntry {
  mac: string;
  location: MacLocation;
  /** Pinned: the configured MAC of an attached port. */
  pinned: boolean;
  ageMs: number;
}

interface HoldState {
  max: number;
  frames: Buffer[];
  /** How many frames at the head of `frames` were redelivered (they predate the others). */
  front: number;
}

interface Port {
  id: string;
  net: Net;
  deliver: FrameSink;
  mac: number | undefined;
  macText: string | undefined;
  ip: string | undefined;
  /** Most recent source MAC sent by the port (announce() falls back to it). */
  lastSrc: number | undefined;
  hold: HoldState | undefined;
  standby: boolean;
  timers: Set<NodeJS.Timeout>;
  c: PortCounters;
}

interface Entry {
  /** undefined: behind the uplink. */
  port: Port | undefined;
  seen: number;
  pinned: boolean;
}

interface Forward {
  to: string;
  until: number;
  origin: string;
}

interface Net {
  name: string;
  vni: number;
  ports: Map<string, Port>;
  table: Map<number, Entry>;
  forwards: Map<number, Forward>;
  uplink: Uplink | undefined;
}

/** Marks "the frame came from the uplink" in the forwarding code. */
const FROM_UPLINK = Symbol("uplink");
type Ingress = Port | typeof FROM_UPLINK;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

function newCounters(): PortCounters {
  return { rxFrames: 0, rxBytes: 0, txFrames: 0, txBytes: 0, rxDropped: 0, held: 0, heldDropped: 0, deliverErrors: 0 };
}

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

export class VirtualSwitch {
  private readonly nets = new Map<string, Net>();
  private readonly vnis = new Map<number, Net>();
  private readonly ports = new Map<string, Port>();
  private readonly agingMs: number;
  private readonly maxMacs: number;
  private readonly maxFrameBytes: number;
  private readonly now: () => number;
  private readonly log: Logger | undefined;
  private readonly c: SwitchCounters = {
    flooded: 0,
    unknownUnicast: 0,
    toUplink: 0,
    fromUplink: 0,
    forwarded: 0,
    forwardedIn: 0,
    runts: 0,
    giants: 0,
    badSource: 0,
    filtered: 0,
    unknownPort: 0,
    tableFull: 0,
    pinnedConflicts: 0,
  };

  constructor(opts: SwitchOptions = {}) {
    this.agingMs = opts.agingMs ?? DEFAULT_AGING_MS;
    this.maxMacs = opts.maxMacsPerNetwork ?? DEFAULT_MAX_MACS;
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.now = opts.now ?? Date.now;
    this.log = opts.log;
  }

  // -------------------------------------------------------------------------------------------
  // Networks

  /** Adds a virtual network: a name and its VXLAN network identifier (1..16777215), both unique. */
  addNetwork(name: string, vni: number): void {
    if (!NAME_RE.test(name)) throw new NetworkAddError(`'${name}' is not a network name (letters, digits, _ . -; at most 63)`);
    if (!Number.isInteger(vni) || vni < 1 || vni > MAX_VNI) throw new NetworkAddError(`VNI ${vni} is outside 1..${MAX_VNI}`);
    if (this.nets.has(name)) throw new NetworkAddError(`network '${name}' exists`);
    const other = this.vnis.get(vni);
    if (other !== undefined) throw new NetworkAddError(`VNI ${vni} is used by network '${other.name}'`);
    const net: Net = { name, vni, ports: new Map(), table: new Map(), forwards: new Map(), uplink: undefined };
    this.nets.set(name, net);
    this.vnis.set(vni, net);
  }

  /** Removes a network with no ports attached (its uplink is dropped). */
  removeNetwork(name: string): void {
    const net = this.net(name);
    if (net.ports.size > 0) throw new NetworkInUseError(name, net.ports.size);
    this.nets.delete(name);
    this.vnis.delete(net.vni);
  }

  networks(): NetworkInfo[] {
    return [...this.nets.values()].map((n) => ({ name: n.name, vni: n.vni }));
  }

  network(name: string): NetworkInfo {
    const n = this.net(name);
    return { name: n.name, vni: n.vni };
  }

  hasNetwork(name: string): boolean {
    return this.nets.has(name);
  }

  // -------------------------------------------------------------------------------------------
  // Ports

  /**
   * Attaches a port to a network. `deliver` gets every frame for the port. With `opts.mac` the
   * MAC is pinned to this port (and any forwarding of that MAC to another host stops: the VM is
   * back here).
   */
  attachPort(id: string, network: string, deliver: FrameSink, opts: PortOptions = {}): void {
    if (id === "") throw new PortAttachError(id, "the port id is empty");
    if (this.ports.has(id)) throw new PortAttachError(id, "a port with this id is attached");
    const net = this.net(network);
    let mac: number | undefined;
    let macText: string | undefined;
    if (opts.mac !== undefined) {
      try {
        macText = normalizeMac(opts.mac);
        mac = macKeyOf(macText);
      } catch (err) {
        throw new PortAttachError(id, `bad MAC '${opts.mac}'`, err);
      }
      if (isMulticastMacKey(mac)) throw new PortAttachError(id, `MAC ${macText} is a group address`);
      const holder = net.table.get(mac);
      if (holder?.pinned === true && holder.port !== undefined) throw new PortAttachError(id, `MAC ${macText} is pinned to port '${holder.port.id}'`);
    }
    if (opts.ip !== undefined && !isValidIpv4Address(opts.ip)) throw new PortAttachError(id, `'${opts.ip}' is not an IPv4 address`);
    const standby = opts.standby === true;
    if (standby && mac === undefined) throw new PortAttachError(id, "a standby port needs its MAC");
    if (standby && mac !== undefined && [...net.ports.values()].some((p) => p.standby && p.mac === mac)) throw new PortAttachError(id, `MAC ${macText ?? ""} has a standby port already`);
    const port: Port = { id, net, deliver, mac, macText, ip: opts.ip, lastSrc: undefined, hold: undefined, standby, timers: new Set(), c: newCounters() };
    if (opts.hold !== undefined) port.hold = { max: Math.max(0, Math.floor(opts.hold)), frames: [], front: 0 };
    this.ports.set(id, port);
    net.ports.set(id, port);
    if (mac !== undefined && !standby) this.pin(port, mac);
    // A VM coming (back) here: a forwarding of its MAC left from when it went away is stale.
    if (mac !== undefined && standby) net.forwards.delete(mac);
    this.log?.debug({ port: id, network, mac: macText, standby }, "port attached");
  }

  private pin(port: Port, mac: number): void {
    port.net.table.set(mac, { port, seen: this.now(), pinned: true });
    port.net.forwards.delete(mac);
  }

  /**
   * A standby port becomes a normal one (the migrated VM runs here now): its MAC is pinned to it
   * and any forwarding of that MAC from this switch ends. No-op for a port that is not on standby.
   */
  activatePort(id: string): void {
    const port = this.port(id);
    if (!port.standby) return;
    const mac = port.mac;
    if (mac === undefined) return;
    const holder = port.net.table.get(mac);
    if (holder?.pinned === true && holder.port !== undefined && holder.port !== port) throw new PortAttachError(id, `MAC ${port.macText ?? ""} is pinned to port '${holder.port.id}'`);
    port.standby = false;
    this.pin(port, mac);
    this.log?.debug({ port: id, network: port.net.name, mac: port.macText }, "port activated");
  }

  /** Detaches a port: its MAC entries go, held frames are discarded, pending announcements stop. */
  detachPort(id: string): boolean {
    const port = this.ports.get(id);
    if (port === undefined) return false;
    this.ports.delete(id);
    port.net.ports.delete(id);
    for (const [key, e] of port.net.table) if (e.port === port) port.net.table.delete(key);
    for (const t of port.timers) clearTimeout(t);
    port.timers.clear();
    port.hold = undefined;
    this.log?.debug({ port: id, network: port.net.name }, "port detached");
    return true;
  }

  hasPort(id: string): boolean {
    return this.ports.has(id);
  }

  portInfo(id: string): { id: string; network: string; mac?: string; ip?: string; held: boolean; standby: boolean } {
    const p = this.port(id);
    const out: { id: string; network: string; mac?: string; ip?: string; held: boolean; standby: boolean } = { id, network: p.net.name, held: p.hold !== undefined, standby: p.standby };
    if (p.macText !== undefined) out.mac = p.macText;
    if (p.ip !== undefined) out.ip = p.ip;
    return out;
  }

  portCounters(id: string): PortCounters {
    return { ...this.port(id).c };
  }

  counters(): SwitchCounters {
    return { ...this.c };
  }

  /** A frame sent by the VM on port `id`. Never throws: bad frames are counted and dropped. */
  input(id: string, frame: Uint8Array): void {
    const port = this.ports.get(id);
    if (port === undefined) {
      this.c.unknownPort++;
      return;
    }
    const b = asBuffer(frame);
    if (!this.sane(b)) {
      port.c.rxDropped++;
      return;
    }
    port.c.rxFrames++;
    port.c.rxBytes += b.length;
    const src = macKey(b, 6);
    port.lastSrc = src;
    const net = port.net;
    const e = net.table.get(src);
    if (e === undefined) {
      if (this.roomFor(net)) net.table.set(src, { port, seen: this.now(), pinned: false });
    } else if (e.pinned && e.port !== port) {
      this.c.pinnedConflicts++;
    } else {
      e.port = port;
      e.seen = this.now();
    }
    // A MAC sending from a local port is here: any forwarding of it to another host is over.
    if (net.forwards.size > 0) net.forwards.delete(src);
    this.forward(net, b, port);
  }

  // -------------------------------------------------------------------------------------------
  // Uplink

  /**
   * Makes `uplink` the network's way to other hosts and returns the function through which it
   * hands received frames to the switch. Replacing or clearing the uplink disables the old function.
   */
  setUplink(network: string, uplink: Uplink): UplinkIngress {
    const net = this.net(network);
    net.uplink = uplink;
    return (frame: Uint8Array, forwarded?: boolean) => {
      if (net.uplink !== uplink || this.nets.get(net.name) !== net) return;
      this.fromUplink(net, asBuffer(frame), forwarded === true);
    };
  }

  clearUplink(network: string): void {
    const net = this.nets.get(network);
    if (net === undefined) return;
    net.uplink = undefined;
    for (const [key, e] of net.table) if (e.port === undefined) net.table.delete(key);
  }

  private fromUplink(net: Net, b: Buffer, forwarded: boolean): void {
    if (!this.sane(b)) return;
    this.c.fromUplink++;
    if (forwarded) {
      // Sent on by the host a VM left: it is for that VM's port here (standby or active). Its
      // sender is not behind the overlay as far as this frame tells (it may even be local).
      if (!isMulticastMac(b, 0)) {
        const dst = macKey(b, 0);
        for (const p of net.ports.values()) {
          if (p.mac === dst) {
            this.c.forwardedIn++;
            this.deliver(p, b);
            return;
          }
        }
      }
      // Never forwarded twice (two hosts forwarding a MAC to each other must not loop a frame).
      this.forward(net, b, FROM_UPLINK, false);
      return;
    }
    const src = macKey(b, 6);
    const e = net.table.get(src);
    if (e === undefined) {
      if (this.roomFor(net)) net.table.set(src, { port: undefined, seen: this.now(), pinned: false });
    } else if (e.pinned) {
      // The MAC of an attached port (e.g. the target of a migration before the source stopped):
      // keep it here.
      this.c.pinnedConflicts++;
    } else {
      e.port = undefined;
      e.seen = this.now();
    }
    this.forward(net, b, FROM_UPLINK);
  }

  // -------------------------------------------------------------------------------------------
  // Forwarding

  private sane(b: Buffer): boolean {
    if (b.length < ETH_HEADER_BYTES) {
      this.c.runts++;
      return false;
    }
    if (b.length > this.maxFrameBytes) {
      this.c.giants++;
      return false;
    }
    if (isMulticastMac(b, 6)) {
      this.c.badSource++;
      return false;
    }
    return true;
  }

  private roomFor(net: Net): boolean {
    if (net.table.size < this.maxMacs) return true;
    this.sweepNet(net, this.now());
    if (net.table.size < this.maxMacs) return true;
    this.c.tableFull++;
    return false;
  }

  private forward(net: Net, b: Buffer, from: Ingress, mayForward = true): void {
    if (isMulticastMac(b, 0)) {
      this.flood(net, b, from);
      return;
    }
    const dst = macKey(b, 0);
    if (mayForward && net.forwards.size > 0) {
      const f = net.forwards.get(dst);
      if (f !== undefined) {
        if (f.until > this.now() && net.uplink !== undefined) {
          this.c.forwarded++;
          this.callUplink(net, () => net.uplink?.outputTo(b, f.to));
          return;
        }
        net.forwards.delete(dst);
      }
    }
    const e = net.table.get(dst);
    if (e !== undefined && !e.pinned && this.now() - e.seen > this.agingMs) net.table.delete(dst);
    else if (e !== undefined) {
      if (e.port !== undefined) {
        if (e.port === from) this.c.filtered++;
        else this.deliver(e.port, b);
      } else if (from === FROM_UPLINK || net.uplink === undefined) {
        this.c.filtered++;
      } else {
        this.c.toUplink++;
        this.callUplink(net, () => net.uplink?.output(b));
      }
      return;
    }
    this.c.unknownUnicast++;
    this.flood(net, b, from);
  }

  private flood(net: Net, b: Buffer, from: Ingress): void {
    this.c.flooded++;
    for (const p of net.ports.values()) if (p !== from && !p.standby) this.deliver(p, b);
    if (from !== FROM_UPLINK && net.uplink !== undefined) {
      this.c.toUplink++;
      this.callUplink(net, () => net.uplink?.output(b));
    }
  }

  private deliver(p: Port, b: Buffer): void {
    if (p.hold !== undefined) {
      p.c.held++;
      p.hold.frames.push(b);
      if (p.hold.frames.length > p.hold.max) {
        p.hold.frames.shift();
        if (p.hold.front > 0) p.hold.front--;
        p.c.heldDropped++;
      }
      return;
    }
    p.c.txFrames++;
    p.c.txBytes += b.length;
    try {
      p.deliver(b);
    } catch (err) {
      p.c.deliverErrors++;
      this.log?.warn({ port: p.id, err }, "port deliver callback threw");
    }
  }

  private callUplink(net: Net, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log?.warn({ network: net.name, err }, "uplink threw");
    }
  }

  // -------------------------------------------------------------------------------------------
  // MAC table

  /** Where the switch would send a unicast frame for `mac` now (undefined: it would flood). */
  lookup(network: string, mac: string): MacLocation | undefined {
    const net = this.net(network);
    const e = net.table.get(macKeyOf(mac));
    if (e === undefined || (!e.pinned && this.now() - e.seen > this.agingMs)) return undefined;
    return e.port === undefined ? { kind: "uplink" } : { kind: "port", port: e.port.id };
  }

  macTable(network: string): MacEntry[] {
    const net = this.net(network);
    const now = this.now();
    const out: MacEntry[] = [];
    for (const [key, e] of net.table) {
      if (!e.pinned && now - e.seen > this.agingMs) continue;
      out.push({ mac: macKeyToString(key), location: e.port === undefined ? { kind: "uplink" } : { kind: "port", port: e.port.id }, pinned: e.pinned, ageMs: now - e.seen });
    }
    return out;
  }

  /** Removes aged MAC entries and expired forwardings; returns how many went. Lookups age lazily anyway. */
  sweep(): number {
    const now = this.now();
    let n = 0;
    for (const net of this.nets.values()) n += this.sweepNet(net, now);
    return n;
  }

  private sweepNet(net: Net, now: number): number {
    let n = 0;
    for (const [key, e] of net.table) {
      if (!e.pinned && now - e.seen > this.agingMs) {
        net.table.delete(key);
        n++;
      }
    }
    for (const [key, f] of net.forwards) {
      if (f.until <= now) {
        net.forwards.delete(key);
        n++;
      }
    }
    return n;
  }

  // -------------------------------------------------------------------------------------------
  // Migration hand-off

  /**
   * Announces the port's MAC as if the VM had sent it: a RARP (and a gratuitous ARP when the port
   * has an IP), broadcast in the network and over the uplink, so every switch and VTEP (and a
   * learning Linux vxlan device) learns the MAC's new location. Further rounds follow after
   * intervalMs, 2×intervalMs, … (they stop when the port is detached). Returns the frames sent now.
   */
  announce(id: string, opts: AnnounceOptions = {}): number {
    const port = this.port(id);
    const mac = port.macText ?? (port.lastSrc === undefined ? undefined : macKeyToString(port.lastSrc));
    if (mac === undefined) throw new AnnounceError(id, "the port has no configured MAC and has sent no frame yet");
    const frames = announceFrames(mac, port.ip);
    const rounds = Math.max(1, opts.rounds ?? 3);
    const send = (): void => {
      if (this.ports.get(id) !== port) return;
      for (const f of frames) this.input(id, f);
    };
    send();
    let delay = 0;
    let step = opts.intervalMs ?? 50;
    for (let r = 1; r < rounds; r++) {
      delay += step;
      step *= 2;
      const t = setTimeout(() => {
        port.timers.delete(t);
        send();
      }, delay);
      t.unref();
      port.timers.add(t);
    }
    this.log?.debug({ port: id, mac, ip: port.ip, rounds }, "announced");
    return frames.length;
  }

  /**
   * Buffers the frames for a port instead of delivering them (the VM is paused on the target of
   * a migration). At most `maxFrames` are kept; when full the oldest is dropped and counted.
   * Holding a held port changes its bound (dropping the oldest beyond it).
   */
  holdPort(id: string, maxFrames: number): void {
    const port = this.port(id);
    const max = Math.max(0, Math.floor(maxFrames));
    if (port.hold === undefined) port.hold = { max, frames: [], front: 0 };
    else {
      port.hold.max = max;
      while (port.hold.frames.length > max) {
        port.hold.frames.shift();
        if (port.hold.front > 0) port.hold.front--;
        port.c.heldDropped++;
      }
    }
  }

  /** Stops holding and delivers the held frames in arrival order; returns how many. */
  releasePort(id: string): number {
    const port = this.port(id);
    const hold = port.hold;
    if (hold === undefined) return 0;
    port.hold = undefined;
    for (const f of hold.frames) {
      if (this.ports.get(id) !== port) break;
      this.deliver(port, f);
    }
    return hold.frames.length;
  }

  /**
   * A frame the port's VM did not take: it was delivered just as the VM stopped for a migration
   * (the VM process hands such frames back). It is treated as if it were switched to the port
   * now: forwarded to the VM's new host if forwarding has begun, else held (or delivered) like
   * any frame for the port. Returns false when the port is gone.
   */
  redeliver(id: string, frame: Uint8Array): boolean {
    const port = this.ports.get(id);
    if (port === undefined) return false;
    const b = asBuffer(frame);
    if (b.length < ETH_HEADER_BYTES) return false;
    const net = port.net;
    if (!isMulticastMac(b, 0) && net.forwards.size > 0) {
      const f = net.forwards.get(macKey(b, 0));
      if (f !== undefined && f.until > this.now() && net.uplink !== undefined) {
        this.c.forwarded++;
        this.callUplink(net, () => net.uplink?.outputTo(b, f.to));
        return true;
      }
    }
    const hold = port.hold;
    if (hold !== undefined) {
      // Older than anything held since the hold began: queued ahead of it, in arrival order.
      port.c.held++;
      hold.frames.splice(hold.front++, 0, b);
      if (hold.frames.length > hold.max) {
        hold.frames.shift();
        hold.front = Math.max(0, hold.front - 1);
        port.c.heldDropped++;
      }
      return true;
    }
    this.deliver(port, b);
    return true;
  }

  /**
   * The VM of this port now runs on another host: for `ms`, unicast frames for the port's MACs
   * (its configured MAC and those it sent from) are sent over the uplink to `to` (the target's
   * VTEP, "address:port") instead of to the port, whether they come from local ports or from the
   * overlay. If the port is held (the source held it when the VM paused), the held frames for
   * those MACs are sent to `to` first, in order; the port stays held, so the stopped VM gets
   * nothing more. The entries outlive the port (detach it when the VM process is gone); they end
   * after `ms`, on cancelForward, or when the MAC shows up on a local port again. Returns the MACs.
   */
  forwardPort(id: string, to: string, ms: number): string[] {
    const port = this.port(id);
    const net = port.net;
    if (net.uplink === undefined) throw new ForwardError(id, `network '${net.name}' has no uplink`);
    if (to === "") throw new ForwardError(id, "no target endpoint");
    if (!(ms > 0) || !Number.isFinite(ms)) throw new ForwardError(id, `duration ${ms} ms must be positive`);
    const keys = new Set<number>();
    if (port.mac !== undefined) keys.add(port.mac);
    for (const [key, e] of net.table) if (e.port === port) keys.add(key);
    const until = this.now() + ms;
    for (const k of keys) net.forwards.set(k, { to, until, origin: id });
    if (port.hold !== undefined) {
      const keep: Buffer[] = [];
      for (const f of port.hold.frames) {
        if (!isMulticastMac(f, 0) && keys.has(macKey(f, 0))) {
          this.c.forwarded++;
          this.callUplink(net, () => net.uplink?.outputTo(f, to));
        } else keep.push(f);
      }
      port.hold.frames = keep;
      port.hold.front = 0;
    }
    const macs = [...keys].map(macKeyToString);
    this.log?.debug({ port: id, to, ms, macs }, "forwarding to the migration target");
    return macs;
  }

  /** Ends forwarding set up by forwardPort(id) (a migration aborted). Returns how many MACs. */
  cancelForward(id: string): number {
    let n = 0;
    for (const net of this.nets.values()) {
      for (const [key, f] of net.forwards) {
        if (f.origin === id) {
          net.forwards.delete(key);
          n++;
        }
      }
    }
    return n;
  }

  /** Active forwardings of a network. */
  forwards(network: string): { mac: string; to: string; remainingMs: number; port: string }[] {
    const net = this.net(network);
    const now = this.now();
    return [...net.forwards].filter(([, f]) => f.until > now).map(([k, f]) => ({ mac: macKeyToString(k), to: f.to, remainingMs: f.until - now, port: f.origin }));
  }

  /** Stops pending announcement timers (the switch holds no other resources). */
  close(): void {
    for (const p of this.ports.values()) {
      for (const t of p.timers) clearTimeout(t);
      p.timers.clear();
    }
  }

  private net(name: string): Net {
    const n = this.nets.get(name);
    if (n === undefined) throw new UnknownNetworkError(name);
    return n;
  }

  private port(id: string): Port {
    const p = this.ports.get(id);
    if (p === undefined) throw new UnknownPortError(id);
    return p;
  }
}
