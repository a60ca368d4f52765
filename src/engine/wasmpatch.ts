/**
 * A dirty-page log for v86, added to its wasm module at load time.
 *
 * v86 has no dirty log, so without one a live migration has to compare all of RAM against a
 * shadow copy while the guest is paused. Every guest write reaches RAM in one of two ways:
 *   - through a writable TLB entry: v86 creates those only in `do_page_walk` with
 *     `for_writing` set (an entry made for a read is read-only and a write re-walks);
 *   - as a physical write (page-table A/D bits, device DMA, `write_blob`), which v86 always
 *     reports to its JIT through `jit_dirty_page_ctx` / `jit_dirty_cache` (code invalidation),
 *     or as `zero_memory`.
 * The patch wraps those four functions. While the exported global `_hop_dirty_map` holds the
 * address of a byte map (one byte per 4 KiB page of the wasm memory), each wrapper sets the
 * byte of every page it writes or makes writable. With the TLB flushed when the log starts and
 * at every harvest, a page written since the last harvest is always marked (see DirtyLog).
 *
 * Functions are found by their (mangled) names in the module's name section; the patch
 * fails loudly if any is missing or has another signature, and the engine self-tests the
 * result on a real guest write at start-up. The patched module is cached on disk, keyed by
 * the original's hash and the patch version.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { cachedWasmModule } from "../common/wasmcache.js";
import { EngineInitError } from "./errors.js";

/** Bump when the patch changes: the cache key includes it. */
export const WASM_PATCH_VERSION = 1;

/** Exported mutable i32 globals the patch adds (leading "_": v86 does not hand them to its JIT modules). */
export const DIRTY_MAP_GLOBAL = "_hop_dirty_map";
export const RAM_PAGE_GLOBAL = "_hop_ram_page";

/** The byte map covers the whole 4 GiB wasm32 address space, one byte per 4 KiB page. */
export const DIRTY_MAP_BYTES = 1 << 20;

interface Target {
  /** A pattern for the function's name (Rust v0 mangling or plain). */
  name: RegExp;
  params: number;
  results: number;
}

const TARGETS = {
  pageWalk: { name: /^_R\w*do_page_walk$/, params: 5, results: 1 },
  dirtyPage: { name: /^_R\w*jit18jit_dirty_page_ctx$/, params: 2, results: 0 },
  dirtyCache: { name: /^jit_dirty_cache$/, params: 2, results: 0 },
  zeroMemory: { name: /^zero_memory$/, params: 2, results: 0 },
} satisfies Record<string, Target>;

type Binaryen = typeof import("binaryen").default;

/** Returns v86's wasm with the dirty log added. Throws EngineInitError if the module does not fit. */
export async function patchV86Wasm(original: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const binaryen: Binaryen = (await import("binaryen")).default;
  const m = binaryen.readBinary(original);
  try {
    const i32 = binaryen.i32;
    const names: string[] = [];
    for (let i = 0; i < m.getNumFunctions(); i++) names.push(binaryen.getFunctionInfo(m.getFunctionByIndex(i)).name);
    const find = (what: string, t: Target): string => {
      const found = names.filter((n) => t.name.test(n));
      if (found.length !== 1) throw new EngineInitError(`the v86 wasm patch needs exactly one function ${what} (${String(t.name)}), found ${found.length}`);
      const name = found[0]!;
      const info = binaryen.getFunctionInfo(m.getFunction(name));
      const params = binaryen.expandType(info.params);
      const results = binaryen.expandType(info.results);
      if (params.length !== t.params || params.some((p) => p !== i32) || results.length !== t.results || results.some((r) => r !== i32)) {
        throw new EngineInitError(`the v86 wasm function ${name} has an unexpected signature`);
      }
      return name;
    };
    m.addGlobal(DIRTY_MAP_GLOBAL, i32, true, m.i32.const(0));
    m.addGlobal(RAM_PAGE_GLOBAL, i32, true, m.i32.const(0));
    m.addGlobalExport(DIRTY_MAP_GLOBAL, DIRTY_MAP_GLOBAL);
    m.addGlobalExport(RAM_PAGE_GLOBAL, RAM_PAGE_GLOBAL);
    const map = (): number => m.global.get(DIRTY_MAP_GLOBAL, i32);
    /** map[index & 0xFFFFF] = 1 */
    const mark = (index: number): number => m.i32.store8(0, 1, m.i32.add(map(), m.i32.and(index, m.i32.const(0xfffff))), m.i32.const(1));
    /** The map index of guest-physical page `page` (RAM starts at wasm page _hop_ram_page). */
    const physIndex = (page: number): number => m.i32.add(m.global.get(RAM_PAGE_GLOBAL, i32), page);
    const logging = (): number => m.i32.ne(map(), m.i32.const(0));

    /** Moves `name`'s body to `name$hop` and gives `name` the body `build(call of the original)`. */
    const wrap = (name: string, build: (callOriginal: number, local: (i: number) => number) => number, extraVars: number[]): void => {
      const info = binaryen.getFunctionInfo(m.getFunction(name));
      const inner = `${name}$hop`;
      m.addFunction(inner, info.params, info.results, info.vars, info.body);
      m.removeFunction(name);
      const params = binaryen.expandType(info.params);
      const local = (i: number): number => m.local.get(i, i32);
      const call = m.call(inner, params.map((_, i) => local(i)), info.results);
      m.addFunction(name, info.params, info.results, extraVars, build(call, local));
    };

    // do_page_walk(addr, for_writing, user, jit, side_effects) -> entry (0: page fault).
    // entry ^ addr has the wasm address of the physical page in its upper 20 bits.
    wrap(
      find("do_page_walk", TARGETS.pageWalk),
      (call, local) =>
        m.block(null, [
          m.local.set(5, call),
          m.if(m.i32.and(logging(), m.i32.and(m.i32.ne(local(1), m.i32.const(0)), m.i32.ne(local(5), m.i32.const(0)))), mark(m.i32.shr_u(m.i32.xor(local(5), local(0)), m.i32.const(12)))),
          local(5),
        ], i32),
      [i32],
    );
    // jit_dirty_page_ctx(ctx, page)
    wrap(find("jit_dirty_page_ctx", TARGETS.dirtyPage), (call, local) => m.block(null, [m.if(logging(), mark(physIndex(local(1)))), call]), []);
    // jit_dirty_cache(start, end) and zero_memory(addr, size): physical byte ranges.
    const range = (firstByte: (local: (i: number) => number) => number, endByte: (local: (i: number) => number) => number) => (call: number, local: (i: number) => number): number =>
      m.block(null, [
        m.if(
          m.i32.and(logging(), m.i32.gt_u(endByte(local), firstByte(local))),
          m.block(null, [
            m.local.set(2, m.i32.shr_u(firstByte(local), m.i32.const(12))),
            m.local.set(3, m.i32.shr_u(m.i32.sub(endByte(local), m.i32.const(1)), m.i32.const(12))),
            m.loop("hop_mark", m.block(null, [mark(physIndex(local(2))), m.local.set(2, m.i32.add(local(2), m.i32.const(1))), m.br("hop_mark", m.i32.le_u(local(2), local(3)))])),
          ]),
        ),
        call,
      ]);
    wrap(find("jit_dirty_cache", TARGETS.dirtyCache), range((l) => l(0), (l) => l(1)), [i32, i32]);
    wrap(find("zero_memory", TARGETS.zeroMemory), range((l) => l(0), (l) => m.i32.add(l(0), l(1))), [i32, i32]);

    if (!m.validate()) throw new EngineInitError("the patched v86 wasm module does not validate");
    return new Uint8Array(m.emitBinary());
  } finally {
    m.dispose();
  }
}

/** Where the patched form of `original` is cached (keyed by its hash and the patch version). */
function cachePath(original: Uint8Array, cacheDir: string): string {
  const key = createHash("sha256").update(original).digest("hex").slice(0, 24);
  return join(cacheDir, "engine", `v86-${key}-dirtylog${WASM_PATCH_VERSION}.wasm`);
}

/**
 * The patched module's bytes: read from the cache in `cacheDir`, or patched and stored there
 * (atomically: VM processes may start at the same time). A cached file that does not compile
 * (truncated, corrupt) is patched again.
 */
export async function ensurePatchedWasm(wasmPath: string, cacheDir: string): Promise<{ path: string; module: WebAssembly.Module }> {
  const original = await readFile(wasmPath);
  const file = cachePath(original, cacheDir);
  try {
    return { path: file, module: await cachedWasmModule(file, () => patchV86Wasm(original)) };
  } catch (err) {
    if (err instanceof EngineInitError) throw err;
    throw new EngineInitError(`the patched v86 wasm module does not compile: ${(err as Error).message}`, err);
  }
}

let cached: Promise<WebAssembly.Module> | undefined;

/**
 * The patched v86 module, compiled once per process (the warm-up guest and the real guest share
 * its code).
 */
export function patchedV86Module(wasmPath: string, cacheDir: string): Promise<WebAssembly.Module> {
  cached ??= ensurePatchedWasm(wasmPath, cacheDir).then((r) => r.module);
  const p = cached;
  p.catch(() => {
    if (cached === p) cached = undefined;
  });
  return p;
}
