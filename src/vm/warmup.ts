/**
 * Warming a VM process's engine code before it matters.
 *
 * V8 compiles v86's wasm lazily (a function on its first call, then the hot ones again with
 * TurboFan) and v86's JavaScript devices the same way. In a fresh process the first
 * milliseconds a guest runs therefore cost far more than they should: measured here, the first
 * main-loop slice after restoring a state took 6-12 ms instead of 0.7 ms, and the next 200 ms
 * burnt ~140 ms of CPU on compiling instead of ~20. For a live migration those milliseconds
 * come straight after the switchover, where the guest is already late (its heartbeat's first
 * line after a move came 27-42 ms after the resume).
 *
 * So a VM process that will take a guest (a spare process, or the target of a migration)
 * first runs a throw-away guest restored from a template state for a few hundred ms, with a
 * guest agent command that exercises what every guest does (timer interrupts, a user process
 * waking up, the serial console). That instance is a different guest: it has no NIC backend,
 * no disk and no listener on its console, and it is destroyed before the VM's own engine is
 * created. What stays is the compiled code, which V8 shares by every engine in the process.
 * Last, the throw-away guest's CPU and device state is saved and restored a number of times,
 * and the page codec encodes and applies scratch pages: that is the code that runs inside a
 * live migration's pause, on both hosts.
 */
import { readFile } from "node:fs/promises";
import { atLowPriority } from "./priority.js";
import { Engine, ENGINE_VERSION, toArrayBuffer } from "../engine/index.js";
import { changedChunks, DEVICE_CHUNK_BYTES, warmPageCodec } from "../migration/index.js";
import { readStateFile } from "../storage/index.js";
import { GuestAgentClient } from "./agent.js";
import { monotonicMs, roundMs } from "../common/time.js";
import type { WarmupSpec } from "./ipc.js";

/** How long the throw-away guest runs; the agent command below fits in it with time to spare. */
export const WARMUP_RUN_MS = 250;
/** Save-and-restore cycles of CPU and device state the warm-up runs after the guest. */
const WARMUP_STATE_CYCLES = 20;
/** Heartbeat lines the warm-up guest prints to its own (unread) console. */
const WARMUP_COMMAND = "hb -n 40 -i 2 > /dev/ttyS0";

export interface WarmupResult {
  ms: number;
  /** Guest instructions the throw-away guest ran. */
  instructions: number;
  /** The throw-away guest's CPU and device state (no RAM), saved after its cycles; absent when cut short. */
  deviceState?: ArrayBuffer;
}

/**
 * Runs a throw-away guest from `spec.statePath` until WARMUP_RUN_MS have passed or `signal`
 * aborts (then it stops at once). Throws when the state cannot be used (wrong engine, missing
 * file); callers treat a failed warm-up as "not warmed", never as a failed VM.
 */
export async function warmEngineCode(spec: WarmupSpec, signal?: AbortSignal): Promise<WarmupResult> {
  const t0 = monotonicMs();
  const [bios, vgabios, state] = await Promise.all([readFile(spec.bios), readFile(spec.vgabios), readStateFile(spec.statePath)]);
  const h = state.header;
  if (h.engine !== ENGINE_VERSION) throw new Error(`warm-up state ${spec.statePath} is for ${h.engine}, this is ${ENGINE_VERSION}`);
  if (h.disk) throw new Error(`warm-up state ${spec.statePath} needs a disk`);
  if (h.nic !== "virtio" && h.nic !== "ne2k") throw new Error(`warm-up state ${spec.statePath} has an unknown NIC '${h.nic}'`);
  const engine = await Engine.create({ memoryMiB: h.memoryMiB, vgaMemoryKiB: h.vgaMemoryKiB, bios, vgabios, nic: h.nic, serialPorts: 2 });
  try {
    await engine.restoreState(toArrayBuffer(state.payload));
    const agent = GuestAgentClient.on(engine);
    await engine.run();
    await new Promise<void>((resolve) => {
      if (signal?.aborted === true) return resolve();
      const timer = setTimeout(done, WARMUP_RUN_MS);
      function done(): void {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      }
      signal?.addEventListener("abort", done);
      agent.exec(WARMUP_COMMAND, WARMUP_RUN_MS).then(
        () => undefined,
        () => undefined,
      );
    });
    agent.failAll("warm-up over");
    await engine.pause();
    // The code a live migration runs while its guest is paused (saving CPU and devices on the
    // source, restoring them onto RAM on the target) runs once per move: cold, it took 3-19 ms
    // of the pause instead of 0.3-2. Run it here until V8 has optimised it.
    let deviceState: ArrayBuffer | undefined;
    if (signal?.aborted !== true) {
      const dm = engine.deviceMemory;
      for (let i = 0; i < WARMUP_STATE_CYCLES; i++) {
        await engine.restoreStateKeepingRam(await engine.saveStateWithoutRam());
        if (dm !== undefined) await engine.restoreStateKeepingRam(await dm.saveStateWithoutMemory());
      }
      deviceState = await engine.saveStateWithoutRam();
      // And the page codec of both ends of a migration (encode, decode, apply).
      warmPageCodec();
      warmPauseScans(engine);
    }
    return { ms: roundMs(monotonicMs() - t0), instructions: engine.instructionCount(), ...(deviceState !== undefined ? { deviceState } : {}) };
  } finally {
    await engine.destroy();
    // Free its memory now, while nothing runs here (the flag is in VM_PROCESS_EXEC_ARGV).
    (globalThis as { gc?: () => void }).gc?.();
  }
}

/**
 * The scans a live migration's final round makes with its guest paused: harvesting the dirty
 * log (a loop over one byte per page of RAM) and comparing device memory with the copy sent.
 * They run two or three times per move, never often enough for V8 to optimise them: measured
 * in the pause, the harvest alone took 1.3-3.7 ms interpreted, against ~0.1 ms optimised.
 */
function warmPauseScans(engine: Engine): void {
  const log = engine.dirtyLog;
  if (log !== undefined) {
    log.start();
    for (let i = 0; i < WARMUP_STATE_CYCLES; i++) {
      log.count();
      log.harvest(i % 2 === 0);
    }
    log.stop();
  }
  const regions = engine.deviceMemory?.regions() ?? [];
  const copies = regions.map((r) => r.slice());
  for (let i = 0; i < WARMUP_STATE_CYCLES; i++) regions.forEach((r, k) => changedChunks(r, copies[k]!, DEVICE_CHUNK_BYTES));
}

/** Nice value of the warm-up's threads: it runs beside the host's running VMs. */
const WARMUP_NICE = 19;

/**
 * A warm-up under way: `done` settles when it is over (never rejects), with the throw-away
 * guest's device state when the warm-up ran to its end; abort() cuts the run short.
 */
export interface Warming {
  done: Promise<ArrayBuffer | undefined>;
  abort(): void;
}

/**
 * Starts warmEngineCode; `report` hears how it went (a failure is reported, not thrown).
 * `lowPriority` for a spare warming in the background; not for a warm-up a migration waits for
 * (at nice 19 on a busy host, as during an evacuation, it would crawl).
 */
export function startWarmup(spec: WarmupSpec, report: (r: { ms: number; error?: string }) => void, opts: { lowPriority: boolean }): Warming {
  const ac = new AbortController();
  const t0 = monotonicMs();
  const run = (): Promise<WarmupResult> => warmEngineCode(spec, ac.signal);
  const done = (opts.lowPriority ? atLowPriority(WARMUP_NICE, run) : run()).then(
    (r) => {
      report({ ms: r.ms });
      return r.deviceState;
    },
    (err: unknown) => {
      report({ ms: roundMs(monotonicMs() - t0), error: (err as Error)?.message ?? String(err) });
      return undefined;
    },
  );
  return { done, abort: () => ac.abort() };
}
