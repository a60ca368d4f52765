import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { isZeroPage } from "./dirty.js";
import { lz4CompressBlock, lz4CompressBound, lz4DecompressBlock, Lz4FormatError } from "./lz4.js";
import { applyPage, applyPages, applyZeroPages, deltaApply, deltaEncodeInto, encodePage, PageBatchWriter } from "./pages.js";
import { decodePagesPayload, MigrationError, PAGE_SIZE, PageEncoding, pageEncodingName } from "./protocol.js";
import { randInt, randomFill, seededRandom } from "./testing.js";

const rand = seededRandom(42);

function randomPage(): Uint8Array {
  const p = new Uint8Array(PAGE_SIZE);
  randomFill(rand, p);
  return p;
}

/** Looks like kernel data: small integers, pointers, repeated structs, text. */
function repetitivePage(): Uint8Array {
  const p = new Uint8Array(PAGE_SIZE);
  const text = Buffer.from("root:x:0:0:root:/root:/bin/sh\nbusybox httpd -f -p 80 -h /www\n");
  for (let i = 0; i < PAGE_SIZE; i += 64) {
    p[i] = i & 0xff;
    p[i + 4] = 0xc0;
    p[i + 5] = 0x12;
    p[i + 8] = 1;
  }
  p.set(text, 1000);
  p.set(text, 2000);
  return p;
}

function sparseChange(base: Uint8Array, changes: number): Uint8Array {
  const p = Uint8Array.from(base);
  for (let i = 0; i < changes; i++) p[randInt(rand, PAGE_SIZE)] = randInt(rand, 256);
  return p;
}

function kinds(): [string, Uint8Array, Uint8Array | undefined][] {
  const r = randomPage();
  const rep = repetitivePage();
  const zero = new Uint8Array(PAGE_SIZE);
  const oneByte = new Uint8Array(PAGE_SIZE);
  oneByte[4095] = 1;
  const firstByte = new Uint8Array(PAGE_SIZE);
  firstByte[0] = 0xff;
  const half = randomPage();
  half.fill(0, 0, 2048);
  return [
    ["random", r, undefined],
    ["random vs older random", r, randomPage()],
    ["zero", zero, undefined],
    ["zero vs random", zero, r],
    ["repetitive", rep, undefined],
    ["sparse change of random", sparseChange(r, 5), r],
    ["sparse change of repetitive", sparseChange(rep, 40), rep],
    ["unchanged", rep, Uint8Array.from(rep)],
    ["last byte only", oneByte, undefined],
    ["first byte only", firstByte, new Uint8Array(PAGE_SIZE)],
    ["half zero half random", half, undefined],
    ["every other byte changed", Uint8Array.from(r, (b, i) => (i % 2 === 0 ? b ^ 0x55 : b)), r],
    ["run of 0xff", new Uint8Array(PAGE_SIZE).fill(0xff), undefined],
  ];
}

void test("page codec round-trips random, zero, sparse-changed and repetitive pages, choosing sensible encodings", () => {
  const chosen: Record<string, string> = {};
  for (const [name, cur, prev] of kinds()) {
    for (const options of [{}, { lz4: false }, { delta: false }, { lz4: false, delta: false }]) {
      const enc = encodePage(cur, prev, options);
      const ram = new Uint8Array(3 * PAGE_SIZE);
      randomFill(rand, ram);
      const before = Uint8Array.from(ram);
      if (prev !== undefined) ram.set(prev, PAGE_SIZE);
      applyPage(ram, { index: 1, encoding: enc.encoding, data: enc.data });
      assert.deepEqual(ram.subarray(PAGE_SIZE, 2 * PAGE_SIZE), cur, `${name} ${JSON.stringify(options)} via ${pageEncodingName(enc.encoding)}`);
      assert.deepEqual(ram.subarray(0, PAGE_SIZE), before.subarray(0, PAGE_SIZE), "neighbour before untouched");
      assert.deepEqual(ram.subarray(2 * PAGE_SIZE), before.subarray(2 * PAGE_SIZE), "neighbour after untouched");
      assert.ok(enc.data.length <= PAGE_SIZE);
      if (enc.encoding !== PageEncoding.Raw) assert.ok(enc.data.length < PAGE_SIZE, "a compressed form is only chosen when smaller");
      if (JSON.stringify(options) === "{}") chosen[name] = `${pageEncodingName(enc.encoding)}:${enc.data.length}`;
    }
  }
  assert.match(chosen["random"]!, /^RAW:4096$/);
  assert.match(chosen["zero"]!, /^ZERO:0$/);
  assert.match(chosen["zero vs random"]!, /^ZERO:0$/);
  assert.match(chosen["repetitive"]!, /^LZ4:/);
  assert.match(chosen["sparse change of random"]!, /^DELTA:/);
  assert.ok(Number(chosen["sparse change of random"]!.split(":")[1]) < 40, chosen["sparse change of random"]);
  assert.match(chosen["unchanged"]!, /^DELTA:3$/);
  assert.match(chosen["run of 0xff"]!, /^LZ4:/);
  assert.ok(Number(chosen["run of 0xff"]!.split(":")[1]) < 40, chosen["run of 0xff"]);
});

void test("LZ4 round-trips many shapes and sizes", () => {
  const sizes = [0, 1, 5, 12, 13, 16, 100, 4095, 4096, 65536, 70000];
  for (const n of sizes) {
    const variants: Uint8Array[] = [new Uint8Array(n), new Uint8Array(n).fill(7)];
    const r = new Uint8Array(n);
    randomFill(rand, r);
    variants.push(r);
    const mixed = new Uint8Array(n);
    for (let i = 0; i < n; i++) mixed[i] = (i * 7) % 13 === 0 ? randInt(rand, 256) : i % 300 < 150 ? 0 : 65;
    variants.push(mixed);
    const words = new Uint8Array(n);
    const vocab = ["the ", "guest ", "page ", "migrates ", "quickly ", "\n"];
    for (let i = 0; i < n; ) {
      const w = Buffer.from(vocab[randInt(rand, vocab.length)]!);
      words.set(w.subarray(0, Math.min(w.length, n - i)), i);
      i += w.length;
    }
    variants.push(words);
    for (const src of variants) {
      const dest = new Uint8Array(lz4CompressBound(n) + 8);
      const len = lz4CompressBlock(src, dest, 3, lz4CompressBound(n));
      assert.ok(len >= 1, `size ${n}: compressed length ${len}`);
      const out = new Uint8Array(n + 4).fill(0xee);
      lz4DecompressBlock(dest.subarray(3, 3 + len), out, 2, n);
      assert.deepEqual(out.subarray(2, 2 + n), src, `size ${n}`);
      assert.equal(out[0], 0xee);
      assert.equal(out[n + 2], 0xee);
      // Too small an output budget is reported, not overrun.
      if (len > 1) {
        const tight = new Uint8Array(len + 10).fill(0xcc);
        assert.equal(lz4CompressBlock(src, tight, 0, len - 1), -1);
        assert.ok(tight.subarray(len - 1).every((b) => b === 0xcc), "nothing written past the budget");
      }
    }
  }
});

void test("LZ4 decoder rejects damaged blocks without writing outside its range", () => {
  const page = repetitivePage();
  const dest = new Uint8Array(PAGE_SIZE);
  const block = dest.subarray(0, lz4CompressBlock(page, dest, 0, PAGE_SIZE));
  let rejected = 0;
  for (let trial = 0; trial < 3000; trial++) {
    const bad = Uint8Array.from(block);
    const kind = trial % 3;
    const at = randInt(rand, bad.length);
    if (kind === 0) bad[at] = bad[at]! ^ (1 << randInt(rand, 8));
    else if (kind === 1) bad[randInt(rand, bad.length)] = randInt(rand, 256);
    const input = kind === 2 ? bad.subarray(0, randInt(rand, bad.length)) : bad;
    const out = new Uint8Array(3 * PAGE_SIZE).fill(0xab);
    try {
      lz4DecompressBlock(input, out, PAGE_SIZE, PAGE_SIZE);
    } catch (err) {
      assert.ok(err instanceof Lz4FormatError, `unexpected ${String(err)}`);
      rejected++;
    }
    assert.ok(out.subarray(0, PAGE_SIZE).every((b) => b === 0xab), "nothing written before the range");
    assert.ok(out.subarray(2 * PAGE_SIZE).every((b) => b === 0xab), "nothing written after the range");
  }
  assert.ok(rejected > 1000, `only ${rejected} of 3000 damaged blocks were rejected`);
  // And through applyPage the failure is a MigrationError.
  assert.throws(
    () => applyPage(new Uint8Array(PAGE_SIZE), { index: 0, encoding: PageEncoding.Lz4, data: Buffer.from([0xf0]) }),
    (e: unknown) => e instanceof MigrationError && e.code === "MIGRATION_PAGE_ENCODING",
  );
});

void test("LZ4 blocks interoperate with the reference lz4 tool (when installed)", (t) => {
  const probe = spawnSync("lz4", ["--version"], { encoding: "utf8" });
  if (probe.status !== 0) {
    t.skip("lz4 command not installed");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "hop-lz4-"));
  try {
    for (const [name, page] of [
      ["repetitive", repetitivePage()],
      ["random", randomPage()],
      ["ff", new Uint8Array(PAGE_SIZE).fill(0xff)],
    ] as const) {
      // Ours -> reference: wrap our block in an LZ4 frame (no checksums) and let lz4 -d read it.
      const dest = new Uint8Array(lz4CompressBound(PAGE_SIZE));
      const len = lz4CompressBlock(page, dest, 0, dest.length);
      const flg = 0x60; // version 01, independent blocks, no checksums, no content size
      const bd = 0x40; // max block size 64 KB
      const hc = headerChecksum(Buffer.from([flg, bd]));
      const size = Buffer.alloc(4);
      size.writeUInt32LE(len);
      const frame = Buffer.concat([Buffer.from([0x04, 0x22, 0x4d, 0x18, flg, bd, hc]), size, dest.subarray(0, len), Buffer.alloc(4)]);
      writeFileSync(join(dir, `${name}.lz4`), frame);
      const d = spawnSync("lz4", ["-d", "-f", "-q", join(dir, `${name}.lz4`), join(dir, `${name}.out`)]);
      assert.equal(d.status, 0, `lz4 -d failed for ${name}: ${String(d.stderr)}`);
      assert.deepEqual(new Uint8Array(readFileSync(join(dir, `${name}.out`))), page, name);
      // Reference -> ours: compress with lz4 and decode its (single) block.
      writeFileSync(join(dir, `${name}.bin`), page);
      const c = spawnSync("lz4", ["-f", "-q", "--no-frame-crc", "-BI", "-B4", join(dir, `${name}.bin`), join(dir, `${name}.ref.lz4`)]);
      assert.equal(c.status, 0, `lz4 failed: ${String(c.stderr)}`);
      const ref = readFileSync(join(dir, `${name}.ref.lz4`));
      const flags = ref[4]!;
      let off = 7 + (flags & 0x08 ? 8 : 0) + (flags & 0x01 ? 4 : 0);
      const blockSize = ref.readUInt32LE(off);
      off += 4;
      const out = new Uint8Array(PAGE_SIZE);
      if (blockSize & 0x80000000) out.set(ref.subarray(off, off + (blockSize & 0x7fffffff)));
      else lz4DecompressBlock(ref.subarray(off, off + blockSize), out, 0, PAGE_SIZE);
      assert.deepEqual(out, page, `${name} from the reference compressor`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** LZ4 frame header checksum: second byte of xxh32(FLG..BD, seed 0). */
function headerChecksum(desc: Buffer): number {
  const P1 = 2654435761;
  const P2 = 2246822519;
  const P3 = 3266489917;
  const P5 = 374761393;
  const rotl = (x: number, r: number): number => ((x << r) | (x >>> (32 - r))) >>> 0;
  let h = (P5 + desc.length) >>> 0;
  for (const b of desc) h = Math.imul(rotl((h + Math.imul(b, P5)) >>> 0, 11), P1) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, P2) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, P3) >>> 0;
  h ^= h >>> 16;
  return (h >>> 8) & 0xff;
}

void test("DELTA: round-trips arbitrary change patterns and rejects damaged input", () => {
  for (let trial = 0; trial < 500; trial++) {
    const prev = trial % 2 === 0 ? randomPage() : repetitivePage();
    const cur = Uint8Array.from(prev);
    const runs = randInt(rand, 20);
    for (let r = 0; r < runs; r++) {
      const at = randInt(rand, PAGE_SIZE);
      const len = 1 + randInt(rand, trial % 5 === 0 ? 600 : 8);
      for (let i = at; i < Math.min(PAGE_SIZE, at + len); i++) cur[i] = randInt(rand, 256);
    }
    const dest = new Uint8Array(PAGE_SIZE + 64);
    const len = deltaEncodeInto(cur, prev, dest, 0, dest.length);
    assert.ok(len > 0);
    const ram = Uint8Array.from(prev);
    deltaApply(dest.subarray(0, len), ram, 0, PAGE_SIZE);
    assert.deepEqual(ram, cur, `trial ${trial}`);
    // Damaged: truncations and byte changes either fail cleanly or stay within the page.
    const bad = Uint8Array.from(dest.subarray(0, len));
    const at = randInt(rand, bad.length);
    bad[at] = bad[at]! ^ 0x81;
    const area = new Uint8Array(3 * PAGE_SIZE).fill(9);
    try {
      deltaApply(trial % 3 === 0 ? bad.subarray(0, randInt(rand, bad.length)) : bad, area, PAGE_SIZE, PAGE_SIZE);
    } catch (err) {
      assert.ok(err instanceof MigrationError && err.code === "MIGRATION_PAGE_ENCODING", String(err));
    }
    assert.ok(area.subarray(0, PAGE_SIZE).every((b) => b === 9));
    assert.ok(area.subarray(2 * PAGE_SIZE).every((b) => b === 9));
  }
  assert.equal(deltaEncodeInto(randomPage(), randomPage(), new Uint8Array(PAGE_SIZE), 0, 100), -1, "a delta over budget reports -1");
});

void test("PageBatchWriter packs pages that decodePagesPayload and applyPages restore", () => {
  const pageCount = 300;
  const src = new Uint8Array(pageCount * PAGE_SIZE);
  const old = new Uint8Array(pageCount * PAGE_SIZE);
  for (let p = 0; p < pageCount; p++) {
    const kind = p % 4;
    const off = p * PAGE_SIZE;
    if (kind === 1) randomFill(rand, src, off, off + PAGE_SIZE);
    if (kind === 2) src.set(repetitivePage(), off);
    if (kind === 3) {
      randomFill(rand, old, off, off + PAGE_SIZE);
      src.set(sparseChange(old.subarray(off, off + PAGE_SIZE), 3), off);
    }
  }
  const w = new PageBatchWriter({ maxBytes: 64 * 1024 });
  w.begin(5);
  const payloads: Buffer[] = [];
  for (let p = 0; p < pageCount; p++) {
    const off = p * PAGE_SIZE;
    const prev = p % 4 === 3 ? old.subarray(off, off + PAGE_SIZE) : undefined;
    if (w.add(p, src.subarray(off, off + PAGE_SIZE), prev)) payloads.push(w.take()!);
  }
  const last = w.take();
  if (last !== undefined) payloads.push(last);
  assert.equal(w.take(), undefined);
  assert.ok(payloads.length > 3, `${payloads.length} batches`);
  const target = Uint8Array.from(old);
  let pages = 0;
  for (const payload of payloads) {
    assert.ok(payload.length <= 64 * 1024 + 9 + PAGE_SIZE);
    const batch = decodePagesPayload(payload);
    assert.equal(batch.round, 5);
    pages += batch.pages.length;
    applyPages(target, batch.pages);
  }
  assert.equal(pages, pageCount);
  assert.deepEqual(target, src);
  assert.equal(w.totals.pages, pageCount);
  assert.equal(
    w.totals.bytes,
    payloads.reduce((s, p) => s + p.length, 0),
  );
  const [zero, raw, delta, lz4] = w.totals.byEncoding;
  assert.ok(zero >= 75 && raw >= 75 && delta >= 75 && lz4 >= 75, JSON.stringify(w.totals.byEncoding));
  assert.throws(() => applyPage(new Uint8Array(PAGE_SIZE), { index: 1, encoding: PageEncoding.Zero, data: Buffer.alloc(0) }), (e: unknown) => e instanceof MigrationError && e.code === "MIGRATION_PAGE_OUT_OF_RANGE");
});

void test("isZeroPage", () => {
  const p = new Uint8Array(PAGE_SIZE);
  assert.ok(isZeroPage(p));
  for (const at of [0, 1, 2047, 4095]) {
    p[at] = 1;
    assert.ok(!isZeroPage(p), `byte ${at}`);
    p[at] = 0;
  }
  const two = new Uint8Array(2 * PAGE_SIZE + 10);
  assert.ok(isZeroPage(two));
  two[2 * PAGE_SIZE + 9] = 4;
  assert.ok(!isZeroPage(two));
});

void test("applyZeroPages with a written map skips pages known to be zero (never written) and zeroes the others", () => {
  const ram = new Uint8Array(8 * PAGE_SIZE);
  ram.fill(7, 3 * PAGE_SIZE, 5 * PAGE_SIZE); // pages 3 and 4 hold data
  const written = new Uint8Array(8);
  written[4] = 1;
  // bitmap: pages 2, 3, 4 are zero at the source
  applyZeroPages(ram, 0, 8, Uint8Array.from([0b00011100]), PAGE_SIZE, written);
  assert.equal(ram[3 * PAGE_SIZE], 7, "page 3 is taken on trust as never written: not read, not cleared");
  assert.ok(ram.subarray(4 * PAGE_SIZE, 5 * PAGE_SIZE).every((b) => b === 0), "page 4 was written: it is zeroed");
  applyZeroPages(ram, 0, 8, Uint8Array.from([0b00001000]));
  assert.equal(ram[3 * PAGE_SIZE], 0, "without the map every named page is checked");
});
