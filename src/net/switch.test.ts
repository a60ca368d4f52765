import assert from "node:assert/strict";
import { test } from "node:test";
import { NetError } from "./errors.js";
import { ArpOp, buildEthernet, EtherType, parseArp, parseEthernet } from "./frames.js";
import { VirtualSwitch, type Uplink, type UplinkIngress } from "./switch.js";
import { FakeClock, RecordingPort } from "./testing.js";

const MAC = {
  a: "02:00:00:00:00:0a",
  b: "02:00:00:00:00:0b",
  c: "02:00:00:00:00:0c",
  m: "02:68:6f:00:00:01",
  remote: "02:00:00:00:01:01",
};

let seq = 0;
/** A small unicast or broadcast frame with a sequence number in its payload. */
function frame(src: string, dst: string): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(++seq);
  return buildEthernet({ dst, src, etherType: 0x88b5 }, payload);
}

function seqOf(f: Buffer): number {
  return f.readUInt32BE(14);
}

class FakeUplink implements Uplink {
  readonly out: Buffer[] = [];
  readonly to: { frame: Buffer; remote: string }[] = [];
  output(f: Buffer): void {
    this.out.push(f);
  }
  outputTo(f: Buffer, remote: string): void {
    this.to.push({ frame: f, remote });
  }
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof NetError, `expected a NetError, got ${String(err)}`);
    return err.code;
  }
  return "none";
}

void test("learning: unknown unicast floods, replies teach the switch, then unicast goes to one port", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("n1", 100);
  const a = new RecordingPort(sw, "a", "n1", MAC.a, { pin: false });
  const b = new RecordingPort(sw, "b", "n1", MAC.b, { pin: false });
  const c = new RecordingPort(sw, "c", "n1", MAC.c, { pin: false });

  a.send(frame(MAC.a, MAC.b)); // B unknown: flooded, A learned
  assert.deepEqual([a.frames.length, b.frames.length, c.frames.length], [0, 1, 1]);
  b.send(frame(MAC.b, MAC.a)); // A known: only A
  assert.deepEqual([a.frames.length, b.frames.length, c.frames.length], [1, 1, 1]);
  a.send(frame(MAC.a, MAC.b)); // B learned now
  assert.deepEqual([a.frames.length, b.frames.length, c.frames.length], [1, 2, 1]);
  a.send(frame(MAC.a, "ff:ff:ff:ff:ff:ff")); // broadcast: everyone but the sender
  assert.deepEqual([a.frames.length, b.frames.length, c.frames.length], [1, 3, 2]);
  a.send(frame(MAC.a, MAC.a)); // to itself: filtered, never reflected
  assert.equal(a.frames.length, 1);
  assert.deepEqual(sw.lookup("n1", MAC.a), { kind: "port", port: "a" });
  assert.equal(sw.lookup("n1", MAC.c), undefined);
  assert.equal(sw.counters().filtered, 1);
  const pc = sw.portCounters("a");
  assert.equal(pc.rxFrames, 4);
  assert.equal(pc.txFrames, 1);
  assert.equal(sw.portCounters("b").txBytes, 3 * 60);

  // A MAC that moves to another port is re-learned there.
  c.send(frame(MAC.a, MAC.b));
  assert.deepEqual(sw.lookup("n1", MAC.a), { kind: "port", port: "c" });
  // Detaching a port forgets its MACs.
  sw.detachPort("c");
  assert.equal(sw.lookup("n1", MAC.a), undefined);
});

void test("isolation: frames never cross networks, even with the same MACs on both", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("red", 1);
  sw.addNetwork("blue", 2);
  const up1 = new FakeUplink();
  const up2 = new FakeUplink();
  const in1 = sw.setUplink("red", up1);
  const in2 = sw.setUplink("blue", up2);
  const r1 = new RecordingPort(sw, "r1", "red", MAC.a, { pin: false });
  const r2 = new RecordingPort(sw, "r2", "red", MAC.b, { pin: false });
  const b1 = new RecordingPort(sw, "b1", "blue", MAC.a, { pin: false });
  const b2 = new RecordingPort(sw, "b2", "blue", MAC.b, { pin: false });

  const red: number[] = [];
  const blue: number[] = [];
  const sendOn = (list: number[], fn: (f: Buffer) => void, f: Buffer): void => {
    list.push(seqOf(f));
    fn(f);
  };
  sendOn(red, (f) => r1.send(f), frame(MAC.a, "ff:ff:ff:ff:ff:ff"));
  sendOn(red, (f) => r1.send(f), frame(MAC.a, MAC.b));
  sendOn(blue, (f) => b2.send(f), frame(MAC.b, MAC.a));
  sendOn(blue, (f) => b1.send(f), frame(MAC.a, MAC.b));
  sendOn(red, in1, frame(MAC.remote, "ff:ff:ff:ff:ff:ff"));
  sendOn(blue, in2, frame(MAC.remote, MAC.b));
  assert.equal(r2.frames.length, 3, "red broadcast, red unicast, red uplink broadcast");
  assert.equal(b1.frames.length, 1, "blue unicast only");
  assert.equal(b2.frames.length, 2, "blue unicast and blue uplink frame");
  assert.equal(r1.frames.length, 1, "red uplink broadcast");
  assert.equal(up1.out.length, 2, "red's two flooded frames");
  assert.equal(up2.out.length, 1, "blue's one flooded frame");
  assert.deepEqual(sw.lookup("red", MAC.a), { kind: "port", port: "r1" });
  assert.deepEqual(sw.lookup("blue", MAC.a), { kind: "port", port: "b1" });
  assert.deepEqual(sw.lookup("blue", MAC.remote), { kind: "uplink" });
  assert.deepEqual(sw.lookup("red", MAC.remote), { kind: "uplink" });
  // Every frame a port saw was sent into its own network.
  for (const f of [...b1.frames, ...b2.frames]) assert.ok(blue.includes(seqOf(f)));
  for (const f of [...r1.frames, ...r2.frames]) assert.ok(red.includes(seqOf(f)));
  for (const f of [...up1.out]) assert.ok(red.includes(seqOf(f)));
  for (const f of [...up2.out]) assert.ok(blue.includes(seqOf(f)));
});

void test("isolation holds under random traffic: 3 networks sharing MACs, random ports, uplinks, moves", () => {
  let r = 12345;
  const rand = (n: number): number => {
    r = (Math.imul(r, 1103515245) + 12345) >>> 0;
    return (r >>> 8) % n;
  };
  const sw = new VirtualSwitch({ maxMacsPerNetwork: 8 });
  const nets = ["n0", "n1", "n2"];
  const sent = new Map<number, string>();
  const bad: string[] = [];
  const ingress: UplinkIngress[] = [];
  nets.forEach((n, i) => {
    sw.addNetwork(n, 10 + i);
    ingress.push(
      sw.setUplink(n, {
        output: (f) => sent.get(seqOf(f)) !== n && bad.push(`uplink ${n} got frame of ${sent.get(seqOf(f))}`),
        outputTo: () => bad.push("outputTo without forwarding"),
      }),
    );
    for (let p = 0; p < 4; p++) sw.attachPort(`${n}-p${p}`, n, (f) => sent.get(seqOf(f)) !== n && bad.push(`${n}-p${p} got frame of ${sent.get(seqOf(f))}`));
  });
  const macs = Array.from({ length: 12 }, (_, i) => `02:00:00:00:00:${(i + 1).toString(16).padStart(2, "0")}`);
  for (let i = 0; i < 5000; i++) {
    const n = nets[rand(3)]!;
    const dst = rand(5) === 0 ? "ff:ff:ff:ff:ff:ff" : macs[rand(macs.length)]!;
    const f = frame(macs[rand(macs.length)]!, dst);
    sent.set(seqOf(f), n);
    const from = rand(5);
    if (from === 4) ingress[nets.indexOf(n)]!(f);
    else sw.input(`${n}-p${from}`, f);
  }
  assert.deepEqual(bad.slice(0, 5), []);
});

void test("the uplink: local misses go out, overlay frames never go back out (split horizon)", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("n", 7);
  const up = new FakeUplink();
  const ingress = sw.setUplink("n", up);
  const a = new RecordingPort(sw, "a", "n", MAC.a);
  ingress(frame(MAC.remote, "ff:ff:ff:ff:ff:ff"));
  assert.equal(a.frames.length, 1);
  assert.equal(up.out.length, 0, "a broadcast from the overlay is not sent back to it");
  a.send(frame(MAC.a, MAC.remote));
  assert.equal(up.out.length, 1, "unicast to a MAC behind the uplink");
  ingress(frame(MAC.c, MAC.remote)); // overlay to overlay: dropped
  assert.equal(up.out.length, 1);
  ingress(frame(MAC.c, "02:00:00:00:09:09")); // unknown unicast from the overlay: local ports only
  assert.equal(a.frames.length, 2);
  assert.equal(up.out.length, 1);
  // A replaced uplink's ingress function is dead.
  const up2 = new FakeUplink();
  sw.setUplink("n", up2);
  ingress(frame(MAC.remote, "ff:ff:ff:ff:ff:ff"));
  assert.equal(a.frames.length, 2);
  sw.clearUplink("n");
  a.send(frame(MAC.a, "ff:ff:ff:ff:ff:ff"));
  assert.equal(up2.out.length, 0);
});

void test("ageing: learned MACs expire after agingMs, pinned MACs do not", () => {
  const clock = new FakeClock();
  const sw = new VirtualSwitch({ agingMs: 1000, now: clock.now });
  sw.addNetwork("n", 1);
  const a = new RecordingPort(sw, "a", "n", MAC.a, { pin: false });
  const b = new RecordingPort(sw, "b", "n", MAC.b); // pinned
  const c = new RecordingPort(sw, "c", "n", MAC.c, { pin: false });
  a.send(frame(MAC.a, MAC.b));
  clock.advance(999);
  c.send(frame(MAC.c, MAC.a));
  assert.equal(b.frames.length, 1, "MAC.a still learned: not flooded to b");
  clock.advance(2);
  assert.equal(sw.lookup("n", MAC.a), undefined, "expired");
  assert.equal(sw.macTable("n").length, 2, "b (pinned) and c (learned 2 ms ago)");
  c.send(frame(MAC.c, MAC.a));
  assert.equal(b.frames.length, 2, "flooded again");
  assert.equal(a.frames.length, 2);
  clock.advance(10_000);
  assert.deepEqual(sw.lookup("n", MAC.b), { kind: "port", port: "b" }, "pinned never ages");
  assert.equal(sw.sweep(), 1, "c's entry swept");
  assert.equal(sw.macTable("n").length, 1);
});

void test("the MAC table is bounded: beyond maxMacsPerNetwork new MACs flood instead of being learned", () => {
  const sw = new VirtualSwitch({ maxMacsPerNetwork: 4 });
  sw.addNetwork("n", 1);
  const a = new RecordingPort(sw, "a", "n", MAC.a, { pin: false });
  new RecordingPort(sw, "b", "n", MAC.b, { pin: false });
  for (let i = 0; i < 10; i++) a.send(frame(`02:00:00:00:10:${i.toString(16).padStart(2, "0")}`, MAC.b));
  assert.equal(sw.macTable("n").length, 4);
  assert.equal(sw.counters().tableFull, 6);
});

void test("bad frames are counted and dropped, never thrown; a throwing port does not stop others", () => {
  const sw = new VirtualSwitch({ maxFrameBytes: 100 });
  sw.addNetwork("n", 1);
  const a = new RecordingPort(sw, "a", "n", MAC.a);
  sw.attachPort("bad", "n", () => {
    throw new Error("VM process gone");
  });
  const c = new RecordingPort(sw, "c", "n", MAC.c);
  a.send(Buffer.alloc(13));
  a.send(Buffer.alloc(101));
  a.send(frame("01:00:5e:00:00:01", MAC.c));
  sw.input("nope", frame(MAC.a, MAC.c));
  const k = sw.counters();
  assert.deepEqual([k.runts, k.giants, k.badSource, k.unknownPort], [1, 1, 1, 1]);
  assert.equal(sw.portCounters("a").rxDropped, 3);
  assert.equal(c.frames.length, 0);
  a.send(frame(MAC.a, "ff:ff:ff:ff:ff:ff"));
  assert.equal(c.frames.length, 1);
  assert.equal(sw.portCounters("bad").deliverErrors, 1);
  assert.equal(sw.portCounters("bad").txFrames, 1);
  // A Uint8Array in works as well as a Buffer.
  sw.input("a", new Uint8Array(frame(MAC.a, MAC.c)));
  assert.equal(c.frames.length, 2);
});

void test("configuration errors have stable codes", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("n", 5);
  assert.equal(codeOf(() => sw.addNetwork("n", 6)), "NET_NETWORK_ADD_FAILED");
  assert.equal(codeOf(() => sw.addNetwork("m", 5)), "NET_NETWORK_ADD_FAILED");
  assert.equal(codeOf(() => sw.addNetwork("m", 0)), "NET_NETWORK_ADD_FAILED");
  assert.equal(codeOf(() => sw.addNetwork("m", 2 ** 24)), "NET_NETWORK_ADD_FAILED");
  assert.equal(codeOf(() => sw.addNetwork("bad name", 9)), "NET_NETWORK_ADD_FAILED");
  assert.equal(codeOf(() => sw.attachPort("p", "nope", () => undefined)), "NET_NETWORK_UNKNOWN");
  sw.attachPort("p", "n", () => undefined, { mac: MAC.a });
  assert.equal(codeOf(() => sw.attachPort("p", "n", () => undefined)), "NET_PORT_ATTACH_FAILED");
  assert.equal(codeOf(() => sw.attachPort("q", "n", () => undefined, { mac: MAC.a })), "NET_PORT_ATTACH_FAILED", "MAC pinned to p");
  assert.equal(codeOf(() => sw.attachPort("q", "n", () => undefined, { mac: "01:00:00:00:00:01" })), "NET_PORT_ATTACH_FAILED", "group MAC");
  assert.equal(codeOf(() => sw.attachPort("q", "n", () => undefined, { mac: "nonsense" })), "NET_PORT_ATTACH_FAILED");
  assert.equal(codeOf(() => sw.attachPort("q", "n", () => undefined, { ip: "10.0.0.300" })), "NET_PORT_ATTACH_FAILED");
  assert.equal(codeOf(() => sw.removeNetwork("n")), "NET_NETWORK_IN_USE");
  assert.equal(codeOf(() => sw.holdPort("zz", 1)), "NET_PORT_UNKNOWN");
  assert.equal(codeOf(() => sw.forwardPort("p", "10.0.0.2:4789", 100)), "NET_FORWARD_FAILED", "no uplink");
  sw.attachPort("silent", "n", () => undefined);
  assert.equal(codeOf(() => sw.announce("silent")), "NET_ANNOUNCE_FAILED", "no MAC known");
  assert.equal(sw.detachPort("zz"), false);
  assert.equal(sw.detachPort("p"), true);
  sw.detachPort("silent");
  sw.removeNetwork("n");
  assert.deepEqual(sw.networks(), []);
});

void test("hold and release: frames for a paused VM are buffered, bounded (oldest dropped), delivered in order", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("n", 1);
  const a = new RecordingPort(sw, "a", "n", MAC.a);
  const vm = new RecordingPort(sw, "vm", "n", MAC.m);
  sw.holdPort("vm", 3);
  const sent: number[] = [];
  for (let i = 0; i < 5; i++) {
    const f = frame(MAC.a, i === 2 ? "ff:ff:ff:ff:ff:ff" : MAC.m);
    sent.push(seqOf(f));
    a.send(f);
  }
  assert.equal(vm.frames.length, 0);
  assert.equal(sw.portInfo("vm").held, true);
  const pc = sw.portCounters("vm");
  assert.equal(pc.held, 5);
  assert.equal(pc.heldDropped, 2);
  assert.equal(sw.releasePort("vm"), 3);
  assert.deepEqual(vm.frames.map(seqOf), sent.slice(2), "the three newest, in order (a broadcast among them)");
  a.send(frame(MAC.a, MAC.m));
  assert.equal(vm.frames.length, 4, "delivered directly after release");
  assert.equal(sw.releasePort("vm"), 0);
  // Shrinking the bound of a held port drops the oldest beyond it; attaching held works too.
  sw.holdPort("vm", 10);
  for (let i = 0; i < 4; i++) a.send(frame(MAC.a, MAC.m));
  sw.holdPort("vm", 1);
  assert.equal(sw.portCounters("vm").heldDropped, 2 + 3);
  sw.attachPort("incoming", "n", () => undefined, { mac: MAC.b, hold: 2 });
  assert.equal(sw.portInfo("incoming").held, true);
  // Detaching discards held frames.
  sw.detachPort("vm");
  assert.equal(vm.frames.length, 4);
});

void test("announce: RARP + gratuitous ARP flooded locally and over the uplink, more rounds later; other switches re-learn", async () => {
  const target = new VirtualSwitch();
  target.addNetwork("n", 1);
  const up = new FakeUplink();
  target.setUplink("n", up);
  const peer = new RecordingPort(target, "peer", "n", MAC.a);
  new RecordingPort(target, "vm", "n", MAC.m, { ip: "10.0.0.7" });
  assert.equal(target.announce("vm", { rounds: 3, intervalMs: 5 }), 2);
  assert.equal(up.out.length, 2);
  assert.equal(peer.frames.length, 2);
  const [rarp, garp] = up.out.map(parseEthernet);
  assert.equal(rarp!.etherType, EtherType.RARP);
  assert.equal(rarp!.src, MAC.m);
  assert.equal(garp!.etherType, EtherType.ARP);
  assert.equal(parseArp(garp!.payload).op, ArpOp.REQUEST);
  assert.equal(parseArp(garp!.payload).senderIp, "10.0.0.7");
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(up.out.length, 6, "three rounds of two frames");

  // The source switch had the VM's MAC learned on a local port; the announcement arriving over
  // its uplink moves the MAC behind the uplink at once.
  const source = new VirtualSwitch();
  source.addNetwork("n", 1);
  const srcUp = new FakeUplink();
  const srcIn: UplinkIngress = source.setUplink("n", srcUp);
  const other = new RecordingPort(source, "other", "n", MAC.c);
  source.attachPort("old", "n", () => undefined);
  source.input("old", frame(MAC.m, MAC.c));
  assert.deepEqual(source.lookup("n", MAC.m), { kind: "port", port: "old" });
  srcIn(up.out[0]!);
  assert.deepEqual(source.lookup("n", MAC.m), { kind: "uplink" });
  other.send(frame(MAC.c, MAC.m));
  assert.equal(srcUp.out.length, 1, "now sent over the overlay");

  // Pending rounds stop when the port goes.
  const sw = new VirtualSwitch();
  sw.addNetwork("n", 1);
  const up3 = new FakeUplink();
  sw.setUplink("n", up3);
  new RecordingPort(sw, "vm", "n", MAC.m);
  sw.announce("vm", { rounds: 5, intervalMs: 5 });
  sw.detachPort("vm");
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(up3.out.length, 1);
  // A port without a configured MAC announces the MAC it last sent from.
  sw.attachPort("learned", "n", () => undefined);
  sw.input("learned", frame(MAC.b, MAC.c));
  sw.announce("learned", { rounds: 1 });
  assert.equal(parseEthernet(up3.out.at(-1)!).src, MAC.b);
  sw.close();
});

void test("forwardPort: after the switchover frames for the moved VM go to the target VTEP for a while", () => {
  const clock = new FakeClock();
  const sw = new VirtualSwitch({ now: clock.now });
  sw.addNetwork("n", 1);
  const up = new FakeUplink();
  const ingress = sw.setUplink("n", up);
  const local = new RecordingPort(sw, "local", "n", MAC.a);
  const vm = new RecordingPort(sw, "vm", "n", MAC.m);
  // The VM pauses for the stop-and-copy: the source holds its port.
  sw.holdPort("vm", 16);
  const early = frame(MAC.a, MAC.m);
  local.send(early);
  local.send(frame(MAC.a, "ff:ff:ff:ff:ff:ff"));
  assert.equal(vm.frames.length, 0);
  // Committed: held unicast frames go to the target first, then forwarding is on.
  assert.deepEqual(sw.forwardPort("vm", "10.9.0.2:4789", 500), [MAC.m]);
  assert.deepEqual(
    up.to.map((x) => [seqOf(x.frame), x.remote]),
    [[seqOf(early), "10.9.0.2:4789"]],
  );
  local.send(frame(MAC.a, MAC.m)); // from a local port
  ingress(frame(MAC.remote, MAC.m)); // from the overlay (a sender with a stale table)
  assert.equal(up.to.length, 3);
  assert.equal(vm.frames.length, 0);
  assert.equal(sw.counters().forwarded, 3);
  assert.equal(sw.forwards("n").length, 1);
  // The VM process is gone: detach. Forwarding outlives the port.
  sw.detachPort("vm");
  local.send(frame(MAC.a, MAC.m));
  assert.equal(up.to.length, 4);
  // After the window, frames for the MAC are ordinary unknown unicast (flooded, overlay included).
  clock.advance(501);
  local.send(frame(MAC.a, MAC.m));
  assert.equal(up.to.length, 4);
  assert.equal(up.out.length, 2, "the earlier broadcast and this unknown unicast");
  assert.equal(sw.forwards("n").length, 0);

  // Abort: cancelForward, and re-attaching the MAC locally ends forwarding too.
  const vm2 = new RecordingPort(sw, "vm2", "n", MAC.m);
  sw.forwardPort("vm2", "10.9.0.3:4789", 10_000);
  assert.equal(sw.cancelForward("vm2"), 1);
  local.send(frame(MAC.a, MAC.m));
  assert.equal(vm2.frames.length, 1);
  sw.forwardPort("vm2", "10.9.0.3:4789", 10_000);
  sw.detachPort("vm2");
  new RecordingPort(sw, "vm3", "n", MAC.m);
  assert.equal(sw.forwards("n").length, 0, "the MAC came back: no more forwarding");
});

void test("standby port: a migration target's port gets only frames forwarded to its MAC, held; activatePort makes it the MAC's home", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("n1", 100);
  const up = new FakeUplink();
  const ingress = sw.setUplink("n1", up);
  const local = new RecordingPort(sw, "local", "n1", MAC.a);
  const got: Buffer[] = [];
  // The VM runs elsewhere: the switch learned its MAC behind the uplink.
  ingress(frame(MAC.m, MAC.a));
  assert.deepEqual(sw.lookup("n1", MAC.m), { kind: "uplink" });
  sw.attachPort("vm", "n1", (f) => got.push(f), { mac: MAC.m, standby: true, hold: 10 });
  assert.equal(sw.portInfo("vm").standby, true);
  // Local traffic for the VM still goes where the VM runs; floods skip the standby port.
  local.send(frame(MAC.a, MAC.m));
  local.send(frame(MAC.a, "ff:ff:ff:ff:ff:ff"));
  ingress(frame(MAC.b, "ff:ff:ff:ff:ff:ff"));
  assert.equal(up.out.length, 2);
  assert.equal(sw.portCounters("vm").held, 0);
  // Frames the source forwards to the VM's MAC are held for it.
  const f1 = frame(MAC.a, MAC.m);
  const f2 = frame(MAC.b, MAC.m);
  ingress(f1, true);
  ingress(f2, true);
  assert.equal(sw.portCounters("vm").held, 2);
  assert.equal(got.length, 0);
  assert.deepEqual(sw.lookup("n1", MAC.b), { kind: "uplink" }, "a forwarded frame's source is not learned");
  sw.activatePort("vm");
  assert.deepEqual(sw.lookup("n1", MAC.m), { kind: "port", port: "vm" });
  assert.equal(sw.releasePort("vm"), 2);
  assert.deepEqual(got.map(seqOf), [seqOf(f1), seqOf(f2)]);
  local.send(frame(MAC.a, MAC.m));
  assert.equal(got.length, 3);
  assert.throws(() => sw.attachPort("vm2", "n1", () => undefined, { standby: true }), /needs its MAC/);
});

void test("forwarded frames are never forwarded again (no loop between two hosts forwarding a MAC to each other)", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("n1", 100);
  const up = new FakeUplink();
  const ingress = sw.setUplink("n1", up);
  sw.attachPort("vm", "n1", () => undefined, { mac: MAC.m });
  sw.holdPort("vm", 10);
  sw.forwardPort("vm", "10.0.0.2:4789", 3_000);
  sw.detachPort("vm");
  // An ordinary frame for the moved VM follows the forwarding...
  ingress(frame(MAC.a, MAC.m));
  assert.equal(up.to.length, 1);
  // ...one that was itself forwarded here (no port for its MAC) is not sent on.
  ingress(frame(MAC.a, MAC.m), true);
  assert.equal(up.to.length, 1);
  assert.equal(up.out.length, 0);
  // A port for the MAC coming back on standby ends the stale forwarding.
  sw.attachPort("vm", "n1", () => undefined, { mac: MAC.m, standby: true, hold: 4 });
  assert.deepEqual(sw.forwards("n1"), []);
});

void test("redeliver: frames a stopping VM hands back go ahead of what was held since, then follow the forwarding", () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("n1", 100);
  const up = new FakeUplink();
  sw.setUplink("n1", up);
  const a = new RecordingPort(sw, "a", "n1", MAC.a);
  const got: Buffer[] = [];
  sw.attachPort("vm", "n1", (f) => got.push(f), { mac: MAC.m });
  const old1 = frame(MAC.a, MAC.m);
  const old2 = frame(MAC.a, MAC.m);
  sw.holdPort("vm", 10);
  const held = frame(MAC.a, MAC.m);
  a.send(held);
  assert.equal(sw.redeliver("vm", old1), true);
  assert.equal(sw.redeliver("vm", old2), true);
  sw.forwardPort("vm", "10.0.0.2:4789", 1_000);
  assert.deepEqual(up.to.map((x) => seqOf(x.frame)), [seqOf(old1), seqOf(old2), seqOf(held)]);
  const late = frame(MAC.a, MAC.m);
  sw.redeliver("vm", late);
  assert.equal(seqOf(up.to[3]!.frame), seqOf(late));
  assert.equal(got.length, 0);
  assert.equal(sw.redeliver("gone", late), false);
  // Not held, not forwarding: delivered.
  sw.cancelForward("vm");
  sw.releasePort("vm");
  sw.redeliver("vm", frame(MAC.a, MAC.m));
  assert.equal(got.length, 1);
});
