/**
 * Quick throughput figures for the migration building blocks (not a test, no assertions):
 *   node dist/src/migration/codec-bench.js
 * Synthetic pages first; then, when a template state from the cache is available, the RAM of a
 * real booted guest restored into the engine: a full first round, and the pages it dirties in a
 * second of running idle.
 */
import { existsSync, readdirSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { defaultCacheDir } from "../common/paths.js";
import { Engine } from "../engine/index.js";
import { readStateFile } from "../storage/statefile.js";
import { DirtyTracker, isZeroPage } from "./dirty.js";
import { lz4CompressBlock, lz4DecompressBlock } from "./lz4.js";
import { applyPage, encodePageInto, PageBatchWriter, type PageEncodeOptions } from "./pages.js";
import { crc32, crc32Js, encodeFrame, Command, FrameDecoder, PAGE_SIZE, pageEncodingName, type PageEncoding } from "./protocol.js";
import { randomFill, seededRandom } from "./testing.js";

const MB = 1e6;
const rand = seededRandom(1);

function bench(label: string, bytes: number, fn: () => void, minMs = 300): number {
  fn(); // warm up
  let reps = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < minMs) {
    fn();
    reps++;
    t = performance.now();
  }
  const ms = (t - t0) / reps;
  console.log(`${label.padEnd(58)} ${ms.toFixed(3).padStart(9)} ms  ${((bytes / MB) / (ms / 1000)).toFixed(0).padStart(6)} MB/s`);
  return ms;
}

function pagesOf(kind: "random" | "zero" | "repetitive" | "text", n: number): Uint8Array {
  const buf = new Uint8Array(n * PAGE_SIZE);
  for (let p = 0; p < n; p++) {
    const off = p * PAGE_SIZE;
    if (kind === "random") randomFill(rand, buf, off, off + PAGE_SIZE);
    if (kind === "repetitive") for (let i = 0; i < PAGE_SIZE; i += 32) buf.set([p & 0xff, 0, 0xc0, 0x12, 1, 0, 0, 0], off + i);
    if (kind === "text") {
      const words = ["init ", "sh ", "/bin/busybox ", "GLIBC ", "eth0 ", "\n", "00000000 "];
      for (let i = off; i < off + PAGE_SIZE; ) {
        const w = Buffer.from(words[Math.floor(rand() * words.length)]!);
        buf.set(w.subarray(0, Math.min(w.length, off + PAGE_SIZE - i)), i);
        i += w.length;
      }
    }
  }
  return buf;
}

function encodeAll(ram: Uint8Array, prev: Uint8Array | undefined, options: PageEncodeOptions): { bytes: number; counts: number[] } {
  const n = ram.length / PAGE_SIZE;
  const dest = new Uint8Array(PAGE_SIZE);
  const counts = [0, 0, 0, 0];
  let bytes = 0;
  for (let p = 0; p < n; p++) {
    const off = p * PAGE_SIZE;
    const r = encodePageInto(ram.subarray(off, off + PAGE_SIZE), prev?.subarray(off, off + PAGE_SIZE), dest, 0, options);
    counts[r.encoding]!++;
    bytes += r.length + 9;
  }
  return { bytes, counts };
}

function mix(counts: number[]): string {
  return counts.map((c, i) => `${pageEncodingName(i as PageEncoding)} ${c}`).join(", ");
}

function synthetic(): void {
  console.log("\n== synthetic pages (16 MiB each) ==");
  const N = 4096;
  for (const kind of ["random", "zero", "repetitive", "text"] as const) {
    const ram = pagesOf(kind, N);
    const r = encodeAll(ram, undefined, {});
    bench(`encode ${kind} (no prev) -> ${mix(r.counts)}; ratio ${(ram.length / r.bytes).toFixed(2)}`, ram.length, () => void encodeAll(ram, undefined, {}));
  }
  const base = pagesOf("random", N);
  const sparse = Uint8Array.from(base);
  for (let p = 0; p < N; p++) for (let k = 0; k < 8; k++) sparse[p * PAGE_SIZE + Math.floor(rand() * PAGE_SIZE)] = Math.floor(rand() * 256);
  const d = encodeAll(sparse, base, {});
  bench(`encode sparse change (8 bytes/page) vs prev -> ${mix(d.counts)}; ratio ${(sparse.length / d.bytes).toFixed(0)}`, sparse.length, () => void encodeAll(sparse, base, {}));
  bench("encode random vs prev (delta fails, lz4 fails, RAW)", base.length, () => void encodeAll(base, sparse, {}));
  bench("encode random, compression off (RAW)", base.length, () => void encodeAll(base, undefined, { lz4: false, delta: false }));

  const rep = pagesOf("text", N);
  const blocks: Uint8Array[] = [];
  const tmp = new Uint8Array(PAGE_SIZE);
  for (let p = 0; p < N; p++) {
    const len = lz4CompressBlock(rep.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), tmp, 0, PAGE_SIZE);
    blocks.push(Uint8Array.from(tmp.subarray(0, len)));
  }
  const out = new Uint8Array(N * PAGE_SIZE);
  bench("LZ4 decompress text pages (output MB/s)", out.length, () => {
    for (let p = 0; p < N; p++) lz4DecompressBlock(blocks[p]!, out, p * PAGE_SIZE, PAGE_SIZE);
  });
  const deltaTarget = Uint8Array.from(base);
  const deltas: Uint8Array[] = [];
  for (let p = 0; p < N; p++) {
    const buf = new Uint8Array(PAGE_SIZE);
    const r = encodePageInto(sparse.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), base.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), buf, 0, {});
    deltas.push(buf.subarray(0, r.length));
  }
  bench("DELTA apply sparse pages (page MB/s)", deltaTarget.length, () => {
    deltaTarget.set(base);
    for (let p = 0; p < N; p++) applyPage(deltaTarget, { index: p, encoding: 2, data: deltas[p]! });
  });

  console.log("\n== zero check, CRC, framing ==");
  const zeros = new Uint8Array(N * PAGE_SIZE);
  bench("isZeroPage over zero pages (Buffer.compare)", zeros.length, () => {
    for (let p = 0; p < N; p++) isZeroPage(zeros.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
  });
  bench("isZeroPage via Float64Array word loop (for comparison)", zeros.length, () => {
    const w = new Float64Array(zeros.buffer, zeros.byteOffset, zeros.length / 8);
    for (let p = 0; p < N; p++) {
      const s = (p * PAGE_SIZE) / 8;
      for (let i = s; i < s + PAGE_SIZE / 8; i++) if (w[i] !== 0) break;
    }
  });
  const mib = Buffer.from(pagesOf("random", 256));
  bench("crc32 (zlib) 1 MiB", mib.length, () => void crc32(mib));
  bench("crc32 (JS table) 1 MiB", mib.length, () => void crc32Js(mib));
  const frame = encodeFrame(Command.Pages, mib);
  bench("encodeFrame 1 MiB PAGES", mib.length, () => void encodeFrame(Command.Pages, mib));
  bench("FrameDecoder 1 MiB frame in 64 KiB chunks", frame.length, () => {
    const d = new FrameDecoder();
    for (let i = 0; i < frame.length; i += 65536) d.push(frame.subarray(i, i + 65536));
  });

  console.log("\n== dirty scan (shadow compare) ==");
  for (const mibs of [64, 128]) {
    const pages = (mibs * 1024 * 1024) / PAGE_SIZE;
    const ram = pagesOf("text", pages);
    const t = new DirtyTracker(pages);
    t.snapshot(ram);
    bench(`scan ${mibs} MiB, nothing dirty`, ram.length, () => void t.scanSlice(ram, 0, pages));
    bench(`scan ${mibs} MiB, 1% of pages dirty (incl. copying them)`, ram.length, () => {
      for (let k = 0; k < pages / 100; k++) ram[Math.floor(rand() * pages) * PAGE_SIZE + 5]! ^= 1;
      t.scanSlice(ram, 0, pages);
    });
  }
}

async function realGuest(): Promise<void> {
  const cache = process.env["HOPVISOR_CACHE"] ?? defaultCacheDir();
  const dir = join(cache, "templates");
  if (!existsSync(dir)) {
    console.log("\n(no template states in the cache: skipping the real-guest figures)");
    return;
  }
  for (const name of readdirSync(dir).filter((n) => n.endsWith(".hopstate"))) {
    const { header, payload } = await readStateFile(join(dir, name));
    const image = join(cache, "images", header.imageHash);
    if (header.disk || !existsSync(join(image, "bios.bin"))) continue;
    console.log(`\n== real guest: template ${name} (${header.memoryMiB} MiB, booted, idle) ==`);
    const engine = await Engine.create({
      memoryMiB: header.memoryMiB,
      vgaMemoryKiB: header.vgaMemoryKiB,
      bios: await readFile(join(image, "bios.bin")),
      vgabios: await readFile(join(image, "vgabios.bin")),
      nic: header.nic === "ne2k" ? "ne2k" : "virtio",
      serialPorts: 2,
    });
    try {
      await engine.restoreState(payload.buffer.slice(payload.byteOffset, payload.byteOffset + payload.byteLength) as ArrayBuffer);
      const ram = engine.ram();
      const pages = ram.length / PAGE_SIZE;
      const copy = Uint8Array.from(ram);
      const first = encodeAll(copy, undefined, {});
      bench(`round 0 encode, all pages -> ${mix(first.counts)}; wire ${(first.bytes / MB).toFixed(1)} MB`, copy.length, () => void encodeAll(copy, undefined, {}), 1000);
      const encoded: { encoding: PageEncoding; data: Uint8Array }[] = [];
      for (let p = 0; p < pages; p++) {
        const buf = new Uint8Array(PAGE_SIZE);
        const r = encodePageInto(copy.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), undefined, buf, 0, {});
        encoded.push({ encoding: r.encoding, data: buf.subarray(0, r.length) });
      }
      const target = new Uint8Array(copy.length);
      bench("round 0 decode (applyPage) all pages", copy.length, () => {
        for (let p = 0; p < pages; p++) applyPage(target, { index: p, ...encoded[p]! });
      });
      if (!Buffer.from(target).equals(copy)) throw new Error("round-0 decode mismatch");
      const noLz4 = encodeAll(copy, undefined, { lz4: false });
      bench(`round 0 encode, LZ4 off -> wire ${(noLz4.bytes / MB).toFixed(1)} MB`, copy.length, () => void encodeAll(copy, undefined, { lz4: false }), 1000);
      const tracker = new DirtyTracker(pages);
      tracker.scanSlice(ram, 0, pages, { all: true });
      bench(`scan ${header.memoryMiB} MiB real RAM, guest paused (clean)`, ram.length, () => void tracker.scanSlice(engine.ram(), 0, pages));
      await engine.run();
      await new Promise((r) => setTimeout(r, 1000));
      await engine.pause();
      const before = Uint8Array.from(tracker.shadowView);
      const t0 = performance.now();
      const dirty = tracker.scanSlice(engine.ram(), 0, pages);
      const scanMs = performance.now() - t0;
      console.log(`after 1 s running: ${dirty.length} dirty pages (${((dirty.length * PAGE_SIZE) / MB).toFixed(2)} MB), scan with copy ${scanMs.toFixed(2)} ms`);
      const w = new PageBatchWriter({ maxBytes: 1 << 20 });
      const now = engine.ram();
      const enc = (): void => {
        w.begin(1);
        for (const p of dirty) {
          const off = p * PAGE_SIZE;
          if (w.add(p, now.subarray(off, off + PAGE_SIZE), before.subarray(off, off + PAGE_SIZE))) w.take();
        }
        w.take();
      };
      const t1 = { ...w.totals, byEncoding: [...w.totals.byEncoding] };
      enc();
      const counts = w.totals.byEncoding.map((c, i) => c - t1.byEncoding[i]!);
      const bytes = w.totals.bytes - t1.bytes;
      bench(`encode those dirty pages vs prev -> ${mix(counts)}; ratio ${((dirty.length * PAGE_SIZE) / bytes).toFixed(1)}`, dirty.length * PAGE_SIZE, enc);
    } finally {
      await engine.destroy();
    }
    return;
  }
  console.log("\n(no template without a disk and with its image in the cache: skipping the real-guest figures)");
}

synthetic();
await realGuest();
