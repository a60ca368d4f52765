/**
 * The one place that knows v86's untyped internals. The shipped v86.d.ts covers the public
 * starter API only; the CPU object, the device bus and a few CPU methods used for RAM access
 * and state-without-RAM are typed here and self-tested at start-up (see selfTest), so a
 * different v86 build fails loudly instead of corrupting a guest.
 */
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
  in_hlt: Uint8Array;
  devices: { virtio_net?: { mac: Uint8Array }; ne2k?: { mac: Uint8Array } };
}

export interface V86Emulator {
  bus: V86Bus;
  v86: { cpu: V86Cpu; running?: boolean; yield: (t: number, tick: number) => void; yield_callback: (tick: number) => void };
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

/** Checks every internal this module relies on. Throws EngineSelfTestError. */
export function selfTest(emulator: V86Emulator, memoryBytes: number): void {
  const cpu = emulator.v86?.cpu;
  if (cpu === undefined) throw new EngineSelfTestError("emulator.v86.cpu is missing");
  if (!(cpu.wasm_memory?.buffer instanceof ArrayBuffer)) throw new EngineSelfTestError("cpu.wasm_memory has no ArrayBuffer");
  if (typeof cpu.is_memory_zeroed !== "function") throw new EngineSelfTestError("cpu.is_memory_zeroed is not a function");
  if (typeof cpu.unpack_memory !== "function") throw new EngineSelfTestError("cpu.unpack_memory is not a function");
  if (typeof emulator.bus?.send !== "function") throw new EngineSelfTestError("emulator.bus is missing");
  if (typeof cpu.in_hlt?.[0] !== "number") throw new EngineSelfTestError("cpu.in_hlt is missing");
  if (typeof emulator.v86.yield !== "function" || typeof emulator.v86.yield_callback !== "function") {
    throw new EngineSelfTestError("the emulator's yield/yield_callback scheduler hooks are missing");
  }
  const view = ramView(cpu);
  if (view.length !== memoryBytes) throw new EngineSelfTestError(`RAM view is ${view.length} bytes, expected ${memoryBytes}`);
}

/**
 * v86's Node scheduler re-enters its main loop with setImmediate whenever the next timer is
 * due in under 1 ms, including while the guest is halted: an idle guest then spins a core
 * (measured: ~27% of a core per idle VM). While the CPU is halted, wait at least 1 ms instead
 * (measured: ~10%); an interrupt is delivered at most ~1 ms late, only when the guest was idle.
 */
export function installIdleClamp(emulator: V86Emulator): void {
  const v86 = emulator.v86;
  const original = v86.yield.bind(v86);
  const cpu = v86.cpu;
  v86.yield = (t: number, tick: number): void => {
    if (t < 1 && cpu.in_hlt[0] === 1) setTimeout(() => v86.yield_callback(tick), 1);
    else original(t, tick);
  };
}
