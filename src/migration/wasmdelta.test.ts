import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { deltaApply, deltaEncodeInto } from "./pages.js";
import { PAGE_SIZE } from "./protocol.js";
import { randInt, seededRandom } from "./testing.js";
import { DELTA_OUT_BYTES, WasmDelta } from "./wasmdelta.js";

void test("the wasm DELTA encoder writes exactly what the JS encoder writes, works in place, and gives up at the same size", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hop-wasmdelta-"));
  try {
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
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
