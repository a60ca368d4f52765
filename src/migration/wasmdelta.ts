/**
 * The DELTA page encoder (see pages.ts) in WebAssembly with 128-bit SIMD, working in place on
 * the guest's wasm memory: the page, the shadow copy it is compared with and the output all
 * lie in that one memory (the shadow is placed there by the source, see source.ts), so
 * encoding a page copies nothing but its (small) result. It writes exactly the bytes of
 * deltaEncodeInto; the JS encoder took ~1.6 us for a page that differs in one byte (16384 such
 * pages are a 64 MiB dirty set's final round), this one ~0.2 us.
 *
 * The module is written below in WebAssembly text, assembled with binaryen once and cached
 * next to the engine's patched module.
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";

/** Bytes the encoder may write past `out` (a page of output plus a varint pair). */
export const DELTA_OUT_BYTES = 4096 + 32;

const WAT = `
(module
  (import "env" "memory" (memory 1))
  (func $varint (param $op i32) (param $v i32) (result i32)
    (block $done
      (loop $more
        (br_if $done (i32.lt_u (local.get $v) (i32.const 128)))
        (i32.store8 (local.get $op) (i32.or (i32.and (local.get $v) (i32.const 127)) (i32.const 128)))
        (local.set $op (i32.add (local.get $op) (i32.const 1)))
        (local.set $v (i32.shr_u (local.get $v) (i32.const 7)))
        (br $more)))
    (i32.store8 (local.get $op) (local.get $v))
    (i32.add (local.get $op) (i32.const 1)))
  ;; delta(cur, prev, n, out, max) -> bytes written at out, or -1 when more than max are needed
  (func (export "delta") (param $cur i32) (param $prev i32) (param $n i32) (param $out i32) (param $max i32) (result i32)
    (local $i i32) (local $z i32) (local $s i32) (local $g i32) (local $op i32) (local $end i32) (local $k i32) (local $lit i32)
    (local.set $op (local.get $out))
    (local.set $end (i32.add (local.get $out) (local.get $max)))
    (block $finished
      (loop $run
        (br_if $finished (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $z (local.get $i))
        ;; equal bytes: 16 at a time where aligned
        (block $eqdone
          (loop $eq
            (br_if $eqdone (i32.ge_u (local.get $i) (local.get $n)))
            (if (i32.and (i32.eqz (i32.and (local.get $i) (i32.const 15))) (i32.le_u (i32.add (local.get $i) (i32.const 16)) (local.get $n)))
              (then
                (if (i32.eqz (v128.any_true (v128.xor
                      (v128.load align=1 (i32.add (local.get $cur) (local.get $i)))
                      (v128.load align=1 (i32.add (local.get $prev) (local.get $i))))))
                  (then
                    (local.set $i (i32.add (local.get $i) (i32.const 16)))
                    (br $eq)))))
            (br_if $eqdone (i32.ne
              (i32.load8_u (i32.add (local.get $cur) (local.get $i)))
              (i32.load8_u (i32.add (local.get $prev) (local.get $i)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $eq)))
        (local.set $s (local.get $i))
        ;; literals: differing bytes, and gaps of fewer than 3 equal bytes between them
        (block $litdone
          (loop $lit
            (br_if $litdone (i32.ge_u (local.get $i) (local.get $n)))
            (if (i32.ne
                  (i32.load8_u (i32.add (local.get $cur) (local.get $i)))
                  (i32.load8_u (i32.add (local.get $prev) (local.get $i))))
              (then
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $lit)))
            (local.set $g (i32.add (local.get $i) (i32.const 1)))
            (block $gapdone
              (loop $gap
                (br_if $gapdone (i32.ge_u (local.get $g) (local.get $n)))
                (br_if $gapdone (i32.ge_u (i32.sub (local.get $g) (local.get $i)) (i32.const 3)))
                (br_if $gapdone (i32.ne
                  (i32.load8_u (i32.add (local.get $cur) (local.get $g)))
                  (i32.load8_u (i32.add (local.get $prev) (local.get $g)))))
                (local.set $g (i32.add (local.get $g) (i32.const 1)))
                (br $gap)))
            (br_if $litdone (i32.ge_u (i32.sub (local.get $g) (local.get $i)) (i32.const 3)))
            (br_if $litdone (i32.eq (local.get $g) (local.get $n)))
            (local.set $i (local.get $g))
            (br $lit)))
        (local.set $lit (i32.sub (local.get $i) (local.get $s)))
        (if (i32.gt_u (i32.add (i32.add (local.get $op) (i32.const 10)) (local.get $lit)) (local.get $end))
          (then (return (i32.const -1))))
        (local.set $op (call $varint (local.get $op) (i32.sub (local.get $s) (local.get $z))))
        (local.set $op (call $varint (local.get $op) (local.get $lit)))
        (local.set $k (i32.const 0))
        (block $xordone
          (loop $xor
            (br_if $xordone (i32.ge_u (local.get $k) (local.get $lit)))
            (i32.store8 (i32.add (local.get $op) (local.get $k)) (i32.xor
              (i32.load8_u (i32.add (local.get $cur) (i32.add (local.get $s) (local.get $k))))
              (i32.load8_u (i32.add (local.get $prev) (i32.add (local.get $s) (local.get $k))))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $xor)))
        (local.set $op (i32.add (local.get $op) (local.get $lit)))
        (br $run)))
    (i32.sub (local.get $op) (local.get $out))))
`;

/** Assembles the module (binaryen, loaded only here). */
export async function assembleDeltaModule(): Promise<Uint8Array<ArrayBuffer>> {
  const binaryen = (await import("binaryen")).default;
  const m = binaryen.parseText(WAT);
  try {
    m.setFeatures(binaryen.Features.MVP | binaryen.Features.SIMD128);
    if (!m.validate()) throw new Error("the DELTA encoder module does not validate");
    m.optimize();
    return new Uint8Array(m.emitBinary());
  } finally {
    m.dispose();
  }
}

const modules = new Map<string, Promise<WebAssembly.Module>>();

function modulePath(cacheDir: string): string {
  return join(cacheDir, "engine", `delta-${createHash("sha256").update(WAT).digest("hex").slice(0, 16)}.wasm`);
}

/** Assembles and caches the encoder ahead of its first use (hop image build). Returns the file. */
export async function prepareDeltaEncoder(cacheDir: string): Promise<string> {
  await deltaModule(cacheDir);
  return modulePath(cacheDir);
}

/** The compiled module, from `cacheDir` or assembled and cached there (once per process). */
export function deltaModule(cacheDir: string): Promise<WebAssembly.Module> {
  const file = modulePath(cacheDir);
  let p = modules.get(file);
  if (p === undefined) {
    p = (async () => {
      try {
        return await WebAssembly.compile(await readFile(file));
      } catch {
        const bytes = await assembleDeltaModule();
        await mkdir(dirname(file), { recursive: true });
        const tmp = `${file}.${process.pid}.tmp`;
        await writeFile(tmp, bytes);
        await rename(tmp, file);
        return WebAssembly.compile(bytes);
      }
    })();
    modules.set(file, p);
    p.catch(() => modules.delete(file));
  }
  return p;
}

/**
 * A DELTA encoder bound to one wasm memory: `encode` works when both pages are views into that
 * memory (and `out`, a scratch area of DELTA_OUT_BYTES there, is given); it returns undefined
 * otherwise, and the caller uses the JS encoder.
 */
export class WasmDelta {
  private constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly fn: (cur: number, prev: number, n: number, out: number, max: number) => number,
    private readonly out: number,
  ) {}

  static async create(memory: WebAssembly.Memory, out: number, cacheDir: string): Promise<WasmDelta> {
    const instance = await WebAssembly.instantiate(await deltaModule(cacheDir), { env: { memory } });
    const fn = instance.exports["delta"];
    if (typeof fn !== "function") throw new Error("the DELTA encoder module has no delta function");
    return new WasmDelta(memory, fn as (cur: number, prev: number, n: number, out: number, max: number) => number, out);
  }

  /** As deltaEncodeInto; undefined when `cur` or `prev` is not in this memory. */
  encodeInto(cur: Uint8Array, prev: Uint8Array, dest: Uint8Array, off: number, maxLen: number): number | undefined {
    const buffer = this.memory.buffer;
    if (cur.buffer !== buffer || prev.buffer !== buffer || cur.length !== prev.length || cur.length > 4096) return undefined;
    const max = Math.min(maxLen, dest.length - off);
    const len = this.fn(cur.byteOffset, prev.byteOffset, cur.length, this.out, max);
    if (len < 0) return -1;
    dest.set(new Uint8Array(buffer, this.out, len), off);
    return len;
  }
}
