/**
 * The target side of a live migration, driving a ReceiverStateMachine over a real connection:
 * frames are handled strictly one after another (restoring and resuming are asynchronous),
 * pages go straight into the prepared VM's RAM, and the VM is resumed only on COMPLETE.
 *
 * Until the peer has proven it holds the cluster token, frames are limited to control size.
 * A silent peer is dropped after `idleTimeoutMs` (before COMPLETE: the migration aborts).
 */
import { memorySha256 } from "./digest.js";
import type { Socket } from "node:net";
import { applyPages, applyZeroPages } from "./pages.js";
import { Command, MAX_CONTROL_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, MigrationAbortedError, MigrationProtocolError, PAGE_SIZE, PageEncoding, type Frame, type MigrationError } from "./protocol.js";
import { ReceiverStateMachine, type ReceiverAction, type ReceiverExpect, type ReceiverStep } from "./receiver.js";
import { FrameConnection } from "./transport.js";
import { WasmPageApplier } from "./wasmdelta.js";
import { PayloadSlots } from "./slots.js";
import { defaultCacheDir } from "../common/paths.js";
import type { Migratable } from "./vm.js";
import { monotonicMs, roundMs } from "../common/time.js";

/** Payloads up to this size are applied in wasm (the source's are 1 MiB); larger ones by the JS path. */
const APPLY_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024;
/** Places where large payloads are assembled in the engine's memory (see PayloadSlots). */
const PAYLOAD_SLOTS = 3;
/**
 * Reads that are not into a payload's place go into one buffer this big: a large payload then
 * lands in its place from its second read on (see FrameConnection's readBufferBytes).
 */
const READ_BUFFER_BYTES = 64 * 1024;
/** The target's host area: the applier's scratch, then the payload places. */
export const TARGET_HOST_AREA_BYTES = (1 + PAYLOAD_SLOTS) * APPLY_MAX_PAYLOAD_BYTES;

export interface TargetParams {
  token: string;
  engineVersion: string;
  expect: ReceiverExpect;
  /** Test mode: hash RAM after the restore and report it in RESUMED. */
  verifyRam?: boolean;
  idleTimeoutMs?: number;
}

export interface TargetSwitchoverInfo {
  pausedAtMs: number;
  guestClockMs: number;
  resumedAtMs: number;
  restoreMs: number;
  resumeMs: number;
  stateBytes: number;
  rounds: number;
  pages: number;
  bytes: number;
}

export interface TargetHooks {
  /** The guest runs here now (RESUMED is on its way to the source). */
  onResumed: (info: TargetSwitchoverInfo) => void;
  /** The migration ended without the VM running here: discard the VM, it must never run. */
  onAborted: (error: MigrationError) => void;
  /**
   * A pre-copy round (the guest still runs on the source) is applied and the source has been
   * told so (the PING it sends after the round is answered). A good moment for work that must
   * not fall into the pause, and that the source should not count as part of the round.
   */
  precopyRoundApplied?: (round: number) => void;
  /** The paused VM is ready for round 0 (CONFIG_ACK goes out next). */
  prepared?: () => void;
  /** The guest is paused on the source and its state is here: called before it is restored. */
  beforeRestore?: () => void;
}

export class LiveMigrationTarget {
  private readonly sm: ReceiverStateMachine;
  private conn: FrameConnection | undefined;
  private chain: Promise<void> = Promise.resolve();
  private idleTimer: NodeJS.Timeout | undefined;
  private settled = false;
  private restoreMs = 0;
  private stateBytes = 0;
  /** Pages written with data since prepare zeroed RAM: a ZERO page that is not is zero already. */
  private written: Uint8Array | undefined;
  private applier: WasmPageApplier | undefined;
  private slots: PayloadSlots | undefined;
  private pausedAtMs = 0;
  private guestClockMs = 0;
  /** A pre-copy round applied whose PING has not been answered yet (see precopyRoundApplied). */
  private appliedRound: number | undefined;

  constructor(
    private readonly vm: Migratable,
    private readonly p: TargetParams,
    private readonly hooks: TargetHooks,
  ) {
    this.sm = new ReceiverStateMachine({ token: p.token, engineVersion: p.engineVersion, expect: p.expect });
  }

  get state(): string {
    return this.sm.state;
  }

  /** Takes over an accepted connection; `head` holds bytes already read from it. */
  attach(socket: Socket, head?: Buffer): void {
    if (this.conn !== undefined) {
      socket.destroy();
      return;
    }
    this.conn = new FrameConnection(
      socket,
      {
        onFrame: (f) => {
          this.touch();
          this.chain = this.chain.then(() => this.process(f));
        },
        onEnd: (err) => {
          this.clearIdle();
          this.chain = this.chain.then(() => this.apply(err !== undefined && this.sm.state !== "AwaitHello" ? this.sm.connectionLost() : this.sm.connectionLost()));
        },
      },
      { maxPayload: MAX_CONTROL_PAYLOAD_BYTES, readBufferBytes: READ_BUFFER_BYTES, ...(head !== undefined ? { head } : {}) },
    );
    this.touch();
  }

  /**
   * The source lost our answer after COMPLETE and asks what happened: "resumed" if the VM runs
   * here; otherwise the migration is fenced (a late COMPLETE can never resume it) and "aborted".
   */
  async fence(): Promise<"resumed" | "resuming" | "aborted"> {
    await this.chain;
    const r = this.sm.fence();
    for (const a of r.actions) await this.act(a);
    return r.outcome;
  }

  private touch(): void {
    this.clearIdle();
    const ms = this.p.idleTimeoutMs ?? 30_000;
    this.idleTimer = setTimeout(() => {
      this.chain = this.chain.then(() => this.apply(this.sm.fail(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", `the source sent nothing for ${ms} ms`))));
      this.conn?.destroy();
    }, ms);
  }

  private clearIdle(): void {
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private async process(f: Frame): Promise<void> {
    try {
      if (this.settled && this.sm.state === "Aborted") return;
      await this.apply(this.sm.handle(f));
    } finally {
      this.slots?.release(f.payload);
    }
    if (f.command === Command.Ping && this.appliedRound !== undefined) {
      const round = this.appliedRound;
      this.appliedRound = undefined;
      this.hooks.precopyRoundApplied?.(round);
    }
    // Once the source has proven it holds the token, page frames may be large.
    if (this.sm.state === "Preparing" || this.sm.state === "Prepared") this.conn?.setMaxPayload(MAX_PAYLOAD_BYTES);
  }

  private async apply(step: ReceiverStep): Promise<void> {
    let next: ReceiverStep | undefined = step;
    while (next !== undefined) {
      const current: ReceiverStep = next;
      next = undefined;
      try {
        for (const a of current.actions) {
          const follow = await this.act(a);
          if (follow !== undefined) next = follow;
        }
      } catch (err) {
        next = this.sm.fail(err);
        if (current.replies.length > 0) continue;
      }
      if (current.replies.length > 0) this.conn?.write(...current.replies);
    }
  }

  /** Carries out one action; returns a follow-up step when the action completes a state (prepared, resumed). */
  private async act(a: ReceiverAction): Promise<ReceiverStep | undefined> {
    switch (a.kind) {
      case "prepare": {
        const ram = this.vm.ram();
        if (ram.length !== a.pageCount * a.config.pageSize) throw new MigrationAbortedError("MIGRATION_ABORTED", `the prepared VM has ${ram.length} bytes of RAM, the source sends ${a.pageCount * a.config.pageSize}`);
        // Device memory that travels beside RAM must fit this engine's, region by region.
        const regions = this.vm.deviceMemory?.regions().map((r) => r.length) ?? [];
        const sent = a.config.deviceMemory;
        if (sent !== undefined && (sent.length !== regions.length || sent.some((n, i) => n !== regions[i]))) {
          throw new MigrationProtocolError("MIGRATION_CONFIG_MISMATCH", `the source sends device memory regions of [${sent.join(", ")}] bytes; this engine has [${regions.join(", ")}]`);
        }
        // Fault the RAM in now, before the first round: page faults while pages stream in
        // would halve the rate at which they can be applied.
        ram.fill(0);
        this.written = new Uint8Array(a.pageCount);
        // Payloads are applied in wasm where the engine's memory can hold a scratch copy.
        const area = this.vm.hostArea?.(TARGET_HOST_AREA_BYTES);
        if (area !== undefined) {
          this.applier = await WasmPageApplier.create(area.memory, area.offset, APPLY_MAX_PAYLOAD_BYTES, defaultCacheDir()).catch(() => undefined);
          // Page payloads are then assembled in the engine's memory as they arrive, and applied
          // there: one copy from the socket's buffers, instead of merging them into a new
          // Buffer and copying that into the applier's scratch.
          const slots = new PayloadSlots(area.memory, area.offset + APPLY_MAX_PAYLOAD_BYTES, APPLY_MAX_PAYLOAD_BYTES, PAYLOAD_SLOTS);
          this.slots = slots;
          this.conn?.setPayloadSink((n) => slots.take(n));
        }
        this.hooks.prepared?.();
        return this.sm.prepared();
      }
      case "writePages": {
        const ram = this.vm.ram();
        if (this.applier?.apply(ram, a.payload) !== true) applyPages(ram, a.pages);
        const written = this.written;
        if (written !== undefined) for (const p of a.pages) if (p.encoding !== PageEncoding.Zero) written[p.index] = 1;
        return undefined;
      }
      case "writeDeviceMemory": {
        const region = this.vm.deviceMemory?.regions()[a.region];
        if (region === undefined || a.offset + a.data.length > region.length) throw new MigrationProtocolError("MIGRATION_CONFIG_MISMATCH", `device memory region ${a.region} cannot take [${a.offset}, ${a.offset + a.data.length})`);
        region.set(a.data, a.offset);
        return undefined;
      }
      case "zeroPages":
        applyZeroPages(this.vm.ram(), a.firstPage, a.count, a.bitmap, PAGE_SIZE, this.written);
        return undefined;
      case "roundComplete":
        if (this.stateBytes === 0) this.appliedRound = a.round;
        return undefined;
      case "restoreState": {
        this.hooks.beforeRestore?.();
        const t0 = monotonicMs();
        this.stateBytes = a.state.length;
        this.pausedAtMs = a.pausedAtMs;
        this.guestClockMs = a.guestClockMs;
        const copy = a.state.buffer.slice(a.state.byteOffset, a.state.byteOffset + a.state.byteLength) as ArrayBuffer;
        // Device timers and the guest's TSC ran on the source engine's clock: continue it here.
        await this.vm.restoreStateKeepingRam(copy, a.engineClockMs !== undefined ? { clockMs: a.engineClockMs, atMs: a.pausedAtMs } : undefined);
        this.restoreMs = monotonicMs() - t0;
        return undefined;
      }
      case "resume": {
        const ramSha256 = this.p.verifyRam === true ? memorySha256(this.vm) : undefined;
        const t0 = monotonicMs();
        await this.vm.run();
        const resumeMs = monotonicMs() - t0;
        const resumedAtMs = Date.now();
        const step = this.sm.resumed(resumedAtMs, { restoreMs: roundMs(this.restoreMs), resumeMs: roundMs(resumeMs), ...(ramSha256 !== undefined ? { ramSha256 } : {}) });
        // RESUMED ends the source's pause: it goes before anything else (the hooks below tell
        // the host agent, which took 0.5-2.7 ms, measured).
        this.conn?.write(...step.replies);
        this.clearIdle();
        this.settled = true;
        const stats = this.sm.stats;
        this.hooks.onResumed({
          pausedAtMs: this.pausedAtMs,
          guestClockMs: this.guestClockMs,
          resumedAtMs,
          restoreMs: roundMs(this.restoreMs),
          resumeMs: roundMs(resumeMs),
          stateBytes: this.stateBytes,
          rounds: stats.rounds,
          pages: stats.pages,
          bytes: stats.bytes,
        });
        return { ...step, replies: [] };
      }
      case "abort":
        this.clearIdle();
        if (this.vm.running) await this.vm.pause();
        if (!this.settled) {
          this.settled = true;
          this.hooks.onAborted(a.error ?? new MigrationAbortedError("MIGRATION_ABORTED", a.reason));
        }
        return undefined;
    }
  }
}

