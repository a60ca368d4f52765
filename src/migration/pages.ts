/**
 * The page codec: how one 4 KiB page of guest RAM travels in a PAGES frame, and the batch
 * writer that packs encoded pages into a PAGES payload without intermediate copies.
 *
 * Encodings (PageEncoding): ZERO (no data), RAW (4096 bytes), LZ4 (an LZ4 block of the page),
 * DELTA (the XOR of the page with the copy the target already holds, zero-run-length coded:
 * repeated `zeroRun varint | literalLength varint | literalLength XOR bytes` until the page is
 * covered; varints are LEB128). The target applies a DELTA by XOR-ing into its RAM in place, so it
 * needs no copy of its own: its RAM *is* the last sent copy.
 */
import { isZeroPage } from "./dirty.js";
import { lz4CompressBlock, lz4DecompressBlock, Lz4FormatError } from "./lz4.js";
import { MigrationProtocolError, PAGE_ENTRY_HEADER_BYTES, PAGE_SIZE, PAGES_HEADER_BYTES, PageEncoding, pageEncodingName, type PageEntry } from "./protocol.js";

function writeVarint(dest: Uint8Array, op: number, v: number): number {
  while (v >= 0x80) {
    dest[op++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  dest[op++] = v;
  return op;
}

/** Literal runs end at a gap of this many equal bytes (a new run costs ~2 bytes of header). */
const DELTA_GAP = 3;

/**
 * XOR + zero-run-length codes `cur` against `prev` into `dest` at `off`, writing at most `maxLen`
 * bytes. Returns the length, or -1 if it does not fit.
 */
export function deltaEncodeInto(cur: Uint8Array, prev: Uint8Array, dest: Uint8Array, off: number, maxLen: number): number {
  const n = cur.length;
  if (prev.length !== n) throw new RangeError(`delta of pages of different sizes (${n} and ${prev.length})`);
  const end = Math.min(off + maxLen, dest.length);
  // Equal stretches are skipped 4 bytes at a time when both pages are 4-byte aligned (RAM pages are).
  const aligned = (cur.byteOffset & 3) === 0 && (prev.byteOffset & 3) === 0;
  const cw = aligned ? new Int32Array(cur.buffer, cur.byteOffset, n >> 2) : undefined;
  const pw = aligned ? new Int32Array(prev.buffer, prev.byteOffset, n >> 2) : undefined;
  const words = n & ~3;
  let op = off;
  let i = 0;
  while (i < n) {
    const z = i;
    if (cw !== undefined && pw !== undefined) {
      while ((i & 3) !== 0 && i < n && cur[i] === prev[i]) i++;
      if ((i & 3) === 0) {
        while (i < words && cw[i >> 2] === pw[i >> 2]) i += 4;
      }
    }
    while (i < n && cur[i] === prev[i]) i++;
    const zeroRun = i - z;
    const s = i;
    while (i < n) {
      if (cur[i] !== prev[i]) {
        i++;
        continue;
      }
      let g = i + 1;
      while (g < n && g - i < DELTA_GAP && cur[g] === prev[g]) g++;
      if (g - i >= DELTA_GAP || g === n) break;
      i = g;
    }
    const litLen = i - s;
    if (op + 10 + litLen > end) return -1;
    op = writeVarint(dest, op, zeroRun);
    op = writeVarint(dest, op, litLen);
    for (let k = 0; k < litLen; k++) dest[op + k] = cur[s + k]! ^ prev[s + k]!;
    op += litLen;
  }
  return op - off;
}

function badDelta(why: string): MigrationProtocolError {
  return new MigrationProtocolError("MIGRATION_PAGE_ENCODING", `invalid DELTA page: ${why}`);
}

/** Reads the LEB128 varint at data[ip] into varint.value and returns the offset after it. */
const varint = { value: 0 };
function readVarint(data: Uint8Array, ip: number): number {
  let v = 0;
  let shift = 0;
  for (;;) {
    if (ip >= data.length) throw badDelta("input ended inside a length");
    const b = data[ip++]!;
    v += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) {
      varint.value = v;
      return ip;
    }
    shift += 7;
    if (shift > 28) throw badDelta("length varint too long");
  }
}

/** Applies a DELTA (see deltaEncodeInto) in place to `dest[off, off + len)`. */
export function deltaApply(data: Uint8Array, dest: Uint8Array, off: number, len: number): void {
  let ip = 0;
  let pos = 0;
  while (pos < len) {
    ip = readVarint(data, ip);
    const zeroRun = varint.value;
    ip = readVarint(data, ip);
    const litLen = varint.value;
    if (zeroRun + litLen === 0) throw badDelta("empty run");
    pos += zeroRun;
    if (pos + litLen > len) throw badDelta("runs past the end of the page");
    if (ip + litLen > data.length) throw badDelta("literals run past the input");
    for (let k = 0; k < litLen; k++) dest[off + pos + k] = dest[off + pos + k]! ^ data[ip + k]!;
    ip += litLen;
    pos += litLen;
  }
  if (ip !== data.length) throw badDelta(`${data.length - ip} bytes after the end of the page`);
}

export interface PageEncodeOptions {
  /** Try DELTA when the previous copy is known (default true). */
  delta?: boolean;
  /** Try LZ4 (default true). Turn off when the CPU, not the link, is the bottleneck. */
  lz4?: boolean;
  /** A DELTA at or below this size is taken without trying LZ4 (default 512). */
  deltaGoodEnough?: number;
  /**
   * A faster DELTA encoder with deltaEncodeInto's contract and output (e.g. WasmDelta); it returns
   * undefined for pages it cannot reach, which then go to deltaEncodeInto.
   */
  fastDelta?: (cur: Uint8Array, prev: Uint8Array, dest: Uint8Array, off: number, maxLen: number) => number | undefined;
}

let scratch = new Uint8Array(PAGE_SIZE);

/**
 * Encodes `cur` into `dest` at `off` (data only, no entry header), choosing the smallest of
 * ZERO / DELTA (against `prev`, the copy the target holds) / LZ4 / RAW. `dest` needs room for
 * `cur.length` bytes at `off`.
 */
export function encodePageInto(cur: Uint8Array, prev: Uint8Array | undefined, dest: Uint8Array, off: number, options: PageEncodeOptions = {}): { encoding: PageEncoding; length: number } {
  const n = cur.length;
  if (isZeroPage(cur)) return { encoding: PageEncoding.Zero, length: 0 };
  let best: PageEncoding = PageEncoding.Raw;
  let bestLen = n;
  if (prev !== undefined && options.delta !== false) {
    const len = options.fastDelta?.(cur, prev, dest, off, n - 1) ?? deltaEncodeInto(cur, prev, dest, off, n - 1);
    if (len >= 0) {
      best = PageEncoding.Delta;
      bestLen = len;
      if (len <= (options.deltaGoodEnough ?? 512)) return { encoding: best, length: len };
    }
  }
  if (options.lz4 !== false) {
    if (best === PageEncoding.Raw) {
      const len = lz4CompressBlock(cur, dest, off, n - 1);
      if (len >= 0) return { encoding: PageEncoding.Lz4, length: len };
    } else {
      if (scratch.length < n) scratch = new Uint8Array(n);
      const len = lz4CompressBlock(cur, scratch, 0, bestLen - 1);
      if (len >= 0) {
        dest.set(scratch.subarray(0, len), off);
        return { encoding: PageEncoding.Lz4, length: len };
      }
    }
  }
  if (best === PageEncoding.Raw) dest.set(cur, off);
  return { encoding: best, length: bestLen };
}

/** Allocating convenience around encodePageInto. */
export function encodePage(cur: Uint8Array, prev?: Uint8Array, options?: PageEncodeOptions): { encoding: PageEncoding; data: Buffer } {
  const buf = Buffer.allocUnsafe(cur.length);
  const r = encodePageInto(cur, prev, buf, 0, options);
  return { encoding: r.encoding, data: buf.subarray(0, r.length) };
}

/** Writes one received page into `ram`. Throws MIGRATION_PAGE_OUT_OF_RANGE / MIGRATION_PAGE_ENCODING. */
export function applyPage(ram: Uint8Array, page: { index: number; encoding: PageEncoding; data: Uint8Array }, pageSize = PAGE_SIZE): void {
  const off = page.index * pageSize;
  if (off + pageSize > ram.length) {
    throw new MigrationProtocolError("MIGRATION_PAGE_OUT_OF_RANGE", `page ${page.index} lies outside RAM of ${ram.length / pageSize} pages`);
  }
  switch (page.encoding) {
    case PageEncoding.Zero:
      // Untouched RAM is already zero: reading it is cheap, writing it would fault every page in.
      if (!isZeroPage(ram.subarray(off, off + pageSize))) ram.fill(0, off, off + pageSize);
      return;
    case PageEncoding.Raw:
      if (page.data.length !== pageSize) throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", `RAW page ${page.index} has ${page.data.length} bytes`);
      ram.set(page.data, off);
      return;
    case PageEncoding.Lz4:
      try {
        lz4DecompressBlock(page.data, ram, off, pageSize);
      } catch (err) {
        if (err instanceof Lz4FormatError) throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", `page ${page.index}: ${err.message}`, err);
        throw err;
      }
      return;
    case PageEncoding.Delta:
      deltaApply(page.data, ram, off, pageSize);
      return;
    default:
      throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", `page ${page.index}: unknown encoding ${pageEncodingName(page.encoding)}`);
  }
}

/**
 * Zeroes the pages a ZERO_PAGES bitmap names (pages already zero are only read, never written).
 * `written`, if given, marks the pages written since RAM was last known to be all zero: the
 * others are skipped without being read (in round 0 that is every zero page).
 */
export function applyZeroPages(ram: Uint8Array, firstPage: number, count: number, bitmap: Uint8Array, pageSize = PAGE_SIZE, written?: Uint8Array): void {
  if ((firstPage + count) * pageSize > ram.length) {
    throw new MigrationProtocolError("MIGRATION_PAGE_OUT_OF_RANGE", `zero pages [${firstPage}, ${firstPage + count}) lie outside RAM of ${ram.length / pageSize} pages`);
  }
  for (let i = 0; i < count; i++) {
    if ((((bitmap[i >> 3] ?? 0) >> (i & 7)) & 1) === 0) continue;
    if (written !== undefined && written[firstPage + i] !== 1) continue;
    const off = (firstPage + i) * pageSize;
    if (!isZeroPage(ram.subarray(off, off + pageSize))) ram.fill(0, off, off + pageSize);
  }
}

export function applyPages(ram: Uint8Array, pages: readonly PageEntry[], pageSize = PAGE_SIZE): void {
  for (const p of pages) applyPage(ram, p, pageSize);
}

export interface BatchStats {
  pages: number;
  /** Page-data bytes before encoding (pages x page size). */
  rawBytes: number;
  /** Payload bytes written (headers included). */
  bytes: number;
  byEncoding: [zero: number, raw: number, delta: number, lz4: number];
}

/**
 * Packs encoded pages into PAGES payloads. `add` encodes straight into the batch buffer and
 * returns true once the batch has reached `maxBytes`; `take` hands out the finished payload
 * (a Buffer the writer no longer touches) and starts a new batch of the same round.
 */
export class PageBatchWriter {
  readonly maxBytes: number;
  readonly pageSize: number;
  private readonly encode: PageEncodeOptions;
  private buf: Buffer;
  private len = PAGES_HEADER_BYTES;
  private count = 0;
  private round = 0;
  /** Totals since construction. */
  readonly totals: BatchStats = { pages: 0, rawBytes: 0, bytes: 0, byEncoding: [0, 0, 0, 0] };

  constructor(options: { maxBytes?: number; encode?: PageEncodeOptions; pageSize?: number } = {}) {
    this.pageSize = options.pageSize ?? PAGE_SIZE;
    this.maxBytes = Math.max(options.maxBytes ?? 1024 * 1024, PAGES_HEADER_BYTES + PAGE_ENTRY_HEADER_BYTES + this.pageSize);
    this.encode = options.encode ?? {};
    this.buf = this.alloc();
  }

  /** Batch buffers given back by recycle(): fresh big buffers cost a page fault per 4 KiB. */
  private readonly free: Buffer[] = [];

  private get bufferBytes(): number {
    return this.maxBytes + PAGE_ENTRY_HEADER_BYTES + this.pageSize;
  }

  private alloc(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.bufferBytes);
  }

  /** Gives back a payload from take() once it has been written out; its buffer is reused. */
  recycle(payload: Buffer): void {
    const size = this.bufferBytes;
    if (payload.byteOffset !== 0 || payload.buffer.byteLength !== size || this.free.length >= 16) return;
    const whole = Buffer.from(payload.buffer, 0, size);
    if (whole !== this.buf) this.free.push(whole);
  }

  /** Starts batches for `round` (drops anything not taken). */
  begin(round: number): void {
    this.round = round;
    this.len = PAGES_HEADER_BYTES;
    this.count = 0;
  }

  get pageCount(): number {
    return this.count;
  }

  get byteLength(): number {
    return this.len;
  }

  /** Encodes page `index` (`cur`, against `prev` when the target holds that copy). True when the batch is full. */
  add(index: number, cur: Uint8Array, prev?: Uint8Array): boolean {
    if (cur.length !== this.pageSize) throw new RangeError(`page ${index} is ${cur.length} bytes, expected ${this.pageSize}`);
    if (this.len >= this.maxBytes) throw new RangeError("the PAGES batch is full: take() it before adding more pages");
    const at = this.len;
    const r = encodePageInto(cur, prev, this.buf, at + PAGE_ENTRY_HEADER_BYTES, this.encode);
    this.buf.writeUInt32LE(index, at);
    this.buf[at + 4] = r.encoding;
    this.buf.writeUInt32LE(r.length, at + 5);
    this.len = at + PAGE_ENTRY_HEADER_BYTES + r.length;
    this.count++;
    this.totals.pages++;
    this.totals.rawBytes += this.pageSize;
    this.totals.bytes += PAGE_ENTRY_HEADER_BYTES + r.length;
    this.totals.byEncoding[r.encoding]++;
    return this.len >= this.maxBytes;
  }

  /** The finished PAGES payload, or undefined when no page was added since the last take. */
  take(): Buffer | undefined {
    if (this.count === 0) return undefined;
    this.buf.writeUInt32LE(this.round, 0);
    this.buf.writeUInt32LE(this.count, 4);
    this.totals.bytes += PAGES_HEADER_BYTES;
    let out: Buffer;
    if (this.len < this.maxBytes / 4) {
      // A small batch (end of a round): copy it out and keep the big buffer.
      out = Buffer.allocUnsafe(this.len);
      this.buf.copy(out, 0, 0, this.len);
    } else {
      out = this.buf.subarray(0, this.len);
      this.buf = this.alloc();
    }
    this.len = PAGES_HEADER_BYTES;
    this.count = 0;
    return out;
  }
}
