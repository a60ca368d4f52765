import assert from "node:assert/strict";
import { test } from "node:test";
import { BLOCK_BYTES, changedChunks, DirtyTracker } from "./dirty.js";
import { PAGE_SIZE } from "./protocol.js";
import { randInt, randomFill, seededRandom } from "./testing.js";

const rand = seededRandom(7);

/** Changes pages at random: first byte, last byte, middle, whole page, zeroing. */
function dirtyRandomly(ram: Uint8Array, pageCount: number, n: number): void {
  for (let i = 0; i < n; i++) {
    const p = randInt(rand, pageCount);
    const off = p * PAGE_SIZE;
    switch (i % 5) {
      case 0:
        ram[off] = (ram[off]! + 1) & 0xff;
        break;
      case 1:
        ram[off + PAGE_SIZE - 1] = (ram[off + PAGE_SIZE - 1]! + 1) & 0xff;
        break;
      case 2:
        ram[off + randInt(rand, PAGE_SIZE)] = randInt(rand, 256);
        break;
      case 3:
        randomFill(rand, ram, off, off + PAGE_SIZE);
        break;
      case 4:
        ram.fill(0, off, off + PAGE_SIZE);
        break;
    }
  }
}

/** Pages whose bytes differ between two RAM images, by brute force. */
function diffPages(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  for (let p = 0; p * PAGE_SIZE < a.length; p++) {
    for (let i = p * PAGE_SIZE; i < (p + 1) * PAGE_SIZE; i++) {
      if (a[i] !== b[i]) {
        out.push(p);
        break;
      }
    }
  }
  return out;
}

void test("DirtyTracker finds exactly the pages that changed, in any slicing", () => {
  const pageCount = 1000; // not a multiple of the 16-page block
  const ram = new Uint8Array(pageCount * PAGE_SIZE);
  randomFill(rand, ram, 0, ram.length / 2);
  const t = new DirtyTracker(pageCount);
  t.snapshot(ram);
  assert.deepEqual(t.scanSlice(ram, 0, pageCount), [], "nothing changed after the snapshot");
  for (let trial = 0; trial < 30; trial++) {
    const before = Uint8Array.from(ram);
    dirtyRandomly(ram, pageCount, randInt(rand, 60));
    // Edges of blocks and of the RAM are the classic off-by-one spots.
    for (const p of [0, 15, 16, 17, pageCount - 1]) {
      if (trial % 3 === 0) {
        ram[p * PAGE_SIZE + 100] = (ram[p * PAGE_SIZE + 100]! ^ 0xff) & 0xff;
      }
    }
    const found: number[] = [];
    const sliceSizes = [1, 7, 16, 33, 1000];
    const slice = sliceSizes[trial % sliceSizes.length]!;
    for (let p = 0; p < pageCount; p += slice) found.push(...t.scanSlice(ram, p, Math.min(pageCount, p + slice)));
    const changed = diffPages(before, ram);
    assert.ok(changed.length > 0 || trial % 3 !== 0);
    assert.deepEqual(found, changed, `trial ${trial}, slices of ${slice}`);
    assert.deepEqual(t.scanSlice(ram, 0, pageCount), [], "the shadow caught up");
    assert.ok(Buffer.from(t.shadowView).equals(ram));
  }
});

void test("the callback sees the old and new content; `all` reports every page once, with no previous copy at first", () => {
  const pageCount = 64;
  const ram = new Uint8Array(pageCount * PAGE_SIZE);
  randomFill(rand, ram);
  const t = new DirtyTracker(pageCount);
  const seen: number[] = [];
  t.scanSlice(ram, 0, pageCount, {
    all: true,
    onDirty: (p, cur, prev) => {
      assert.equal(prev, undefined, "the target holds nothing yet");
      assert.ok(Buffer.from(cur).equals(ram.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)));
      seen.push(p);
    },
  });
  assert.equal(seen.length, pageCount);
  assert.equal(t.knownPages(), pageCount);
  const old = Uint8Array.from(ram.subarray(5 * PAGE_SIZE, 6 * PAGE_SIZE));
  ram[5 * PAGE_SIZE + 9] = ram[5 * PAGE_SIZE + 9]! ^ 1;
  const calls: [number, Uint8Array, Uint8Array | undefined][] = [];
  const found = t.scanSlice(ram, 0, pageCount, { onDirty: (p, cur, prev) => calls.push([p, Uint8Array.from(cur), prev && Uint8Array.from(prev)]) });
  assert.deepEqual(found, [5]);
  assert.equal(calls.length, 1);
  assert.deepEqual(calls[0]![2], old);
  assert.deepEqual(calls[0]![1], ram.subarray(5 * PAGE_SIZE, 6 * PAGE_SIZE));
  // A page never reported before has no previous copy even in a normal scan.
  const fresh = new DirtyTracker(pageCount);
  fresh.scanSlice(ram, 0, 1, { all: true });
  const prevs: (Uint8Array | undefined)[] = [];
  fresh.scanSlice(ram, 0, 2, { onDirty: (_p, _c, prev) => prevs.push(prev) });
  assert.deepEqual(prevs, [undefined], "page 1 is reported with no previous copy");
  assert.throws(() => t.scanSlice(ram, 0, pageCount + 1), RangeError);
  assert.throws(() => t.scanSlice(ram.subarray(0, PAGE_SIZE), 0, 1), RangeError);
});

void test("scanAll yields between slices and catches writes made while it runs", async () => {
  const pageCount = 4096; // 16 MiB
  const ram = new Uint8Array(pageCount * PAGE_SIZE);
  const t = new DirtyTracker(pageCount);
  await t.scanAll(() => ram, { all: true });
  let yields = 0;
  const writtenDuring = new Set<number>();
  const found = await t.scanAll(() => ram, {
    sliceBytes: 1024 * 1024,
    yieldFn: async () => {
      yields++;
      // The "guest" writes while the scan is paused between slices.
      const q = randInt(rand, pageCount);
      ram[q * PAGE_SIZE] = ram[q * PAGE_SIZE]! + 1;
      writtenDuring.add(q);
    },
  });
  assert.equal(yields, 15, "16 slices of 1 MiB, a yield between each");
  // Pages written ahead of the scan are found now; those behind it are found by the next scan.
  const next = t.scanSlice(ram, 0, pageCount);
  assert.deepEqual(
    [...new Set([...found, ...next])].sort((a, b) => a - b),
    [...writtenDuring].sort((a, b) => a - b),
  );
  assert.ok(Buffer.from(t.shadowView).equals(ram));
  assert.equal(BLOCK_BYTES, 65536);
});

void test("prefault leaves the shadow all zero, yields once per slice, and changes nothing a scan reports", async () => {
  const pages = 64;
  const ram = new Uint8Array(pages * PAGE_SIZE);
  randomFill(seededRandom(7), ram, 5 * PAGE_SIZE, 9 * PAGE_SIZE);
  const plain = new DirtyTracker(pages);
  const faulted = new DirtyTracker(pages);
  let yields = 0;
  await faulted.prefault({
    sliceBytes: 16 * PAGE_SIZE,
    yieldFn: async () => {
      yields++;
    },
  });
  assert.equal(yields, 4);
  assert.ok(faulted.shadowView.every((b) => b === 0));
  assert.deepEqual(faulted.scanSlice(ram, 0, pages), plain.scanSlice(ram, 0, pages));
  assert.deepEqual(faulted.scanSlice(ram, 0, pages), [], "the shadow took the pages in");
});

void test("scanPages checks only the listed pages (a dirty log's harvest): reports those that differ, skips the rest", () => {
  const pageCount = 300;
  const ram = new Uint8Array(pageCount * PAGE_SIZE);
  randomFill(rand, ram);
  const t = new DirtyTracker(pageCount);
  t.snapshot(ram);
  for (const p of [3, 40, 41, 299]) ram[p * PAGE_SIZE + 7] = (ram[p * PAGE_SIZE + 7]! + 1) & 0xff;
  const seen: [number, boolean][] = [];
  // 5 and 100 are listed but unchanged (a log reports a superset); 299 changed but is not listed.
  const listed = [3, 5, 40, 41, 100];
  const found = t.scanPages(ram, listed, 0, listed.length, { onDirty: (p, _cur, prev) => seen.push([p, prev !== undefined]) });
  assert.deepEqual(found, [3, 40, 41]);
  assert.deepEqual(seen, [[3, true], [40, true], [41, true]], "known pages come with their previous copy");
  assert.deepEqual(t.scanPages(ram, listed, 1, 3), [], "the shadow took the new content; a sub-range of the list works");
  assert.deepEqual(t.scanSlice(ram, 0, pageCount), [299], "what the list left out is still found by a full compare");
  assert.throws(() => t.scanPages(ram, [pageCount]), RangeError);
});

void test("an unzeroed shadow must be prefaulted (zeroed) before use", async () => {
  const pageCount = 64;
  const ram = new Uint8Array(pageCount * PAGE_SIZE);
  const t = new DirtyTracker(pageCount, PAGE_SIZE, { zeroed: false });
  assert.throws(() => t.scanSlice(ram, 0, pageCount), /prefault/);
  await t.prefault({ sliceBytes: 16 * PAGE_SIZE, yieldFn: () => Promise.resolve() });
  assert.ok(Buffer.from(t.shadowView).equals(Buffer.alloc(pageCount * PAGE_SIZE)), "prefault zeroed the shadow");
  assert.deepEqual(t.scanSlice(ram, 0, pageCount), []);
});

void test("changedChunks: runs of changed chunks, adjacent ones merged, a shorter last chunk included", () => {
  const prev = new Uint8Array(10_000);
  const cur = Uint8Array.from(prev);
  assert.deepEqual(changedChunks(cur, prev, 4096), []);
  cur[0] = 1;
  cur[4096] = 1;
  assert.deepEqual(changedChunks(cur, prev, 4096), [[0, 8192]], "two adjacent chunks as one run");
  cur[4096] = 0;
  cur[9999] = 7;
  assert.deepEqual(changedChunks(cur, prev, 4096), [
    [0, 4096],
    [8192, 10_000],
  ]);
  assert.throws(() => changedChunks(cur, new Uint8Array(4096), 4096), RangeError);
});
