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
import { join } from "node:path";
import { cachedWasmModule } from "../common/wasmcache.js";
import { MigrationProtocolError, PAGES_HEADER_BYTES } from "./protocol.js";

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
  (func $delta (export "delta") (param $cur i32) (param $prev i32) (param $n i32) (param $out i32) (param $max i32) (result i32)
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
    (i32.sub (local.get $op) (local.get $out)))
  ;; 1 when the n bytes at a and b are equal (n a multiple of 16)
  (func $equal (param $a i32) (param $b i32) (param $n i32) (result i32)
    (local $i i32)
    (block $differ
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (v128.any_true (v128.xor
          (v128.load align=1 (i32.add (local.get $a) (local.get $i)))
          (v128.load align=1 (i32.add (local.get $b) (local.get $i))))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $next)))
    (i32.const 0))
  ;; 1 when the n bytes at a are zero (n a multiple of 16)
  (func $zero (param $a i32) (param $n i32) (result i32)
    (local $i i32)
    (block $nonzero
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $n)) (then (return (i32.const 1))))
        (br_if $nonzero (v128.any_true (v128.load align=1 (i32.add (local.get $a) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $next)))
    (i32.const 0))
  ;; encode_pages(ram, shadow, list, n, out, cap, res): for the pages list[0..n) (u32 page
  ;; numbers), each that differs from its shadow copy becomes a PAGES entry at out (u32 page,
  ;; u8 encoding, u32 length, data: ZERO, else DELTA against the shadow, else RAW) and the
  ;; shadow takes its content. Stops before an entry could pass out + cap. res[0]: list
  ;; entries consumed, res[1]: bytes written, res[2]: entries written.
  (func (export "encode_pages") (param $ram i32) (param $shadow i32) (param $list i32) (param $n i32) (param $out i32) (param $cap i32) (param $res i32)
    (local $i i32) (local $p i32) (local $cur i32) (local $prev i32) (local $op i32) (local $end i32) (local $len i32) (local $enc i32) (local $count i32)
    (local.set $op (local.get $out))
    (local.set $end (i32.add (local.get $out) (local.get $cap)))
    (block $done
      (loop $page
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $p (i32.load align=1 (i32.add (local.get $list) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $cur (i32.add (local.get $ram) (i32.shl (local.get $p) (i32.const 12))))
        (local.set $prev (i32.add (local.get $shadow) (i32.shl (local.get $p) (i32.const 12))))
        (if (i32.eqz (call $equal (local.get $cur) (local.get $prev) (i32.const 4096)))
          (then
            (br_if $done (i32.gt_u (i32.add (local.get $op) (i32.const 4105)) (local.get $end)))
            (if (call $zero (local.get $cur) (i32.const 4096))
              (then (local.set $enc (i32.const 0)) (local.set $len (i32.const 0)))
              (else
                (local.set $len (call $delta (local.get $cur) (local.get $prev) (i32.const 4096) (i32.add (local.get $op) (i32.const 9)) (i32.const 4095)))
                (if (i32.lt_s (local.get $len) (i32.const 0))
                  (then
                    (local.set $enc (i32.const 1))
                    (local.set $len (i32.const 4096))
                    (memory.copy (i32.add (local.get $op) (i32.const 9)) (local.get $cur) (i32.const 4096)))
                  (else (local.set $enc (i32.const 2))))))
            (i32.store align=1 (local.get $op) (local.get $p))
            (i32.store8 offset=4 (local.get $op) (local.get $enc))
            (i32.store offset=5 align=1 (local.get $op) (local.get $len))
            (local.set $op (i32.add (local.get $op) (i32.add (i32.const 9) (local.get $len))))
            (memory.copy (local.get $prev) (local.get $cur) (i32.const 4096))
            (local.set $count (i32.add (local.get $count) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $page)))
    (i32.store (local.get $res) (local.get $i))
    (i32.store offset=4 (local.get $res) (i32.sub (local.get $op) (local.get $out)))
    (i32.store offset=8 (local.get $res) (local.get $count)))
  ;; first_pass(ram, shadow, from, to, base, bitmap, out, cap, res): round 0 over the pages
  ;; [from, to). A zero page sets bit (page - base) of the bitmap; any other becomes a RAW
  ;; entry at out (u32 page, u8 1, u32 4096, the page) and is copied into the shadow. Stops
  ;; before an entry could pass out + cap. res[0]: the page to go on from, res[1]: bytes
  ;; written, res[2]: entries written, res[3]: zero pages seen.
  (func (export "first_pass") (param $ram i32) (param $shadow i32) (param $from i32) (param $to i32) (param $base i32) (param $bitmap i32) (param $out i32) (param $cap i32) (param $res i32)
    (local $p i32) (local $cur i32) (local $op i32) (local $end i32) (local $count i32) (local $zeros i32) (local $bit i32) (local $at i32)
    (local.set $p (local.get $from))
    (local.set $op (local.get $out))
    (local.set $end (i32.add (local.get $out) (local.get $cap)))
    (block $done
      (loop $page
        (br_if $done (i32.ge_u (local.get $p) (local.get $to)))
        (local.set $cur (i32.add (local.get $ram) (i32.shl (local.get $p) (i32.const 12))))
        (if (call $zero (local.get $cur) (i32.const 4096))
          (then
            (local.set $bit (i32.sub (local.get $p) (local.get $base)))
            (local.set $at (i32.add (local.get $bitmap) (i32.shr_u (local.get $bit) (i32.const 3))))
            (i32.store8 (local.get $at) (i32.or (i32.load8_u (local.get $at)) (i32.shl (i32.const 1) (i32.and (local.get $bit) (i32.const 7)))))
            (local.set $zeros (i32.add (local.get $zeros) (i32.const 1))))
          (else
            (br_if $done (i32.gt_u (i32.add (local.get $op) (i32.const 4105)) (local.get $end)))
            (i32.store align=1 (local.get $op) (local.get $p))
            (i32.store8 offset=4 (local.get $op) (i32.const 1))
            (i32.store offset=5 align=1 (local.get $op) (i32.const 4096))
            (memory.copy (i32.add (local.get $op) (i32.const 9)) (local.get $cur) (i32.const 4096))
            (memory.copy (i32.add (local.get $shadow) (i32.shl (local.get $p) (i32.const 12))) (local.get $cur) (i32.const 4096))
            (local.set $op (i32.add (local.get $op) (i32.const 4105)))
            (local.set $count (i32.add (local.get $count) (i32.const 1)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $page)))
    (i32.store (local.get $res) (local.get $p))
    (i32.store offset=4 (local.get $res) (i32.sub (local.get $op) (local.get $out)))
    (i32.store offset=8 (local.get $res) (local.get $count))
    (i32.store offset=12 (local.get $res) (local.get $zeros)))
  ;; apply_pages(ram, pageCount, payload, len) -> 0, or an error: 1 malformed entry, 2 page out of
  ;; range, 3 LZ4 entry (left to JS; nothing is applied then), 4 bad DELTA. PAGES format as
  ;; written by encode_pages; DELTA entries are XOR-ed into RAM in place (see pages.ts).
  (func (export "apply_pages") (param $ram i32) (param $pages i32) (param $payload i32) (param $len i32) (result i32)
    (local $ip i32) (local $end i32) (local $p i32) (local $enc i32) (local $n i32) (local $data i32) (local $dst i32)
    (local $q i32) (local $qend i32) (local $pos i32) (local $v i32) (local $shift i32) (local $b i32) (local $zr i32) (local $lit i32) (local $k i32) (local $pass i32)
    (local.set $end (i32.add (local.get $payload) (local.get $len)))
    ;; pass 0 checks every entry's header (and that there is no LZ4), pass 1 applies
    (loop $passes
      (local.set $ip (i32.add (local.get $payload) (i32.const 8)))
      (block $entriesdone
        (loop $entry
          (br_if $entriesdone (i32.ge_u (local.get $ip) (local.get $end)))
          (if (i32.gt_u (i32.add (local.get $ip) (i32.const 9)) (local.get $end)) (then (return (i32.const 1))))
          (local.set $p (i32.load align=1 (local.get $ip)))
          (local.set $enc (i32.load8_u offset=4 (local.get $ip)))
          (local.set $n (i32.load offset=5 align=1 (local.get $ip)))
          (local.set $data (i32.add (local.get $ip) (i32.const 9)))
          (if (i32.gt_u (local.get $n) (i32.sub (local.get $end) (local.get $data))) (then (return (i32.const 1))))
          (if (i32.ge_u (local.get $p) (local.get $pages)) (then (return (i32.const 2))))
          (local.set $dst (i32.add (local.get $ram) (i32.shl (local.get $p) (i32.const 12))))
          (if (i32.eq (local.get $enc) (i32.const 3)) (then (return (i32.const 3))))
          (if (i32.eqz (local.get $pass))
            (then
              (if (i32.gt_u (local.get $enc) (i32.const 3)) (then (return (i32.const 1))))
              (if (i32.and (i32.eqz (local.get $enc)) (i32.ne (local.get $n) (i32.const 0))) (then (return (i32.const 1))))
              (if (i32.and (i32.eq (local.get $enc) (i32.const 1)) (i32.ne (local.get $n) (i32.const 4096))) (then (return (i32.const 1))))
              (if (i32.and (i32.eq (local.get $enc) (i32.const 2)) (i32.or (i32.eqz (local.get $n)) (i32.gt_u (local.get $n) (i32.const 4096)))) (then (return (i32.const 1)))))
            (else
              (if (i32.eqz (local.get $enc))
                (then (if (i32.eqz (call $zero (local.get $dst) (i32.const 4096))) (then (memory.fill (local.get $dst) (i32.const 0) (i32.const 4096))))))
              (if (i32.eq (local.get $enc) (i32.const 1))
                (then (memory.copy (local.get $dst) (local.get $data) (i32.const 4096))))
              (if (i32.eq (local.get $enc) (i32.const 2))
                (then
                  ;; runs of (zeroRun varint, literalLength varint, literals) until the page is covered
                  (local.set $q (local.get $data))
                  (local.set $qend (i32.add (local.get $data) (local.get $n)))
                  (local.set $pos (i32.const 0))
                  (block $deltadone
                    (loop $run
                      (br_if $deltadone (i32.ge_u (local.get $pos) (i32.const 4096)))
                      ;; two varints: zero run, then literal length
                      (local.set $k (i32.const 0))
                      (loop $twovarints
                        (local.set $v (i32.const 0))
                        (local.set $shift (i32.const 0))
                        (block $vdone
                          (loop $vbyte
                            (if (i32.ge_u (local.get $q) (local.get $qend)) (then (return (i32.const 4))))
                            (local.set $b (i32.load8_u (local.get $q)))
                            (local.set $q (i32.add (local.get $q) (i32.const 1)))
                            (if (i32.gt_u (local.get $shift) (i32.const 21)) (then (return (i32.const 4))))
                            (local.set $v (i32.or (local.get $v) (i32.shl (i32.and (local.get $b) (i32.const 127)) (local.get $shift))))
                            (br_if $vdone (i32.eqz (i32.and (local.get $b) (i32.const 128))))
                            (local.set $shift (i32.add (local.get $shift) (i32.const 7)))
                            (br $vbyte)))
                        (if (i32.eqz (local.get $k)) (then (local.set $zr (local.get $v))) (else (local.set $lit (local.get $v))))
                        (local.set $k (i32.add (local.get $k) (i32.const 1)))
                        (br_if $twovarints (i32.lt_u (local.get $k) (i32.const 2))))
                      (if (i32.eqz (i32.or (local.get $zr) (local.get $lit))) (then (return (i32.const 4))))
                      (if (i32.gt_u (local.get $zr) (i32.sub (i32.const 4096) (local.get $pos))) (then (return (i32.const 4))))
                      (local.set $pos (i32.add (local.get $pos) (local.get $zr)))
                      (if (i32.gt_u (local.get $lit) (i32.sub (i32.const 4096) (local.get $pos))) (then (return (i32.const 4))))
                      (if (i32.gt_u (local.get $lit) (i32.sub (local.get $qend) (local.get $q))) (then (return (i32.const 4))))
                      (local.set $k (i32.const 0))
                      (block $xdone
                        (loop $x
                          (br_if $xdone (i32.ge_u (local.get $k) (local.get $lit)))
                          (i32.store8 (i32.add (local.get $dst) (i32.add (local.get $pos) (local.get $k)))
                            (i32.xor (i32.load8_u (i32.add (local.get $dst) (i32.add (local.get $pos) (local.get $k))))
                                     (i32.load8_u (i32.add (local.get $q) (local.get $k)))))
                          (local.set $k (i32.add (local.get $k) (i32.const 1)))
                          (br $x)))
                      (local.set $q (i32.add (local.get $q) (local.get $lit)))
                      (local.set $pos (i32.add (local.get $pos) (local.get $lit)))
                      (br $run)))
                  (if (i32.ne (local.get $q) (local.get $qend)) (then (return (i32.const 4))))))))
          (local.set $ip (i32.add (local.get $data) (local.get $n)))
          (br $entry)))
      (local.set $pass (i32.add (local.get $pass) (i32.const 1)))
      (br_if $passes (i32.lt_u (local.get $pass) (i32.const 2))))
    (i32.const 0)))
`;

/** Assembles the module (binaryen, loaded only here). */
export async function assembleDeltaModule(): Promise<Uint8Array<ArrayBuffer>> {
  const binaryen = (await import("binaryen")).default;
  const m = binaryen.parseText(WAT);
  try {
    m.setFeatures(binaryen.Features.MVP | binaryen.Features.SIMD128 | binaryen.Features.BulkMemory | binaryen.Features.BulkMemoryOpt);
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
    p = cachedWasmModule(file, assembleDeltaModule);
    modules.set(file, p);
    p.catch(() => modules.delete(file));
  }
  return p;
}

/** Function `name` of the page module, instantiated on `memory`. */
async function pageFunction<F>(memory: WebAssembly.Memory, cacheDir: string, name: string): Promise<F> {
  const instance = await WebAssembly.instantiate(await deltaModule(cacheDir), { env: { memory } });
  const fn = instance.exports[name];
  if (typeof fn !== "function") throw new Error(`the page module has no ${name} function`);
  return fn as F;
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
    return new WasmDelta(memory, await pageFunction<(cur: number, prev: number, n: number, out: number, max: number) => number>(memory, cacheDir, "delta"), out);
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

/** Scratch the page encoder needs beyond the shadow: results, a page list, one PAGES payload. */
export function pageEncoderScratchBytes(maxListPages: number, maxPayloadBytes: number): number {
  return 16 + 4 * maxListPages + maxPayloadBytes + 16;
}

type EncodePagesFn = (ram: number, shadow: number, list: number, n: number, out: number, cap: number, res: number) => void;

/**
 * Finds, encodes and records the dirty pages of a list in one wasm call per PAGES payload: for
 * each listed page that differs from the shadow it writes a PAGES entry (ZERO, else DELTA
 * against the shadow, else RAW: encodePageInto's choice with LZ4 off) and copies the page into
 * the shadow. RAM and the shadow must lie in the encoder's memory, and the target must hold
 * every page's shadow copy (true after round 0). ~0.4 us per page that changed in one byte,
 * against ~1.25 us through DirtyTracker.scanPages and PageBatchWriter.
 */
export class WasmPageEncoder {
  private constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly fn: EncodePagesFn,
    private readonly resAt: number,
    private readonly listAt: number,
    private readonly maxList: number,
    private readonly outAt: number,
    private readonly maxPayload: number,
  ) {}

  /** `scratch`: pageEncoderScratchBytes(maxListPages, maxPayloadBytes) bytes of the memory, 16-byte aligned. */
  static async create(memory: WebAssembly.Memory, scratch: number, maxListPages: number, maxPayloadBytes: number, cacheDir: string): Promise<WasmPageEncoder> {
    const listAt = scratch + 16;
    const outAt = listAt + 4 * maxListPages;
    return new WasmPageEncoder(memory, await pageFunction<EncodePagesFn>(memory, cacheDir, "encode_pages"), scratch, listAt, maxListPages, outAt, maxPayloadBytes);
  }

  /**
   * Encodes the dirty pages among pages[from..to) (page numbers of `ram`, whose shadow is at
   * `shadow` in the same memory) into one PAGES payload for `round`. Returns where to go on
   * from (`next`; less than `to` when the payload is full), how many pages were dirty, and the
   * payload (undefined when none was).
   */
  encodePages(ram: Uint8Array, shadow: Uint8Array, pages: ArrayLike<number>, from: number, to: number, round: number): { next: number; dirty: number; payload: Buffer | undefined } {
    const buffer = this.memory.buffer;
    if (ram.buffer !== buffer || shadow.buffer !== buffer || shadow.length < ram.length) throw new RangeError("RAM and its shadow must lie in the page encoder's memory");
    const n = Math.min(to - from, this.maxList);
    const list = new Uint32Array(buffer, this.listAt, n);
    const pageCount = ram.length / 4096;
    for (let k = 0; k < n; k++) {
      const p = pages[from + k]!;
      if (!(p >= 0 && p < pageCount)) throw new RangeError(`page ${p} is outside [0, ${pageCount})`);
      list[k] = p;
    }
    this.fn(ram.byteOffset, shadow.byteOffset, this.listAt, n, this.outAt + PAGES_HEADER_BYTES, this.maxPayload - PAGES_HEADER_BYTES, this.resAt);
    const res = new Uint32Array(buffer, this.resAt, 3);
    const consumed = res[0]!;
    const bytes = res[1]!;
    const count = res[2]!;
    if (consumed === 0 && n > 0) throw new Error(`the page payload limit (${this.maxPayload} bytes) holds no page`);
    if (count === 0) return { next: from + consumed, dirty: 0, payload: undefined };
    const payload = Buffer.allocUnsafe(PAGES_HEADER_BYTES + bytes);
    payload.writeUInt32LE(round, 0);
    payload.writeUInt32LE(count, 4);
    payload.set(new Uint8Array(buffer, this.outAt + PAGES_HEADER_BYTES, bytes), PAGES_HEADER_BYTES);
    return { next: from + consumed, dirty: count, payload };
  }
}

type FirstPassFn = (ram: number, shadow: number, from: number, to: number, base: number, bitmap: number, out: number, cap: number, res: number) => void;

/** Scratch the first pass needs: results, a zero-page bitmap, one PAGES payload. */
export function firstPassScratchBytes(maxSlicePages: number, maxPayloadBytes: number): number {
  return 16 + ((((maxSlicePages + 7) >> 3) + 15) & ~15) + maxPayloadBytes + 16;
}

/**
 * Round 0 in wasm, a slice of RAM per call: finds the zero pages (a bitmap, sent as
 * ZERO_PAGES), writes every other page as a RAW entry of a PAGES payload and copies it into the
 * shadow, as DirtyTracker.firstPass and PageBatchWriter do in JS. A non-zero page costs ~0.5 us
 * (two 4 KiB copies) instead of ~3 us through the JS calls; the payloads are copied out into
 * Buffers that come back through recycle() once written.
 */
export class WasmFirstPass {
  private readonly free: Buffer[] = [];

  private constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly fn: FirstPassFn,
    private readonly resAt: number,
    private readonly bitmapAt: number,
    readonly maxSlicePages: number,
    private readonly outAt: number,
    private readonly maxPayload: number,
  ) {}

  /** `scratch`: firstPassScratchBytes(maxSlicePages, maxPayloadBytes) bytes of the memory, 16-byte aligned. */
  static async create(memory: WebAssembly.Memory, scratch: number, maxSlicePages: number, maxPayloadBytes: number, cacheDir: string): Promise<WasmFirstPass> {
    const bitmapAt = scratch + 16;
    const outAt = bitmapAt + ((((maxSlicePages + 7) >> 3) + 15) & ~15);
    return new WasmFirstPass(memory, await pageFunction<FirstPassFn>(memory, cacheDir, "first_pass"), scratch, bitmapAt, maxSlicePages, outAt, maxPayloadBytes);
  }

  /**
   * Pages [first, first + count) of `ram` (its shadow at `shadow`, in the same memory) for
   * `round`: `onPayload` gets each PAGES payload as it fills (one or more; the last one of the
   * slice, however small, too), and the result holds the slice's zero pages as a bitmap
   * (bit i: page first + i; a copy) and the counts.
   */
  slice(ram: Uint8Array, shadow: Uint8Array, first: number, count: number, round: number, onPayload: (payload: Buffer) => void): { zeros: number; data: number; bitmap: Uint8Array } {
    const buffer = this.memory.buffer;
    if (ram.buffer !== buffer || shadow.buffer !== buffer || shadow.length < ram.length) throw new RangeError("RAM and its shadow must lie in the first pass's memory");
    const pageCount = ram.length / 4096;
    if (count > this.maxSlicePages || first < 0 || first + count > pageCount) throw new RangeError(`slice [${first}, ${first + count}) is outside [0, ${pageCount}) or over ${this.maxSlicePages} pages`);
    const bitmapBytes = (count + 7) >> 3;
    new Uint8Array(buffer, this.bitmapAt, bitmapBytes).fill(0);
    const res = new Uint32Array(buffer, this.resAt, 4);
    let zeros = 0;
    let data = 0;
    for (let p = first; p < first + count; ) {
      this.fn(ram.byteOffset, shadow.byteOffset, p, first + count, first, this.bitmapAt, this.outAt + PAGES_HEADER_BYTES, this.maxPayload - PAGES_HEADER_BYTES, this.resAt);
      const next = res[0]!;
      const bytes = res[1]!;
      const entries = res[2]!;
      zeros += res[3]!;
      if (next === p) throw new Error(`the page payload limit (${this.maxPayload} bytes) holds no page`);
      p = next;
      if (entries > 0) {
        data += entries;
        const payload = this.payloadBuffer(PAGES_HEADER_BYTES + bytes);
        payload.writeUInt32LE(round, 0);
        payload.writeUInt32LE(entries, 4);
        payload.set(new Uint8Array(buffer, this.outAt + PAGES_HEADER_BYTES, bytes), PAGES_HEADER_BYTES);
        onPayload(payload);
      }
    }
    return { zeros, data, bitmap: new Uint8Array(buffer, this.bitmapAt, bitmapBytes).slice() };
  }

  /**
   * Allocates `count` payload buffers ahead and faults them in, `sliceBytes` at a time with
   * `yieldFn` between: a fresh 1 MiB buffer costs ~256 page faults (~3 ms here) when first
   * filled, and round 0's first slices, each filling a fresh one, held the guest 3-7 ms.
   */
  async reservePayloads(count: number, sliceBytes: number, yieldFn: () => Promise<void>): Promise<void> {
    for (let i = 0; i < count && this.free.length < 16; i++) {
      const whole = Buffer.allocUnsafeSlow(this.maxPayload);
      for (let off = 0; off < whole.length; off += sliceBytes) {
        whole.fill(0, off, Math.min(whole.length, off + sliceBytes));
        await yieldFn();
      }
      this.free.push(whole);
    }
  }

  /** Gives back a payload from slice() once it has been written out: its memory is reused. */
  recycle(payload: Buffer): void {
    if (payload.byteOffset === 0 && payload.buffer.byteLength === this.maxPayload && this.free.length < 16) this.free.push(Buffer.from(payload.buffer, 0, this.maxPayload));
  }

  /** A payload of `bytes` in a reused buffer (fresh big buffers cost a page fault per 4 KiB). */
  private payloadBuffer(bytes: number): Buffer {
    const whole = this.free.pop() ?? Buffer.allocUnsafeSlow(this.maxPayload);
    return whole.subarray(0, bytes);
  }
}

type ApplyPagesFn = (ram: number, pages: number, payload: number, len: number) => number;

/**
 * Applies a PAGES payload to guest RAM in wasm (ZERO, RAW and DELTA entries; a payload with an
 * LZ4 entry is left to the JS path, untouched). The payload is copied into a scratch area of
 * the engine's memory first: one copy of the payload instead of a JS loop per byte of every
 * DELTA. Checks what it applies as the JS path does (MIGRATION_PAGE_OUT_OF_RANGE,
 * MIGRATION_PAGE_ENCODING).
 */
export class WasmPageApplier {
  private constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly fn: ApplyPagesFn,
    private readonly scratch: number,
    readonly maxPayload: number,
  ) {}

  static async create(memory: WebAssembly.Memory, scratch: number, maxPayload: number, cacheDir: string): Promise<WasmPageApplier> {
    return new WasmPageApplier(memory, await pageFunction<ApplyPagesFn>(memory, cacheDir, "apply_pages"), scratch, maxPayload);
  }

  /**
   * True when applied; false when the payload is left to the JS path (too big, or LZ4 entries).
   * A payload that lies in the engine's memory already (assembled there, see PayloadSlots) is
   * applied where it is; any other is copied into the scratch first.
   */
  apply(ram: Uint8Array, payload: Uint8Array): boolean {
    const buffer = this.memory.buffer;
    if (ram.buffer !== buffer || ram.length % 4096 !== 0) return false;
    let at: number;
    if (payload.buffer === buffer) at = payload.byteOffset;
    else {
      if (payload.length > this.maxPayload) return false;
      new Uint8Array(buffer, this.scratch, payload.length).set(payload);
      at = this.scratch;
    }
    const err = this.fn(ram.byteOffset, ram.length / 4096, at, payload.length);
    switch (err) {
      case 0:
        return true;
      case 3:
        return false;
      case 2:
        throw new MigrationProtocolError("MIGRATION_PAGE_OUT_OF_RANGE", `a PAGES entry names a page outside RAM of ${ram.length / 4096} pages`);
      case 4:
        throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", "invalid DELTA page");
      default:
        throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", "malformed PAGES entry");
    }
  }
}
