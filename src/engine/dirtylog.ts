/**
 * The guest's dirty-page log (see wasmpatch.ts for how v86 records it).
 *
 * start() clears the map and flushes the TLB, so that every write from then on needs a TLB
 * entry made while logging (or is a physical write, which is logged directly). harvest()
 * returns the pages written since start() or the last harvest, clears them and flushes the
 * TLB again: writable entries made before the harvest cannot carry later writes past it.
 * Call both only between emulator slices (from the event loop), never from inside the guest.
 *
 * Writes through v86's BIOS alias at 0xFFF00000 go straight to the first 1 MiB from JS and are
 * not logged: the first 1 MiB is always reported.
 */
import { DIRTY_MAP_BYTES, DIRTY_MAP_GLOBAL, RAM_PAGE_GLOBAL } from "./wasmpatch.js";

const PAGE = 4096;
/** Pages always reported (see above). */
const ALWAYS_PAGES = (1024 * 1024) / PAGE;

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
}

export class DirtyLog {
  private mapAt = 0;
  private active = false;
  private readonly ramPage: number;
  readonly pageCount: number;

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

  /** Pages written since start() or the last harvest (ascending); clears them and re-arms the log. */
  harvest(): Uint32Array {
    if (!this.active) throw new Error("the dirty log is not started");
    const map = this.map();
    const out = new Uint32Array(this.count());
    let k = 0;
    for (let p = 0; p < ALWAYS_PAGES; p++) out[k++] = p;
    for (let p = ALWAYS_PAGES; p < map.length; p++) if (map[p] !== 0) out[k++] = p;
    map.fill(0);
    this.cpu.full_clear_tlb();
    return out;
  }

  /** How many pages are logged now (an upper bound of what the next harvest reports). */
  count(): number {
    const map = this.map();
    let n = ALWAYS_PAGES;
    for (let p = ALWAYS_PAGES; p < map.length; p++) n += map[p]!;
    return n;
  }

  /**
   * Checks the physical-write path of the patch on this engine (a byte written through v86's
   * write8 is logged, nothing else is) and leaves the log stopped and RAM unchanged. The
   * TLB path is checked by the migration tests, which compare the guest's RAM on both hosts.
   */
  selfTest(): void {
    const page = ALWAYS_PAGES + 7;
    this.start();
    const addr = page * PAGE + 123;
    this.cpu.write8(addr, this.cpu.read8(addr));
    const got = this.harvest();
    this.stop();
    if (got.length !== ALWAYS_PAGES + 1 || got[ALWAYS_PAGES] !== page) {
      throw new Error(`the dirty log reported [${Array.from(got.subarray(ALWAYS_PAGES)).join(", ")}] after a write to page ${page}`);
    }
  }

  stop(): void {
    this.mapGlobal.value = 0;
    this.active = false;
  }
}
