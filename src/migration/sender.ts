/**
 * The source side of a live migration as an explicit state machine: what the source may send
 * when, and which replies it accepts. Pure, like the receiver: methods return encoded frames to
 * write, handle() digests the target's frames.
 *
 *   Init --hello()--> AwaitHelloAck --HELLO_ACK (proof ok; CONFIG sent)--> AwaitConfigAck
 *   AwaitConfigAck --CONFIG_ACK--> Ready --beginRound()--> InRound --pages()*, endRound()--> Ready
 *   Ready --sendState()--> StateSent --beginRound()--> FinalRound --pages()*, endRound()--> FinalRoundSent
 *   FinalRoundSent --complete()--> AwaitResumed --RESUMED--> Done
 *
 * STATE goes before the final round (the guest is paused for both): the target restores CPU and
 * devices while the source is still looking for the last dirty pages.
 *   before complete(): ERROR / ABORT / failure / connection lost --> Aborted (source may resume)
 *   AwaitResumed: connection lost / garbage / timeout --> Uncertain (source stays paused; resolve())
 *   AwaitResumed: ERROR from the target --> Aborted (the target fenced itself before saying so)
 *
 * COMPLETE is the commit point. Before it, every failure leaves the source free to resume its
 * guest. After it, only RESUMED (target runs: destroy the source) or an ERROR from the target
 * (target aborted: resume the source) settle the outcome; anything else is Uncertain, and the
 * source must stay paused until resolve() is called with the target's answer.
 */
import {
  authProof,
  checkToken,
  Command,
  commandName,
  decodeMessage,
  bitmapPopcount,
  encodeFrame,
  encodeDeviceMemoryPayload,
  encodeStateFrameParts,
  encodeZeroPagesPayload,
  frameHeader,
  encodeMessage,
  errorFrame,
  MigrationAbortedError,
  MigrationOutcomeUnknownError,
  MigrationProtocolError,
  MigrationRemoteError,
  MigrationStateError,
  newNonce,
  PAGES_HEADER_BYTES,
  PROTOCOL_VERSION,
  toMigrationError,
  verifyProof,
  type Frame,
  type MigrationError,
  type VmMigrationConfig,
} from "./protocol.js";

export type SenderStateName =
  | "Init"
  | "AwaitHelloAck"
  | "AwaitConfigAck"
  | "Ready"
  | "InRound"
  | "StateSent"
  | "FinalRound"
  | "FinalRoundSent"
  | "AwaitResumed"
  | "Done"
  | "Aborted"
  | "Uncertain";

/** Replies each state accepts besides PING/PONG (all live states) and ERROR/ABORT (until Done). */
export const SENDER_ACCEPTS: Readonly<Record<SenderStateName, readonly Command[]>> = {
  Init: [],
  AwaitHelloAck: [Command.HelloAck],
  AwaitConfigAck: [Command.ConfigAck],
  Ready: [],
  InRound: [],
  StateSent: [],
  FinalRound: [],
  FinalRoundSent: [],
  AwaitResumed: [Command.Resumed],
  Done: [],
  Aborted: [],
  Uncertain: [],
};

const PRE_COMMIT: ReadonlySet<SenderStateName> = new Set(["Init", "AwaitHelloAck", "AwaitConfigAck", "Ready", "InRound", "StateSent", "FinalRound", "FinalRoundSent"]);
/** States in which a memory round is open. */
const IN_ROUND: readonly SenderStateName[] = ["InRound", "FinalRound"];

export interface SenderOptions {
  token: string;
  engineVersion: string;
  migrationId: string;
  config: VmMigrationConfig;
  /** Source of the client nonce (tests); default 32 random bytes. */
  nonce?: () => string;
}

export type SenderEvent =
  | { kind: "prepared"; pageCount: number }
  | { kind: "resumed"; resumedAtMs: number; restoreMs?: number | undefined; resumeMs?: number | undefined; ramSha256?: string | undefined }
  | { kind: "pong"; seq: number }
  /** The migration failed. sourceMayResume false means: stay paused, the outcome is Uncertain. */
  | { kind: "failed"; error: MigrationError; sourceMayResume: boolean };

export interface SenderStep {
  /** Encoded frames to write. */
  send: Buffer[];
  event?: SenderEvent;
  error?: MigrationError;
}

export interface SenderStats {
  roundsDone: number;
  /** PAGES payload bytes sent, all rounds. */
  bytesSent: number;
  pagesSent: number;
}

export class SenderStateMachine {
  private st: SenderStateName = "Init";
  private readonly token: string;
  private readonly engineVersion: string;
  readonly migrationId: string;
  readonly config: VmMigrationConfig;
  readonly pageCount: number;
  private readonly clientNonce: string;
  private round = -1;
  private roundPages = 0;
  private roundBytes = 0;
  private pingSeq = 0;
  private failure: MigrationError | undefined;
  readonly stats: SenderStats = { roundsDone: 0, bytesSent: 0, pagesSent: 0 };

  constructor(options: SenderOptions) {
    checkToken(options.token);
    this.token = options.token;
    this.engineVersion = options.engineVersion;
    this.migrationId = options.migrationId;
    this.config = options.config;
    this.pageCount = (options.config.memoryMiB * 1024 * 1024) / options.config.pageSize;
    this.clientNonce = (options.nonce ?? newNonce)();
  }

  get state(): SenderStateName {
    return this.st;
  }

  /** The round in progress (InRound) or last finished. */
  get currentRound(): number {
    return this.round;
  }

  get error(): MigrationError | undefined {
    return this.failure;
  }

  /** True while the source guest may (still, or again) run: COMPLETE not sent, or the target is known not to run. */
  get sourceMayResume(): boolean {
    return PRE_COMMIT.has(this.st) || this.st === "Aborted";
  }

  /** True once the target runs the VM: the source's copy must be destroyed, never resumed. */
  get mustDestroySource(): boolean {
    return this.st === "Done";
  }

  private require(step: string, ...states: SenderStateName[]): void {
    if (!states.includes(this.st)) throw new MigrationStateError(`the migration source in state ${this.st} cannot ${step} (needs ${states.join(" or ")})`);
  }

  hello(): Buffer {
    this.require("send HELLO", "Init");
    this.st = "AwaitHelloAck";
    return encodeMessage({
      cmd: Command.Hello,
      protocolVersion: PROTOCOL_VERSION,
      engineVersion: this.engineVersion,
      migrationId: this.migrationId,
      vmUuid: this.config.uuid,
      clientNonce: this.clientNonce,
    });
  }

  handle(frame: Frame): SenderStep {
    const state = this.st;
    const cmd = frame.command;
    if (state === "Aborted" || state === "Done" || state === "Uncertain") {
      return { send: [], error: this.unexpected(cmd) };
    }
    const allowed = cmd === Command.Ping || cmd === Command.Pong || cmd === Command.Error || cmd === Command.Abort || SENDER_ACCEPTS[state].includes(cmd);
    if (!allowed) return this.failWith(this.unexpected(cmd), true);
    try {
      const m = decodeMessage(frame);
      switch (m.cmd) {
        case Command.Ping:
          return { send: [encodeMessage({ cmd: Command.Pong, seq: m.seq })] };
        case Command.Pong:
          return { send: [], event: { kind: "pong", seq: m.seq } };
        case Command.Error:
          // The target sends ERROR only after it has aborted (its VM will never run).
          return this.settleAborted(new MigrationRemoteError(m.code, m.message));
        case Command.Abort:
          return this.settleAborted(new MigrationAbortedError("MIGRATION_ABORTED", `the target aborted the migration: ${m.reason}`));
        case Command.HelloAck: {
          if (m.engineVersion !== this.engineVersion) {
            throw new MigrationProtocolError("MIGRATION_ENGINE_MISMATCH", `the target runs engine "${m.engineVersion}", this source runs "${this.engineVersion}"`);
          }
          if (!verifyProof(this.token, "target", this.migrationId, this.clientNonce, m.serverNonce, m.proof)) {
            throw new MigrationProtocolError("MIGRATION_AUTH_FAILED", "the target's proof does not match this cluster's migration token");
          }
          this.st = "AwaitConfigAck";
          const proof = authProof(this.token, "source", this.migrationId, this.clientNonce, m.serverNonce);
          return { send: [encodeMessage({ cmd: Command.Config, proof, config: this.config })] };
        }
        case Command.ConfigAck:
          if (m.pageCount !== this.pageCount) {
            throw new MigrationProtocolError("MIGRATION_CONFIG_MISMATCH", `the target prepared ${m.pageCount} pages, the VM has ${this.pageCount}`);
          }
          this.st = "Ready";
          return { send: [], event: { kind: "prepared", pageCount: m.pageCount } };
        case Command.Resumed:
          this.st = "Done";
          {
          const { cmd: _cmd, ...resumed } = m;
          return { send: [], event: { kind: "resumed", ...resumed } };
        }
        default:
          throw this.unexpected(cmd);
      }
    } catch (err) {
      return this.failWith(toMigrationError(err), true);
    }
  }

  /** A pre-copy round (Ready) or the final round (StateSent, the guest paused). */
  beginRound(): Buffer {
    this.require("begin a memory round", "Ready", "StateSent");
    this.round++;
    this.roundPages = 0;
    this.roundBytes = 0;
    this.st = this.st === "StateSent" ? "FinalRound" : "InRound";
    return encodeMessage({ cmd: Command.MemoryRoundBegin, round: this.round });
  }

  /** Frames a PAGES payload (from PageBatchWriter.take(), begun with the current round). */
  pages(payload: Buffer): Buffer {
    this.countPages(payload);
    return encodeFrame(Command.Pages, payload);
  }

  /** As pages(), but as [header, payload] so the payload is written without a copy. */
  pagesParts(payload: Buffer): [Buffer, Buffer] {
    this.countPages(payload);
    return [frameHeader(Command.Pages, payload), payload];
  }

  private countPages(payload: Buffer): void {
    this.require("send PAGES", ...IN_ROUND);
    if (payload.length < PAGES_HEADER_BYTES) throw new MigrationStateError("PAGES payload is shorter than its header");
    const round = payload.readUInt32LE(0);
    if (round !== this.round) throw new MigrationStateError(`PAGES payload is for round ${round}, but round ${this.round} is in progress`);
    const count = payload.readUInt32LE(4);
    this.roundPages += count;
    this.roundBytes += payload.length;
    this.stats.pagesSent += count;
    this.stats.bytesSent += payload.length;
  }

  /** A ZERO_PAGES frame: the zero pages among [firstPage, firstPage + count) as a bitmap (bit set = zero). */
  zeroPages(firstPage: number, count: number, bitmap: Uint8Array): Buffer {
    this.require("send ZERO_PAGES", ...IN_ROUND);
    if (firstPage + count > this.pageCount) throw new MigrationStateError(`ZERO_PAGES [${firstPage}, ${firstPage + count}) is outside the VM's ${this.pageCount} pages`);
    const payload = encodeZeroPagesPayload(this.round, firstPage, count, bitmap);
    const n = bitmapPopcount(bitmap, count);
    this.roundPages += n;
    this.roundBytes += payload.length;
    this.stats.pagesSent += n;
    this.stats.bytesSent += payload.length;
    return encodeFrame(Command.ZeroPages, payload);
  }

  /** A DEVICE_MEMORY frame: bytes [offset, offset + data.length) of device-memory region `region` (see VmMigrationConfig.deviceMemory). */
  deviceMemory(region: number, offset: number, data: Uint8Array): Buffer {
    this.require("send DEVICE_MEMORY", ...IN_ROUND);
    const size = this.config.deviceMemory?.[region];
    if (size === undefined || offset + data.length > size) throw new MigrationStateError(`DEVICE_MEMORY [${offset}, ${offset + data.length}) of region ${region} is outside the regions in the config`);
    const payload = encodeDeviceMemoryPayload(this.round, region, offset, data);
    this.roundBytes += payload.length;
    this.stats.bytesSent += payload.length;
    return encodeFrame(Command.DeviceMemory, payload);
  }

  endRound(): Buffer {
    this.require("end a memory round", ...IN_ROUND);
    this.st = this.st === "FinalRound" ? "FinalRoundSent" : "Ready";
    this.stats.roundsDone++;
    return encodeMessage({ cmd: Command.MemoryRoundEnd, round: this.round, pages: this.roundPages, bytes: this.roundBytes });
  }

  /** CPU and device state (the source guest must be paused); the final round follows. */
  sendState(state: Uint8Array, guestClockMs: number, pausedAtMs: number, engineClockMs?: number): Buffer {
    return Buffer.concat(this.sendStateParts(state, guestClockMs, pausedAtMs, engineClockMs));
  }

  /** As sendState(), but as parts to write one after the other: `state` is not copied (it must not change until written). */
  sendStateParts(state: Uint8Array, guestClockMs: number, pausedAtMs: number, engineClockMs?: number): Buffer[] {
    this.require("send STATE", "Ready");
    if (this.stats.roundsDone === 0) throw new MigrationStateError("STATE before any memory round");
    this.st = "StateSent";
    return encodeStateFrameParts({ cmd: Command.State, guestClockMs, pausedAtMs, engineClockMs, state: Buffer.from(state.buffer, state.byteOffset, state.byteLength) });
  }

  /** The commit point: from here on the source must not resume on its own. */
  complete(): Buffer {
    this.require("send COMPLETE", "FinalRoundSent");
    this.st = "AwaitResumed";
    return encodeMessage({ cmd: Command.Complete });
  }

  ping(): Buffer {
    this.require("send PING", ...PRE_COMMIT, "AwaitResumed");
    return encodeMessage({ cmd: Command.Ping, seq: this.pingSeq++ });
  }

  /** Cancels before COMPLETE: returns the ABORT frame to send (none if nothing was sent yet). */
  abort(reason: string): Buffer[] {
    if (!PRE_COMMIT.has(this.st)) {
      throw new MigrationStateError(`the migration cannot be aborted in state ${this.st}: COMPLETE was sent, resolve the outcome with the target instead`);
    }
    const wasInit = this.st === "Init";
    this.st = "Aborted";
    this.failure = new MigrationAbortedError("MIGRATION_ABORTED", `the source aborted the migration: ${reason}`);
    return wasInit ? [] : [encodeMessage({ cmd: Command.Abort, reason })];
  }

  /** A local failure (decoder error, timeout, RAM read failure). */
  fail(err: unknown): SenderStep {
    return this.failWith(toMigrationError(err), true);
  }

  connectionLost(): SenderStep {
    if (PRE_COMMIT.has(this.st)) return this.failWith(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", `the migration connection dropped in state ${this.st}`), false);
    if (this.st === "AwaitResumed") return this.failWith(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", "the migration connection dropped after COMPLETE"), false);
    return { send: [] };
  }

  /** Settles an Uncertain outcome with the target's answer (from fence() on the target). */
  resolve(outcome: "resumed" | "aborted"): void {
    this.require("resolve the outcome", "Uncertain");
    this.st = outcome === "resumed" ? "Done" : "Aborted";
  }

  private unexpected(cmd: number): MigrationProtocolError {
    return new MigrationProtocolError("MIGRATION_UNEXPECTED_COMMAND", `the migration source in state ${this.st} does not accept ${commandName(cmd)}`);
  }

  private settleAborted(err: MigrationError): SenderStep {
    this.st = "Aborted";
    this.failure = err;
    return { send: [], event: { kind: "failed", error: err, sourceMayResume: true }, error: err };
  }

  private failWith(err: MigrationError, tellTarget: boolean): SenderStep {
    if (this.st === "AwaitResumed") {
      this.st = "Uncertain";
      const e = new MigrationOutcomeUnknownError(`after COMPLETE: ${err.message}; the source stays paused until the target says whether it runs`, err);
      this.failure = e;
      return { send: [], event: { kind: "failed", error: e, sourceMayResume: false }, error: e };
    }
    if (!PRE_COMMIT.has(this.st)) return { send: [], error: err };
    this.st = "Aborted";
    this.failure = err;
    return { send: tellTarget ? [errorFrame(err)] : [], event: { kind: "failed", error: err, sourceMayResume: true }, error: err };
  }
}
