import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { createLogger } from "../common/log.js";
import { defaultCacheDir } from "../common/paths.js";
import { defaultProfile, TemplateStore } from "../host/templates.js";
import { ensureImage } from "../image/index.js";
import { readStateFile } from "../storage/index.js";
import { GuestAgentClient } from "../vm/agent.js";
import { Engine, MAX_TSC_CATCH_UP_MS, toArrayBuffer, type EngineOptions } from "./engine.js";

/** The cached 128 MiB template (built once if missing) and engine options that fit it. */
async function template128(): Promise<{ state: ArrayBuffer; opts: EngineOptions }> {
  const log = createLogger("engine-test");
  const cacheDir = defaultCacheDir();
  const image = await ensureImage({ cacheDir, log });
  const template = await readStateFile(await new TemplateStore(cacheDir, log).ensure(image, defaultProfile(128, undefined)));
  const [bios, vgabios] = await Promise.all([readFile(image.bios), readFile(image.vgabios)]);
  return { state: toArrayBuffer(template.payload), opts: { memoryMiB: 128, vgaMemoryKiB: template.header.vgaMemoryKiB, bios, vgabios, nic: "virtio", serialPorts: 2 } };
}

/** Runs `fn` with two engines made for the 128 MiB template (neither restored yet), destroyed afterwards. */
async function withTwoEngines(fn: (a: Engine, b: Engine, template: { state: ArrayBuffer; opts: EngineOptions }) => Promise<void>): Promise<void> {
  const template = await template128();
  const a = await Engine.create(template.opts);
  const b = await Engine.create(template.opts);
  try {
    await fn(a, b, template);
  } finally {
    await a.destroy();
    await b.destroy();
  }
}

/** Runs `fn` with an engine running the 128 MiB template's guest (and its agent client), destroyed afterwards. */
async function withRunningGuest(fn: (e: Engine, agent: GuestAgentClient) => Promise<void>): Promise<void> {
  const template = await template128();
  const e = await Engine.create(template.opts);
  try {
    await e.restoreState(template.state);
    const agent = GuestAgentClient.on(e);
    await e.run();
    await fn(e, agent);
  } finally {
    await e.destroy();
  }
}

async function guestSkewS(agent: GuestAgentClient): Promise<number> {
  const r = await agent.exec("date +%s", 10_000);
  return Number(r.stdout.trim()) - Date.now() / 1000;
}

void test("the JIT gate: a guest restored idle compiles nothing; a busy guest compiles, without growing wasm memory", () =>
  withRunningGuest(async (e, agent) => {
    await sleep(2_500);
    assert.equal(e.jitCompiles(), 0, "an idle guest compiled code");
    const before = e.wasmMemoryBytes();
    const r = await agent.exec("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i", 120_000);
    assert.equal(r.stdout.trim(), "20000");
    await agent.exec("for i in 1 2 3 4 5 6 7 8; do ls -la /bin /sbin > /dev/null; cat /proc/meminfo > /dev/null; done", 120_000);
    assert.ok(e.jitCompiles() > 50, `a busy guest compiles its hot code (${e.jitCompiles()} modules)`);
    // Each grow of wasm memory would start a major GC in the VM process (see watchJitCompiles).
    assert.equal(e.wasmMemoryBytes(), before, `the JIT's ${e.jitCompiles()} modules grew wasm memory by ${e.wasmMemoryBytes() - before} bytes`);
  }));

void test("a guest restored in another engine after a pause keeps the wall-clock time (continueTsc counts the pause), and its JIT stays quiet while it idles", () =>
  withTwoEngines(async (a, b, template) => {
    await a.restoreState(template.state);
    const agentA = GuestAgentClient.on(a);
    await a.run();
    await agentA.waitReady(10_000);
    await agentA.setTime(Date.now(), 10_000);
    // `date +%s` truncates: a right clock reads 0 to -1 s off, plus the exec's round trip.
    const before = await guestSkewS(agentA);
    assert.ok(before > -2.5 && before < 1, `the clock is set before the move (skew ${before.toFixed(2)} s)`);
    // A heartbeat, as in the migration benchmark: its path (timer, wake-up, serial) gets hot.
    assert.equal((await agentA.exec("hb -i 10 > /dev/null 2>&1 &", 10_000)).exitCode, 0);
    await sleep(3_000);

    // The move, with a pause of 4 s between the save and the restore.
    await a.pause();
    const state = await a.saveStateWithoutRam();
    const savedClockMs = a.clockMs();
    const savedAtMs = Date.now();
    const tscAtSave = a.tsc();
    b.ram().set(a.ram());
    await sleep(4_000);
    b.continueClock(savedClockMs, savedAtMs);
    await b.restoreStateKeepingRam(state);
    const added = b.continueTsc(savedClockMs);
    assert.ok(added >= 3_900 && added < 6_000, `the TSC moved on by the pause: ${added} ms`);
    const tscMs = Number(b.tsc() - tscAtSave) / 1e6;
    assert.ok(tscMs >= 3_900 && tscMs < 6_000, `the restored TSC counts the pause: ${tscMs} ms after the save`);
    const agentB = GuestAgentClient.on(b);
    await b.run();
    const skew = await guestSkewS(agentB);
    assert.ok(skew > -2.5 && skew < 1, `the guest's clock did not lag by the 4 s pause (skew ${skew.toFixed(2)} s)`);
    assert.equal(b.continueTsc(b.clockMs() - MAX_TSC_CATCH_UP_MS - 1), 0, "a pause beyond the cap is left to the guest agent");
    // The JIT gate keeps compiling off while the restored guest idles (see installJitGate).
    // The execs above may count as busy: the gate then closes JIT_GATE_HOLD_MS (2 s) after them.
    await sleep(2_500);
    const compiled = b.jitCompiles();
    await sleep(3_000);
    assert.equal(b.jitCompiles() - compiled, 0, `the restored guest compiled code while it idled (${compiled} modules before, while it ran the execs)`);
  }));

/** Whether `p` settles within `ms` (a guard against a wait that never ends, not a measurement). */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const out = await Promise.race([p.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
  clearTimeout(timer);
  return out;
}

void test("whenQuiet and whenHalted: a guest that reports now and then is caught halted right after its output, a busy one that reports right after its output; a busy, silent one is not waited for", () =>
  withRunningGuest(async (e, agent) => {
    await agent.waitReady(10_000);
    // Output as whenQuiet sees it: bytes on any serial port (the guest agent talks on port 1)
    // and frames; bytes, not lines, as the guest may halt between the bytes of a line.
    let sent = 0;
    for (const port of [0, 1, 2, 3]) {
      e.onSerialByte(port, () => {
        sent++;
      });
    }
    e.onFrame(() => {
      sent++;
    });
    assert.equal((await agent.exec("hb -i 100 > /dev/ttyS0 2>&1 &", 10_000)).exitCode, 0);
    await sleep(500);
    for (let i = 0; i < 3; i++) {
      const before = sent;
      assert.equal(await e.whenQuiet(1_000), true, "a heartbeat every 100 ms gives a quiet moment within 1 s");
      assert.ok(sent > before, "the quiet moment comes after the guest's next output");
      assert.equal(e.halted, true, "the guest is halted at the quiet moment");
      assert.equal(e.running, true);
    }
    // whenHalted, asked while the guest is sending a line (running): resolves once it has halted.
    for (let i = 0; i < 5; i++) {
      let asked = false;
      let runningWhenAsked = false;
      let halted: Promise<void> | undefined;
      const off = e.onSerialByte(0, () => {
        if (asked) return;
        asked = true;
        runningWhenAsked = !e.halted;
        halted = e.whenHalted(60_000);
      });
      while (halted === undefined) await sleep(5);
      await halted;
      off();
      assert.equal(runningWhenAsked, true, "the guest runs while it sends a byte");
      assert.equal(e.halted, true, "whenHalted resolves with the guest halted");
    }
    // Busy and silent: a shell loop keeps the CPU and nothing is sent: no wait at all.
    assert.equal((await agent.exec("killall hb; (while :; do :; done) > /dev/null 2>&1 & echo $! > /tmp/busy", 10_000)).exitCode, 0);
    await sleep(300);
    const silentBusy = e.whenQuiet(60_000);
    assert.equal(await settlesWithin(silentBusy, 10_000), true, "a busy, silent guest is not waited for");
    assert.equal(await silentBusy, false, "a busy, silent guest has no quiet moment");
    assert.equal(await settlesWithin(e.whenHalted(60_000), 10_000), true, "a busy guest is not waited for to halt");
    assert.equal(e.halted, false, "the busy guest runs on");
    // Busy and talking (a line every ~10 ms): caught right after a line when one is due soon.
    assert.equal((await agent.exec("hb -i 10 > /dev/ttyS0 2>&1 &", 10_000)).exitCode, 0);
    await sleep(300);
    let caught = 0;
    for (let i = 0; i < 20; i++) {
      const before = sent;
      const q = e.whenQuiet(60_000);
      assert.equal(await settlesWithin(q, 10_000), true, "a busy guest is waited for briefly, if at all");
      if (await q) {
        caught++;
        assert.ok(sent > before, "a busy guest's moment comes right after its output");
        assert.equal(e.halted, false, "a busy guest is caught running");
      }
      await sleep(7);
    }
    assert.ok(caught > 0, "a busy guest printing every ~10 ms is caught after a line at least once in 20 tries");
    assert.equal((await agent.exec("kill $(cat /tmp/busy); killall hb", 10_000)).exitCode, 0);
    // Silent: the guest halts but sends nothing, so the wait runs out.
    await sleep(300);
    assert.equal(await e.whenQuiet(300), false, "a silent guest gives no quiet moment");
    // Paused: nothing to wait for.
    await e.pause();
    assert.equal(await e.whenQuiet(60_000), false);
    assert.equal(await settlesWithin(e.whenHalted(60_000), 10_000), true, "a paused guest is not waited for");
  }));

/** Pages whose 4 KiB differ between `ram` and `shadow`; `shadow` takes the new content. */
function changedPages(ram: Uint8Array, shadow: Buffer): number[] {
  const mem = Buffer.from(ram.buffer, ram.byteOffset, ram.byteLength);
  const out: number[] = [];
  for (let off = 0; off < mem.length; off += 4096) {
    if (mem.compare(shadow, off, off + 4096, off, off + 4096) !== 0) {
      out.push(off / 4096);
      mem.copy(shadow, off, off, off + 4096);
    }
  }
  return out;
}

void test("the dirty log reports every page the guest wrote (CPU writes across context switches, page-table bits, NIC DMA)", async () => {
  const template = await template128();
  const stock = await Engine.create({ ...template.opts, stockWasm: true });
  assert.equal(stock.dirtyLog, undefined, "stock v86 has no dirty log");
  await stock.destroy();

  const e = await Engine.create(template.opts);
  try {
    const log = e.dirtyLog;
    assert.ok(log !== undefined, "the patched engine has a dirty log");
    assert.equal(log.watchesBiosAlias, true, "writes through the BIOS alias are logged (the first 1 MiB is not reported wholesale)");
    await e.restoreState(template.state);
    const agent = GuestAgentClient.on(e);
    await e.run();
    await agent.waitReady(10_000);
    // A dirty set, short-lived processes (page tables, CR3 switches) and file writes.
    const work = "dirty -w 8 > /dev/null 2>&1 & (while true; do cat /proc/meminfo > /tmp/m; ls / > /dev/null; done) > /dev/null 2>&1 &";
    assert.equal((await agent.exec(work, 10_000)).exitCode, 0);
    const shadow = Buffer.from(e.ram());
    log.start();
    // Broadcast frames for the NIC to write into the guest's receive ring (DMA, not the CPU).
    const frame = Buffer.alloc(60, 0);
    frame.fill(0xff, 0, 6);
    frame.writeUInt16BE(0x0806, 12);
    let changed = 0;
    let logged = 0;
    for (let i = 0; i < 16; i++) {
      for (let k = 0; k < 4; k++) e.deliverFrame(frame);
      await sleep(60);
      // Half the harvests with the guest paused (the final round), half between slices of a running guest.
      const paused = i % 2 === 0;
      if (paused) await e.pause();
      const harvest: Set<number> = new Set(Array.from(log.harvest()));
      const diff = changedPages(e.ram(), shadow);
      const missed: number[] = diff.filter((p) => !harvest.has(p));
      assert.deepEqual(missed, [], `harvest ${i}: pages changed but not logged`);
      changed += diff.length;
      logged += harvest.size;
      if (paused) await e.run();
    }
    log.stop();
    // (How much the guest gets done in 16 x 60 ms depends on the machine: 14-30 thousand pages
    // were seen. What matters is that each interval had writes to miss.)
    assert.ok(changed > 16 * 200, `the guest changed pages (${changed})`);
    assert.ok(logged < changed * 2 + 16 * 512, `the log is close to what changed (${logged} logged, ${changed} changed)`);
  } finally {
    await e.destroy();
  }
});

void test("device memory travels beside the state: a state saved without it is ~1 MiB smaller, restoring it leaves the regions as they are, and a full state still carries them", () =>
  withTwoEngines(async (a, b, template) => {
    await a.restoreState(template.state);
    await a.run();
    await sleep(500);
    await a.pause();
    const dmA = a.deviceMemory;
    const dmB = b.deviceMemory;
    assert.ok(dmA !== undefined && dmB !== undefined, "v86's VGA device is as expected");
    const regions = dmA.regions();
    assert.equal(regions.length, 3);
    const regionBytes = regions.reduce((n, r) => n + r.length, 0);
    assert.ok(regions.some((r) => r.some((x) => x !== 0)), "the guest's VGA memory holds something (the BIOS wrote to it)");
    const full = await a.saveStateWithoutRam();
    const lean = await dmA.saveStateWithoutMemory();
    assert.ok(full.byteLength - lean.byteLength >= regionBytes - 4096, `the lean state is ${full.byteLength - lean.byteLength} bytes smaller (regions: ${regionBytes})`);
    assert.equal(a.deviceMemory?.regions()[0]!.length, regions[0]!.length, "saving without device memory left the device as it was");

    // The target: RAM and regions copied over, then the lean state: the regions stay.
    b.ram().set(a.ram());
    dmB.regions().forEach((r, i) => r.set(regions[i]!));
    dmB.regions()[0]![5]! ^= 0xff;
    const marked = dmB.regions()[0]![5];
    await b.restoreStateKeepingRam(lean);
    assert.equal(dmB.regions()[0]![5], marked, "restoring the lean state did not touch device memory");
    dmB.regions()[0]![5]! ^= 0xff;
    dmB.regions().forEach((r, i) => assert.equal(Buffer.compare(r, regions[i]!), 0, `region ${i} equals the source's`));
    // A full state brings the regions back (the slots left out are the ones that hold them).
    dmB.regions().forEach((r) => r.fill(0x5a));
    await b.restoreStateKeepingRam(full);
    dmB.regions().forEach((r, i) => assert.equal(Buffer.compare(r, regions[i]!), 0, `region ${i} restored from the full state`));
    // The guest runs on after the lean restore.
    await b.restoreStateKeepingRam(lean);
    const agent = GuestAgentClient.on(b);
    await b.run();
    assert.equal((await agent.exec("echo ok", 10_000)).stdout.trim(), "ok");
  }));
