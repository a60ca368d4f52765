/**
 * Runs the page codec's hot paths (encoding RAW, ZERO and DELTA pages into PAGES payloads,
 * decoding and applying them) on scratch buffers, so that V8 has optimised them before a
 * migration needs them. Cold, a target took 15-20 ms longer to apply the final round of a
 * guest rewriting 64 MiB (16384 DELTA pages) than it did warm: time inside the guest's pause.
 * Called by a VM process's warm-up (src/vm/warmup.ts).
 */
import { applyPages, PageBatchWriter } from "./pages.js";
import { decodePagesPayload, PAGE_SIZE } from "./protocol.js";

const PAGES = 256;

/** `rounds` passes over PAGES scratch pages; returns the pages applied (for tests). */
export function warmPageCodec(rounds = 24): number {
  const ram = new Uint8Array(PAGES * PAGE_SIZE);
  for (let i = 0; i < ram.length; i += 61) ram[i] = (i * 131) & 0xff;
  const shadow = new Uint8Array(ram.length);
  const target = new Uint8Array(ram.length);
  const writer = new PageBatchWriter({ maxBytes: 256 * 1024, encode: { lz4: false } });
  let applied = 0;
  for (let r = 0; r < rounds; r++) {
    writer.begin(r);
    const payloads: Buffer[] = [];
    for (let p = 0; p < PAGES; p++) {
      const off = p * PAGE_SIZE;
      // Round 0 sends every page whole; later rounds change a byte or two (DELTA), clear a few pages (ZERO).
      if (r > 0) {
        if (p % 64 === 0) ram.fill(0, off, off + PAGE_SIZE);
        else ram[off + ((p * 7 + r * 13) % PAGE_SIZE)]! ^= 0x5a;
      }
      const cur = ram.subarray(off, off + PAGE_SIZE);
      if (writer.add(p, cur, r > 0 ? shadow.subarray(off, off + PAGE_SIZE) : undefined)) payloads.push(Buffer.from(writer.take()!));
      shadow.set(cur, off);
    }
    const last = writer.take();
    if (last !== undefined) payloads.push(Buffer.from(last));
    for (const payload of payloads) {
      const { pages } = decodePagesPayload(payload);
      applyPages(target, pages);
      applied += pages.length;
    }
  }
  if (Buffer.compare(target, ram) !== 0) throw new Error("the page codec warm-up did not reproduce its pages");
  return applied;
}
