/**
 * A generated wasm module kept in the cache directory: compiled from `file` when it is there and
 * compiles; otherwise built by `build`, written atomically (processes may start at the same
 * time) and compiled. A cached file that does not compile (truncated, corrupt) is built again.
 */
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname } from "node:path";

export async function cachedWasmModule(file: string, build: () => Promise<Uint8Array<ArrayBuffer>>): Promise<WebAssembly.Module> {
  try {
    return await WebAssembly.compile(await readFile(file));
  } catch {
    // Missing or unusable: build it (again).
  }
  const bytes = await build();
  await mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, bytes);
  await rename(tmp, file);
  return WebAssembly.compile(bytes);
}
