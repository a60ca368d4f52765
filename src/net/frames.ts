/**
 * Ethernet, ARP/RARP, IPv4 and ICMP echo: parse and build, enough for the switch, the migration
 * announcements and the tests. Network byte order throughout. MACs are strings in the form the VM
 * config uses ("52:54:00:12:34:56", lower case); inside the switch they are 48-bit integers
 * (`macKey`), which fit a JS number exactly.
 */
import { FrameParseError } from "./errors.js";

export const ETH_HEADER_BYTES = 14;
/** Shortest Ethernet frame without FCS; shorter frames are padded by buildEthernet. */
export const ETH_MIN_FRAME_BYTES = 60;
export const ARP_BYTES = 28;
export const IPV4_MIN_HEADER_BYTES = 20;
export const ICMP_ECHO_HEADER_BYTES = 8;

export const EtherType = { IPV4: 0x0800, ARP: 0x0806, RARP: 0x8035, VLAN: 0x8100, IPV6: 0x86dd } as const;
export const ArpOp = { REQUEST: 1, REPLY: 2, REVERSE_REQUEST: 3, REVERSE_REPLY: 4 } as const;
export const IpProtocol = { ICMP: 1, TCP: 6, UDP: 17 } as const;
export const IcmpType = { ECHO_REPLY: 0, ECHO_REQUEST: 8 } as const;

export const BROADCAST_MAC = "ff:ff:ff:ff:ff:ff";
export const ZERO_MAC = "00:00:00:00:00:00";

const MAC_RE = /^([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})$/;

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

// ---------------------------------------------------------------------------------------------
// MAC and IPv4 addresses

/** "52:54:00:12:34:56" (also dashes, any case) to 6 bytes. */
export function parseMac(text: string): Buffer {
  const m = MAC_RE.exec(text);
  if (m === null) throw new FrameParseError("mac", `'${text}' is not a MAC address (want 6 hex pairs like 52:54:00:12:34:56)`);
  return Buffer.from(m.slice(1, 7).map((h) => parseInt(h, 16)));
}

/** 6 bytes at `offset` to "52:54:00:12:34:56". */
export function formatMac(bytes: Uint8Array, offset = 0): string {
  if (offset < 0 || offset + 6 > bytes.length) throw new FrameParseError("mac", `need 6 bytes at offset ${offset}, have ${bytes.length}`);
  let s = "";
  for (let i = 0; i < 6; i++) s += (i === 0 ? "" : ":") + bytes[offset + i]!.toString(16).padStart(2, "0");
  return s;
}

/** Normalizes a MAC string (lower case, colons); throws on anything else. */
export function normalizeMac(text: string): string {
  return formatMac(parseMac(text));
}

export function isValidMac(text: string): boolean {
  return MAC_RE.test(text);
}

/** The 48-bit value of the MAC at `offset`: the switch's table key. The caller checks the length. */
export function macKey(bytes: Uint8Array, offset = 0): number {
  return (
    bytes[offset]! * 0x10000000000 +
    bytes[offset + 1]! * 0x100000000 +
    ((bytes[offset + 2]! << 24) >>> 0) +
    (bytes[offset + 3]! << 16) +
    (bytes[offset + 4]! << 8) +
    bytes[offset + 5]!
  );
}

export function macKeyOf(text: string): number {
  return macKey(parseMac(text));
}

export function macKeyToString(key: number): string {
  const b = Buffer.alloc(6);
  b.writeUIntBE(key, 0, 6);
  return formatMac(b);
}

/** Group bit (I/G) of the first octet: broadcast and multicast. */
export function isMulticastMac(bytes: Uint8Array, offset = 0): boolean {
  return (bytes[offset]! & 1) === 1;
}

export function isMulticastMacKey(key: number): boolean {
  return Math.floor(key / 0x10000000000) % 2 === 1;
}

/** Dotted quad to a uint32. */
export function parseIpv4Address(text: string): number {
  const parts = text.split(".");
  if (parts.length !== 4) throw new FrameParseError("ipv4-address", `'${text}' is not an IPv4 address`);
  let n = 0;
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) throw new FrameParseError("ipv4-address", `'${text}' is not an IPv4 address`);
    n = n * 256 + Number(p);
  }
  return n;
}

export function formatIpv4Address(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

export function isValidIpv4Address(text: string): boolean {
  try {
    parseIpv4Address(text);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Ethernet

export interface EthernetHeader {
  dst: string;
  src: string;
  /** EtherType after any 802.1Q tag. */
  etherType: number;
  /** 802.1Q VLAN id, when the frame carries a tag. */
  vlan?: number;
  /** Bytes before the payload: 14, or 18 with a tag. */
  headerBytes: number;
}

export interface EthernetFrame extends EthernetHeader {
  /** The payload (a view into the frame, padding included). */
  payload: Buffer;
}

export function parseEthernet(frame: Uint8Array): EthernetFrame {
  const b = asBuffer(frame);
  if (b.length < ETH_HEADER_BYTES) throw new FrameParseError("ethernet", `frame of ${b.length} bytes is shorter than the 14-byte header`);
  let etherType = b.readUInt16BE(12);
  let headerBytes = ETH_HEADER_BYTES;
  let vlan: number | undefined;
  if (etherType === EtherType.VLAN) {
    if (b.length < ETH_HEADER_BYTES + 4) throw new FrameParseError("ethernet", `tagged frame of ${b.length} bytes is shorter than the 18-byte header`);
    vlan = b.readUInt16BE(14) & 0xfff;
    etherType = b.readUInt16BE(16);
    headerBytes += 4;
  }
  const out: EthernetFrame = { dst: formatMac(b, 0), src: formatMac(b, 6), etherType, headerBytes, payload: b.subarray(headerBytes) };
  if (vlan !== undefined) out.vlan = vlan;
  return out;
}

/** An untagged frame; padded with zeros to 60 bytes unless `pad` is false. */
export function buildEthernet(header: { dst: string; src: string; etherType: number }, payload: Uint8Array, pad = true): Buffer {
  const len = ETH_HEADER_BYTES + payload.length;
  const b = Buffer.alloc(pad ? Math.max(len, ETH_MIN_FRAME_BYTES) : len);
  parseMac(header.dst).copy(b, 0);
  parseMac(header.src).copy(b, 6);
  b.writeUInt16BE(header.etherType, 12);
  b.set(payload, ETH_HEADER_BYTES);
  return b;
}

// ---------------------------------------------------------------------------------------------
// ARP and RARP (Ethernet + IPv4 only)

export interface ArpPacket {
  op: number;
  senderMac: string;
  senderIp: string;
  targetMac: string;
  targetIp: string;
}

/** Parses an ARP or RARP payload (hardware Ethernet, protocol IPv4). */
export function parseArp(payload: Uint8Array): ArpPacket {
  const b = asBuffer(payload);
  if (b.length < ARP_BYTES) throw new FrameParseError("arp", `${b.length} bytes is shorter than the 28-byte Ethernet/IPv4 ARP packet`);
  const htype = b.readUInt16BE(0);
  const ptype = b.readUInt16BE(2);
  if (htype !== 1 || ptype !== EtherType.IPV4 || b[4] !== 6 || b[5] !== 4) {
    throw new FrameParseError("arp", `not Ethernet/IPv4 ARP (htype ${htype}, ptype 0x${ptype.toString(16)}, hlen ${b[4]}, plen ${b[5]})`);
  }
  return {
    op: b.readUInt16BE(6),
    senderMac: formatMac(b, 8),
    senderIp: formatIpv4Address(b.readUInt32BE(14)),
    targetMac: formatMac(b, 18),
    targetIp: formatIpv4Address(b.readUInt32BE(24)),
  };
}

export function buildArp(p: ArpPacket): Buffer {
  const b = Buffer.alloc(ARP_BYTES);
  b.writeUInt16BE(1, 0);
  b.writeUInt16BE(EtherType.IPV4, 2);
  b[4] = 6;
  b[5] = 4;
  b.writeUInt16BE(p.op, 6);
  parseMac(p.senderMac).copy(b, 8);
  b.writeUInt32BE(parseIpv4Address(p.senderIp), 14);
  parseMac(p.targetMac).copy(b, 18);
  b.writeUInt32BE(parseIpv4Address(p.targetIp), 24);
  return b;
}

/**
 * An ARP frame. Requests go to broadcast, replies to the target MAC, unless `dst` says otherwise.
 * RARP ops (3, 4) get the RARP EtherType.
 */
export function arpFrame(p: ArpPacket, dst?: string): Buffer {
  const rarp = p.op === ArpOp.REVERSE_REQUEST || p.op === ArpOp.REVERSE_REPLY;
  const to = dst ?? (p.op === ArpOp.REPLY ? p.targetMac : BROADCAST_MAC);
  return buildEthernet({ dst: to, src: p.senderMac, etherType: rarp ? EtherType.RARP : EtherType.ARP }, buildArp(p));
}

/** Gratuitous ARP: a broadcast request for the sender's own address (sender IP = target IP). */
export function gratuitousArp(mac: string, ip: string): Buffer {
  return arpFrame({ op: ArpOp.REQUEST, senderMac: mac, senderIp: ip, targetMac: ZERO_MAC, targetIp: ip });
}

/**
 * The RARP announcement QEMU sends after a migration ("announce_self"): broadcast, EtherType
 * 0x8035, reverse request with sender and target hardware address both the MAC, addresses zero.
 * It needs no IP, and every learning switch on the way learns the MAC's new port.
 */
export function rarpAnnounce(mac: string): Buffer {
  return arpFrame({ op: ArpOp.REVERSE_REQUEST, senderMac: mac, senderIp: "0.0.0.0", targetMac: mac, targetIp: "0.0.0.0" });
}

/** The frames that announce a MAC's new location: a RARP, plus a gratuitous ARP when the IP is known. */
export function announceFrames(mac: string, ip?: string): Buffer[] {
  return ip === undefined ? [rarpAnnounce(mac)] : [rarpAnnounce(mac), gratuitousArp(mac, ip)];
}

// ---------------------------------------------------------------------------------------------
// IPv4 and ICMP echo

/** RFC 1071 ones'-complement checksum (returns the value to store; 0 over data that includes a valid checksum). */
export function internetChecksum(data: Uint8Array, start = 0, end = data.length): number {
  let sum = 0;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (data[i]! << 8) | data[i + 1]!;
  if (i < end) sum += data[i]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function sum16(data: Uint8Array, start: number, end: number, sum = 0): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (data[i]! << 8) | data[i + 1]!;
  if (i < end) sum += data[i]! << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * Fills in the TCP or UDP checksum of an Ethernet frame carrying IPv4 (unfragmented) or IPv6
 * (no extension headers), in place. For frames that left a Linux device with checksum offload:
 * their L4 checksum holds only the pseudo-header sum, which the NIC was to complete. Returns
 * whether the frame was TCP or UDP (and so was rewritten). Never throws.
 */
export function completeL4Checksum(frame: Uint8Array): boolean {
  const b = asBuffer(frame);
  if (b.length < ETH_HEADER_BYTES + 20) return false;
  const et = b.readUInt16BE(12);
  let l4: number;
  let end: number;
  let proto: number;
  let pseudo: number;
  if (et === EtherType.IPV4) {
    const ip = ETH_HEADER_BYTES;
    if (b[ip]! >> 4 !== 4) return false;
    const ihl = (b[ip]! & 15) * 4;
    const total = b.readUInt16BE(ip + 2);
    if (ihl < 20 || total < ihl || ip + total > b.length) return false;
    if ((b.readUInt16BE(ip + 6) & 0x3fff) !== 0) return false; // a fragment
    proto = b[ip + 9]!;
    l4 = ip + ihl;
    end = ip + total;
    pseudo = sum16(b, ip + 12, ip + 20) + proto + (end - l4);
  } else if (et === EtherType.IPV6) {
    const ip = ETH_HEADER_BYTES;
    if (b.length < ip + 40 || b[ip]! >> 4 !== 6) return false;
    proto = b[ip + 6]!;
    l4 = ip + 40;
    end = l4 + b.readUInt16BE(ip + 4);
    if (end > b.length) return false;
    const len = end - l4;
    pseudo = sum16(b, ip + 8, ip + 40) + (len >>> 16) + (len & 0xffff) + proto;
  } else return false;
  let at: number;
  if (proto === IpProtocol.TCP && end - l4 >= 20) at = l4 + 16;
  else if (proto === IpProtocol.UDP && end - l4 >= 8) {
    // IPv4 UDP without a checksum (0) stays without one.
    if (et === EtherType.IPV4 && b.readUInt16BE(l4 + 6) === 0) return false;
    at = l4 + 6;
  } else return false;
  b.writeUInt16BE(0, at);
  let c = fold(sum16(b, l4, end, pseudo));
  if (c === 0 && proto === IpProtocol.UDP) c = 0xffff;
  b.writeUInt16BE(c, at);
  return true;
}

export interface Ipv4Packet {
  src: string;
  dst: string;
  protocol: number;
  ttl: number;
  id: number;
  headerBytes: number;
  /** The payload, trimmed to the header's total length (Ethernet padding removed). */
  payload: Buffer;
}

export function parseIpv4(packet: Uint8Array): Ipv4Packet {
  const b = asBuffer(packet);
  if (b.length < IPV4_MIN_HEADER_BYTES) throw new FrameParseError("ipv4", `${b.length} bytes is shorter than the 20-byte header`);
  const version = b[0]! >> 4;
  const headerBytes = (b[0]! & 15) * 4;
  if (version !== 4) throw new FrameParseError("ipv4", `version ${version}, not 4`);
  if (headerBytes < IPV4_MIN_HEADER_BYTES || headerBytes > b.length) throw new FrameParseError("ipv4", `header length ${headerBytes} out of range`);
  const total = b.readUInt16BE(2);
  if (total < headerBytes || total > b.length) throw new FrameParseError("ipv4", `total length ${total} does not fit the ${b.length} bytes received`);
  if (internetChecksum(b, 0, headerBytes) !== 0) throw new FrameParseError("ipv4", "header checksum mismatch");
  return {
    src: formatIpv4Address(b.readUInt32BE(12)),
    dst: formatIpv4Address(b.readUInt32BE(16)),
    protocol: b[9]!,
    ttl: b[8]!,
    id: b.readUInt16BE(4),
    headerBytes,
    payload: b.subarray(headerBytes, total),
  };
}

/** An IPv4 packet with a 20-byte header (no options), DF set, checksum filled in. */
export function buildIpv4(h: { src: string; dst: string; protocol: number; ttl?: number; id?: number }, payload: Uint8Array): Buffer {
  const b = Buffer.alloc(IPV4_MIN_HEADER_BYTES + payload.length);
  b[0] = 0x45;
  b.writeUInt16BE(b.length, 2);
  b.writeUInt16BE(h.id ?? 0, 4);
  b.writeUInt16BE(0x4000, 6);
  b[8] = h.ttl ?? 64;
  b[9] = h.protocol;
  b.writeUInt32BE(parseIpv4Address(h.src), 12);
  b.writeUInt32BE(parseIpv4Address(h.dst), 16);
  b.writeUInt16BE(internetChecksum(b, 0, IPV4_MIN_HEADER_BYTES), 10);
  b.set(payload, IPV4_MIN_HEADER_BYTES);
  return b;
}

export interface IcmpEcho {
  type: number;
  code: number;
  id: number;
  seq: number;
  data: Buffer;
}

/** Parses an ICMP echo request or reply (type 8 or 0), checking the checksum. */
export function parseIcmpEcho(payload: Uint8Array): IcmpEcho {
  const b = asBuffer(payload);
  if (b.length < ICMP_ECHO_HEADER_BYTES) throw new FrameParseError("icmp", `${b.length} bytes is shorter than the 8-byte echo header`);
  const type = b[0]!;
  if (type !== IcmpType.ECHO_REQUEST && type !== IcmpType.ECHO_REPLY) throw new FrameParseError("icmp", `type ${type} is not an echo request or reply`);
  if (internetChecksum(b) !== 0) throw new FrameParseError("icmp", "checksum mismatch");
  return { type, code: b[1]!, id: b.readUInt16BE(4), seq: b.readUInt16BE(6), data: b.subarray(ICMP_ECHO_HEADER_BYTES) };
}

export function buildIcmpEcho(e: { type: number; id: number; seq: number; data?: Uint8Array; code?: number }): Buffer {
  const data = e.data ?? Buffer.alloc(0);
  const b = Buffer.alloc(ICMP_ECHO_HEADER_BYTES + data.length);
  b[0] = e.type;
  b[1] = e.code ?? 0;
  b.writeUInt16BE(e.id, 4);
  b.writeUInt16BE(e.seq, 6);
  b.set(data, ICMP_ECHO_HEADER_BYTES);
  b.writeUInt16BE(internetChecksum(b), 2);
  return b;
}

/** A whole Ethernet frame carrying an ICMP echo (request or reply). */
export function icmpEchoFrame(f: { srcMac: string; dstMac: string; srcIp: string; dstIp: string; type: number; id: number; seq: number; data?: Uint8Array }): Buffer {
  const icmp = buildIcmpEcho(f.data === undefined ? { type: f.type, id: f.id, seq: f.seq } : { type: f.type, id: f.id, seq: f.seq, data: f.data });
  const ip = buildIpv4({ src: f.srcIp, dst: f.dstIp, protocol: IpProtocol.ICMP }, icmp);
  return buildEthernet({ dst: f.dstMac, src: f.srcMac, etherType: EtherType.IPV4 }, ip);
}
