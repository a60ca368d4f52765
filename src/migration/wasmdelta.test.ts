import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { applyPages, deltaApply, deltaEncodeInto, encodePageInto, PageBatchWriter } from "./pages.js";
import { DirtyTracker } from "./dirty.js";
import { decodePagesPayload, PAGE_SIZE, PageEncoding } from "./protocol.js";
import { randInt, seededRandom } from "./testing.js";
import { DELTA_OUT_BYTES, firstPassScratchBytes, pageEncoderScratchBytes, WasmDelta, WasmFirstPass, WasmPageApplier, WasmPageEncoder } from "./wasmdelta.js";

/** Runs `fn` with a fresh directory (the wasm module's cache), removed afterwards. */
async function inTempDir(prefix: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

void test("the wasm DELTA encoder writes exactly what the JS encoder writes, works in place, and gives up at the same size", () =>
  inTempDir("hop-wasmdelta-", async (dir) => {
    const memory = new WebAssembly.Memory({ initial: 4 });
    const OUT = 3 * 65536;
    const enc = await WasmDelta.create(memory, OUT, dir);
    const rand = seededRandom(11);
    // Unaligned offsets too: the encoder must not depend on 16-byte alignment.
    const curAt = 5;
    const prevAt = 65536 + 3;
    const jsOut = new Uint8Array(PAGE_SIZE + 64);
    const wasmOut = new Uint8Array(PAGE_SIZE + 64);
    for (let trial = 0; trial < 400; trial++) {
      const cur = new Uint8Array(memory.buffer, curAt, PAGE_SIZE);
      const prev = new Uint8Array(memory.buffer, prevAt, PAGE_SIZE);
      for (let i = 0; i < PAGE_SIZE; i++) prev[i] = trial % 3 === 0 ? 0 : randInt(rand, 256);
      cur.set(prev);
      // From one changed byte to a page rewritten, with runs and gaps of 1-4 equal bytes.
      const changes = [1, 2, 5, 40, 300, 4096][trial % 6]!;
      for (let c = 0; c < changes; c++) {
        const at = trial % 7 === 0 ? PAGE_SIZE - 1 - randInt(rand, 8) : randInt(rand, PAGE_SIZE);
        const len = 1 + randInt(rand, 6);
        for (let k = at; k < Math.min(PAGE_SIZE, at + len); k++) cur[k] = (cur[k]! + 1 + randInt(rand, 255)) & 0xff;
      }
      const max = trial % 5 === 0 ? randInt(rand, 64) : PAGE_SIZE - 1;
      const a = deltaEncodeInto(cur, prev, jsOut, 0, max);
      const b = enc.encodeInto(cur, prev, wasmOut, 0, max);
      assert.equal(b, a, `trial ${trial}: length`);
      if (a >= 0) {
        assert.deepEqual(wasmOut.subarray(0, a), jsOut.subarray(0, a), `trial ${trial}: bytes`);
        const target = Uint8Array.from(prev);
        deltaApply(wasmOut.subarray(0, a), target, 0, PAGE_SIZE);
        assert.deepEqual(target, Uint8Array.from(cur), `trial ${trial}: applies`);
      }
    }
    assert.ok(OUT + DELTA_OUT_BYTES <= memory.buffer.byteLength);
    assert.equal(enc.encodeInto(new Uint8Array(PAGE_SIZE), new Uint8Array(memory.buffer, 0, PAGE_SIZE), wasmOut, 0, 100), undefined, "a page outside the memory is left to the JS encoder");
  }));

void test("the wasm page encoder writes the PAGES entries encodePageInto would (LZ4 off), updates the shadow, skips clean pages and splits full payloads", () =>
  inTempDir("hop-wasmpages-", async (dir) => {
    const pageCount = 64;
    const bytes = pageCount * PAGE_SIZE;
    const maxList = 16;
    const maxPayload = 3 * (PAGE_SIZE + 9) + 8 + 100; // room for three RAW pages: forces splits
    const memory = new WebAssembly.Memory({ initial: Math.ceil((2 * bytes + pageEncoderScratchBytes(maxList, maxPayload)) / 65536) + 1 });
    const enc = await WasmPageEncoder.create(memory, 2 * bytes, maxList, maxPayload, dir);
    const ram = new Uint8Array(memory.buffer, 0, bytes);
    const shadow = new Uint8Array(memory.buffer, bytes, bytes);
    const rand = seededRandom(5);
    for (let i = 0; i < bytes; i++) ram[i] = i % 3 === 0 ? randInt(rand, 256) : 0;
    shadow.set(ram);
    const before = Uint8Array.from(shadow);
    // Changed: one byte, a run, the whole page (RAW), zeroed (ZERO); the rest listed but clean.
    const change: Record<number, (off: number) => void> = {
      1: (off) => (ram[off + 5] = (ram[off + 5]! + 1) & 0xff),
      7: (off) => ram.fill(0x33, off + 100, off + 180),
      9: (off) => { for (let i = 0; i < PAGE_SIZE; i++) ram[off + i] = randInt(rand, 256); },
      12: (off) => ram.fill(0, off, off + PAGE_SIZE),
      13: (off) => { for (let i = 0; i < PAGE_SIZE; i++) ram[off + i] = randInt(rand, 256); },
      20: (off) => { for (let i = 0; i < PAGE_SIZE; i++) ram[off + i] = randInt(rand, 256); },
      21: (off) => { for (let i = 0; i < PAGE_SIZE; i++) ram[off + i] = randInt(rand, 256); },
      63: (off) => (ram[off + PAGE_SIZE - 1] = (ram[off + PAGE_SIZE - 1]! + 1) & 0xff),
    };
    for (const [p, f] of Object.entries(change)) f(Number(p) * PAGE_SIZE);
    const expected = Uint8Array.from(ram);
    const list = [0, 1, 2, 7, 9, 12, 13, 20, 21, 30, 63];
    const target = Uint8Array.from(before);
    const seen: number[] = [];
    let payloads = 0;
    for (let i = 0; i < list.length; ) {
      const r = enc.encodePages(ram, shadow, list, i, list.length, 4);
      assert.ok(r.next > i, "progress");
      i = r.next;
      if (r.payload === undefined) continue;
      payloads++;
      assert.ok(r.payload.length <= maxPayload);
      const { round, pages } = decodePagesPayload(r.payload);
      assert.equal(round, 4);
      assert.equal(pages.length, r.dirty);
      for (const e of pages) {
        seen.push(e.index);
        const off = e.index * PAGE_SIZE;
        const js = encodePageInto(expected.subarray(off, off + PAGE_SIZE), before.subarray(off, off + PAGE_SIZE), new Uint8Array(PAGE_SIZE), 0, { lz4: false });
        assert.equal(e.encoding, js.encoding, `page ${e.index}: encoding`);
        assert.equal(e.data.length, js.length, `page ${e.index}: length`);
      }
      applyPages(target, pages);
    }
    assert.deepEqual(seen, [1, 7, 9, 12, 13, 20, 21, 63], "only the changed pages, in list order");
    assert.ok(payloads >= 2, "the payload limit split the batch");
    assert.deepEqual(target, expected, "the target's copy equals RAM");
    assert.deepEqual(Uint8Array.from(shadow), expected, "the shadow took the new content");
    assert.equal(enc.encodePages(ram, shadow, list, 0, list.length, 5).dirty, 0, "nothing is dirty any more");
    assert.throws(() => enc.encodePages(ram, shadow, [pageCount], 0, 1, 5), RangeError);
  }));

void test("the wasm page applier does what applyPages does (ZERO, RAW, DELTA), leaves LZ4 payloads to JS untouched, and refuses bad DELTAs and pages outside RAM", () =>
  inTempDir("hop-wasmapply-", async (dir) => {
    const pageCount = 32;
    const bytes = pageCount * PAGE_SIZE;
    const memory = new WebAssembly.Memory({ initial: Math.ceil((bytes + (1 << 20)) / 65536) + 1 });
    const applier = await WasmPageApplier.create(memory, bytes, 1 << 20, dir);
    const ram = new Uint8Array(memory.buffer, 0, bytes);
    const rand = seededRandom(9);
    const old = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i++) old[i] = i % 5 === 0 ? randInt(rand, 256) : 0;
    const next = Uint8Array.from(old);
    for (let p = 0; p < pageCount; p++) {
      const off = p * PAGE_SIZE;
      if (p % 4 === 0) next.fill(0, off, off + PAGE_SIZE);
      else if (p % 4 === 1) for (let i = 0; i < PAGE_SIZE; i++) next[off + i] = randInt(rand, 256);
      else next[off + ((p * 37) % PAGE_SIZE)]! ^= 0x5a;
    }
    const writer = new PageBatchWriter({ maxBytes: 1 << 20, encode: { lz4: false } });
    writer.begin(1);
    for (let p = 0; p < pageCount; p++) writer.add(p, next.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), old.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
    const payload = Buffer.from(writer.take()!);
    const kinds = new Set(decodePagesPayload(payload).pages.map((e) => e.encoding));
    assert.ok(kinds.has(0) && kinds.has(1) && kinds.has(2), "ZERO, RAW and DELTA entries");
    ram.set(old);
    assert.equal(applier.apply(ram, payload), true);
    assert.deepEqual(Uint8Array.from(ram), next, "RAM equals the new content");
    const js = Uint8Array.from(old);
    applyPages(js, decodePagesPayload(payload).pages);
    assert.deepEqual(js, next, "as applyPages does");

    // An LZ4 entry: left to JS, RAM untouched.
    const lz4Writer = new PageBatchWriter({ maxBytes: 1 << 20, encode: { lz4: true } });
    lz4Writer.begin(1);
    const text = Buffer.alloc(PAGE_SIZE, "hopvisor ");
    lz4Writer.add(3, next.subarray(3 * PAGE_SIZE, 4 * PAGE_SIZE), old.subarray(3 * PAGE_SIZE, 4 * PAGE_SIZE));
    lz4Writer.add(5, text);
    const withLz4 = Buffer.from(lz4Writer.take()!);
    assert.ok(decodePagesPayload(withLz4).pages.some((e) => e.encoding === 3), "the payload has an LZ4 entry");
    ram.set(old);
    assert.equal(applier.apply(ram, withLz4), false);
    assert.deepEqual(Uint8Array.from(ram), old, "nothing applied");

    // A DELTA whose runs pass the end of the page, and a page outside RAM.
    const bad = Buffer.from(payload);
    const entries = decodePagesPayload(bad).pages;
    const delta = entries.find((e) => e.encoding === 2)!;
    const at = delta.data.byteOffset - bad.byteOffset;
    bad[at] = 0xff; // zero run of 127 + more...
    bad[at + 1] = 0x7f; // ...16383: past the page
    assert.throws(() => applier.apply(ram, bad), /invalid DELTA/);
    const outside = Buffer.from(payload);
    outside.writeUInt32LE(pageCount, 8);
    assert.throws(() => applier.apply(ram, outside), (e: Error & { code?: string }) => e.code === "MIGRATION_PAGE_OUT_OF_RANGE");
  }));

void test("the wasm first pass finds the zero pages the JS first pass finds, sends every other page RAW in the same order, fills the shadow, and splits a slice that overflows its payload", () =>
  inTempDir("hop-wasmfirst-", async (dir) => {
    const pageCount = 96;
    const bytes = pageCount * PAGE_SIZE;
    const slicePages = 40;
    for (const maxPayload of [8 + slicePages * (PAGE_SIZE + 9), 8 + 5 * (PAGE_SIZE + 9) + 7]) {
      const memory = new WebAssembly.Memory({ initial: Math.ceil((2 * bytes + firstPassScratchBytes(slicePages, maxPayload)) / 65536) + 1 });
      const pass = await WasmFirstPass.create(memory, 2 * bytes, slicePages, maxPayload, dir);
      const ram = new Uint8Array(memory.buffer, 0, bytes);
      const shadow = new Uint8Array(memory.buffer, bytes, bytes);
      const rand = seededRandom(21);
      // Zero pages, full pages, and pages with a single non-zero byte at either end.
      for (let p = 0; p < pageCount; p++) {
        const off = p * PAGE_SIZE;
        if (p % 5 === 1) ram[off] = 1;
        else if (p % 5 === 2) ram[off + PAGE_SIZE - 1] = 0x80;
        else if (p % 5 === 3) for (let i = 0; i < PAGE_SIZE; i++) ram[off + i] = randInt(rand, 256);
      }
      // The JS path on a copy.
      const js = new DirtyTracker(pageCount);
      const jsZero: number[] = [];
      const jsData: number[] = [];
      js.firstPass(Uint8Array.from(ram), 0, pageCount, (p) => jsZero.push(p), (p) => jsData.push(p));

      const tracker = new DirtyTracker(pageCount, PAGE_SIZE, { shadow: () => shadow });
      await tracker.prefault();
      const target = new Uint8Array(bytes).fill(0x55);
      const zero: number[] = [];
      const data: number[] = [];
      let payloads = 0;
      for (let first = 0; first < pageCount; first += slicePages) {
        const count = Math.min(slicePages, pageCount - first);
        tracker.markFirstPass(first, first + count);
        const r = pass.slice(ram, shadow, first, count, 0, (payload) => {
          payloads++;
          assert.ok(payload.length <= maxPayload, "a payload keeps to its limit");
          const decoded = decodePagesPayload(payload);
          assert.equal(decoded.round, 0);
          for (const e of decoded.pages) {
            assert.equal(e.encoding, PageEncoding.Raw, `page ${e.index} goes RAW`);
            data.push(e.index);
          }
          applyPages(target, decoded.pages);
          pass.recycle(payload);
        });
        for (let i = 0; i < count; i++) if ((r.bitmap[i >> 3]! >> (i & 7)) & 1) zero.push(first + i);
        assert.equal(r.zeros, zero.filter((p) => p >= first && p < first + count).length);
        assert.equal(r.data + r.zeros, count);
      }
      for (const p of zero) target.fill(0, p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
      assert.deepEqual(zero, jsZero, "the same zero pages");
      assert.deepEqual(data, jsData, "the same data pages, in order");
      assert.deepEqual(target, Uint8Array.from(ram), "the target's copy equals RAM");
      assert.deepEqual(Uint8Array.from(shadow), Uint8Array.from(ram), "the shadow holds every page");
      assert.equal(tracker.knownPages(), pageCount);
      if (maxPayload < 8 + slicePages * (PAGE_SIZE + 9)) assert.ok(payloads > Math.ceil(pageCount / slicePages), `a slice overflowing its payload is split (${payloads} payloads)`);
      else assert.equal(payloads, Math.ceil(pageCount / slicePages), "one payload per slice");
      assert.throws(() => tracker.markFirstPass(0, 1), RangeError, "a page goes through the first pass once");
      assert.throws(() => pass.slice(ram, shadow, pageCount - 1, 2, 0, () => undefined), RangeError, "a slice past RAM is refused");
    }
  }));
