import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { checkCompatible, decodeStateFile, encodeStateFile, readStateFile, StateFileError, writeStateFile, type StateHeader } from "./statefile.js";

const header: StateHeader = {
  kind: "template",
  engine: "v86 0.5.462",
  memoryMiB: 128,
  vgaMemoryKiB: 256,
  nic: "virtio",
  disk: false,
  imageHash: "abc",
  createdAt: "2026-11-24T00:00:00.000Z",
  savedAtMs: 1,
};

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof StateFileError);
    return err.code;
  }
  return "none";
}

void test("state file round-trips and detects every kind of damage", async () => {
  const payload = Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251));
  const file = Buffer.concat(encodeStateFile(header, payload));
  const back = decodeStateFile(file);
  assert.deepEqual(back.header, header);
  assert.ok(back.payload.equals(payload));

  assert.equal(code(() => decodeStateFile(file.subarray(0, file.length - 1))), "STATEFILE_CORRUPT");
  assert.equal(code(() => decodeStateFile(Buffer.from("not a state file at all, no no no no no no no"))), "STATEFILE_CORRUPT");
  for (const at of [20, 200, file.length - 40, file.length - 1]) {
    const bad = Buffer.from(file);
    bad[at] = (bad[at] ?? 0) ^ 0x40;
    assert.equal(code(() => decodeStateFile(bad)), "STATEFILE_CORRUPT", `flip at ${at}`);
  }
  const v2 = Buffer.from(file);
  v2.writeUInt32LE(2, 8);
  assert.equal(code(() => decodeStateFile(v2)), "STATEFILE_VERSION");
  assert.equal(code(() => checkCompatible(header, { ...header, memoryMiB: 256 }, "t")), "STATEFILE_INCOMPATIBLE");
  assert.equal(code(() => checkCompatible(header, { ...header }, "t")), "none");

  const dir = await mkdtemp(join(tmpdir(), "hop-state-"));
  try {
    const path = join(dir, "s.hopstate");
    await writeStateFile(path, header, payload);
    assert.ok((await readStateFile(path)).payload.equals(payload));
    assert.deepEqual(await readdir(dir), ["s.hopstate"], "no temp file is left behind");
    await writeFile(path, file.subarray(0, 100));
    await assert.rejects(readStateFile(path), (e: unknown) => e instanceof StateFileError && e.code === "STATEFILE_CORRUPT");
    // The target is a directory: the write fails cleanly and leaves no temp file.
    await assert.rejects(writeStateFile(dir, header, payload), (e: unknown) => e instanceof StateFileError && e.code === "STATEFILE_WRITE_FAILED");
    assert.deepEqual(await readdir(dir), ["s.hopstate"]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
