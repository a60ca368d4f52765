import assert from "node:assert/strict";
import { test } from "node:test";
import { FrameParseError } from "./errors.js";
import {
  announceFrames,
  ArpOp,
  arpFrame,
  buildEthernet,
  buildIcmpEcho,
  buildIpv4,
  completeL4Checksum,
  EtherType,
  formatIpv4Address,
  formatMac,
  gratuitousArp,
  icmpEchoFrame,
  IcmpType,
  internetChecksum,
  IpProtocol,
  isMulticastMac,
  macKey,
  macKeyOf,
  macKeyToString,
  normalizeMac,
  parseArp,
  parseEthernet,
  parseIcmpEcho,
  parseIpv4,
  parseIpv4Address,
  parseMac,
  rarpAnnounce,
} from "./frames.js";

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof FrameParseError, `expected a FrameParseError, got ${String(err)}`);
    return err.code;
  }
  return "none";
}

void test("MACs: parse, format, normalize, 48-bit keys, group bit", () => {
  assert.deepEqual([...parseMac("52:54:00:12:34:56")], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
  assert.equal(normalizeMac("02-68-6F-AA-bb-0C"), "02:68:6f:aa:bb:0c");
  assert.equal(formatMac(Buffer.from([0, 1, 2, 3, 4, 5, 0xfe, 0xff]), 2), "02:03:04:05:fe:ff");
  for (const m of ["ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "02:68:6f:80:00:01", "fe:dc:ba:98:76:54"]) {
    assert.equal(macKeyToString(macKeyOf(m)), m);
  }
  assert.equal(macKeyOf("ff:ff:ff:ff:ff:ff"), 2 ** 48 - 1);
  assert.equal(macKey(Buffer.from([0, 0, 0x80, 0, 0, 0])), 0x80000000);
  assert.ok(isMulticastMac(parseMac("01:00:5e:00:00:01")));
  assert.ok(isMulticastMac(parseMac("ff:ff:ff:ff:ff:ff")));
  assert.ok(!isMulticastMac(parseMac("02:00:00:00:00:01")));
  for (const bad of ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "zz:54:00:12:34:56", "5254.0012.3456"]) {
    assert.equal(codeOf(() => parseMac(bad)), "NET_MAC_PARSE_FAILED", bad);
  }
  assert.equal(codeOf(() => formatMac(Buffer.alloc(5))), "NET_MAC_PARSE_FAILED");
});

void test("IPv4 addresses: parse and format, bad ones refused", () => {
  assert.equal(parseIpv4Address("10.1.2.3"), 0x0a010203);
  assert.equal(parseIpv4Address("255.255.255.255"), 0xffffffff);
  assert.equal(formatIpv4Address(0xc0a80001), "192.168.0.1");
  for (const bad of ["10.1.2", "10.1.2.256", "10.01.2.3", "a.b.c.d", "1.2.3.4.5", " 1.2.3.4"]) {
    assert.equal(codeOf(() => parseIpv4Address(bad)), "NET_IPV4_ADDRESS_PARSE_FAILED", bad);
  }
});

void test("Ethernet: build pads to 60 bytes, parse round-trips, 802.1Q tag read, runts refused", () => {
  const f = buildEthernet({ dst: "ff:ff:ff:ff:ff:ff", src: "02:00:00:00:00:01", etherType: EtherType.ARP }, Buffer.from([1, 2, 3]));
  assert.equal(f.length, 60);
  const e = parseEthernet(f);
  assert.equal(e.dst, "ff:ff:ff:ff:ff:ff");
  assert.equal(e.src, "02:00:00:00:00:01");
  assert.equal(e.etherType, EtherType.ARP);
  assert.equal(e.headerBytes, 14);
  assert.deepEqual([...e.payload.subarray(0, 3)], [1, 2, 3]);
  assert.equal(buildEthernet({ dst: "ff:ff:ff:ff:ff:ff", src: "02:00:00:00:00:01", etherType: 0x88b5 }, Buffer.alloc(3), false).length, 17);
  const tagged = Buffer.concat([f.subarray(0, 12), Buffer.from([0x81, 0x00, 0x20, 0x07, 0x08, 0x00]), Buffer.alloc(20)]);
  const t = parseEthernet(tagged);
  assert.equal(t.vlan, 7);
  assert.equal(t.etherType, EtherType.IPV4);
  assert.equal(t.headerBytes, 18);
  assert.equal(codeOf(() => parseEthernet(Buffer.alloc(13))), "NET_ETHERNET_PARSE_FAILED");
  assert.equal(codeOf(() => parseEthernet(tagged.subarray(0, 16))), "NET_ETHERNET_PARSE_FAILED");
  // A Uint8Array (what v86 and IPC give) works as well as a Buffer.
  assert.equal(parseEthernet(new Uint8Array(f)).src, "02:00:00:00:00:01");
});

void test("ARP: request and reply round-trip; replies go to the asker", () => {
  const req = { op: ArpOp.REQUEST, senderMac: "02:00:00:00:00:01", senderIp: "10.0.0.1", targetMac: "00:00:00:00:00:00", targetIp: "10.0.0.2" };
  const f = arpFrame(req);
  const e = parseEthernet(f);
  assert.equal(e.dst, "ff:ff:ff:ff:ff:ff");
  assert.equal(e.etherType, EtherType.ARP);
  assert.deepEqual(parseArp(e.payload), req);
  const rep = arpFrame({ op: ArpOp.REPLY, senderMac: "02:00:00:00:00:02", senderIp: "10.0.0.2", targetMac: "02:00:00:00:00:01", targetIp: "10.0.0.1" });
  assert.equal(parseEthernet(rep).dst, "02:00:00:00:00:01");
  assert.equal(codeOf(() => parseArp(Buffer.alloc(27))), "NET_ARP_PARSE_FAILED");
  const ipv6ish = Buffer.from(e.payload);
  ipv6ish.writeUInt16BE(0x86dd, 2);
  assert.equal(codeOf(() => parseArp(ipv6ish)), "NET_ARP_PARSE_FAILED");
});

void test("announcements: RARP like QEMU's announce_self, gratuitous ARP for the IP", () => {
  const mac = "02:68:6f:00:00:07";
  const r = parseEthernet(rarpAnnounce(mac));
  assert.equal(r.dst, "ff:ff:ff:ff:ff:ff");
  assert.equal(r.src, mac);
  assert.equal(r.etherType, EtherType.RARP);
  assert.deepEqual(parseArp(r.payload), { op: ArpOp.REVERSE_REQUEST, senderMac: mac, senderIp: "0.0.0.0", targetMac: mac, targetIp: "0.0.0.0" });
  const g = parseEthernet(gratuitousArp(mac, "10.0.0.7"));
  assert.equal(g.etherType, EtherType.ARP);
  assert.equal(g.dst, "ff:ff:ff:ff:ff:ff");
  const ga = parseArp(g.payload);
  assert.equal(ga.op, ArpOp.REQUEST);
  assert.equal(ga.senderIp, "10.0.0.7");
  assert.equal(ga.targetIp, "10.0.0.7");
  assert.equal(announceFrames(mac).length, 1);
  assert.equal(announceFrames(mac, "10.0.0.7").length, 2);
});

void test("IPv4 + ICMP echo: checksums (RFC 1071 example), round-trip, corruption refused", () => {
  // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, stored as its complement.
  assert.equal(internetChecksum(Buffer.from([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), ~0xddf2 & 0xffff);
  const frame = icmpEchoFrame({ srcMac: "02:00:00:00:00:01", dstMac: "02:00:00:00:00:02", srcIp: "10.0.0.1", dstIp: "10.0.0.2", type: IcmpType.ECHO_REQUEST, id: 0x1234, seq: 9, data: Buffer.from("hello") });
  const e = parseEthernet(frame);
  assert.equal(frame.length, 60, "42 + 5 data bytes, padded");
  const ip = parseIpv4(e.payload);
  assert.equal(ip.protocol, IpProtocol.ICMP);
  assert.equal(ip.src, "10.0.0.1");
  assert.equal(ip.dst, "10.0.0.2");
  assert.equal(ip.payload.length, 13, "padding trimmed by total length");
  const echo = parseIcmpEcho(ip.payload);
  assert.deepEqual({ type: echo.type, id: echo.id, seq: echo.seq, data: echo.data.toString() }, { type: 8, id: 0x1234, seq: 9, data: "hello" });

  const badIp = Buffer.from(e.payload);
  badIp[8] = 1; // TTL changed, checksum not
  assert.equal(codeOf(() => parseIpv4(badIp)), "NET_IPV4_PARSE_FAILED");
  assert.equal(codeOf(() => parseIpv4(Buffer.alloc(19))), "NET_IPV4_PARSE_FAILED");
  const v6 = Buffer.from(e.payload);
  v6[0] = 0x65;
  assert.equal(codeOf(() => parseIpv4(v6)), "NET_IPV4_PARSE_FAILED");
  const longer = buildIpv4({ src: "1.2.3.4", dst: "5.6.7.8", protocol: 17 }, Buffer.alloc(10));
  assert.equal(codeOf(() => parseIpv4(longer.subarray(0, 25))), "NET_IPV4_PARSE_FAILED", "total length beyond the data");

  const icmp = buildIcmpEcho({ type: IcmpType.ECHO_REPLY, id: 1, seq: 2 });
  assert.equal(internetChecksum(icmp), 0);
  const badIcmp = Buffer.from(icmp);
  badIcmp[7] = 3;
  assert.equal(codeOf(() => parseIcmpEcho(badIcmp)), "NET_ICMP_PARSE_FAILED");
  const unreachable = Buffer.from(icmp);
  unreachable[0] = 3;
  assert.equal(codeOf(() => parseIcmpEcho(unreachable)), "NET_ICMP_PARSE_FAILED");
});

void test("parsers never throw anything but FrameParseError on random bytes", () => {
  let seed = 7;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed >>> 16;
  };
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.alloc(rand() % 80);
    for (let j = 0; j < b.length; j++) b[j] = rand() & 255;
    for (const fn of [parseEthernet, parseArp, parseIpv4, parseIcmpEcho]) {
      try {
        fn(b);
      } catch (err) {
        assert.ok(err instanceof FrameParseError, String(err));
      }
    }
  }
});

void test("completeL4Checksum fills in TCP and UDP checksums (IPv4 and IPv6) left to offload, and leaves the rest alone", () => {
  const tcpFrame = (v6: boolean, payload: Buffer): Buffer => {
    const tcp = Buffer.alloc(20 + payload.length);
    tcp.writeUInt16BE(40000, 0);
    tcp.writeUInt16BE(7000, 2);
    tcp.writeUInt32BE(12345, 4);
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp.writeUInt16BE(65535, 14);
    payload.copy(tcp, 20);
    if (!v6) return buildEthernet({ dst: "02:00:00:00:00:01", src: "02:00:00:00:00:02", etherType: EtherType.IPV4 }, buildIpv4({ src: "10.0.0.1", dst: "10.0.0.2", protocol: IpProtocol.TCP }, tcp));
    const ip6 = Buffer.alloc(40 + tcp.length);
    ip6[0] = 0x60;
    ip6.writeUInt16BE(tcp.length, 4);
    ip6[6] = IpProtocol.TCP;
    ip6[7] = 64;
    ip6[8] = 0xfd; // fd00::2 -> fd00::1
    ip6[23] = 2;
    ip6[24] = 0xfd;
    ip6[39] = 1;
    tcp.copy(ip6, 40);
    return buildEthernet({ dst: "02:00:00:00:00:01", src: "02:00:00:00:00:02", etherType: EtherType.IPV6 }, ip6);
  };
  // Reference: the checksum over pseudo header + segment, computed independently.
  const verify4 = (f: Buffer): number => {
    const ip = f.subarray(14);
    const seg = ip.subarray(20, ip.readUInt16BE(2));
    const pseudo = Buffer.alloc(12);
    ip.copy(pseudo, 0, 12, 20);
    pseudo[9] = ip[9]!;
    pseudo.writeUInt16BE(seg.length, 10);
    return internetChecksum(Buffer.concat([pseudo, seg]));
  };
  const f = tcpFrame(false, Buffer.from("SEQ 1\n"));
  f.writeUInt16BE(0x1234, 14 + 20 + 16); // a partial (pseudo-header) sum, as offload leaves it
  assert.notEqual(verify4(f), 0);
  assert.equal(completeL4Checksum(f), true);
  assert.equal(verify4(f), 0, "a valid checksum sums to 0");
  const odd = tcpFrame(false, Buffer.from("odd"));
  assert.equal(completeL4Checksum(odd), true);
  assert.equal(verify4(odd), 0);
  const v6 = tcpFrame(true, Buffer.from("hello"));
  assert.equal(completeL4Checksum(v6), true);
  const ip6 = v6.subarray(14);
  const seg = ip6.subarray(40);
  const pseudo = Buffer.alloc(40);
  ip6.copy(pseudo, 0, 8, 40);
  pseudo.writeUInt32BE(seg.length, 32);
  pseudo[39] = IpProtocol.TCP;
  assert.equal(internetChecksum(Buffer.concat([pseudo, seg])), 0);
  // ICMP, ARP, fragments, UDP without checksum: untouched.
  const icmp = icmpEchoFrame({ srcMac: "02:00:00:00:00:02", dstMac: "02:00:00:00:00:01", srcIp: "10.0.0.1", dstIp: "10.0.0.2", type: IcmpType.ECHO_REQUEST, id: 1, seq: 1 });
  const copy = Buffer.from(icmp);
  assert.equal(completeL4Checksum(icmp), false);
  assert.deepEqual(icmp, copy);
  const udp = Buffer.alloc(8 + 4);
  udp.writeUInt16BE(12, 4);
  const noSum = buildEthernet({ dst: "02:00:00:00:00:01", src: "02:00:00:00:00:02", etherType: EtherType.IPV4 }, buildIpv4({ src: "10.0.0.1", dst: "10.0.0.2", protocol: IpProtocol.UDP }, udp));
  assert.equal(completeL4Checksum(noSum), false);
  assert.equal(completeL4Checksum(Buffer.alloc(10)), false);
});
