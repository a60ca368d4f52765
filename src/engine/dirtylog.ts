/**
 * The guest's dirty-page log (see wasmpatch.ts for how v86 records it).
 *
 * start() clears the map and flushes the TLB, so that every write from then on needs a TLB
 * entry made while logging (or is a physical write, which is logged directly). harvest()
 * returns the pages written since start() or the last harvest, clears them and flushes the
 * TLB again: writable entries made before the harvest cannot carry later writes past it.
 * Call both only between emulator slices (from the event loop), never from inside the guest.
 *
 * Writes through v86's BIOS alias at 0xFFF00000 go straight to the first 1 MiB from JS, past
 * the patched wasm: the log wraps v86's write handlers for that range (its memory map) and marks
 * the pages they write. Where those handlers are not as expected, the first 1 MiB is always
 * reported instead (as it always was before: 256 pages compared in every round and the pause).
 */
import { DIRTY_MAP_BYTES, DIRTY_MAP_GLOBAL, RAM_PAGE_GLOBAL } from "./wasmpatch.js";

const PAGE = 4096;
/** The first 1 MiB, in pages: reported always where the BIOS alias cannot be watched (see above). */
const LOW_PAGES = (1024 * 1024) / PAGE;
/** v86's BIOS alias (seabios expects the BIOS there too): writes land in the first 1 MiB. */
const BIOS_ALIAS = 0xfff00000;
/** v86's memory map has one read and one write handler per block of 2^17 bytes (MMAP_BLOCK_BITS). */
const MMAP_BLOCK_BITS = 17;

interface WasmGlobal {
  value: number;
}

export interface DirtyLogCpu {
  wasm_memory: WebAssembly.Memory | { buffer: ArrayBuffer; grow?: (pages: number) => number };
  mem8: Uint8Array;
  full_clear_tlb: () => void;
  wm: { exports: Record<string, unknown> };
  read8: (addr: number) => number;
  write8: (addr: number, value: number) => void;
  /** v86's memory map: write handlers per 128 KiB block of the 4 GiB physical address space. */
  memory_map_write8?: ((addr: number, value: number) => void)[];
  memory_map_write32?: ((addr: number, value: number) => void)[];
}

export class DirtyLog {
  private mapAt = 0;
  private active = false;
  private readonly ramPage: number;
  readonly pageCount: number;
  /** Pages every harvest reports whatever was written: the first 1 MiB, unless the BIOS alias is watched. */
  private readonly alwaysPages: number;

  private constructor(
    private readonly cpu: DirtyLogCpu,
    private readonly mapGlobal: WasmGlobal,
    ramGlobal: WasmGlobal,
    memoryBytes: number,
  ) {
    const offset = cpu.mem8.byteOffset;
    if (offset % PAGE !== 0) throw new Error(`guest RAM is not page-aligned in wasm memory (offset ${offset})`);
    this.ramPage = offset / PAGE;
    ramGlobal.value = this.ramPage;
    this.pageCount = Math.floor(memoryBytes / PAGE);
    this.alwaysPages = this.watchBiosAlias() ? 0 : LOW_PAGES;
  }

  /** Wraps the BIOS alias's write handlers so that they log the pages they write; false where they are not as expected. */
  private watchBiosAlias(): boolean {
    const w8 = this.cpu.memory_map_write8;
    const w32 = this.cpu.memory_map_write32;
    const blocks = 0x100000 >>> MMAP_BLOCK_BITS;
    const first = BIOS_ALIAS >>> MMAP_BLOCK_BITS;
    if (!Array.isArray(w8) || !Array.isArray(w32) || w8.length !== 1 << (32 - MMAP_BLOCK_BITS) || w32.length !== w8.length) return false;
    for (let b = first; b < first + blocks; b++) if (typeof w8[b] !== "function" || typeof w32[b] !== "function") return false;
    const mark = (addr: number, bytes: number): void => {
      if (!this.active) return;
      const map = this.map();
      map[(addr & 0xfffff) >>> 12] = 1;
      map[((addr + bytes - 1) & 0xfffff) >>> 12] = 1;
    };
    for (let b = first; b < first + blocks; b++) {
      const write8 = w8[b]!;
      const write32 = w32[b]!;
      w8[b] = (addr, value) => {
        write8(addr, value);
        mark(addr, 1);
      };
      w32[b] = (addr, value) => {
        write32(addr, value);
        mark(addr, 4);
      };
    }
    return true;
  }

  /** Whether writes through the BIOS alias are logged (else the first 1 MiB is always reported). */
  get watchesBiosAlias(): boolean {
    return this.alwaysPages === 0;
  }

  /** The log of an engine loaded from the patched module, or undefined for a stock v86. */
  static of(cpu: DirtyLogCpu, memoryBytes: number): DirtyLog | undefined {
    const map = cpu.wm.exports[DIRTY_MAP_GLOBAL];
    const ram = cpu.wm.exports[RAM_PAGE_GLOBAL];
    if (!(map instanceof WebAssembly.Global) || !(ram instanceof WebAssembly.Global)) return undefined;
    return new DirtyLog(cpu, map, ram, memoryBytes);
  }

  get logging(): boolean {
    return this.active;
  }

  private map(): Uint8Array {
    return new Uint8Array(this.cpu.wasm_memory.buffer, this.mapAt + this.ramPage, this.pageCount);
  }

  /**
   * Places the log's byte map (grows wasm memory once; start() does it when needed). Growing
   * starts a major GC in V8, so the VM process does it before its guest runs (see process.ts).
   */
  reserve(): void {
    if (this.mapAt !== 0) return;
    const memory = this.cpu.wasm_memory as WebAssembly.Memory;
    // Memory grown here is never handed out by v86's allocator (it grows past it).
    this.mapAt = memory.grow(DIRTY_MAP_BYTES / 65536) * 65536;
  }

  /** Starts (or restarts) logging with an empty log. */
  start(): void {
    this.reserve();
    new Uint8Array(this.cpu.wasm_memory.buffer, this.mapAt, DIRTY_MAP_BYTES).fill(0);
    this.mapGlobal.value = this.mapAt;
    this.active = true;
    this.cpu.full_clear_tlb();
  }

  /**
   * Pages written since start() or the last harvest (ascending); clears them and re-arms the log
   * (flushes the TLB: 1-3 ms measured in a migration's pause). `rearm: false` for the last
   * harvest, with the guest paused for good: nothing it writes later is asked for.
   */
  harvest(rearm = true): Uint32Array {
    if (!this.active) throw new Error("the dirty log is not started");
    const map = this.map();
    const out = new Uint32Array(this.count());
    let k = 0;
    for (let p = 0; p < this.alwaysPages; p++) out[k++] = p;
    for (let p = this.alwaysPages; p < map.length; p++) if (map[p] !== 0) out[k++] = p;
    map.fill(0);
    if (rearm) this.cpu.full_clear_tlb();
    return out;
  }

  /** How many pages are logged now (an upper bound of what the next harvest reports). */
  count(): number {
    const map = this.map();
    let n = this.alwaysPages;
    for (let p = this.alwaysPages; p < map.length; p++) n += map[p]!;
    return n;
  }

  /**
   * Checks the physical-write path of the patch on this engine (a byte written through v86's
   * write8 is logged, nothing else is), and that writes through the BIOS alias are logged where
   * they are watched; leaves the log stopped and RAM unchanged. The TLB path is checked by the
   * migration tests, which compare the guest's RAM on both hosts.
   */
  selfTest(): void {
    const always = this.alwaysPages;
    const check = (write: () => void, pages: number[], what: string): void => {
      this.start();
      write();
      const got = this.harvest();
      this.stop();
      if (got.length !== always + pages.length || pages.some((p, i) => got[always + i] !== p)) {
        throw new Error(`the dirty log reported [${Array.from(got.subarray(always)).join(", ")}] after ${what} (expected [${pages.join(", ")}])`);
      }
    };
    const page = LOW_PAGES + 7;
    const addr = page * PAGE + 123;
    check(() => this.cpu.write8(addr, this.cpu.read8(addr)), [page], `a write to page ${page}`);
    if (always === 0) {
      // Through the alias: page 0xF3 (the BIOS area), a byte and a dword across pages 0xF4/0xF5.
      const a8 = 0xf3010;
      check(() => this.cpu.write8(BIOS_ALIAS + a8, this.cpu.read8(a8)), [0xf3], "a write through the BIOS alias");
      const a32 = 0xf4ffe;
      const old = [0, 1, 2, 3].map((i) => this.cpu.read8(a32 + i));
      const value = (old[0]! | (old[1]! << 8) | (old[2]! << 16) | (old[3]! << 24)) >>> 0;
      const w32 = this.cpu.memory_map_write32![(BIOS_ALIAS + a32) >>> MMAP_BLOCK_BITS]!;
      check(() => w32(BIOS_ALIAS + a32, value), [0xf4, 0xf5], "a dword written through the BIOS alias across two pages");
    }
  }

  stop(): void {
    this.mapGlobal.value = 0;
    this.active = false;
  }
}
