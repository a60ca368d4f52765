/**
 * Dirty-page detection by shadow compare. v86 has no dirty log, so the source keeps a copy of
 * guest RAM as the target holds it (the "shadow") and compares: 64 KiB blocks first
 * (memcmp through Buffer#compare, no allocation), then the 4 KiB pages of a block that differs.
 *
 * The invariant the sender relies on: after every reported page has been sent, the shadow equals
 * the target's RAM. A page is copied into the shadow in the same synchronous step in which
 * it is reported, so the bytes the callback encodes are exactly the bytes the shadow keeps, even
 * though the guest keeps running between slices.
 *
 * The scan blocks the thread the guest runs on: scan in slices and yield between them.
 */
import { PAGE_SIZE } from "./protocol.js";

export const BLOCK_BYTES = 64 * 1024;

const ZERO_PAGE = new Uint8Array(PAGE_SIZE);

/** True when every byte of `page` is zero (memcmp against a zero page; no allocation for 4 KiB pages). */
export function isZeroPage(page: Uint8Array): boolean {
  if (page.length === PAGE_SIZE) return Buffer.compare(page, ZERO_PAGE) === 0;
  for (let i = 0; i < page.length; i += PAGE_SIZE) {
    const part = page.subarray(i, Math.min(i + PAGE_SIZE, page.length));
    if (Buffer.compare(part, ZERO_PAGE.subarray(0, part.length)) !== 0) return false;
  }
  return true;
}

/**
 * Called for each reported page before the shadow takes its new content. `current` views guest
 * RAM; `previous` views the shadow, i.e. the copy the target holds, and is undefined when the
 * page was never reported before (the target holds nothing known: send it whole, never as a
 * DELTA). Both views are valid only during the call.
 */
export type DirtyCallback = (page: number, current: Uint8Array, previous: Uint8Array | undefined) => void;

export interface ScanOptions {
  /** Called per dirty page (see DirtyCallback); encode the page here. */
  onDirty?: DirtyCallback;
  /** Report every page in range, changed or not (the first, full round). */
  all?: boolean;
}

export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function asBuffer(a: Uint8Array): Buffer {
  return Buffer.isBuffer(a) ? a : Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * The runs of `chunk`-byte chunks in which `cur` differs from `prev` (same length), as
 * [from, to) byte ranges, adjacent chunks merged; the last chunk may be shorter.
 */
export function changedChunks(cur: Uint8Array, prev: Uint8Array, chunk: number): [number, number][] {
  if (cur.length !== prev.length) throw new RangeError(`${cur.length} bytes compared with ${prev.length}`);
  const a = asBuffer(cur);
  const b = asBuffer(prev);
  const runs: [number, number][] = [];
  for (let off = 0; off < a.length; off += chunk) {
    const end = Math.min(off + chunk, a.length);
    if (a.compare(b, off, end, off, end) === 0) continue;
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] === off) last[1] = end;
    else runs.push([off, end]);
  }
  return runs;
}

export class DirtyTracker {
  readonly pageCount: number;
  readonly pageSize: number;
  readonly byteLength: number;
  private readonly shadowOf: () => Buffer;
  private readonly pagesPerBlock: number;
  /** 1 for pages whose shadow is known to be the target's copy. */
  private readonly known: Uint8Array;

  /** False until prefault() has zeroed a shadow allocated with `zeroed: false`. */
  private zeroed: boolean;

  /**
   * The shadow starts all zero: call snapshot() for a baseline, or report every page once with
   * `all`. With `zeroed: false` the shadow is allocated without being cleared (Buffer.alloc of
   * 128 MiB held the guest's thread for 5-15 ms with the GC it set off) and prefault() must
   * run before anything else. `shadow` places it elsewhere (e.g. in the engine's wasm memory,
   * where pages can be delta-encoded in place): a function returning a view of exactly
   * pageCount x pageSize bytes, called again for every scan (the view may have been detached),
   * never cleared by the tracker until prefault().
   */
  constructor(pageCount: number, pageSize = PAGE_SIZE, options: { zeroed?: boolean; shadow?: () => Uint8Array } = {}) {
    if (!Number.isInteger(pageCount) || pageCount <= 0) throw new RangeError(`pageCount must be a positive integer, got ${pageCount}`);
    this.pageCount = pageCount;
    this.pageSize = pageSize;
    this.byteLength = pageCount * pageSize;
    const external = options.shadow;
    this.zeroed = external === undefined && options.zeroed !== false;
    if (external !== undefined) {
      this.shadowOf = () => {
        const v = external();
        if (v.length !== this.byteLength) throw new RangeError(`the shadow view is ${v.length} bytes, the tracker covers ${this.byteLength}`);
        return asBuffer(v);
      };
    } else {
      const own = this.zeroed ? Buffer.alloc(this.byteLength) : Buffer.allocUnsafeSlow(this.byteLength);
      this.shadowOf = () => own;
    }
    this.pagesPerBlock = Math.max(1, Math.floor(BLOCK_BYTES / pageSize));
    this.known = new Uint8Array(pageCount);
  }

  /**
   * Faults the shadow's memory in, `sliceBytes` at a time with `yieldFn` between slices, so
   * that the first round copies into memory that is already there. (A fresh shadow is mapped
   * lazily: every first write to a 4 KiB page is a page fault, ~30 % of round 0's time.) Call it
   * while waiting for the target, before any page is recorded.
   */
  async prefault(options: { sliceBytes?: number; yieldFn?: () => Promise<void> } = {}): Promise<void> {
    const slice = Math.max(this.pageSize, options.sliceBytes ?? 4 * 1024 * 1024);
    for (let off = 0; off < this.byteLength; off += slice) {
      this.shadowOf().fill(0, off, Math.min(this.byteLength, off + slice));
      if (options.yieldFn !== undefined) await options.yieldFn();
    }
    this.zeroed = true;
  }

  /**
   * Faults in memory that other code may already use, without changing it: every `pageSize`-th
   * byte is written back as read, `sliceBytes` at a time with `yieldFn` between slices.
   * `view` is called for every slice (a wasm memory view can be detached by a grow).
   */
  static async touch(view: () => Uint8Array, options: { pageSize?: number; sliceBytes?: number; yieldFn?: () => Promise<void> } = {}): Promise<void> {
    const pageSize = options.pageSize ?? PAGE_SIZE;
    const slice = Math.max(pageSize, options.sliceBytes ?? 4 * 1024 * 1024);
    for (let off = 0; off < view().length; off += slice) {
      const v = view();
      const end = Math.min(v.length, off + slice);
      for (let i = off; i < end; i += pageSize) v[i] = v[i]!;
      if (options.yieldFn !== undefined && end < v.length) await options.yieldFn();
    }
  }

  /** The shadow (read-only by contract): the content the target holds for every sent page. */
  get shadowView(): Uint8Array {
    return this.shadowOf();
  }

  private check(ram: Uint8Array, fromPage: number, toPage: number): void {
    if (!this.zeroed) throw new Error("the shadow was allocated unzeroed: prefault() it first");
    if (ram.length < this.byteLength) throw new RangeError(`RAM view is ${ram.length} bytes, the tracker covers ${this.byteLength}`);
    if (!(fromPage >= 0 && fromPage <= toPage && toPage <= this.pageCount)) throw new RangeError(`page range [${fromPage}, ${toPage}) is outside [0, ${this.pageCount})`);
  }

  /**
   * Copies all of RAM into the shadow as the baseline (nothing reported). Only for when the
   * target already holds exactly this content; a migration's first round uses `all` instead.
   */
  snapshot(ram: Uint8Array): void {
    this.check(ram, 0, this.pageCount);
    this.shadowOf().set(ram.subarray(0, this.byteLength));
    this.known.fill(1);
  }

  /** Pages reported at least once (or covered by snapshot()). */
  knownPages(): number {
    let n = 0;
    for (let i = 0; i < this.pageCount; i++) n += this.known[i]!;
    return n;
  }

  /** Pages in [fromPage, toPage) that differ from the shadow (ascending), updating the shadow. */
  scanSlice(ram: Uint8Array, fromPage: number, toPage: number, options: ScanOptions = {}): number[] {
    this.check(ram, fromPage, toPage);
    const mem = asBuffer(ram);
    const shadow = this.shadowOf();
    const ps = this.pageSize;
    const onDirty = options.onDirty;
    const dirty: number[] = [];
    if (options.all === true) {
      for (let p = fromPage; p < toPage; p++) {
        const off = p * ps;
        const cur = mem.subarray(off, off + ps);
        onDirty?.(p, cur, this.known[p] === 1 ? shadow.subarray(off, off + ps) : undefined);
        // Copy only what differs: most of a fresh shadow is never written (and never faulted in).
        if (mem.compare(shadow, off, off + ps, off, off + ps) !== 0) shadow.set(cur, off);
        this.known[p] = 1;
        dirty.push(p);
      }
      return dirty;
    }
    const ppb = this.pagesPerBlock;
    let p = fromPage;
    while (p < toPage) {
      // Blocks are aligned to ppb pages so that slices of any size share the same blocks.
      const blockEnd = Math.min(toPage, (Math.floor(p / ppb) + 1) * ppb);
      const start = p * ps;
      const end = blockEnd * ps;
      if (mem.compare(shadow, start, end, start, end) !== 0) {
        for (let q = p; q < blockEnd; q++) {
          const off = q * ps;
          if (mem.compare(shadow, off, off + ps, off, off + ps) !== 0) this.take(mem, shadow, q, onDirty, dirty);
        }
      }
      p = blockEnd;
    }
    return dirty;
  }

  /** Page `q` differs from the shadow: report it, then the shadow takes its content. */
  private take(mem: Buffer, shadow: Buffer, q: number, onDirty: DirtyCallback | undefined, dirty: number[]): void {
    const ps = this.pageSize;
    const off = q * ps;
    const cur = mem.subarray(off, off + ps);
    onDirty?.(q, cur, this.known[q] === 1 ? shadow.subarray(off, off + ps) : undefined);
    shadow.set(cur, off);
    this.known[q] = 1;
    dirty.push(q);
  }

  /**
   * Like scanSlice, but only over the pages `pages[from..to)` (ascending page numbers, e.g. a
   * dirty log's harvest): each that differs from the shadow is reported and copied.
   */
  scanPages(ram: Uint8Array, pages: ArrayLike<number>, from = 0, to = pages.length, options: ScanOptions = {}): number[] {
    this.check(ram, 0, this.pageCount);
    const mem = asBuffer(ram);
    const shadow = this.shadowOf();
    const ps = this.pageSize;
    const onDirty = options.onDirty;
    const dirty: number[] = [];
    for (let i = from; i < to; i++) {
      const q = pages[i]!;
      if (!(q >= 0 && q < this.pageCount)) throw new RangeError(`page ${q} is outside [0, ${this.pageCount})`);
      const off = q * ps;
      if (mem.compare(shadow, off, off + ps, off, off + ps) !== 0) this.take(mem, shadow, q, onDirty, dirty);
    }
    return dirty;
  }

  /**
   * The first full pass of a migration over [fromPage, toPage), for a tracker whose shadow was
   * never written: zero pages are only reported (`onZero`; the shadow already holds zeros), every
   * other page is copied into the shadow and reported (`onData`, with a view of RAM valid during
   * the call; it equals the shadow's new copy).
   */
  firstPass(ram: Uint8Array, fromPage: number, toPage: number, onZero: (page: number) => void, onData: (page: number, cur: Uint8Array) => void): void {
    this.check(ram, fromPage, toPage);
    const mem = asBuffer(ram);
    const ps = this.pageSize;
    const zero = ps === PAGE_SIZE ? ZERO_PAGE : new Uint8Array(ps);
    const shadow = this.shadowOf();
    for (let p = fromPage; p < toPage; p++) {
      if (this.known[p] === 1) throw new RangeError(`firstPass over page ${p}, which was reported before`);
      const off = p * ps;
      this.known[p] = 1;
      if (mem.compare(zero, 0, ps, off, off + ps) === 0) {
        onZero(p);
        continue;
      }
      const cur = mem.subarray(off, off + ps);
      onData(p, cur);
      shadow.set(cur, off);
    }
  }

  /**
   * For a first pass done outside the tracker on its shadow (WasmFirstPass): marks pages
   * [fromPage, toPage) as reported, as firstPass() does; the caller copies each non-zero page
   * into the shadow (zero pages are there already).
   */
  markFirstPass(fromPage: number, toPage: number): void {
    if (fromPage < 0 || toPage > this.pageCount || fromPage > toPage) throw new RangeError(`pages [${fromPage}, ${toPage}) are outside [0, ${this.pageCount})`);
    if (!this.zeroed) throw new Error("the shadow was allocated unzeroed: prefault() it first");
    for (let p = fromPage; p < toPage; p++) if (this.known[p] === 1) throw new RangeError(`first pass over page ${p}, which was reported before`);
    this.known.fill(1, fromPage, toPage);
  }

  /** How many pages in [fromPage, toPage) differ from the shadow, without reporting them or touching the shadow. */
  countSlice(ram: Uint8Array, fromPage: number, toPage: number): number {
    this.check(ram, fromPage, toPage);
    const mem = asBuffer(ram);
    const shadow = this.shadowOf();
    const ps = this.pageSize;
    const ppb = this.pagesPerBlock;
    let n = 0;
    let p = fromPage;
    while (p < toPage) {
      const blockEnd = Math.min(toPage, (Math.floor(p / ppb) + 1) * ppb);
      if (mem.compare(shadow, p * ps, blockEnd * ps, p * ps, blockEnd * ps) !== 0) {
        for (let q = p; q < blockEnd; q++) {
          const off = q * ps;
          if (mem.compare(shadow, off, off + ps, off, off + ps) !== 0) n++;
        }
      }
      p = blockEnd;
    }
    return n;
  }

  /** countSlice over all of RAM, in slices with `yieldFn` between them (the guest keeps running). */
  async countAll(getRam: () => Uint8Array, options: { sliceBytes?: number; yieldFn?: () => Promise<void> } = {}): Promise<number> {
    const slicePages = Math.max(1, Math.floor((options.sliceBytes ?? 4 * 1024 * 1024) / this.pageSize));
    const yieldFn = options.yieldFn ?? yieldToEventLoop;
    let n = 0;
    for (let p = 0; p < this.pageCount; p += slicePages) {
      if (p > 0) await yieldFn();
      n += this.countSlice(getRam(), p, Math.min(this.pageCount, p + slicePages));
    }
    return n;
  }

  /**
   * Scans all of RAM in slices of `sliceBytes` (default 4 MiB, ~0.2 ms), awaiting `yieldFn`
   * between slices so the guest keeps running in the same thread. `getRam` is called for
   * every slice: wasm memory can grow and detach an older view.
   */
  async scanAll(getRam: () => Uint8Array, options: ScanOptions & { sliceBytes?: number; yieldFn?: () => Promise<void> } = {}): Promise<number[]> {
    const slicePages = Math.max(1, Math.floor((options.sliceBytes ?? 4 * 1024 * 1024) / this.pageSize));
    const yieldFn = options.yieldFn ?? yieldToEventLoop;
    const dirty: number[] = [];
    for (let p = 0; p < this.pageCount; p += slicePages) {
      if (p > 0) await yieldFn();
      const found = this.scanSlice(getRam(), p, Math.min(this.pageCount, p + slicePages), options);
      for (const q of found) dirty.push(q);
    }
    return dirty;
  }
}
