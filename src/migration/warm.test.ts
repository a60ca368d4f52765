import assert from "node:assert/strict";
import { test } from "node:test";
import { warmPageCodec } from "./warm.js";

void test("the page codec warm-up round-trips its scratch pages (RAW, then ZERO and DELTA)", () => {
  assert.equal(warmPageCodec(3), 3 * 256);
});
