import { createRequire } from "node:module";
// Must load before v86: it gives v86 an adjustable clock (see clock.ts).
import { checkEngineClock, continueEngineClock, engineNow } from "./clock.js";
import { V86 } from "v86";
import { defaultCacheDir } from "../common/paths.js";
import { monotonicMs } from "../common/time.js";
import { DirtyLog, type DirtyLogCpu } from "./dirtylog.js";
import { EngineInitError, EngineSelfTestError, EngineStateError } from "./errors.js";
import { ensurePatchedWasm, patchedV86Module } from "./wasmpatch.js";
import { cpuOf, vgaRegions, withoutTextRedraw, withoutVgaMemory, installIdleScheduler, installJitGate, type GuestIdle, keepingRam, watchJitCompiles, ramView, advanceTsc, readTsc, selfTest, TSC_PER_MS, withoutRam, type V86Constructor, type V86Emulator } from "./internals.js";

/** Beyond this pause the guest's TSC is not moved on (see continueTsc): the guest agent sets the clock instead. */
export const MAX_TSC_CATCH_UP_MS = 10_000;

const require = createRequire(import.meta.url);
const wasmPath = require.resolve("v86/build/v86.wasm");

export type NicModel = "virtio" | "ne2k";

/** v86's buffer interface, as implemented by storage's FileDisk. */
export interface DiskBackend {
  byteLength: number;
  load(): void;
  get(start: number, len: number, fn: (data: Uint8Array) => void): void;
  get_and_cache(start: number, len: number, fn: (data: Uint8Array) => void): void;
  get_from_cache(start: number, len: number): Uint8Array | undefined;
  set(start: number, data: Uint8Array, fn: () => void): void;
  get_state(): unknown[];
  set_state(state: unknown[]): void;
}

/**
 * Prepares the engine's wasm module with the dirty-page log (see wasmpatch.ts) in the cache, so
 * that the first VM does not patch it. Returns the cached file's path.
 */
export async function prepareEngine(cacheDir: string = defaultCacheDir()): Promise<string> {
  return (await ensurePatchedWasm(wasmPath, cacheDir)).path;
}

/** Where a state was saved: the engine clock then (`clockMs`) and the wall clock (`atMs`). */
export interface SavedClock {
  clockMs: number;
  atMs: number;
}

export interface EngineOptions {
  memoryMiB: number;
  vgaMemoryKiB: number;
  bios: Uint8Array;
  vgabios: Uint8Array;
  /**
   * Load v86's stock wasm, without the dirty-page log (a live migration then compares all of RAM
   * while the guest is paused). By default the patched module is used (see wasmpatch.ts).
   */
  stockWasm?: boolean;
  /** Kernel boot; absent when the engine will be restored from a state. */
  boot?: { bzimage: Uint8Array; initrd: Uint8Array; cmdline: string };
  disk?: DiskBackend;
  nic: NicModel;
  /** Number of serial ports (1..4): 0 is the console, 1 the guest agent. */
  serialPorts: number;
}

export { DEFAULT_VGA_KIB } from "./constants.js";

/** A copy of `b` as an ArrayBuffer of its own (what v86 takes for images and states). */
export function toArrayBuffer(b: Uint8Array): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}

/** whenQuiet: a guest that has not halted for this long is busy (it has no quiet moment). */
const QUIET_BUSY_AFTER_MS = 20;
/**
 * whenQuiet, busy guest: one that sent output within the last BUSY_TALKS_WITHIN_MS, but not in
 * the last BUSY_SPOKE_RECENTLY_MS, is waited for until its next output (at most
 * BUSY_OUTPUT_MAX_WAIT_MS); any other busy guest is not waited for.
 */
const BUSY_TALKS_WITHIN_MS = 100;
const BUSY_SPOKE_RECENTLY_MS = 6;
const BUSY_OUTPUT_MAX_WAIT_MS = 8;

/**
 * Resolves with the value `arm`'s callback settles with, or with `timedOut` after `ms`. `arm`
 * starts watching and returns what stops it (called once settled, either way).
 */
function settleWithin<T>(ms: number, timedOut: T, arm: (settle: (value: T) => void) => () => void): Promise<T> {
  return new Promise<T>((resolve) => {
    let settled = false;
    let stop = (): void => {};
    const settle = (value: T): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      stop();
      resolve(value);
    };
    const timer = setTimeout(() => settle(timedOut), ms);
    stop = arm(settle);
    if (settled) stop();
  });
}

/**
 * A typed facade over one v86 emulator instance: power (run/pause), state with and without
 * RAM, a raw RAM view, serial ports and the NIC.
 */
export class Engine {
  readonly memoryBytes: number;
  private readonly emu: V86Emulator;
  /** When the guest last sent output (a serial byte or a frame; monotonicMs). */
  private lastOutputAt = -Infinity;
  private destroyed = false;
  private readonly jit: { count: () => number; hostGrew: () => void };
  /** The guest's dirty-page log; undefined with stock v86 wasm. */
  readonly dirtyLog: DirtyLog | undefined;
  /**
   * The VGA device's memory (~1 MiB), which a live migration sends beside RAM while the guest
   * runs, so that the state saved in the pause is ~0.2 MB instead of ~1.3 MB. Undefined when
   * v86's VGA device is not as expected (the state then carries it, as before).
   */
  readonly deviceMemory: { regions(): Uint8Array[]; saveStateWithoutMemory(): Promise<ArrayBuffer> } | undefined;

  private constructor(emu: V86Emulator, readonly options: EngineOptions, dirtyLog: DirtyLog | undefined, private readonly idle: GuestIdle) {
    this.emu = emu;
    this.memoryBytes = options.memoryMiB * 1024 * 1024;
    const cpu = cpuOf(emu);
    this.jit = watchJitCompiles(cpu);
    this.dirtyLog = dirtyLog;
    const regions = vgaRegions(cpu);
    this.deviceMemory = regions !== undefined ? { regions, saveStateWithoutMemory: () => withoutVgaMemory(cpu, () => this.saveStateWithoutRam()) } : undefined;
    this.onOutput(() => {
      this.lastOutputAt = monotonicMs();
    });
  }

  /** Creates the emulator, loaded but not running. */
  static async create(options: EngineOptions): Promise<Engine> {
    let module: WebAssembly.Module | undefined;
    if (options.stockWasm !== true) module = await patchedV86Module(wasmPath, defaultCacheDir());
    const settings: Record<string, unknown> = {
      wasm_path: wasmPath,
      memory_size: options.memoryMiB * 1024 * 1024,
      vga_memory_size: options.vgaMemoryKiB * 1024,
      bios: { buffer: toArrayBuffer(options.bios) },
      vga_bios: { buffer: toArrayBuffer(options.vgabios) },
      autostart: false,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
      preserve_mac_from_state_image: true,
      net_device: { type: options.nic },
      uart1: options.serialPorts > 1,
      uart2: options.serialPorts > 2,
      uart3: options.serialPorts > 3,
      log_level: 0,
    };
    if (options.boot !== undefined) {
      settings["bzimage"] = { buffer: toArrayBuffer(options.boot.bzimage) };
      settings["initrd"] = { buffer: toArrayBuffer(options.boot.initrd) };
      settings["cmdline"] = options.boot.cmdline;
    }
    if (options.disk !== undefined) settings["hda"] = options.disk;
    if (module !== undefined) {
      const compiled = module;
      settings["wasm_fn"] = async (imports: WebAssembly.Imports): Promise<WebAssembly.Exports> => (await WebAssembly.instantiate(compiled, imports)).exports;
    }
    let emu: V86Emulator;
    try {
      emu = new (V86 as unknown as V86Constructor)(settings);
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("emulator did not load within 30 s")), 30_000);
        emu.add_listener("emulator-loaded", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    } catch (err) {
      throw new EngineInitError((err as Error).message, err);
    }
    selfTest(emu, options.memoryMiB * 1024 * 1024);
    let log: DirtyLog | undefined;
    if (module !== undefined) {
      log = DirtyLog.of(cpuOf(emu) as unknown as DirtyLogCpu, options.memoryMiB * 1024 * 1024);
      if (log === undefined) throw new EngineSelfTestError("the patched v86 module has no dirty-log globals");
      try {
        log.selfTest();
      } catch (err) {
        throw new EngineSelfTestError((err as Error).message);
      }
    }
    const microtick = (emu.v86 as unknown as { constructor: { microtick?: () => number } }).constructor.microtick;
    if (typeof microtick !== "function") throw new EngineInitError("v86's microtick clock is missing");
    try {
      checkEngineClock(microtick);
    } catch (err) {
      throw new EngineInitError((err as Error).message, err);
    }
    const idle = installIdleScheduler(emu);
    installJitGate(emu);
    return new Engine(emu, options, log, idle);
  }

  get running(): boolean {
    return this.emu.is_running();
  }

  async run(): Promise<void> {
    await this.emu.run();
  }

  /**
   * Resolves at a quiet moment to stop the guest at: the first time it halts after it next sent
   * output (a byte on a serial port or an Ethernet frame), at once when it is stopped, or after
   * `maxWaitMs`. A guest that answers or reports now and then is then paused in the time it
   * would have been silent anyway. A busy guest (it has not halted in the last
   * QUIET_BUSY_AFTER_MS) has no such moment: one that talks (output in the last
   * BUSY_TALKS_WITHIN_MS) and whose next output is due soon (none in the last
   * BUSY_SPOKE_RECENTLY_MS) is caught right after that output (the end of the engine's slice in
   * which it came), waiting at most BUSY_OUTPUT_MAX_WAIT_MS; any other busy guest at once.
   * Resolves true at such a moment, false otherwise.
   */
  async whenQuiet(maxWaitMs: number): Promise<boolean> {
    if (!this.emu.is_running()) return false;
    if (this.busy) {
      const since = monotonicMs() - this.lastOutputAt;
      if (since >= BUSY_TALKS_WITHIN_MS || since < BUSY_SPOKE_RECENTLY_MS) return false;
      // Right after its next output, if that comes soon.
      return await settleWithin(Math.min(maxWaitMs, BUSY_OUTPUT_MAX_WAIT_MS), false, (settle) => this.onOutput(() => settle(true)));
    }
    const asked = monotonicMs();
    return await settleWithin(maxWaitMs, false, (settle) => {
      let cancelHalt = (): void => {};
      const onHalt = (): void => {
        if (this.idle.wakeAt() === undefined) settle(false); // stopped, not halted
        else if (this.lastOutputAt >= asked) settle(true);
        else cancelHalt = this.idle.onNextHalt(onHalt);
      };
      cancelHalt = this.idle.onNextHalt(onHalt);
      return () => cancelHalt();
    });
  }

  /**
   * Resolves once the guest has finished what it is doing: at once when it is halted, stopped
   * or busy (it has not halted in the last QUIET_BUSY_AFTER_MS), else at its next halt or after
   * `maxWaitMs`. Work that shares this thread with the guest (a migration's slices) lets an
   * idle guest's short bursts (a timer tick, a line of output) run to their end this way.
   */
  async whenHalted(maxWaitMs: number): Promise<void> {
    if (!this.emu.is_running() || this.halted || this.busy) return;
    await settleWithin(maxWaitMs, undefined, (settle) => this.idle.onNextHalt(() => settle(undefined)));
  }

  /** Busy: the guest has not halted in the last QUIET_BUSY_AFTER_MS. */
  private get busy(): boolean {
    return monotonicMs() - this.idle.lastHaltAt() > QUIET_BUSY_AFTER_MS;
  }

  /** Calls `fn` at every byte the guest sends on any serial port and every frame it sends; the result stops that. */
  private onOutput(fn: () => void): () => void {
    const offs = [0, 1, 2, 3].map((port) => this.onSerialByte(port, fn));
    offs.push(this.onFrame(fn));
    return () => {
      for (const off of offs) off();
    };
  }

  /** Whether the guest is halted (HLT) now, waiting for its next timer event or interrupt. */
  get halted(): boolean {
    return this.idle.wakeAt() !== undefined;
  }

  /** Stops the CPU; resolves once the emulator has stopped (within a ~1 ms slice). */
  async pause(): Promise<void> {
    await this.emu.stop();
  }

  /** Full state including RAM (RAM as bitmap + non-zero pages). Pause first for a consistent state. */
  async saveState(): Promise<ArrayBuffer> {
    try {
      return await this.emu.save_state();
    } catch (err) {
      throw new EngineStateError("save", (err as Error).message, err);
    }
  }

  /**
   * Restores a full state. With `saved` (where and when the state was saved elsewhere), the
   * engine clock and the guest's TSC continue from there, counting the time since (see
   * continueClock, continueTsc), as if the guest had been paused in place.
   */
  async restoreState(state: ArrayBuffer, saved?: SavedClock): Promise<void> {
    if (saved !== undefined) this.continueClock(saved.clockMs, saved.atMs);
    try {
      await withoutTextRedraw(cpuOf(this.emu), () => this.emu.restore_state(state));
    } catch (err) {
      throw new EngineStateError("restore", (err as Error).message, err);
    }
    if (saved !== undefined) this.continueTsc(saved.clockMs);
  }

  /** CPU and device state without RAM (RAM travels separately). */
  async saveStateWithoutRam(): Promise<ArrayBuffer> {
    return withoutRam(cpuOf(this.emu), () => this.saveState());
  }

  /** Restores CPU and devices onto RAM that already holds the guest's pages. */
  async restoreStateKeepingRam(state: ArrayBuffer, saved?: SavedClock): Promise<void> {
    await keepingRam(cpuOf(this.emu), () => this.restoreState(state, saved));
  }

  /** The engine's clock (v86's microtick), ms: device timers run on it. */
  clockMs(): number {
    return engineNow();
  }

  /** Continues the clock of an engine whose state was saved at clock `savedClockMs`, wall time `savedAtMs`. */
  continueClock(savedClockMs: number, savedAtMs: number): void {
    continueEngineClock(savedClockMs, savedAtMs);
  }

  /**
   * After restoring a state saved at engine clock `savedClockMs` (and continueClock()): moves
   * the guest's time-stamp counter on by the time the engine clock ran since, as if the guest
   * had been paused in place. v86 restores the TSC as it was saved, so without this the guest's
   * clock (Linux keeps time by the TSC) lags by every move's pause. Returns the ms added: 0 when
   * the pause is longer than MAX_TSC_CATCH_UP_MS (a jump of hours could upset the guest's
   * timekeeping; the guest agent sets the clock then).
   */
  continueTsc(savedClockMs: number): number {
    const ms = engineNow() - savedClockMs;
    if (!(ms > 0) || ms > MAX_TSC_CATCH_UP_MS) return 0;
    advanceTsc(cpuOf(this.emu), BigInt(Math.round(ms * TSC_PER_MS)));
    return ms;
  }

  /** Code modules v86's JIT has compiled since the engine was created (diagnostics, tests). */
  jitCompiles(): number {
    return this.jit.count();
  }

  /** The guest's time-stamp counter (tests). */
  tsc(): bigint {
    return readTsc(cpuOf(this.emu));
  }

  private area: { offset: number; bytes: number } | undefined;

  /**
   * A region of at least `bytes` in the engine's wasm memory beyond anything v86 allocates (the
   * memory is grown for it once; later calls get the same region). A live migration keeps its
   * shadow copy of RAM there. Wasm memory never shrinks: the region stays for the engine's life.
   */
  hostArea(bytes: number): { memory: WebAssembly.Memory; offset: number } {
    const memory = cpuOf(this.emu).wasm_memory as unknown as WebAssembly.Memory;
    if (this.area === undefined || this.area.bytes < bytes) {
      const pages = Math.ceil(bytes / 65536);
      this.area = { offset: memory.grow(pages) * 65536, bytes: pages * 65536 };
      this.jit.hostGrew();
    }
    return { memory, offset: this.area.offset };
  }

  /**
   * Grows wasm memory now for what a live migration in or out will place there: a host area
   * of `hostAreaBytes` and the dirty log's map. Each grow starts a major GC in V8 (5-10 ms on
   * the VM's thread): the VM process calls this before its guest runs, not while it is moved.
   */
  reserveMigrationMemory(hostAreaBytes: number): void {
    this.hostArea(hostAreaBytes);
    this.dirtyLog?.reserve();
    this.jit.hostGrew();
  }

  /** The size of the engine's wasm memory (guest RAM, v86's own heap, host areas), bytes. */
  wasmMemoryBytes(): number {
    return cpuOf(this.emu).wasm_memory.buffer.byteLength;
  }

  /** A raw view of guest RAM; re-derive it after anything that may grow wasm memory. */
  ram(): Uint8Array {
    return ramView(cpuOf(this.emu));
  }

  instructionCount(): number {
    return this.emu.get_instruction_counter();
  }

  /** Subscribe to bytes written by the guest to serial port `port`; returns an unsubscribe function. */
  onSerialByte(port: number, fn: (byte: number) => void): () => void {
    const listener = (data: unknown): void => fn(data as number);
    this.emu.add_listener(`serial${port}-output-byte`, listener);
    return () => this.emu.remove_listener(`serial${port}-output-byte`, listener);
  }

  serialWrite(port: number, data: Uint8Array): void {
    for (const byte of data) this.emu.bus.send(`serial${port}-input`, byte);
  }

  /** Ethernet frames sent by the guest. */
  onFrame(fn: (frame: Uint8Array) => void): () => void {
    const listener = (data: unknown): void => fn(data as Uint8Array);
    this.emu.add_listener("net0-send", listener);
    return () => this.emu.remove_listener("net0-send", listener);
  }

  /** Delivers an Ethernet frame to the guest's NIC. */
  deliverFrame(frame: Uint8Array): void {
    this.emu.bus.send("net0-receive", frame);
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await this.emu.destroy();
  }
}
