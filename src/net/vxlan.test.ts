import assert from "node:assert/strict";
import * as dgram from "node:dgram";
import { test } from "node:test";
import { VtepBindError, VtepConfigError, VxlanDecodeError } from "./errors.js";
import { buildEthernet, parseEthernet } from "./frames.js";
import { VirtualSwitch } from "./switch.js";
import { RecordingPort } from "./testing.js";
import { decodeVxlan, encodeVxlan, parseRemote, Vtep, VXLAN_FLAG_FORWARDED, VXLAN_FLAG_I } from "./vxlan.js";

let seq = 0;
function frame(src: string, dst: string): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(++seq);
  return buildEthernet({ dst, src, etherType: 0x88b5 }, p);
}
const seqOf = (f: Buffer): number => f.readUInt32BE(14);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const BCAST = "ff:ff:ff:ff:ff:ff";

interface Host {
  sw: VirtualSwitch;
  vtep: Vtep;
}

/** Hosts on 127.0.0.2, .3, … each with a switch carrying `networks`, VTEPs fully meshed per VNI. */
async function hosts(n: number, networks: [string, number][]): Promise<Host[]> {
  const out: Host[] = [];
  for (let i = 0; i < n; i++) {
    const sw = new VirtualSwitch();
    const vtep = await Vtep.open({ address: `127.0.0.${i + 2}`, port: 0 });
    for (const [name, vni] of networks) {
      sw.addNetwork(name, vni);
      vtep.connect(sw, name);
    }
    out.push({ sw, vtep });
  }
  for (const h of out) for (const o of out) if (o !== h) for (const [, vni] of networks) h.vtep.addRemote(vni, o.vtep.address, o.vtep.port);
  return out;
}

async function closeAll(hs: Host[]): Promise<void> {
  for (const h of hs) {
    await h.vtep.close();
    h.sw.close();
  }
}

void test("VXLAN header: I flag and 24-bit VNI, reserved bits zero; decode validates", () => {
  const inner = frame("02:00:00:00:00:01", BCAST);
  const p = encodeVxlan(0xabcdef, inner);
  assert.deepEqual([...p.subarray(0, 8)], [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
  const d = decodeVxlan(p);
  assert.equal(d.vni, 0xabcdef);
  assert.equal(d.forwarded, false);
  const fwd = encodeVxlan(7, inner, true);
  assert.equal(fwd[0], VXLAN_FLAG_I | VXLAN_FLAG_FORWARDED);
  assert.equal(decodeVxlan(fwd).forwarded, true);
  assert.ok(d.frame.equals(inner));
  // Reserved bits are ignored on receipt (RFC 7348 section 5).
  const noisy = Buffer.from(p);
  noisy[0] = 0xff;
  noisy[7] = 0x55;
  assert.equal(decodeVxlan(noisy).vni, 0xabcdef);
  const reason = (b: Buffer): string => {
    try {
      decodeVxlan(b);
    } catch (err) {
      assert.ok(err instanceof VxlanDecodeError);
      assert.equal(err.code, "NET_VXLAN_DECODE_FAILED");
      return err.reason;
    }
    return "ok";
  };
  assert.equal(reason(Buffer.alloc(7)), "short");
  const noI = Buffer.from(p);
  noI[0] = VXLAN_FLAG_I ^ 0xff;
  assert.equal(reason(noI), "flags");
  assert.equal(reason(p.subarray(0, 8 + 13)), "inner-short");
  assert.deepEqual(parseRemote("10.0.0.2"), { address: "10.0.0.2", port: 4789 });
  assert.deepEqual(parseRemote("10.0.0.2:5000"), { address: "10.0.0.2", port: 5000 });
  assert.throws(() => parseRemote("host:5000"), VtepConfigError);
  assert.throws(() => parseRemote("10.0.0.2:0"), VtepConfigError);
});

void test("two hosts over VXLAN on 127.0.0.2/.3: broadcast crosses, replies teach both VTEPs, unicast follows", async () => {
  const [h1, h2] = await hosts(2, [["red", 100]]);
  try {
    const a = new RecordingPort(h1!.sw, "a", "red", "02:00:00:00:00:0a");
    const b = new RecordingPort(h2!.sw, "b", "red", "02:00:00:00:00:0b");
    const f1 = frame("02:00:00:00:00:0a", BCAST);
    a.send(f1);
    const got = await b.waitFor((f) => seqOf(f) === seqOf(f1));
    assert.ok(got.equals(f1), "the frame arrives byte for byte");
    b.send(frame("02:00:00:00:00:0b", "02:00:00:00:00:0a"));
    await a.waitFor((f) => parseEthernet(f).src === "02:00:00:00:00:0b");
    assert.deepEqual(h1!.vtep.macTable(100).map((e) => [e.mac, e.remote]), [["02:00:00:00:00:0b", h2!.vtep.endpoint]]);
    assert.deepEqual(h2!.vtep.macTable(100).map((e) => [e.mac, e.remote]), [["02:00:00:00:00:0a", h1!.vtep.endpoint]]);
    assert.deepEqual(h1!.sw.lookup("red", "02:00:00:00:00:0b"), { kind: "uplink" });
    const c1 = h1!.vtep.counters();
    const f3 = frame("02:00:00:00:00:0a", "02:00:00:00:00:0b");
    a.send(f3);
    await b.waitFor((f) => seqOf(f) === seqOf(f3));
    const c2 = h1!.vtep.counters();
    assert.equal(c2.txPackets - c1.txPackets, 1);
    assert.equal(c2.replicated, c1.replicated, "a learned unicast is not replicated");
    assert.equal(h2!.vtep.counters().malformed, 0);
  } finally {
    await closeAll([h1!, h2!]);
  }
});

void test("head-end replication: a broadcast goes to every remote VTEP of the VNI; learned unicast to one", async () => {
  const hs = await hosts(3, [["red", 100]]);
  try {
    const ports = hs.map((h, i) => new RecordingPort(h.sw, `p${i}`, "red", `02:00:00:00:00:0${i + 1}`));
    const f = frame("02:00:00:00:00:01", BCAST);
    ports[0]!.send(f);
    await ports[1]!.waitFor((x) => seqOf(x) === seqOf(f));
    await ports[2]!.waitFor((x) => seqOf(x) === seqOf(f));
    assert.equal(hs[0]!.vtep.counters().replicated, 2);
    // p2 answers p0: VTEP 3 knows p0 from the broadcast, so only host 1 gets it.
    const r = frame("02:00:00:00:00:03", "02:00:00:00:00:01");
    ports[2]!.send(r);
    await ports[0]!.waitFor((x) => seqOf(x) === seqOf(r));
    await sleep(50);
    assert.equal(ports[1]!.frames.length, 1, "host 2 saw only the broadcast");
    assert.equal(hs[2]!.vtep.counters().replicated, 0);
  } finally {
    await closeAll(hs);
  }
});

void test("isolation across VNIs: the same MACs on two networks, frames stay in their network", async () => {
  const [h1, h2] = await hosts(2, [
    ["red", 100],
    ["blue", 200],
  ]);
  try {
    const redA = new RecordingPort(h1!.sw, "redA", "red", "02:00:00:00:00:0a");
    const blueA = new RecordingPort(h1!.sw, "blueA", "blue", "02:00:00:00:00:0a");
    const redB = new RecordingPort(h2!.sw, "redB", "red", "02:00:00:00:00:0b");
    const blueB = new RecordingPort(h2!.sw, "blueB", "blue", "02:00:00:00:00:0b");
    const r = frame("02:00:00:00:00:0a", BCAST);
    redA.send(r);
    const b = frame("02:00:00:00:00:0b", "02:00:00:00:00:0a");
    blueB.send(b);
    await redB.waitFor((x) => seqOf(x) === seqOf(r));
    await blueA.waitFor((x) => seqOf(x) === seqOf(b));
    await sleep(50);
    assert.deepEqual(blueB.frames.map(seqOf), [], "red broadcast never reaches blue");
    assert.deepEqual(redA.frames.map(seqOf), [], "blue unicast never reaches red");
    assert.deepEqual(redB.frames.map(seqOf), [seqOf(r)]);
    // A network known on one host only: its VNI is counted unknown on the other.
    h1!.sw.addNetwork("green", 300);
    h1!.vtep.connect(h1!.sw, "green");
    h1!.vtep.addRemote(300, h2!.vtep.address, h2!.vtep.port);
    new RecordingPort(h1!.sw, "g", "green", "02:00:00:00:00:0c").send(frame("02:00:00:00:00:0c", BCAST));
    for (let i = 0; i < 50 && h2!.vtep.counters().unknownVni === 0; i++) await sleep(10);
    assert.equal(h2!.vtep.counters().unknownVni, 1);
  } finally {
    await closeAll([h1!, h2!]);
  }
});

void test("malformed packets are counted and dropped; the endpoint keeps working", async () => {
  const [h1, h2] = await hosts(2, [["red", 100]]);
  const raw = dgram.createSocket("udp4");
  try {
    const b = new RecordingPort(h2!.sw, "b", "red", "02:00:00:00:00:0b");
    const good = encodeVxlan(100, frame("02:00:00:00:00:0a", BCAST));
    const noI = Buffer.from(good);
    noI[0] = 0;
    const groupSrc = encodeVxlan(100, frame("01:00:5e:00:00:01", BCAST));
    const garbage = [Buffer.alloc(0), Buffer.from([8, 0, 0]), noI, good.subarray(0, 20), groupSrc, encodeVxlan(999, frame("02:00:00:00:00:0a", BCAST))];
    for (const g of garbage) await new Promise<void>((r, j) => raw.send(g, h2!.vtep.port, h2!.vtep.address, (e) => (e ? j(e) : r())));
    for (let i = 0; i < 100 && h2!.vtep.counters().rxPackets < garbage.length; i++) await sleep(10);
    const c = h2!.vtep.counters();
    assert.deepEqual(
      { rx: c.rxPackets, malformed: c.malformed, short: c.malformedShort, flags: c.malformedFlags, inner: c.malformedInner, badSrc: c.badInnerSource, vni: c.unknownVni },
      { rx: 6, malformed: 4, short: 2, flags: 1, inner: 1, badSrc: 1, vni: 1 },
    );
    assert.equal(b.frames.length, 0);
    // Still alive: a real frame from host 1 gets through.
    const f = frame("02:00:00:00:00:0a", BCAST);
    new RecordingPort(h1!.sw, "a", "red", "02:00:00:00:00:0a").send(f);
    await b.waitFor((x) => seqOf(x) === seqOf(f));
  } finally {
    raw.close();
    await closeAll([h1!, h2!]);
  }
});

void test("strictRemotes drops packets from senders that are not remotes of the VNI", async () => {
  const vtep = await Vtep.open({ address: "127.0.0.2", port: 0, strictRemotes: true });
  const sw = new VirtualSwitch();
  sw.addNetwork("red", 100);
  vtep.connect(sw, "red");
  vtep.addRemote(100, "127.0.0.9", 4789);
  const raw = dgram.createSocket("udp4");
  try {
    const b = new RecordingPort(sw, "b", "red", "02:00:00:00:00:0b");
    await new Promise<void>((r) => raw.bind(0, "127.0.0.3", () => r()));
    await new Promise<void>((r, j) => raw.send(encodeVxlan(100, frame("02:00:00:00:00:0a", BCAST)), vtep.port, vtep.address, (e) => (e ? j(e) : r())));
    for (let i = 0; i < 100 && vtep.counters().rxPackets === 0; i++) await sleep(10);
    assert.equal(vtep.counters().unknownRemote, 1);
    assert.equal(b.frames.length, 0);
  } finally {
    raw.close();
    await vtep.close();
  }
});

void test("configuration errors: bind conflicts, bad VNIs and addresses, a VNI on two networks", async () => {
  const v = await Vtep.open({ address: "127.0.0.2", port: 0 });
  try {
    await assert.rejects(Vtep.open({ address: "127.0.0.2", port: v.port }), (e: unknown) => e instanceof VtepBindError && e.code === "NET_VTEP_BIND_FAILED");
    await assert.rejects(Vtep.open({ address: "not-an-ip", port: 0 }), VtepConfigError);
    assert.throws(() => v.addRemote(0, "127.0.0.3"), VtepConfigError);
    assert.throws(() => v.addRemote(5, "::1"), VtepConfigError);
    assert.throws(() => v.addRemote(5, v.address, v.port), VtepConfigError, "itself");
    const s1 = new VirtualSwitch();
    s1.addNetwork("a", 5);
    s1.addNetwork("b", 6);
    const s2 = new VirtualSwitch();
    s2.addNetwork("c", 5);
    v.connect(s1, "a");
    assert.throws(() => v.connect(s2, "c"), VtepConfigError);
    v.setRemotes(5, ["127.0.0.3:5000", "127.0.0.4"]);
    assert.deepEqual(v.remotes(5), [
      { address: "127.0.0.3", port: 5000 },
      { address: "127.0.0.4", port: v.port },
    ]);
    assert.equal(v.removeRemote(5, "127.0.0.3", 5000), true);
    assert.equal(v.remotes(5).length, 1);
    v.disconnect(5);
    v.connect(s2, "c");
  } finally {
    await v.close();
  }
  await v.close(); // idempotent
});

void test("migration hand-off across three hosts: held at the source, forwarded, held at the target, announced, released", async () => {
  const hs = await hosts(3, [["red", 100]]);
  const [src, dst, third] = hs as [Host, Host, Host];
  const VM = "02:68:6f:00:00:01";
  try {
    const vmSrc = new RecordingPort(src.sw, "vm", "red", VM, { ip: "10.0.0.5" });
    const peer = new RecordingPort(third.sw, "peer", "red", "02:00:00:00:00:03");
    const local = new RecordingPort(src.sw, "local", "red", "02:00:00:00:00:01");
    // The VM talks: every VTEP learns it is behind the source.
    vmSrc.send(frame(VM, BCAST));
    await peer.waitFor((f) => parseEthernet(f).src === VM);
    peer.send(frame("02:00:00:00:00:03", VM));
    await vmSrc.waitFor((f) => parseEthernet(f).src === "02:00:00:00:00:03");
    assert.equal(third.vtep.macTable(100).find((e) => e.mac === VM)?.remote, src.vtep.endpoint);

    // Stop-and-copy: the source VM pauses and its port is held; the target attaches a held port.
    src.sw.holdPort("vm", 64);
    const vmDst = new RecordingPort(dst.sw, "vm", "red", VM, { ip: "10.0.0.5" });
    dst.sw.holdPort("vm", 64);
    const during = [frame("02:00:00:00:00:03", VM), frame("02:00:00:00:00:03", VM)];
    for (const f of during) peer.send(f);
    for (let i = 0; i < 100 && src.sw.portCounters("vm").held < 2; i++) await sleep(10);
    assert.equal(src.sw.portCounters("vm").held, 2, "held at the source (the peer's VTEP still points there)");

    // Commit: the source forwards what it held, and anything still arriving, to the target.
    src.sw.forwardPort("vm", dst.vtep.endpoint, 2000);
    const late = frame("02:00:00:00:00:01", VM);
    local.send(late);
    for (let i = 0; i < 100 && dst.sw.portCounters("vm").held < 3; i++) await sleep(10);
    assert.equal(dst.sw.portCounters("vm").held, 3, "held at the target until it resumes");
    assert.equal(dst.vtep.counters().forwardedIn, 3);
    assert.equal(dst.vtep.macTable(100).find((e) => e.mac === "02:00:00:00:00:03"), undefined, "forwarded frames do not teach the target that the peer is behind the source");
    assert.equal(vmDst.frames.filter((f) => parseEthernet(f).dst === VM).length, 0);

    // Resume on the target: announce, then release in order.
    dst.sw.announce("vm", { rounds: 1 });
    assert.equal(dst.sw.releasePort("vm"), 3);
    assert.deepEqual(vmDst.frames.map(seqOf), [...during, late].map(seqOf));
    for (let i = 0; i < 100 && third.vtep.macTable(100).find((e) => e.mac === VM)?.remote !== dst.vtep.endpoint; i++) await sleep(10);
    assert.equal(third.vtep.macTable(100).find((e) => e.mac === VM)?.remote, dst.vtep.endpoint, "the announcement moved the MAC at once");
    assert.equal(src.vtep.macTable(100).find((e) => e.mac === VM)?.remote, dst.vtep.endpoint);

    // After the hand-off the peer's unicast goes straight to the target.
    src.sw.detachPort("vm");
    const before = src.vtep.counters().rxPackets;
    const after = frame("02:00:00:00:00:03", VM);
    peer.send(after);
    await vmDst.waitFor((f) => seqOf(f) === seqOf(after));
    await sleep(30);
    assert.equal(src.vtep.counters().rxPackets, before, "the source no longer sees the VM's traffic");
    assert.equal(vmSrc.frames.filter((f) => parseEthernet(f).dst === VM).length, 1, "the source VM got only what came before the pause");
  } finally {
    await closeAll(hs);
  }
});
