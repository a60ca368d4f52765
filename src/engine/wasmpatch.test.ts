import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { DIRTY_MAP_GLOBAL, ensurePatchedWasm, RAM_PAGE_GLOBAL } from "./wasmpatch.js";

const wasmPath = createRequire(import.meta.url).resolve("v86/build/v86.wasm");

void test("the patched v86 module exports the dirty-log globals, keeps v86's imports, and a corrupt cached copy is patched again", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hop-wasmpatch-"));
  try {
    const first = await ensurePatchedWasm(wasmPath, dir);
    const exports = WebAssembly.Module.exports(first.module).map((e) => `${e.name}:${e.kind}`);
    assert.ok(exports.includes(`${DIRTY_MAP_GLOBAL}:global`) && exports.includes(`${RAM_PAGE_GLOBAL}:global`), "the globals are exported");
    for (const f of ["jit_dirty_cache", "zero_memory", "full_clear_tlb", "write8"]) assert.ok(exports.includes(`${f}:function`), `${f} is still exported`);
    const stock = WebAssembly.Module.imports(await WebAssembly.compile(await readFile(wasmPath)));
    assert.deepEqual(WebAssembly.Module.imports(first.module), stock, "no import was added (v86 instantiates it with its own import object)");
    assert.deepEqual(await readdir(join(dir, "engine")), [first.path.split("/").pop()], "one cached file, no temporary left");

    await writeFile(first.path, Buffer.from("not wasm"));
    const again = await ensurePatchedWasm(wasmPath, dir);
    assert.equal(again.path, first.path);
    assert.ok(WebAssembly.Module.exports(again.module).some((e) => e.name === DIRTY_MAP_GLOBAL), "the corrupt copy was replaced");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
