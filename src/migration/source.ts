/**
 * The source side of a live migration, driving a SenderStateMachine over a real connection:
 * handshake, pre-copy rounds (shadow compare in slices while the guest runs), the convergence
 * policy with throttling, stop-and-copy, state, COMPLETE and the target's acknowledgement.
 *
 * Whatever happens, it returns with the VM in a defined power state:
 *   - done:               paused; the target runs the VM; the caller must destroy this copy;
 *   - failed, may resume: running again exactly as before (resumed here if it was paused);
 *   - failed, uncertain:  paused; COMPLETE was sent and the target's answer was lost. The caller
 *                         must ask the target (fence) and must never resume blindly.
 */
import { connect, type Socket } from "node:net";
import { memorySha256 } from "./digest.js";
import { changedChunks, DirtyTracker } from "./dirty.js";
import { DELTA_OUT_BYTES, firstPassScratchBytes, pageEncoderScratchBytes, WasmDelta, WasmFirstPass, WasmPageEncoder } from "./wasmdelta.js";
import { defaultCacheDir } from "../common/paths.js";
import { PageBatchWriter } from "./pages.js";
import { decideNextStep, type PolicyDecision } from "./policy.js";
import { DEVICE_CHUNK_BYTES, MigrationAbortedError, PAGE_ENTRY_HEADER_BYTES, PAGE_SIZE, PAGES_HEADER_BYTES, toMigrationError, type Frame, type MigrationError, type VmMigrationConfig } from "./protocol.js";
import type { LiveMigrationOptions, MigrationProgress, MigrationReport, RoundReport } from "./report.js";
import { SenderStateMachine, type SenderEvent } from "./sender.js";
import { Stunner } from "./stun.js";
import { FrameConnection } from "./transport.js";
import { TARGET_HOST_AREA_BYTES } from "./target.js";
import type { Migratable } from "./vm.js";
import { monotonicMs, roundMs } from "../common/time.js";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * Faulting in the shadow costs ~1 page fault per 4 KiB (~11 us each in this VM, in isolation):
 * 256 KiB at a time keeps each slice, during which the guest waits, under a millisecond. At
 * 1 MiB, slices took ~3 ms alone and 7-12 ms while the target was being prepared on the other
 * core, and the idle guest's heartbeat fell silent for up to ~25 ms before round 0 began.
 */
const PREFAULT_SLICE_BYTES = 256 * 1024;

/**
 * downtimeTargetMs: the pause a live migration aims for. It was 50; a guest rewriting a 64 MiB
 * set then stopped with ~30-50 ms of pages left and paused 32/51 ms (median/max, 10 moves), its
 * heartbeat silent 44/60 ms. At 30 the policy runs a round or two more and throttles where it
 * must: paused 22/28 ms, silent 37 ms median (measured back to back).
 */
export const LIVE_DEFAULTS = { downtimeTargetMs: 30, maxRounds: 30, sliceBytes: 4 * 1024 * 1024, batchBytes: 1024 * 1024, switchoverOverheadMs: 10 } as const;

/**
 * Before the pause, wait at most this long for a quiet moment (Migratable.whenQuiet): the first
 * time the guest halts after it sent output. A guest that reports every 10 ms was otherwise
 * stopped at any point of its period, in about a third of moves just as its next line was due,
 * which then came the whole switchover late. (A busy guest, throttled or not, is waited for
 * much less, if at all: see Engine.whenQuiet.)
 */
const QUIET_STOP_MAX_WAIT_MS = 25;

/**
 * Between its slices the pre-copy lets a guest that has woken up finish what it is doing, up to
 * this long (Migratable.whenHalted), before the next slice. An idle guest's bursts (a timer
 * tick, a line of output: ~1 ms) otherwise alternated with slices of ~1 ms each and took
 * several times as long, a heartbeat line up to ~10 ms late. A busy guest is not waited for.
 */
const GUEST_BURST_MAX_WAIT_MS = 4;

/**
 * Round 0 reads RAM in slices this big, the guest running in between. Its non-zero pages cost
 * 2-10 us each (zero check, shadow copy, batching, the socket write), and the guest waits for
 * a slice to end: at 4 MiB, slices of 3-14 ms held an idle guest's heartbeat up to ~35 ms.
 * At 1 MiB (one frame's worth), in back-to-back runs of 10 idle moves: heartbeat silence
 * median 29 -> 23 ms, and round 0 no slower (352 -> 457 MB/s there; such figures vary by a
 * third from run to run on a 2-core machine). Yielding by time (every 2 ms) instead of every
 * slice made no difference.
 */
const ROUND0_SLICE_BYTES = 1024 * 1024;
const ROUND0_SLICE_PAGES = ROUND0_SLICE_BYTES / PAGE_SIZE;
/** Round 0 sends device memory in pieces this big (see sendDeviceMemory). */
const DEVICE_ROUND0_PIECE_BYTES = 128 * 1024;
/** Round-0 payload buffers allocated and faulted in while the target prepares (about as many as are in flight at once). */
const ROUND0_RESERVED_PAYLOADS = 4;
/** A PAGES payload that holds a whole round-0 slice as RAW entries (one payload per slice). */
const ROUND0_PAYLOAD_BYTES = PAGES_HEADER_BYTES + ROUND0_SLICE_PAGES * (PAGE_ENTRY_HEADER_BYTES + PAGE_SIZE);

/**
 * Layout of the source's host area in the engine's wasm memory: the shadow of RAM, then
 * WasmDelta's output, then WasmPageEncoder's scratch (16-byte aligned).
 */
function sourceHostArea(ramBytes: number): { shadowBytes: number; encoderScratchAt: number; firstPassScratchAt: number; bytes: number } {
  const slicePages = LIVE_DEFAULTS.sliceBytes / PAGE_SIZE;
  const encoderScratchAt = (ramBytes + DELTA_OUT_BYTES + 16) & ~15;
  const firstPassScratchAt = (encoderScratchAt + pageEncoderScratchBytes(slicePages, LIVE_DEFAULTS.batchBytes) + 15) & ~15;
  return { shadowBytes: ramBytes, encoderScratchAt, firstPassScratchAt, bytes: firstPassScratchAt + firstPassScratchBytes(ROUND0_SLICE_PAGES, ROUND0_PAYLOAD_BYTES) };
}

/** Bytes of host area a live migration of a guest with `ramBytes` of RAM uses, out or in. */
export function migrationHostAreaBytes(ramBytes: number): number {
  return Math.max(sourceHostArea(ramBytes).bytes, TARGET_HOST_AREA_BYTES);
}

export interface SourceParams {
  migrationId: string;
  vmName: string;
  from: string;
  to: string;
  address: { host: string; port: number };
  token: string;
  engineVersion: string;
  config: VmMigrationConfig;
  options: LiveMigrationOptions;
  connectTimeoutMs?: number;
  /** How long to wait for the target's answers (handshake, RESUMED). */
  replyTimeoutMs?: number;
}

export interface SourceHooks {
  progress?: (p: MigrationProgress) => void;
  /** Runs with the guest paused, before the final copy (flush the data disk). */
  beforeFinalCopy?: () => void | Promise<void>;
}

export type SourceOutcome =
  | { kind: "done"; report: MigrationReport }
  | { kind: "failed"; error: MigrationError; sourceMayResume: boolean };

async function dial(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const s = connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", `connecting to the target at ${host}:${port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once("connect", () => {
      clearTimeout(timer);
      s.removeAllListeners("error");
      resolve(s);
    });
    s.once("error", (err) => {
      clearTimeout(timer);
      reject(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", `cannot connect to the target at ${host}:${port}: ${err.message}`, err));
    });
  });
}

/** One live migration out of this process. Create, then run() once; cancel() at any time. */
export class LiveMigrationSource {
  private readonly sm: SenderStateMachine;
  private conn: FrameConnection | undefined;
  private waiter: { kind: SenderEvent["kind"]; resolve: (e: SenderEvent) => void; reject: (e: MigrationError) => void } | undefined;
  private failure: MigrationError | undefined;
  private cancelled: string | undefined;
  private readonly stunner: Stunner;
  private committed = false;

  constructor(
    private readonly vm: Migratable,
    private readonly p: SourceParams,
    private readonly hooks: SourceHooks = {},
  ) {
    // Device memory (the VGA buffers) travels beside RAM where the engine can leave it out of its state.
    const deviceMemory = vm.deviceMemory?.regions().map((r) => r.length);
    const config = deviceMemory !== undefined && deviceMemory.length > 0 ? { ...p.config, deviceMemory } : p.config;
    this.sm = new SenderStateMachine({ token: p.token, engineVersion: p.engineVersion, migrationId: p.migrationId, config });
    this.stunner = new Stunner(vm);
  }

  /** Cancels before COMPLETE (after it, the migration can no longer be cancelled). */
  cancel(reason = "cancelled by the user"): boolean {
    if (this.committed || this.failure !== undefined) return false;
    this.cancelled = reason;
    this.fail(new MigrationAbortedError("MIGRATION_ABORTED", `the migration was cancelled: ${reason}`));
    return true;
  }

  private progress(phase: MigrationProgress["phase"], extra: Partial<MigrationProgress> = {}): void {
    this.hooks.progress?.({ migrationId: this.p.migrationId, vm: this.p.vmName, mode: "live", phase, ...extra });
  }

  private onFrame(f: Frame): void {
    const step = this.sm.handle(f);
    if (step.send.length > 0) this.conn?.write(...step.send);
    const ev = step.event;
    if (ev === undefined) return;
    if (ev.kind === "failed") {
      this.fail(ev.error);
      return;
    }
    if (this.waiter !== undefined && this.waiter.kind === ev.kind) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(ev);
    }
  }

  private fail(err: MigrationError): void {
    if (this.failure === undefined) this.failure = err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.failure);
  }

  private check(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  private waitFor<K extends SenderEvent["kind"]>(kind: K, timeoutMs: number, what: string): Promise<Extract<SenderEvent, { kind: K }>> {
    this.check();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", `the target did not ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        kind,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e as Extract<SenderEvent, { kind: K }>);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  async run(): Promise<SourceOutcome> {
    const t0 = monotonicMs();
    const p = this.p;
    const opts = p.options;
    const downtimeTargetMs = opts.downtimeTargetMs ?? LIVE_DEFAULTS.downtimeTargetMs;
    const replyTimeoutMs = p.replyTimeoutMs ?? 30_000;
    const rounds: RoundReport[] = [];
    let logUsed: Migratable["dirtyLog"];
    try {
      this.progress("prepare");
      const socket = await dial(p.address.host, p.address.port, p.connectTimeoutMs ?? 10_000);
      this.check();
      this.conn = new FrameConnection(socket, {
        onFrame: (f) => this.onFrame(f),
        onEnd: (err) => {
          if (err === undefined) return;
          const step = this.sm.connectionLost();
          this.fail(step.error ?? err);
        },
      });
      const conn = this.conn;
      conn.write(this.sm.hello());
      // While the target prepares: fault in the shadow of the guest's RAM, a slice at a time.
      const localPages = Math.floor(this.vm.ram().length / PAGE_SIZE);
      // The shadow lives in the engine's wasm memory where it can, so that pages are handled in
      // place by wasm: rounds from the dirty log go through WasmPageEncoder (compare, encode and
      // shadow update in one call per payload, ~0.5 us a page), other rounds' DELTAs through
      // WasmDelta. That matters most for the final round of a guest rewriting a large set.
      const layout = sourceHostArea(localPages * PAGE_SIZE);
      const shadowBytes = layout.shadowBytes;
      const slicePages = LIVE_DEFAULTS.sliceBytes / PAGE_SIZE;
      const area = this.vm.hostArea?.(layout.bytes);
      // (Should the encoders not load, the JS ones do the work: the report says which ran.)
      const cacheDir = defaultCacheDir();
      const fastDeltaLoaded = area !== undefined ? WasmDelta.create(area.memory, area.offset + shadowBytes, cacheDir).catch(() => undefined) : Promise.resolve(undefined);
      const pageEncoderLoaded =
        area !== undefined && opts.lz4 !== true
          ? WasmPageEncoder.create(area.memory, area.offset + layout.encoderScratchAt, slicePages, LIVE_DEFAULTS.batchBytes, cacheDir).catch(() => undefined)
          : Promise.resolve(undefined);
      const firstPassLoaded = area !== undefined && opts.lz4 !== true ? WasmFirstPass.create(area.memory, area.offset + layout.firstPassScratchAt, ROUND0_SLICE_PAGES, ROUND0_PAYLOAD_BYTES, cacheDir).catch(() => undefined) : Promise.resolve(undefined);
      const early = new DirtyTracker(localPages, PAGE_SIZE, area !== undefined ? { shadow: () => new Uint8Array(area.memory.buffer, area.offset, shadowBytes) } : { zeroed: false });
      const yieldToGuest = async (): Promise<void> => {
        await new Promise<void>((r) => setImmediate(r));
        await this.vm.whenHalted?.(GUEST_BURST_MAX_WAIT_MS);
      };
      // Then the encoders' scratch beyond the shadow (round 0's payloads are assembled there:
      // untouched, its first slices took 3-7 ms instead of ~1, faulting it in).
      const prefaulted = early.prefault({ sliceBytes: PREFAULT_SLICE_BYTES, yieldFn: yieldToGuest }).then(async () => {
        if (area !== undefined) await DirtyTracker.touch(() => new Uint8Array(area.memory.buffer, area.offset + shadowBytes, layout.bytes - shadowBytes), { sliceBytes: PREFAULT_SLICE_BYTES, yieldFn: yieldToGuest });
      });
      const payloadsReserved = firstPassLoaded.then((fp) => fp?.reservePayloads(ROUND0_RESERVED_PAYLOADS, PREFAULT_SLICE_BYTES, yieldToGuest)).catch(() => undefined);
      await this.waitFor("prepared", replyTimeoutMs, "prepare the VM");
      await prefaulted;
      await payloadsReserved;
      const fastDelta = await fastDeltaLoaded;
      const pageEncoder = await pageEncoderLoaded;
      const firstPass = await firstPassLoaded;

      const pageCount = this.sm.pageCount;
      const ramBytes = pageCount * PAGE_SIZE;
      const tracker = pageCount === localPages ? early : new DirtyTracker(pageCount);
      const writerUsesWasm = fastDelta !== undefined && tracker === early;
      const writer = new PageBatchWriter({
        maxBytes: LIVE_DEFAULTS.batchBytes,
        encode: { lz4: opts.lz4 === true, ...(writerUsesWasm ? { fastDelta: (cur, prev, dest, off, max) => fastDelta.encodeInto(cur, prev, dest, off, max) } : {}) },
      });
      const getRam = (): Uint8Array => this.vm.ram();
      // With a dirty log, a round compares only the pages the guest wrote since the last one
      // (and the final round, with the guest paused, takes well under a millisecond); without
      // one, every round compares all of RAM against the shadow.
      const dirtyLog = this.vm.dirtyLog;
      logUsed = dirtyLog;
      const limit = opts.bandwidthBytesPerSec ?? 0;
      let bytesTotal = 0;
      let linkStart = monotonicMs();
      let linkBytes = 0;
      /** Sends a PAGES payload; `recycle` gets it back once it has been written out. */
      const emit = (payload: Buffer | undefined, recycle: (payload: Buffer) => void = (p) => writer.recycle(p)): void => {
        if (payload === undefined) return;
        linkBytes += payload.length;
        conn.writeThen(() => recycle(payload), ...this.sm.pagesParts(payload));
      };
      /** Time the guest ran between scan slices (it is not part of what a round costs). */
      let guestMs = 0;
      /** Between scan slices: let the guest run, honour back-pressure and the bandwidth limit, notice failures. */
      const between = async (): Promise<void> => {
        this.check();
        await conn.send();
        if (limit > 0) {
          const ahead = (linkBytes / limit) * 1000 - (monotonicMs() - linkStart);
          if (ahead > 0) await sleep(ahead);
        }
        const g0 = monotonicMs();
        await yieldToGuest();
        guestMs += monotonicMs() - g0;
        this.check();
      };
      // Device memory: whole in round 0, then the 4 KiB chunks that changed since they were sent
      // (compared with the copies sent; ~1 MiB, well under a millisecond).
      const deviceMemory = this.sm.config.deviceMemory !== undefined ? this.vm.deviceMemory : undefined;
      const deviceSent: Uint8Array[] = [];
      const sendDeviceMemory = async (all: boolean): Promise<void> => {
        if (deviceMemory === undefined) return;
        const count = deviceMemory.regions().length;
        for (let i = 0; i < count; i++) {
          if (all) {
            // In pieces, the guest running in between: whole, the copies and the frame of
            // ~1 MiB (fresh memory, faulted in as it is written) held the guest ~10 ms.
            const length = deviceMemory.regions()[i]!.length;
            const sent = (deviceSent[i] = new Uint8Array(length));
            for (let from = 0; from < length; from += DEVICE_ROUND0_PIECE_BYTES) {
              if (from > 0) await between();
              const part = deviceMemory.regions()[i]!.subarray(from, Math.min(length, from + DEVICE_ROUND0_PIECE_BYTES));
              conn.write(this.sm.deviceMemory(i, from, part));
              sent.set(part, from);
            }
            continue;
          }
          const region = deviceMemory.regions()[i]!;
          const sent = deviceSent[i]!;
          for (const [from, to] of changedChunks(region, sent, DEVICE_CHUNK_BYTES)) {
            const part = region.subarray(from, to);
            conn.write(this.sm.deviceMemory(i, from, part));
            sent.set(part, from);
          }
        }
      };
      const sendRound = async (all: boolean, paused: boolean): Promise<{ pages: number; bytes: number; started: number; ms: number; guestBefore: number }> => {
        const r0 = monotonicMs();
        const guestBefore = guestMs;
        const before = this.sm.stats.bytesSent;
        conn.write(this.sm.beginRound());
        writer.begin(this.sm.currentRound);
        const onDirty = (page: number, cur: Uint8Array, prev: Uint8Array | undefined): void => {
          if (writer.add(page, cur, prev)) emit(writer.take());
        };
        let pages = 0;
        if (all && firstPass !== undefined && tracker === early) {
          firstPassUsed = true;
          // Round 0 in wasm: per slice, one ZERO_PAGES bitmap and one PAGES payload of RAW pages.
          for (let first = 0; first < pageCount; first += ROUND0_SLICE_PAGES) {
            if (first > 0 && !paused) await between();
            const count = Math.min(ROUND0_SLICE_PAGES, pageCount - first);
            tracker.markFirstPass(first, first + count);
            const r = firstPass.slice(getRam(), tracker.shadowView, first, count, this.sm.currentRound, (payload) => emit(payload, (p) => firstPass.recycle(p)));
            pages += r.data;
            if (r.zeros > 0) {
              conn.write(this.sm.zeroPages(first, count, r.bitmap));
              pages += r.zeros;
            }
          }
        } else if (all) {
          // Round 0: zero pages go as one ZERO_PAGES bitmap per slice, the rest as PAGES.
          const slicePages = ROUND0_SLICE_PAGES;
          const bitmap = new Uint8Array(Math.ceil(slicePages / 8));
          for (let first = 0; first < pageCount; first += slicePages) {
            if (first > 0 && !paused) await between();
            const count = Math.min(slicePages, pageCount - first);
            bitmap.fill(0);
            let zeros = 0;
            tracker.firstPass(
              getRam(),
              first,
              first + count,
              (p) => {
                const i = p - first;
                bitmap[i >> 3]! |= 1 << (i & 7);
                zeros++;
              },
              (p, cur) => {
                if (writer.add(p, cur)) emit(writer.take());
                pages++;
              },
            );
            if (zeros > 0) {
              conn.write(this.sm.zeroPages(first, count, bitmap));
              pages += zeros;
            }
          }
        } else if (dirtyLog !== undefined && encoderReady) {
          const logged = dirtyLog.harvest(!paused);
          for (let i = 0; i < logged.length; ) {
            if (i > 0 && !paused) await between();
            const end = Math.min(logged.length, i + slicePages);
            const ram = getRam();
            const shadow = tracker.shadowView;
            while (i < end) {
              const r = pageEncoder!.encodePages(ram, shadow, logged, i, end, this.sm.currentRound);
              i = r.next;
              pages += r.dirty;
              if (r.payload !== undefined) {
                linkBytes += r.payload.length;
                conn.write(...this.sm.pagesParts(r.payload));
              }
            }
          }
        } else if (dirtyLog !== undefined) {
          const logged = dirtyLog.harvest(!paused);
          for (let i = 0; i < logged.length; i += slicePages) {
            if (i > 0 && !paused) await between();
            pages += tracker.scanPages(getRam(), logged, i, Math.min(logged.length, i + slicePages), { onDirty }).length;
          }
        } else if (paused) pages = tracker.scanSlice(getRam(), 0, pageCount, { onDirty }).length;
        else pages = (await tracker.scanAll(getRam, { onDirty, sliceBytes: LIVE_DEFAULTS.sliceBytes, yieldFn: between })).length;
        emit(writer.take());
        await sendDeviceMemory(all);
        conn.write(this.sm.endRound());
        const bytes = this.sm.stats.bytesSent - before;
        bytesTotal += bytes;
        return { pages, bytes, started: r0, ms: monotonicMs() - r0, guestBefore };
      };

      /** Whether round 0 ran in wasm (WasmFirstPass). */
      let firstPassUsed = false;
      // The page encoder needs every page's copy at the target: true once round 0 is done.
      let encoderReady = false;
      // Pre-copy.
      // What a page costs end to end, as page bytes moved per ms (encoding, sending, applying),
      // from the latest round that moved enough pages: the remaining set is counted in pages, and
      // a page that goes as a 20-byte DELTA costs far less than its 4 KiB over the link. The time
      // the guest ran between the round's slices is left out: the final round runs with the
      // guest paused. Round 0 (mostly RAW pages) counts its wire bytes: its zero pages cost
      // next to nothing.
      let pageBandwidth = 0;
      const history: number[] = [];
      let roundsAtLevel = 0;
      let stopReason = "converged";
      linkStart = monotonicMs();
      // Logging starts before round 0 copies anything: what the guest writes meanwhile is in round 1.
      dirtyLog?.start();
      for (let round = 0; ; round++) {
        this.progress("precopy", { message: `round ${round}` });
        const r = await sendRound(round === 0, false);
        if (round === 0) encoderReady = pageEncoder !== undefined && tracker === early && tracker.knownPages() === pageCount;
        // Wait until the target has applied the round (its PONG comes after every earlier
        // frame): the round's time is then the time to move it end to end, what is left is
        // counted after that, and the guest never stops while pages are still on their way
        // (they would add to its pause).
        conn.write(this.sm.ping());
        await this.waitFor("pong", replyTimeoutMs, "apply the round's pages");
        r.ms = monotonicMs() - r.started;
        const workMs = Math.max(r.ms - (guestMs - r.guestBefore), 0.001);
        if (round === 0 ? r.bytes >= 1024 * 1024 : r.pages >= 256) pageBandwidth = (round === 0 ? r.bytes : r.pages * PAGE_SIZE) / workMs;
        const remainingPages = dirtyLog !== undefined ? dirtyLog.count() : await tracker.countAll(getRam, { sliceBytes: LIVE_DEFAULTS.sliceBytes, yieldFn: between });
        const remainingBytes = remainingPages * PAGE_SIZE;
        roundsAtLevel++;
        const decision: PolicyDecision = decideNextStep({
          roundsDone: round + 1,
          bytesSentTotal: bytesTotal,
          ramBytes,
          lastRound: { bytesSent: r.bytes, durationMs: r.ms, dirtyBytes: remainingBytes },
          bandwidthBytesPerMs: pageBandwidth,
          dirtyRateBytesPerMs: 0,
          remainingDirtyBytes: remainingBytes,
          remainingHistory: history,
          downtimeTargetMs,
          switchoverOverheadMs: LIVE_DEFAULTS.switchoverOverheadMs,
          maxRounds: opts.maxRounds ?? LIVE_DEFAULTS.maxRounds,
          throttleLevel: this.stunner.current,
          roundsAtThrottleLevel: roundsAtLevel,
        });
        history.push(remainingBytes);
        const report: RoundReport = {
          round,
          pages: r.pages,
          bytes: r.bytes,
          durationMs: roundMs(r.ms),
          bandwidthBytesPerSec: Math.round((r.bytes / Math.max(r.ms, 0.001)) * 1000),
          dirtyBytesPerSec: Math.round((remainingBytes / Math.max(r.ms, 0.001)) * 1000),
          remainingPages,
          expectedDowntimeMs: roundMs(decision.expectedDowntimeMs),
          throttle: this.stunner.current,
          decision: decision.action === "stop-and-copy" ? `stop-and-copy (${decision.reason})` : decision.action === "throttle" ? `throttle to ${decision.level}% (${decision.reason})` : "round",
        };
        rounds.push(report);
        this.progress("precopy", { round: report });
        if (decision.action === "stop-and-copy") {
          stopReason = decision.reason;
          break;
        }
        if (decision.action === "throttle") {
          this.stunner.setLevel(decision.level);
          roundsAtLevel = 0;
        }
      }

      // Stop-and-copy, at a quiet moment (see QUIET_STOP_MAX_WAIT_MS).
      if (this.vm.whenQuiet !== undefined) {
        await this.vm.whenQuiet(QUIET_STOP_MAX_WAIT_MS);
        this.check();
      }
      this.progress("stop-and-copy");
      const pausedAtMs = Date.now();
      const s0 = monotonicMs();
      await this.stunner.stop();
      if (this.vm.running) await this.vm.pause();
      const s1 = monotonicMs();
      await this.hooks.beforeFinalCopy?.();
      this.check();
      // CPU and devices first: the target restores them while the last dirty pages are found.
      const state = await (deviceMemory !== undefined ? deviceMemory.saveStateWithoutMemory() : this.vm.saveStateWithoutRam());
      const engineClockMs = this.vm.clockMs();
      conn.write(...this.sm.sendStateParts(new Uint8Array(state), Date.now(), pausedAtMs, engineClockMs));
      const s2 = monotonicMs();
      // (The final round's frames go out as they are made: the target applies the first while
      // the source encodes the rest. Held back into one write, a 64 MiB dirty set paused ~40 %
      // longer.)
      const last = await sendRound(false, true);
      const sourceSha = opts.verifyRam === true ? memorySha256(this.vm) : undefined;
      const s3 = monotonicMs();
      this.check();
      this.committed = true;
      conn.write(this.sm.complete());
      this.progress("switchover");
      const resumed = await this.waitFor("resumed", replyTimeoutMs, "acknowledge that the VM runs");
      const s4 = monotonicMs();
      rounds.push({
        round: rounds.length,
        pages: last.pages,
        bytes: last.bytes,
        durationMs: roundMs(last.ms),
        bandwidthBytesPerSec: Math.round((last.bytes / Math.max(last.ms, 0.001)) * 1000),
        dirtyBytesPerSec: 0,
        remainingPages: 0,
        expectedDowntimeMs: 0,
        throttle: 0,
        decision: "final (guest paused)",
      });
      const restoreMs = resumed.restoreMs ?? 0;
      const resumeMs = resumed.resumeMs ?? 0;
      conn.close();
      const report: MigrationReport = {
        migrationId: p.migrationId,
        vm: p.vmName,
        mode: "live",
        from: p.from,
        to: p.to,
        ok: true,
        totalMs: roundMs(monotonicMs() - t0),
        downtimeMs: roundMs(s4 - s0),
        downtime: {
          stopMs: roundMs(s1 - s0),
          stateSaveMs: roundMs(s2 - s1),
          finalCopyMs: roundMs(s3 - s2),
          // The target restores while the final copy runs: only what it adds after counts.
          transferMs: roundMs(Math.max(0, s4 - s3 - resumeMs)),
          restoreMs: roundMs(restoreMs),
          resumeMs: roundMs(resumeMs),
        },
        bytes: this.sm.stats.bytesSent + state.byteLength,
        pages: this.sm.stats.pagesSent,
        rounds,
        stopReason,
        dirtyTracking: dirtyLog !== undefined ? "log" : "compare",
        deltaEncoder: encoderReady || writerUsesWasm ? "wasm" : "js",
        firstPass: firstPassUsed ? "wasm" : "js",
        throttleMax: this.stunner.maxLevel,
        stunnedMs: roundMs(this.stunner.stunnedMs),
        ...(sourceSha !== undefined && resumed.ramSha256 !== undefined ? { ramSha256: { source: sourceSha, target: resumed.ramSha256 } } : {}),
      };
      this.progress("done");
      return { kind: "done", report };
    } catch (err) {
      const error = toMigrationError(this.failure ?? err);
      if (this.failure === undefined) this.failure = error;
      await this.stunner.stop();
      if (this.sm.state === "AwaitResumed") this.sm.fail(error);
      if (this.sm.state === "Uncertain") {
        // COMPLETE went out and no answer came back: the target may run the VM. Stay paused.
        this.conn?.destroy();
        this.progress("failed", { message: error.message });
        return { kind: "failed", error, sourceMayResume: false };
      }
      if (this.sm.sourceMayResume && this.sm.state !== "Aborted") {
        // Tell the target to discard its copy (it also does so when the connection drops).
        const frames = this.cancelled !== undefined ? this.sm.abort(this.cancelled) : this.sm.fail(error).send;
        this.conn?.write(...frames);
      }
      this.conn?.close();
      if (!this.vm.running) await this.vm.run();
      this.progress("failed", { message: error.message });
      return { kind: "failed", error, sourceMayResume: true };
    } finally {
      logUsed?.stop();
    }
  }
}

