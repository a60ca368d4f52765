/**
 * VXLAN tunnel endpoint (VTEP), RFC 7348: Ethernet frames in UDP between hosts, one VNI per
 * virtual network. Broadcast, multicast and unknown unicast are head-end replicated to the
 * network's remote VTEPs (no IP multicast); remote MACs are learned from received frames (inner
 * source MAC -> outer source address), so later unicast goes to one VTEP only.
 *
 * The endpoint is the uplink of a switch's networks (connect()). Bad packets never throw: they
 * are counted (counters().malformed*) and dropped.
 */
import * as dgram from "node:dgram";
import { isIPv4 } from "node:net";
import type { Logger } from "../common/log.js";
import { VtepBindError, VtepConfigError, VxlanDecodeError } from "./errors.js";
import { ETH_HEADER_BYTES, isMulticastMac, macKey, macKeyToString } from "./frames.js";
import { DEFAULT_AGING_MS, DEFAULT_MAX_MACS, MAX_VNI, type UplinkIngress, type VirtualSwitch } from "./switch.js";

/** IANA port for VXLAN. */
export const VXLAN_PORT = 4789;
export const VXLAN_HEADER_BYTES = 8;
/** The I flag: "the VNI is valid", the one flag RFC 7348 defines. */
export const VXLAN_FLAG_I = 0x08;
/**
 * Hopvisor extension, in a bit RFC 7348 reserves (flags bit 7, 0x01): "forwarded by a migration
 * source". The target does not learn the inner source MAC from such a packet (the sender is not
 * behind the forwarding VTEP). Only ever sent to Hopvisor VTEPs (forwardPort targets): Linux
 * drops VXLAN packets with reserved bits set.
 */
export const VXLAN_FLAG_FORWARDED = 0x01;
/** Underlay bytes added around an inner frame: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8. */
export const VXLAN_OVERHEAD_BYTES = 50;

/** Header + inner frame. Reserved bits are zero (RFC 7348 section 5) unless `forwarded`. */
export function encodeVxlan(vni: number, frame: Uint8Array, forwarded = false): Buffer {
  const b = Buffer.allocUnsafe(VXLAN_HEADER_BYTES + frame.length);
  b.writeUInt32BE((VXLAN_FLAG_I | (forwarded ? VXLAN_FLAG_FORWARDED : 0)) << 24, 0);
  b.writeUInt32BE(((vni & MAX_VNI) << 8) >>> 0, 4);
  b.set(frame, VXLAN_HEADER_BYTES);
  return b;
}

/**
 * Checks and splits a VXLAN packet. The I flag must be set; the other flag and reserved bits are
 * ignored on receipt, as the RFC says. The inner frame must hold an Ethernet header.
 */
export function decodeVxlan(packet: Uint8Array): { vni: number; frame: Buffer; forwarded: boolean } {
  const b = Buffer.isBuffer(packet) ? packet : Buffer.from(packet.buffer, packet.byteOffset, packet.byteLength);
  if (b.length < VXLAN_HEADER_BYTES) throw new VxlanDecodeError("short", `${b.length} bytes is shorter than the 8-byte header`);
  if ((b[0]! & VXLAN_FLAG_I) === 0) throw new VxlanDecodeError("flags", `flags 0x${b[0]!.toString(16).padStart(2, "0")} lack the I flag (0x08)`);
  if (b.length < VXLAN_HEADER_BYTES + ETH_HEADER_BYTES) throw new VxlanDecodeError("inner-short", `inner frame of ${b.length - VXLAN_HEADER_BYTES} bytes is shorter than an Ethernet header`);
  return { vni: b.readUIntBE(4, 3), frame: b.subarray(VXLAN_HEADER_BYTES), forwarded: (b[0]! & VXLAN_FLAG_FORWARDED) !== 0 };
}

export interface RemoteVtep {
  address: string;
  port: number;
}

/** "address:port": how remotes are named to the switch (forwardPort's target) and in tables. */
export function remoteId(r: RemoteVtep): string {
  return `${r.address}:${r.port}`;
}

/** "10.0.0.2:4789" or "10.0.0.2" (with `defaultPort`) to a RemoteVtep; IPv4 only. */
export function parseRemote(text: string, defaultPort = VXLAN_PORT): RemoteVtep {
  const i = text.lastIndexOf(":");
  const address = i < 0 ? text : text.slice(0, i);
  const port = i < 0 ? defaultPort : Number(text.slice(i + 1));
  checkRemote(address, port);
  return { address, port };
}

function checkRemote(address: string, port: number): void {
  if (!isIPv4(address)) throw new VtepConfigError(`'${address}' is not an IPv4 address (the underlay is IPv4)`);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new VtepConfigError(`port ${port} is outside 1..65535`);
}

function checkVni(vni: number): void {
  if (!Number.isInteger(vni) || vni < 1 || vni > MAX_VNI) throw new VtepConfigError(`VNI ${vni} is outside 1..${MAX_VNI}`);
}

export interface VtepOptions {
  /** Underlay address to bind (an IPv4 address of this host; tests use 127.0.0.x). */
  address: string;
  /** UDP port (default 4789); also the port assumed for remotes given without one. */
  port?: number;
  /** Learned remote MACs expire after this long (default 300 s). */
  agingMs?: number;
  /** Most learned MACs per VNI (default 4096); beyond it frames are replicated instead. */
  maxMacsPerVni?: number;
  /** Drop packets whose source address is not a remote of the packet's VNI (default false: accept any, like Linux). */
  strictRemotes?: boolean;
  /**
   * Socket receive and send buffer sizes (default 4 MiB; the kernel caps them at
   * net.core.rmem_max / wmem_max). Bursts beyond the receive buffer are dropped by the kernel.
   */
  socketBufferBytes?: number;
  now?: () => number;
  log?: Logger;
}

export interface VtepCounters {
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  /** Copies sent by head-end replication (one per remote per flooded frame). */
  replicated: number;
  /** Frames to flood for a VNI with no remotes. */
  noRemotes: number;
  /** Malformed packets dropped (the sum of the three below). */
  malformed: number;
  malformedShort: number;
  malformedFlags: number;
  malformedInner: number;
  /** Inner frame with a group source MAC. */
  badInnerSource: number;
  /** Valid packets for a VNI not connected to a switch. */
  unknownVni: number;
  /** Dropped under strictRemotes: the sender is not a remote of that VNI. */
  unknownRemote: number;
  /** Sends that failed (socket errors), and forwardPort targets that are not "address:port". */
  sendErrors: number;
  /** Remote MACs learned or moved to another VTEP. */
  learned: number;
  /** Frames sent to a migration target (forwardPort), flagged forwarded. */
  forwardedOut: number;
  /** Flagged forwarded frames received (not learned from). */
  forwardedIn: number;
}

interface Learned {
  remote: RemoteVtep;
  seen: number;
}

interface VniState {
  vni: number;
  remotes: Map<string, RemoteVtep>;
  table: Map<number, Learned>;
  ingress: UplinkIngress | undefined;
  sw: VirtualSwitch | undefined;
  network: string | undefined;
}

export class Vtep {
  readonly address: string;
  readonly port: number;
  private readonly sock: dgram.Socket;
  private readonly vnis = new Map<number, VniState>();
  private readonly agingMs: number;
  private readonly maxMacs: number;
  private readonly strict: boolean;
  private readonly now: () => number;
  private readonly log: Logger | undefined;
  private readonly targets = new Map<string, RemoteVtep | undefined>();
  private closed = false;
  private readonly c: VtepCounters = {
    rxPackets: 0,
    rxBytes: 0,
    txPackets: 0,
    txBytes: 0,
    replicated: 0,
    noRemotes: 0,
    malformed: 0,
    malformedShort: 0,
    malformedFlags: 0,
    malformedInner: 0,
    badInnerSource: 0,
    unknownVni: 0,
    unknownRemote: 0,
    sendErrors: 0,
    learned: 0,
    forwardedOut: 0,
    forwardedIn: 0,
  };
  private readonly onSent = (err: Error | null): void => {
    if (err !== null) {
      this.c.sendErrors++;
      this.log?.debug({ err }, "VXLAN send failed");
    }
  };

  private constructor(sock: dgram.Socket, address: string, port: number, opts: VtepOptions) {
    this.sock = sock;
    this.address = address;
    this.port = port;
    this.agingMs = opts.agingMs ?? DEFAULT_AGING_MS;
    this.maxMacs = opts.maxMacsPerVni ?? DEFAULT_MAX_MACS;
    this.strict = opts.strictRemotes ?? false;
    this.now = opts.now ?? Date.now;
    this.log = opts.log;
    sock.on("message", (msg, rinfo) => this.receive(msg, rinfo));
    sock.on("error", (err) => {
      this.c.sendErrors++;
      this.log?.warn({ err }, "VXLAN socket error");
    });
  }

  /** Binds a UDP socket on `address:port` (port 0: any free port, see `.port`). */
  static async open(opts: VtepOptions): Promise<Vtep> {
    const port = opts.port ?? VXLAN_PORT;
    if (!isIPv4(opts.address)) throw new VtepConfigError(`'${opts.address}' is not an IPv4 address (the underlay is IPv4)`);
    const sock = dgram.createSocket({ type: "udp4" });
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once("error", reject);
        sock.bind({ address: opts.address, port, exclusive: true }, () => {
          sock.off("error", reject);
          resolve();
        });
      });
    } catch (err) {
      sock.close();
      throw new VtepBindError(opts.address, port, err);
    }
    const bufferBytes = opts.socketBufferBytes ?? 4 * 1024 * 1024;
    try {
      sock.setRecvBufferSize(bufferBytes);
      sock.setSendBufferSize(bufferBytes);
    } catch {
      // Kept at the system default; only bursts suffer.
    }
    return new Vtep(sock, opts.address, sock.address().port, opts);
  }

  /** "address:port" of this endpoint: what the other hosts put in their remote lists. */
  get endpoint(): string {
    return `${this.address}:${this.port}`;
  }

  // -------------------------------------------------------------------------------------------
  // Configuration

  /** Adds a remote VTEP to a VNI's replication list (port defaults to this endpoint's port). */
  addRemote(vni: number, address: string, port: number = this.port): void {
    checkVni(vni);
    checkRemote(address, port);
    if (address === this.address && port === this.port) throw new VtepConfigError(`${address}:${port} is this endpoint`);
    const r = { address, port };
    this.state(vni).remotes.set(remoteId(r), r);
  }

  removeRemote(vni: number, address: string, port: number = this.port): boolean {
    const st = this.vnis.get(vni);
    if (st === undefined) return false;
    const id = remoteId({ address, port });
    for (const [k, l] of st.table) if (remoteId(l.remote) === id) st.table.delete(k);
    return st.remotes.delete(id);
  }

  /** Replaces a VNI's remote list (addresses as "a.b.c.d" or "a.b.c.d:port"). */
  setRemotes(vni: number, remotes: readonly string[]): void {
    checkVni(vni);
    const parsed = remotes.map((r) => parseRemote(r, this.port));
    const st = this.state(vni);
    st.remotes.clear();
    st.table.clear();
    for (const r of parsed) this.addRemote(vni, r.address, r.port);
  }

  remotes(vni: number): RemoteVtep[] {
    return [...(this.vnis.get(vni)?.remotes.values() ?? [])].map((r) => ({ ...r }));
  }

  /** Becomes the uplink of `network` on `sw`; the VNI is the network's. */
  connect(sw: VirtualSwitch, network: string): void {
    if (this.closed) throw new VtepConfigError("the endpoint is closed");
    const { vni } = sw.network(network);
    const st = this.state(vni);
    if (st.ingress !== undefined && (st.sw !== sw || st.network !== network)) throw new VtepConfigError(`VNI ${vni} is already connected to network '${st.network ?? "?"}'`);
    st.sw = sw;
    st.network = network;
    st.ingress = sw.setUplink(network, {
      output: (frame) => this.output(st, frame),
      outputTo: (frame, remote) => this.outputTo(st, frame, remote),
    });
  }

  /** Stops being the uplink of the network with this VNI (remotes are kept). */
  disconnect(vni: number): void {
    const st = this.vnis.get(vni);
    if (st === undefined) return;
    if (st.sw !== undefined && st.network !== undefined && st.sw.hasNetwork(st.network)) st.sw.clearUplink(st.network);
    st.ingress = undefined;
    st.sw = undefined;
    st.network = undefined;
    st.table.clear();
  }

  counters(): VtepCounters {
    return { ...this.c };
  }

  /** Learned remote MACs of a VNI. */
  macTable(vni: number): { mac: string; remote: string; ageMs: number }[] {
    const st = this.vnis.get(vni);
    if (st === undefined) return [];
    const now = this.now();
    return [...st.table].filter(([, l]) => now - l.seen <= this.agingMs).map(([k, l]) => ({ mac: macKeyToString(k), remote: remoteId(l.remote), ageMs: now - l.seen }));
  }

  /** Disconnects every network and closes the socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const vni of this.vnis.keys()) this.disconnect(vni);
    await new Promise<void>((resolve) => this.sock.close(() => resolve()));
  }

  private state(vni: number): VniState {
    let st = this.vnis.get(vni);
    if (st === undefined) {
      st = { vni, remotes: new Map(), table: new Map(), ingress: undefined, sw: undefined, network: undefined };
      this.vnis.set(vni, st);
    }
    return st;
  }

  // -------------------------------------------------------------------------------------------
  // Data path

  private output(st: VniState, frame: Buffer): void {
    if (this.closed) return;
    if (!isMulticastMac(frame, 0)) {
      const l = st.table.get(macKey(frame, 0));
      if (l !== undefined) {
        if (this.now() - l.seen <= this.agingMs) {
          this.send(encodeVxlan(st.vni, frame), l.remote);
          return;
        }
        st.table.delete(macKey(frame, 0));
      }
    }
    if (st.remotes.size === 0) {
      this.c.noRemotes++;
      return;
    }
    const packet = encodeVxlan(st.vni, frame);
    for (const r of st.remotes.values()) {
      this.c.replicated++;
      this.send(packet, r);
    }
  }

  private outputTo(st: VniState, frame: Buffer, remote: string): void {
    if (this.closed) return;
    let r = this.targets.get(remote);
    if (r === undefined && !this.targets.has(remote)) {
      try {
        r = parseRemote(remote, this.port);
      } catch {
        r = undefined;
      }
      if (this.targets.size > 1024) this.targets.clear();
      this.targets.set(remote, r);
    }
    if (r === undefined) {
      this.c.sendErrors++;
      return;
    }
    this.c.forwardedOut++;
    this.send(encodeVxlan(st.vni, frame, true), r);
  }

  private send(packet: Buffer, r: RemoteVtep): void {
    this.c.txPackets++;
    this.c.txBytes += packet.length;
    try {
      this.sock.send(packet, r.port, r.address, this.onSent);
    } catch (err) {
      this.c.sendErrors++;
      this.log?.debug({ err }, "VXLAN send failed");
    }
  }

  private receive(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    this.c.rxPackets++;
    this.c.rxBytes += msg.length;
    let vni: number;
    let frame: Buffer;
    let forwarded: boolean;
    try {
      ({ vni, frame, forwarded } = decodeVxlan(msg));
    } catch (err) {
      this.c.malformed++;
      const reason = err instanceof VxlanDecodeError ? err.reason : "short";
      if (reason === "short") this.c.malformedShort++;
      else if (reason === "flags") this.c.malformedFlags++;
      else this.c.malformedInner++;
      return;
    }
    const st = this.vnis.get(vni);
    if (st?.ingress === undefined) {
      this.c.unknownVni++;
      return;
    }
    const from = this.remoteFor(st, rinfo);
    if (from === undefined) {
      this.c.unknownRemote++;
      return;
    }
    if (isMulticastMac(frame, 6)) {
      this.c.badInnerSource++;
      return;
    }
    if (forwarded) {
      // Forwarded by a migration source: the sender is not behind that VTEP, do not learn.
      this.c.forwardedIn++;
      st.ingress(frame, true);
      return;
    }
    const src = macKey(frame, 6);
    const l = st.table.get(src);
    if (l === undefined) {
      if (st.table.size >= this.maxMacs) this.sweep(st);
      if (st.table.size < this.maxMacs) {
        st.table.set(src, { remote: from, seen: this.now() });
        this.c.learned++;
      }
    } else {
      if (l.remote.address !== from.address || l.remote.port !== from.port) {
        l.remote = from;
        this.c.learned++;
      }
      l.seen = this.now();
    }
    st.ingress(frame);
  }

  /**
   * The VTEP a packet came from. Linux picks the UDP source port per flow, so the source port is
   * not the remote's listening port: a configured remote with that address (and that port, if
   * one matches) is taken, else the address with this endpoint's port.
   */
  private remoteFor(st: VniState, rinfo: dgram.RemoteInfo): RemoteVtep | undefined {
    const exact = st.remotes.get(`${rinfo.address}:${rinfo.port}`);
    if (exact !== undefined) return exact;
    for (const r of st.remotes.values()) if (r.address === rinfo.address) return r;
    if (this.strict) return undefined;
    return { address: rinfo.address, port: this.port };
  }

  private sweep(st: VniState): void {
    const now = this.now();
    for (const [k, l] of st.table) if (now - l.seen > this.agingMs) st.table.delete(k);
  }
}
