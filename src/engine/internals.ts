/**
 * The one place that knows v86's untyped internals. The shipped v86.d.ts covers the public
 * starter API only; the CPU object, the device bus and a few CPU methods used for RAM access
 * and state-without-RAM are typed here and self-tested at start-up (see selfTest), so a
 * different v86 build fails loudly instead of corrupting a guest.
 */
import { monotonicMs } from "../common/time.js";
import { EngineSelfTestError } from "./errors.js";

/** The pinned engine version; state files and migration handshakes carry it. */
export const ENGINE_VERSION = "v86 0.5.462";

export interface V86Bus {
  register(name: string, fn: (data: unknown) => void, thisValue?: unknown): void;
  unregister(name: string, fn: (data: unknown) => void): void;
  send(name: string, data?: unknown): void;
}

export interface V86Cpu {
  wasm_memory: { buffer: ArrayBuffer };
  mem8: Uint8Array;
  memory_size: Int32Array | Uint32Array;
  is_memory_zeroed: (addr: number, length: number) => boolean;
  unpack_memory: (bitmap: unknown, packed: unknown) => void;
  instruction_counter: Uint32Array | Float64Array;
  /** Writes the guest's time-stamp counter into current_tsc (low, high 32 bits). */
  store_current_tsc: () => void;
  current_tsc: Uint32Array;
  /** Sets the guest's time-stamp counter (it counts on from there at TSC_PER_MS). */
  set_tsc: (low: number, high: number) => void;
  /** v86's JIT settings; index 0 is "JIT disabled": no new code is compiled (compiled code still runs). */
  set_jit_config: (index: number, value: number) => void;
  devices: { virtio_net?: { mac: Uint8Array }; ne2k?: { mac: Uint8Array }; vga?: V86Vga };
  /** Called by v86's wasm for every block of guest code its JIT has compiled (it builds the wasm module). */
  codegen_finalize: (...args: unknown[]) => unknown;
  /** v86's wasm instance: its exports include the Rust allocator (v86_malloc, v86_free). */
  wm: { exports: Record<string, unknown> };
}

/** v86's VGA device, as far as its memory goes. */
export interface V86Vga {
  vga_memory: Uint8Array;
  svga_memory: Uint8Array;
  pixel_buffer: Uint8Array;
  get_state: () => unknown[];
  /** Redraws the whole screen: in text mode, every cell as a bus event and a put_char on the screen adapter. */
  complete_redraw: () => void;
  graphical_mode: boolean;
}

export interface V86Emulator {
  bus: V86Bus;
  v86: { cpu: V86Cpu; running?: boolean; yield: (t: number, tick: number) => void; yield_callback: (tick: number) => void; stop: () => void };
  cpu_is_running: boolean;
  run(): Promise<void>;
  stop(): Promise<void>;
  destroy(): Promise<void>;
  save_state(): Promise<ArrayBuffer>;
  restore_state(state: ArrayBuffer): Promise<void>;
  add_listener(event: string, fn: (data: unknown) => void): void;
  remove_listener(event: string, fn: (data: unknown) => void): void;
  is_running(): boolean;
  get_instruction_counter(): number;
}

export type V86Constructor = new (options: Record<string, unknown>) => V86Emulator;

export function cpuOf(emulator: V86Emulator): V86Cpu {
  return emulator.v86.cpu;
}

/** A raw view of guest RAM. The wasm memory can grow and detach old buffers: re-derive often. */
export function ramView(cpu: V86Cpu): Uint8Array {
  const mem8 = cpu.mem8; // a getter that builds a new array each call: read once
  return new Uint8Array(cpu.wasm_memory.buffer, mem8.byteOffset, mem8.length);
}

/**
 * Run `fn` (a save_state call) with RAM reported as all-zero, so the state carries CPU and
 * devices only. Used when RAM travels separately (live migration, pre-copied pages).
 */
export async function withoutRam<T>(cpu: V86Cpu, fn: () => Promise<T>): Promise<T> {
  const own = Object.prototype.hasOwnProperty.call(cpu, "is_memory_zeroed");
  const original = cpu.is_memory_zeroed;
  cpu.is_memory_zeroed = () => true;
  try {
    return await fn();
  } finally {
    if (own) cpu.is_memory_zeroed = original;
    else delete (cpu as Partial<V86Cpu>).is_memory_zeroed;
  }
}

/** Where the VGA device's buffers sit in its get_state() array (v86's vga.js): planes, SVGA memory, pixel buffer. */
const VGA_STATE_SLOTS = [6, 39, 61] as const;

/**
 * The VGA device's memory, ~1 MiB with 256 KiB of SVGA memory: a function that returns its four
 * planes (vga_memory), its SVGA memory (in the wasm memory) and its pixel buffer as fresh views,
 * in that order. Undefined when the device or its state does not look as expected (checked here,
 * once: v86's set_state takes an empty array in these slots as "leave it", see withoutVgaMemory).
 */
export function vgaRegions(cpu: V86Cpu): (() => Uint8Array[]) | undefined {
  const vga = cpu.devices.vga;
  if (vga === undefined || typeof vga.get_state !== "function") return undefined;
  const fields = [vga.vga_memory, vga.svga_memory, vga.pixel_buffer];
  const state = vga.get_state();
  if (!VGA_STATE_SLOTS.every((slot, i) => state[slot] === fields[i])) return undefined;
  const views = (): (Uint8Array | undefined)[] => fields.map(bytesOf);
  if (!views().every((v) => v !== undefined && v.length > 0)) return undefined;
  return () => views() as Uint8Array[];
}

/**
 * A plain byte view of one of v86's buffers. The SVGA memory is a Proxy that makes a new typed
 * array on the wasm memory's current buffer at every property access (so that it survives a
 * grow): not a view itself, but its buffer, offset and length are those of one.
 */
function bytesOf(a: unknown): Uint8Array | undefined {
  if (ArrayBuffer.isView(a)) return a instanceof Uint8Array ? a : new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const p = a as { buffer?: unknown; byteOffset?: unknown; length?: unknown; BYTES_PER_ELEMENT?: unknown } | undefined;
  if (p === undefined || p === null || !(p.buffer instanceof ArrayBuffer) || typeof p.byteOffset !== "number" || typeof p.length !== "number" || p.BYTES_PER_ELEMENT !== 1) return undefined;
  return new Uint8Array(p.buffer, p.byteOffset, p.length);
}

/**
 * Run `fn` (a save_state call) with the VGA device's memory left out of its state (empty arrays
 * in its slots): a restore of that state leaves the target's VGA memory as it is, so the memory
 * can travel separately (DEVICE_MEMORY) and ~1 MiB less goes in the pause.
 */
export async function withoutVgaMemory<T>(cpu: V86Cpu, fn: () => Promise<T>): Promise<T> {
  const vga = cpu.devices.vga;
  if (vga === undefined) throw new Error("the engine has no VGA device");
  const own = Object.prototype.hasOwnProperty.call(vga, "get_state");
  const original = vga.get_state;
  vga.get_state = function (this: V86Vga): unknown[] {
    const state = original.call(this);
    for (const slot of VGA_STATE_SLOTS) state[slot] = new Uint8Array(0);
    return state;
  };
  try {
    return await fn();
  } finally {
    if (own) vga.get_state = original;
    else delete (vga as Partial<V86Vga>).get_state;
  }
}

/**
 * Run `fn` (a restore_state call) without the VGA device's text-mode redraws. Its set_state
 * redraws the screen twice (once through set_font_page), each time 80 x 25 cells as a bus event
 * (a new array) and a put_char on v86's screen adapter; nothing in a VM process draws the screen
 * or listens for those events (the guest's console is its serial port). Measured: ~40 % of a
 * restore, which on a live migration's target is part of the pause. The guest's later writes to
 * text memory still go through put_char; in graphical mode the redraw (marking the screen dirty)
 * runs as before.
 */
export async function withoutTextRedraw<T>(cpu: V86Cpu, fn: () => Promise<T>): Promise<T> {
  const vga = cpu.devices.vga;
  if (vga === undefined || typeof vga.complete_redraw !== "function") return fn();
  const own = Object.prototype.hasOwnProperty.call(vga, "complete_redraw");
  const original = vga.complete_redraw;
  vga.complete_redraw = function (this: V86Vga): void {
    if (this.graphical_mode) original.call(this);
  };
  try {
    return await fn();
  } finally {
    if (own) vga.complete_redraw = original;
    else delete (vga as Partial<V86Vga>).complete_redraw;
  }
}

/** Run `fn` (a restore_state call) keeping RAM as it is (it was filled by pre-copy). */
export async function keepingRam<T>(cpu: V86Cpu, fn: () => Promise<T>): Promise<T> {
  const own = Object.prototype.hasOwnProperty.call(cpu, "unpack_memory");
  const original = cpu.unpack_memory;
  cpu.unpack_memory = () => undefined;
  try {
    return await fn();
  } finally {
    if (own) cpu.unpack_memory = original;
    else delete (cpu as Partial<V86Cpu>).unpack_memory;
  }
}

/** v86's time-stamp counter runs at 1 GHz of the engine clock (TSC_RATE in its cpu.rs). */
export const TSC_PER_MS = 1_000_000;

/** The guest's time-stamp counter now. */
export function readTsc(cpu: V86Cpu): bigint {
  cpu.store_current_tsc();
  const t = cpu.current_tsc; // a getter that builds a new array each call: read once
  return (BigInt(t[1]!) << 32n) | BigInt(t[0]!);
}

const U64 = (1n << 64n) - 1n;

/**
 * Moves the guest's time-stamp counter by `ticks` (may be negative). v86's set_tsc(v) is not
 * absolute: it sets its offset to (clock - offset) - v, so the counter reads v plus the old
 * offset. Two calls cancel the offset: after set_tsc(0) and set_tsc(d) the counter reads what it
 * would have read, plus d (less the sub-microsecond between the calls). selfTest checks this.
 */
export function advanceTsc(cpu: V86Cpu, ticks: bigint): void {
  const d = ticks & U64;
  cpu.set_tsc(0, 0);
  cpu.set_tsc(Number(d & 0xffffffffn), Number(d >> 32n));
}

/** Checks that advanceTsc moves the counter by what it is asked (and puts it back). */
function checkAdvanceTsc(cpu: V86Cpu): void {
  const step = BigInt(1000 * TSC_PER_MS);
  const before = readTsc(cpu);
  advanceTsc(cpu, step);
  const moved = readTsc(cpu) - before;
  advanceTsc(cpu, -step);
  const error = moved - step;
  // Allow the clock to move between the reads (up to 50 ms on a busy machine).
  if (error < 0n || error > BigInt(50 * TSC_PER_MS)) throw new EngineSelfTestError(`cpu.set_tsc does not behave as expected: asked to move the TSC by ${step}, it moved by ${moved}`);
}

/** Free room kept in v86's own heap, so its JIT's allocations do not grow wasm memory (see watchJitCompiles). */
export const HEAP_HEADROOM_BYTES = 16 * 1024 * 1024;

function allocator(cpu: V86Cpu): { malloc: (n: number) => number; free: (p: number) => void } {
  const { v86_malloc: malloc, v86_free: free } = cpu.wm.exports;
  if (typeof malloc !== "function" || typeof free !== "function") throw new EngineSelfTestError("v86's wasm exports no v86_malloc / v86_free");
  return { malloc: malloc as (n: number) => number, free: free as (p: number) => void };
}

/**
 * Makes v86's allocator (Rust's dlmalloc, inside its wasm) hold `bytes` of free heap: one
 * allocation that size, freed again, stays in its free space (measured: small allocations are
 * then served from it without growing memory). One allocation, so memory grows once (pieces
 * grew it once each, each grow a major GC). Growing memory from the outside would not do: the
 * allocator only uses room it grew itself.
 */
function reserveHeap(cpu: V86Cpu, bytes: number): void {
  const { malloc, free } = allocator(cpu);
  const p = malloc(bytes);
  if (p !== 0) free(p);
}

/**
 * Wraps the JIT's per-module hook: counts the modules compiled from now on (diagnostics, tests;
 * returns the counter) and keeps v86's heap from growing wasm memory while it compiles.
 *
 * v86's JIT keeps ~20 KiB of its own heap per compiled module, and its allocator grows wasm
 * memory 64 KiB at a time when it runs out. Each grow of the engine's wasm memory (150-300 MiB with
 * guest RAM) makes V8 count the whole grown buffer as new external memory until the next GC,
 * which starts a major GC at once: measured, one every 1-3 s while a guest's JIT was compiling,
 * each holding the VM's thread 5-10 ms, the longest heartbeat silences of a guest not being
 * moved. So the heap is given HEAP_HEADROOM_BYTES of free room at start (~800 modules'
 * worth), and again whenever the allocator had to grow memory all the same. Whoever else grows
 * the memory (the engine's host area) calls `hostGrew()` after, so that is not taken for the
 * allocator's room running out.
 */
export function watchJitCompiles(cpu: V86Cpu): { count: () => number; hostGrew: () => void } {
  const original = cpu.codegen_finalize.bind(cpu);
  reserveHeap(cpu, HEAP_HEADROOM_BYTES);
  let heapEnd = cpu.wasm_memory.buffer.byteLength;
  let n = 0;
  cpu.codegen_finalize = (...args: unknown[]): unknown => {
    n++;
    const end = cpu.wasm_memory.buffer.byteLength;
    if (end !== heapEnd) {
      // The allocator grew memory: its room is used up. One GC is under way; top the room up.
      reserveHeap(cpu, HEAP_HEADROOM_BYTES);
      heapEnd = cpu.wasm_memory.buffer.byteLength;
    }
    return original(...args);
  };
  return {
    count: () => n,
    hostGrew: () => {
      heapEnd = cpu.wasm_memory.buffer.byteLength;
    },
  };
}

/** Checks every internal this module relies on. Throws EngineSelfTestError. */
export function selfTest(emulator: V86Emulator, memoryBytes: number): void {
  const cpu = emulator.v86?.cpu;
  if (cpu === undefined) throw new EngineSelfTestError("emulator.v86.cpu is missing");
  if (!(cpu.wasm_memory?.buffer instanceof ArrayBuffer)) throw new EngineSelfTestError("cpu.wasm_memory has no ArrayBuffer");
  if (typeof cpu.is_memory_zeroed !== "function") throw new EngineSelfTestError("cpu.is_memory_zeroed is not a function");
  if (typeof cpu.unpack_memory !== "function") throw new EngineSelfTestError("cpu.unpack_memory is not a function");
  if (typeof emulator.bus?.send !== "function") throw new EngineSelfTestError("emulator.bus is missing");
  if (typeof cpu.set_jit_config !== "function") throw new EngineSelfTestError("cpu.set_jit_config is not a function");
  if (typeof cpu.store_current_tsc !== "function" || typeof cpu.set_tsc !== "function") throw new EngineSelfTestError("cpu.store_current_tsc / cpu.set_tsc are missing");
  checkAdvanceTsc(cpu);
  if (typeof cpu.codegen_finalize !== "function") throw new EngineSelfTestError("cpu.codegen_finalize is not a function");
  allocator(cpu);
  if (typeof emulator.v86.yield !== "function" || typeof emulator.v86.yield_callback !== "function" || typeof emulator.v86.stop !== "function") {
    throw new EngineSelfTestError("the emulator's yield/yield_callback/stop scheduler hooks are missing");
  }
  const view = ramView(cpu);
  if (view.length !== memoryBytes) throw new EngineSelfTestError(`RAM view is ${view.length} bytes, expected ${memoryBytes}`);
}

/**
 * Idle scheduling. After each main-loop slice v86 calls `yield(t, tick)`: `t` is 0 when the CPU
 * should run again at once (its time slice ran out, a device interrupt ended a HLT, or `run()`),
 * and > 0 only while the guest is halted, as the ms until the next PIT/RTC/ACPI/APIC timer event.
 * v86's Node scheduler then uses setTimeout(t), but Node's timers have 1 ms granularity and a
 * fractional delay fires up to 1 ms early: the main loop finds the timer not yet due and waits
 * again, so an idle guest (a 250 Hz tick) was woken ~470 times/s, and each wake-up of an idle
 * process costs ~50-100 us of CPU on its own (measured: ~27% of a core per idle VM with v86's
 * own scheduler, ~12% with a 1 ms minimum while halted).
 *
 * While halted, sleep until the next timer event is due, rounded up to whole milliseconds: one
 * wake-up per guest timer interrupt (~250/s), which arrives < ~1 ms late (p50 ~0.5 ms). A device
 * interrupt (serial input, a network frame) still wakes the halted guest at once, and cancels
 * the sleep it ended. `t` is used rather than `cpu.in_hlt`: that view is a Proxy that builds a
 * typed array on every read.
 *
 * A stop ends the sleep too: v86 notices a stop only in its next slice, so a halted guest's
 * pause waited for its next timer event (measured: up to 3.6 ms at the start of a live
 * migration's switchover, for a guest that sleeps between heartbeats).
 *
 * Returns what it sees of the guest's halts (GuestIdle), for Engine.whenQuiet.
 */
export function installIdleScheduler(emulator: V86Emulator): GuestIdle {
  const v86 = emulator.v86;
  const original = v86.yield.bind(v86);
  const stop = v86.stop.bind(v86);
  let sleeping: NodeJS.Timeout | undefined;
  let sleepingTick = 0;
  let wakeAt: number | undefined;
  let lastHaltAt = -Infinity;
  let waiters: (() => void)[] = [];
  const haltedNow = (): void => {
    if (waiters.length === 0) return;
    const ws = waiters;
    waiters = [];
    for (const w of ws) w();
  };
  const wake = (tick: number): void => {
    sleeping = undefined;
    wakeAt = undefined;
    v86.yield_callback(tick);
  };
  v86.stop = (): void => {
    stop();
    wakeAt = undefined;
    if (sleeping !== undefined) {
      clearTimeout(sleeping);
      sleeping = undefined;
      original(0, sleepingTick);
    }
    haltedNow();
  };
  v86.yield = (t: number, tick: number): void => {
    if (sleeping !== undefined) clearTimeout(sleeping);
    sleeping = undefined;
    wakeAt = undefined;
    if (t > 0) {
      sleepingTick = tick;
      lastHaltAt = monotonicMs();
      wakeAt = lastHaltAt + t;
      sleeping = setTimeout(wake, Math.ceil(t), tick);
      haltedNow();
    } else original(t, tick);
  };
  return {
    wakeAt: () => wakeAt,
    lastHaltAt: () => lastHaltAt,
    onNextHalt: (cb) => {
      waiters.push(cb);
      return () => {
        waiters = waiters.filter((w) => w !== cb);
      };
    },
  };
}

/** Whether the guest sleeps (HLT) between timer events, as installIdleScheduler sees it. */
export interface GuestIdle {
  /** While the guest is halted: when its next timer event is due (monotonicMs); else undefined. */
  wakeAt(): number | undefined;
  /** When the guest last halted (monotonicMs; -Infinity before it first did). */
  lastHaltAt(): number;
  /** Calls `cb` once, the next time the guest halts or the emulator is stopped; the result cancels that. */
  onNextHalt(cb: () => void): () => void;
}

/**
 * Guest instructions/s from which a guest counts as busy. Measured over 100 ms windows: an idle
 * guest runs ~0.9M/s; one printing a heartbeat line every 10 ms (the migration benchmark's) runs
 * 2.2M/s (p90 2.4M, up to 2.7M in the first windows after a live migration); an exec, a shell
 * loop or `dirty` run 5-12M/s. At 2.5M the heartbeat alone turned compiling on now and then, and
 * compiling, once on, stalls the guest when a module comes due: v86 generates it in one call
 * (jit_analyze_and_generate, up to 5 pages of guest code) that held the guest 40-120 ms.
 */
const JIT_BUSY_INSTRUCTIONS_PER_S = 4_000_000;
/** The instruction rate is measured over windows this long. */
const JIT_GATE_WINDOW_MS = 100;
/** Compiling stays on this long after the last busy window (bursts such as an exec)... */
const JIT_GATE_HOLD_MS = 2_000;
/** ...and comes on again once the guest has stayed idle this long. */
const JIT_IDLE_COMPILE_AFTER_MS = 180_000;

/**
 * Lets v86's JIT compile an idle guest's code only once that pays off. The JIT compiles a page
 * after code on it has run 200k instructions in total (a count that never decays), and V8 then
 * compiles each generated module twice (Liftoff, then TurboFan: ~35 ms of CPU each). An idle
 * guest runs its timer-interrupt path (~3.6k instructions, 250 times/s, spread over a few dozen
 * kernel pages), so it compiled page after page during its first minute: ~1 s of CPU on V8's
 * worker threads, ~4% of a core per VM at first. Compiled, that path costs ~0.5% of a core less
 * than interpreted (measured: ~105 vs ~140 us per tick), which repays the compiling only for a
 * guest that stays idle for more than ~3 minutes. So, as when renting skis until the rent paid
 * equals the price: compiling is on while the guest is busy (the JIT works as before) and for
 * JIT_GATE_HOLD_MS after, off while it is idle (and at first, until it is seen busy), and on
 * again once it has stayed idle for JIT_IDLE_COMPILE_AFTER_MS. Code already compiled keeps running either way; while compiling
 * is off, v86 does not count hotness either.
 */
export function installJitGate(emulator: V86Emulator): void {
  const v86 = emulator.v86;
  const cpu = v86.cpu;
  const next = v86.yield.bind(v86);
  // Off until the guest is seen busy (a boot is, within the first window): a guest restored
  // idle, as after a live migration, has nothing worth compiling yet (see docs/design.md).
  let compiling = false;
  cpu.set_jit_config(0, 1);
  let windowStart = monotonicMs();
  let lastBusy = windowStart - JIT_GATE_HOLD_MS;
  let windowInstructions = emulator.get_instruction_counter();
  // While the emulator is stopped no window runs, and a restore replaces the instruction
  // counter (a window across it would count another engine's instructions as this one's): the
  // window after a stop starts afresh when the guest runs again.
  let stale = false;
  const stop = v86.stop.bind(v86);
  v86.stop = (): void => {
    stale = true;
    stop();
  };
  v86.yield = (t: number, tick: number): void => {
    const now = monotonicMs();
    if (stale) {
      stale = false;
      windowStart = now;
      windowInstructions = emulator.get_instruction_counter();
    } else if (now - windowStart >= JIT_GATE_WINDOW_MS) {
      const instructions = emulator.get_instruction_counter();
      // A rate over the window as it really was: when the event loop is held up (a loaded
      // host), a window spans several times JIT_GATE_WINDOW_MS, and an idle guest's count over
      // it would pass for a busy one's.
      if (((instructions - windowInstructions) >>> 0) * 1000 >= JIT_BUSY_INSTRUCTIONS_PER_S * (now - windowStart)) lastBusy = now;
      const sinceBusy = now - lastBusy;
      const compile = sinceBusy < JIT_GATE_HOLD_MS || sinceBusy >= JIT_IDLE_COMPILE_AFTER_MS;
      if (compile !== compiling) {
        cpu.set_jit_config(0, compile ? 0 : 1);
        compiling = compile;
      }
      windowStart = now;
      windowInstructions = instructions;
    }
    next(t, tick);
  };
}
