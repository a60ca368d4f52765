import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { checkCompatible, decodeRamPagesPayload, decodeStateFile, encodeRamPagesPayload, encodeStateFile, readStateFile, readStateFileIntoRam, StateFileError, writeStateFile, type StateHeader } from "./statefile.js";

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

void test("a pages-layout state file streams into RAM as decodeRamPagesPayload reads it, and every kind of damage is refused", async () => {
  // 3 MiB of RAM (pages straddle the 1 MiB read chunks' ends): every 3rd page has data.
  const ramBytes = 3 * 1024 * 1024 + 4096 * 5;
  const ram = Buffer.alloc(ramBytes);
  for (let p = 0; p < ramBytes / 4096; p += 3) ram.fill((p % 250) + 1, p * 4096, p * 4096 + 4096);
  ram[ramBytes - 1] = 9;
  const engineState = Buffer.from(Array.from({ length: 70_001 }, (_, i) => (i * 7) % 256));
  const parts = encodeRamPagesPayload(engineState, ram);
  const pagesHeader: StateHeader = { ...header, kind: "quick-migration", ram: "pages" };
  const dir = await mkdtemp(join(tmpdir(), "hop-state-"));
  try {
    const path = join(dir, "q.hopstate");
    await writeStateFile(path, pagesHeader, parts);
    const into = Buffer.alloc(ramBytes);
    const got = await readStateFileIntoRam(path, into);
    assert.ok(got !== undefined);
    assert.deepEqual(got.header, pagesHeader);
    assert.ok(got.state.equals(engineState));
    assert.ok(into.equals(ram), "RAM as saved");
    const viaWhole = Buffer.alloc(ramBytes);
    assert.ok(decodeRamPagesPayload((await readStateFile(path)).payload, viaWhole).equals(engineState));
    assert.ok(viaWhole.equals(into), "the same RAM as the whole-file reader");

    // An engine-layout file is left to readStateFile, RAM untouched.
    const enginePath = join(dir, "e.hopstate");
    await writeStateFile(enginePath, header, engineState);
    const untouched = Buffer.alloc(ramBytes);
    assert.equal(await readStateFileIntoRam(enginePath, untouched), undefined);
    assert.ok(untouched.equals(Buffer.alloc(ramBytes)));

    const file = Buffer.concat(encodeStateFile(pagesHeader, parts));
    const rejects = async (bytes: Buffer, want: string, what: string, ramLength = ramBytes): Promise<void> => {
      await writeFile(path, bytes);
      await assert.rejects(readStateFileIntoRam(path, Buffer.alloc(ramLength)), (e: unknown) => e instanceof StateFileError && e.code === want, what);
    };
    for (const at of [20, 300, 80_000, file.length >> 1, file.length - 40, file.length - 1]) {
      const bad = Buffer.from(file);
      bad[at] = (bad[at] ?? 0) ^ 0x40;
      await rejects(bad, "STATEFILE_CORRUPT", `flip at ${at}`);
    }
    await rejects(file.subarray(0, file.length - 1), "STATEFILE_CORRUPT", "truncated");
    await rejects(file.subarray(0, 10), "STATEFILE_CORRUPT", "shorter than the prefix");
    await rejects(file, "STATEFILE_CORRUPT", "RAM of another size", ramBytes + 4096);
    const v2 = Buffer.from(file);
    v2.writeUInt32LE(2, 8);
    await rejects(v2, "STATEFILE_VERSION", "another format version");
    await assert.rejects(readStateFileIntoRam(join(dir, "missing"), Buffer.alloc(4096)), (e: unknown) => e instanceof StateFileError && e.code === "STATEFILE_READ_FAILED");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
