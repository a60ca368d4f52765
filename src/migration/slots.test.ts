import assert from "node:assert/strict";
import { test } from "node:test";
import { PayloadSlots } from "./slots.js";

void test("payload slots: handed out in turn, none twice, given back only when ours", () => {
  const memory = new WebAssembly.Memory({ initial: 4 });
  const slots = new PayloadSlots(memory, 65536, 32768, 3);
  assert.equal(slots.take(32769), undefined, "bigger than a slot");
  const a = slots.take(1000)!;
  const b = slots.take(32768)!;
  const c = slots.take(1)!;
  assert.equal(slots.take(10), undefined, "all taken");
  assert.deepEqual([a.byteOffset, b.byteOffset, c.byteOffset], [65536, 98304, 131072]);
  assert.deepEqual([a.length, b.length, c.length], [1000, 32768, 1]);
  assert.ok(a.buffer === memory.buffer);
  slots.release(new Uint8Array(1000));
  slots.release(new Uint8Array(memory.buffer, 65536 + 5, 10));
  assert.equal(slots.available, 0, "places not ours, or not at a slot's start, are ignored");
  slots.release(b);
  slots.release(b);
  assert.equal(slots.available, 1, "a place given back twice counts once");
  assert.equal(slots.take(5)!.byteOffset, 98304);
});
