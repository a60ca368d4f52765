/**
 * A whole live migration between a SenderStateMachine and a ReceiverStateMachine over an
 * in-memory byte pipe (frames cut into random chunks), moving a 16 MiB "RAM" that a simulated
 * guest keeps writing while the scan runs, with the convergence policy deciding the rounds.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { DirtyTracker } from "./dirty.js";
import { applyPages, PageBatchWriter } from "./pages.js";
import { decideNextStep, type PolicyDecision } from "./policy.js";
import { FrameDecoder, PAGE_SIZE, type VmMigrationConfig } from "./protocol.js";
import { ReceiverStateMachine, type ReceiverAction } from "./receiver.js";
import { SenderStateMachine, type SenderEvent } from "./sender.js";
import { randInt, randomFill, seededRandom, TEST_ENGINE, TEST_TOKEN } from "./testing.js";

/** One direction of a connection: bytes arrive in random-sized chunks and are decoded incrementally. */
class Pipe {
  private readonly decoder = new FrameDecoder();
  bytes = 0;
  constructor(
    private readonly rand: () => number,
    private readonly deliver: (frame: ReturnType<FrameDecoder["push"]>[number]) => void,
  ) {}
  write(buf: Buffer): void {
    this.bytes += buf.length;
    for (let i = 0; i < buf.length; ) {
      const n = 1 + randInt(this.rand, this.rand() < 0.2 ? 16 : 100_000);
      for (const f of this.decoder.push(buf.subarray(i, i + n))) this.deliver(f);
      i += n;
    }
  }
  end(): void {
    this.decoder.finish();
  }
}

interface Guest {
  ram: Uint8Array;
  /** Pages the guest rewrites per tick at throttle 0. */
  writesPerTick: number;
  throttle: number;
  running: boolean;
}

function guestTick(g: Guest, rand: () => number): void {
  if (!g.running) return;
  const n = Math.round(g.writesPerTick * (1 - g.throttle / 100));
  const pages = g.ram.length / PAGE_SIZE;
  for (let i = 0; i < n; i++) {
    // A hot set in the first 4 MiB takes most writes, as real guests do.
    const p = rand() < 0.8 ? randInt(rand, 1024) : randInt(rand, pages);
    const off = p * PAGE_SIZE;
    switch (i % 4) {
      case 0: // a counter or pointer update
        g.ram[off + randInt(rand, PAGE_SIZE)] = randInt(rand, 256);
        break;
      case 1: // a small struct
        randomFill(rand, g.ram, off + 64, off + 128);
        break;
      case 2: // a whole page of new data
        randomFill(rand, g.ram, off, off + PAGE_SIZE);
        break;
      case 3: // freed and zeroed
        g.ram.fill(0, off, off + PAGE_SIZE);
        break;
    }
  }
}

void test("a full simulated live migration of 16 MiB ends byte-identical", async () => {
  const rand = seededRandom(2024);
  const memoryMiB = 16;
  const pageCount = (memoryMiB * 1024 * 1024) / PAGE_SIZE;
  const config: VmMigrationConfig = { name: "web1", uuid: "6f1c2f0e-aaaa-4bbb-8ccc-123456789abc", memoryMiB, vgaMemoryKiB: 256, nic: "virtio", disk: false, generation: 4, pageSize: PAGE_SIZE };

  // Source RAM: a third random, a third repetitive, the rest zero.
  const guest: Guest = { ram: new Uint8Array(memoryMiB * 1024 * 1024), writesPerTick: 40, throttle: 0, running: true };
  for (let p = 0; p < pageCount; p++) {
    const off = p * PAGE_SIZE;
    if (p % 3 === 0) randomFill(rand, guest.ram, off, off + PAGE_SIZE);
    else if (p % 3 === 1) for (let i = 0; i < PAGE_SIZE; i += 16) guest.ram[off + i] = (p + i) & 0xff;
  }
  // Target RAM starts as garbage: round 0 must overwrite every page.
  const targetRam = new Uint8Array(guest.ram.length);
  randomFill(rand, targetRam);
  const deviceState = Buffer.from("cpu registers, pic, pit, uart, virtio-net queues".repeat(100));

  const tx = new SenderStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE, migrationId: "mig-42", config });
  const rx = new ReceiverStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE, expect: { migrationId: "mig-42", vmUuid: config.uuid, memoryMiB, generation: 4, nic: "virtio", disk: false } });

  const events: SenderEvent[] = [];
  const actions: ReceiverAction["kind"][] = [];
  let restored: { state: Buffer; guestClockMs: number } | undefined;
  let targetRunning = false;

  // The target's driver: actions first, then replies.
  const toSource = new Pipe(rand, (frame) => {
    const step = tx.handle(frame);
    if (step.event !== undefined) events.push(step.event);
    assert.equal(step.error, undefined, step.error?.message);
    for (const b of step.send) toTarget.write(b);
  });
  const toTarget: Pipe = new Pipe(rand, (frame) => {
    const step = rx.handle(frame);
    assert.equal(step.error, undefined, step.error?.message);
    const replies = [...step.replies];
    for (const a of step.actions) {
      actions.push(a.kind);
      switch (a.kind) {
        case "prepare":
          assert.equal(a.pageCount, pageCount);
          replies.push(...rx.prepared().replies);
          break;
        case "writePages":
          applyPages(targetRam, a.pages);
          break;
        case "restoreState":
          restored = { state: Buffer.from(a.state), guestClockMs: a.guestClockMs };
          break;
        case "resume":
          targetRunning = true;
          replies.push(...rx.resumed(Date.now()).replies);
          break;
        case "roundComplete":
          break;
        case "abort":
          assert.fail(`unexpected abort: ${a.reason}`);
      }
    }
    for (const b of replies) toSource.write(b);
  });

  // Handshake.
  toTarget.write(tx.hello());
  assert.equal(tx.state, "Ready");
  assert.deepEqual(events.shift(), { kind: "prepared", pageCount });

  // Pre-copy rounds, scanning in 1 MiB slices with the guest running between slices.
  const tracker = new DirtyTracker(pageCount);
  const writer = new PageBatchWriter({ maxBytes: 256 * 1024 });
  const bandwidth = 2 * PAGE_SIZE * 16; // simulated link: bytes per ms (128 KiB/ms)
  const history: number[] = [];
  const decisions: PolicyDecision[] = [];
  let roundsAtLevel = 0;
  let sentTotal = 0;
  let ticks = 0;

  const runRound = async (all: boolean): Promise<{ pages: number; bytes: number }> => {
    toTarget.write(tx.beginRound());
    writer.begin(tx.currentRound);
    const before = tx.stats.bytesSent;
    const flush = (): void => {
      const payload = writer.take();
      if (payload !== undefined) toTarget.write(tx.pages(payload));
    };
    const dirty = await tracker.scanAll(() => guest.ram, {
      all,
      sliceBytes: 1024 * 1024,
      yieldFn: async () => {
        ticks++;
        guestTick(guest, rand);
        await new Promise<void>((r) => setImmediate(r));
      },
      onDirty: (page, cur, prev) => {
        if (writer.add(page, cur, prev)) flush();
      },
    });
    flush();
    toTarget.write(tx.endRound());
    const bytes = tx.stats.bytesSent - before;
    sentTotal += bytes;
    return { pages: dirty.length, bytes };
  };

  let last = await runRound(true);
  assert.equal(last.pages, pageCount, "round 0 sends every page");
  for (;;) {
    // What a stop now would send: the pages dirtied during the last round (what the next scan will find).
    const next = await runRound(false);
    const remaining = next.pages * PAGE_SIZE;
    roundsAtLevel++;
    const durationMs = last.bytes / bandwidth;
    const d = decideNextStep({
      roundsDone: tx.stats.roundsDone,
      bytesSentTotal: sentTotal,
      ramBytes: guest.ram.length,
      lastRound: { bytesSent: next.bytes, durationMs, dirtyBytes: remaining },
      bandwidthBytesPerMs: bandwidth,
      dirtyRateBytesPerMs: remaining / Math.max(durationMs, 1),
      remainingDirtyBytes: remaining,
      remainingHistory: history.slice(-2),
      downtimeTargetMs: 3,
      throttleLevel: guest.throttle,
      roundsAtThrottleLevel: roundsAtLevel,
      maxRounds: 30,
    });
    history.push(remaining);
    decisions.push(d);
    last = next;
    if (d.action === "stop-and-copy") break;
    if (d.action === "throttle") {
      assert.ok(d.level > guest.throttle);
      guest.throttle = d.level;
      roundsAtLevel = 0;
    }
  }
  assert.ok(tx.stats.roundsDone <= 30);
  assert.ok(
    decisions.some((d) => d.action === "throttle"),
    `the busy guest needed throttling: ${JSON.stringify(decisions.map((d) => d.action))}`,
  );

  // Stop-and-copy: pause the guest, send the device state (the target restores it while...), then what is left, then COMPLETE.
  guest.running = false;
  const pausedAtMs = Date.now();
  toTarget.write(tx.sendState(deviceState, pausedAtMs + 0.5, pausedAtMs));
  const final = await runRound(false);
  toTarget.write(tx.complete());
  toTarget.end();
  toSource.end();

  assert.equal(tx.state, "Done");
  assert.equal(tx.mustDestroySource, true);
  assert.equal(rx.state, "Resumed");
  assert.equal(targetRunning, true);
  assert.equal(events.at(-1)?.kind, "resumed");
  assert.ok(Buffer.from(targetRam).equals(guest.ram), "target RAM is byte-identical to the source");
  assert.ok(restored?.state.equals(deviceState));
  assert.equal(restored?.guestClockMs, pausedAtMs + 0.5);
  assert.deepEqual(actions.slice(0, 1), ["prepare"]);
  assert.equal(actions.at(-1), "resume");
  const restoredAt = actions.lastIndexOf("restoreState");
  assert.deepEqual(actions.slice(restoredAt + 1).filter((a) => a !== "writePages" && a !== "zeroPages"), ["roundComplete", "resume"], "after the state: the final round, then the resume");
  assert.equal(rx.stats.rounds, tx.stats.roundsDone);
  assert.ok(ticks > 20);
  // Every encoding was exercised on the way.
  const [zero, raw, delta, lz4] = writer.totals.byEncoding;
  assert.ok(zero > 0 && raw > 0 && delta > 0 && lz4 > 0, JSON.stringify(writer.totals.byEncoding));
  assert.deepEqual(rx.stats.pagesByEncoding, writer.totals.byEncoding);
  assert.ok(final.pages < 200, `final round sent ${final.pages} pages`);
});

void test("a migration cancelled midway leaves the target aborted and the source free to run", async () => {
  const rand = seededRandom(5);
  const config: VmMigrationConfig = { name: "db", uuid: "u-db", memoryMiB: 1, vgaMemoryKiB: 256, nic: "ne2k", disk: true, generation: 1, pageSize: PAGE_SIZE };
  const tx = new SenderStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE, migrationId: "m", config });
  const rx = new ReceiverStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE });
  const ram = new Uint8Array(1024 * 1024);
  randomFill(rand, ram);
  const kinds: string[] = [];
  const toSource = new Pipe(rand, (f) => {
    for (const b of tx.handle(f).send) toTarget.write(b);
  });
  const toTarget: Pipe = new Pipe(rand, (f) => {
    const s = rx.handle(f);
    const replies = [...s.replies];
    for (const a of s.actions) {
      kinds.push(a.kind);
      if (a.kind === "prepare") replies.push(...rx.prepared().replies);
    }
    for (const b of replies) toSource.write(b);
  });
  toTarget.write(tx.hello());
  toTarget.write(tx.beginRound());
  const w = new PageBatchWriter();
  w.begin(0);
  const t = new DirtyTracker(256);
  t.scanSlice(ram, 0, 100, { all: true, onDirty: (p, cur, prev) => void w.add(p, cur, prev) });
  toTarget.write(tx.pages(w.take()!));
  for (const b of tx.abort("operator cancelled")) toTarget.write(b);
  await Promise.resolve();
  assert.equal(tx.state, "Aborted");
  assert.equal(tx.sourceMayResume, true);
  assert.equal(rx.state, "Aborted");
  assert.deepEqual(kinds, ["prepare", "writePages", "abort"]);
  assert.match(rx.error?.message ?? "", /operator cancelled/);
});
