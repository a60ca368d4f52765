/**
 * The target side of a live migration as an explicit state machine. It is pure: it reads
 * frames and returns the frames to send back and the actions for the driver (the VM process) to
 * carry out. It never touches a socket, a VM or a clock.
 *
 *   AwaitHello --HELLO--> AwaitConfig --CONFIG--> Preparing --prepared()--> Prepared
 *   Prepared/BetweenRounds --MEMORY_ROUND_BEGIN--> InRound --PAGES*--> InRound
 *   InRound --MEMORY_ROUND_END--> BetweenRounds --STATE--> StateReceived
 *   StateReceived --MEMORY_ROUND_BEGIN--> FinalRound --PAGES*--> FinalRound
 *   FinalRound --MEMORY_ROUND_END--> FinalRoundDone --COMPLETE--> Resuming --resumed()--> Resumed
 *   any state before Resuming --ABORT / ERROR / failure / connection lost--> Aborted
 *
 * Driver contract: handle one frame at a time; carry out the returned actions in order, then send
 * the returned replies. If an action throws, call fail(err) and do the same with its result.
 * `prepare` and `resume` are confirmed by calling prepared() / resumed(), which return the
 * CONFIG_ACK / RESUMED reply. An `abort` action means: destroy the prepared VM; it must never
 * run. Once Resumed, nothing here ever asks for an abort: the VM runs on this host.
 */
import {
  authProof,
  checkToken,
  Command,
  commandName,
  decodeMessage,
  DEVICE_CHUNK_BYTES,
  encodeMessage,
  errorFrame,
  MigrationAbortedError,
  MigrationProtocolError,
  MigrationRemoteError,
  MigrationStateError,
  newNonce,
  PAGE_SIZE,
  PageEncoding,
  PROTOCOL_VERSION,
  toMigrationError,
  verifyProof,
  type Frame,
  type MigrationError,
  type PageEntry,
  type VmMigrationConfig,
} from "./protocol.js";

export type ReceiverStateName =
  | "AwaitHello"
  | "AwaitConfig"
  | "Preparing"
  | "Prepared"
  | "InRound"
  | "BetweenRounds"
  | "StateReceived"
  | "FinalRound"
  | "FinalRoundDone"
  | "Resuming"
  | "Resumed"
  | "Aborted";

/** Commands each state accepts besides PING/PONG (all but Aborted) and ABORT/ERROR (all before Resuming). */
export const RECEIVER_ACCEPTS: Readonly<Record<ReceiverStateName, readonly Command[]>> = {
  AwaitHello: [Command.Hello],
  AwaitConfig: [Command.Config],
  Preparing: [],
  Prepared: [Command.MemoryRoundBegin],
  InRound: [Command.Pages, Command.ZeroPages, Command.DeviceMemory, Command.MemoryRoundEnd],
  BetweenRounds: [Command.MemoryRoundBegin, Command.State],
  StateReceived: [Command.MemoryRoundBegin],
  FinalRound: [Command.Pages, Command.ZeroPages, Command.DeviceMemory, Command.MemoryRoundEnd],
  FinalRoundDone: [Command.Complete],
  Resuming: [],
  Resumed: [],
  Aborted: [],
};

const COMMITTED: ReadonlySet<ReceiverStateName> = new Set(["Resuming", "Resumed"]);

/** What the target host allows; every field given must match the source's CONFIG. */
export interface ReceiverExpect {
  migrationId?: string;
  vmUuid?: string;
  name?: string;
  memoryMiB?: number;
  vgaMemoryKiB?: number;
  nic?: "virtio" | "ne2k";
  disk?: boolean;
  generation?: number;
  maxMemoryMiB?: number;
}

export interface ReceiverOptions {
  /** The shared cluster token (at least 16 characters). */
  token: string;
  engineVersion: string;
  expect?: ReceiverExpect;
  /** Source of the server nonce (tests); default 32 random bytes. */
  nonce?: () => string;
}

export type ReceiverAction =
  | { kind: "prepare"; config: VmMigrationConfig; pageCount: number }
  /** `payload` is the PAGES payload the entries were decoded from (their data are views into it). */
  | { kind: "writePages"; round: number; pages: PageEntry[]; payload: Buffer }
  /** Pages that are zero (bitmap over [firstPage, firstPage + count), bit set = zero). */
  | { kind: "zeroPages"; round: number; firstPage: number; count: number; bitmap: Buffer }
  /** Bytes of a device-memory region (VmMigrationConfig.deviceMemory); `data` is a view into the frame payload. */
  | { kind: "writeDeviceMemory"; round: number; region: number; offset: number; data: Buffer }
  | { kind: "roundComplete"; round: number; pages: number; bytes: number }
  | { kind: "restoreState"; state: Buffer; guestClockMs: number; pausedAtMs: number; engineClockMs?: number | undefined }
  | { kind: "resume" }
  | { kind: "abort"; reason: string; error?: MigrationError };

export interface ReceiverStep {
  /** Encoded frames to send, after the actions have been carried out. */
  replies: Buffer[];
  actions: ReceiverAction[];
  /** Set when this step failed the migration (or was refused while Resumed/Aborted). */
  error?: MigrationError;
}

export interface ReceiverStats {
  rounds: number;
  pages: number;
  bytes: number;
  pagesByEncoding: [number, number, number, number];
}

function nothing(): ReceiverStep {
  return { replies: [], actions: [] };
}

export class ReceiverStateMachine {
  private st: ReceiverStateName = "AwaitHello";
  private readonly token: string;
  private readonly engineVersion: string;
  private readonly expect: ReceiverExpect;
  private readonly nonce: () => string;
  private migrationId = "";
  private clientNonce = "";
  private helloUuid = "";
  private serverNonce = "";
  private cfg: VmMigrationConfig | undefined;
  private pageCount = 0;
  private received = new Uint8Array(0);
  private receivedCount = 0;
  /** Per device-memory region, 1 for each 4 KiB chunk received at least once. */
  private deviceChunks: Uint8Array[] = [];
  private deviceChunksMissing = 0;
  private nextRound = 0;
  private round = -1;
  private roundPages = 0;
  private roundBytes = 0;
  private abortError: MigrationError | undefined;
  readonly stats: ReceiverStats = { rounds: 0, pages: 0, bytes: 0, pagesByEncoding: [0, 0, 0, 0] };

  constructor(options: ReceiverOptions) {
    checkToken(options.token);
    this.token = options.token;
    this.engineVersion = options.engineVersion;
    this.expect = options.expect ?? {};
    this.nonce = options.nonce ?? newNonce;
  }

  get state(): ReceiverStateName {
    return this.st;
  }

  get config(): VmMigrationConfig | undefined {
    return this.cfg;
  }

  get id(): string {
    return this.migrationId;
  }

  /** Why the migration was aborted, once Aborted. */
  get error(): MigrationError | undefined {
    return this.abortError;
  }

  handle(frame: Frame): ReceiverStep {
    const state = this.st;
    const cmd = frame.command;
    if (state === "Aborted") {
      return { replies: [], actions: [], error: this.unexpected(cmd) };
    }
    const preCommit = !COMMITTED.has(state);
    const allowed = cmd === Command.Ping || cmd === Command.Pong || (preCommit && (cmd === Command.Abort || cmd === Command.Error)) || RECEIVER_ACCEPTS[state].includes(cmd);
    // Once COMPLETE has arrived the VM is (being) resumed: a stray frame is refused, never a reason to abort.
    if (!allowed) return preCommit ? this.failWith(this.unexpected(cmd)) : { replies: [], actions: [], error: this.unexpected(cmd) };
    try {
      const m = decodeMessage(frame);
      switch (m.cmd) {
        case Command.Ping:
          return { replies: [encodeMessage({ cmd: Command.Pong, seq: m.seq })], actions: [] };
        case Command.Pong:
          return nothing();
        case Command.Abort:
          return this.abort(new MigrationAbortedError("MIGRATION_ABORTED", `the source aborted the migration: ${m.reason}`), false);
        case Command.Error:
          return this.abort(new MigrationRemoteError(m.code, m.message), false);
        case Command.Hello: {
          if (m.engineVersion !== this.engineVersion) {
            throw new MigrationProtocolError("MIGRATION_ENGINE_MISMATCH", `the source runs engine "${m.engineVersion}", this target runs "${this.engineVersion}"`);
          }
          if (this.expect.migrationId !== undefined && m.migrationId !== this.expect.migrationId) {
            throw new MigrationProtocolError("MIGRATION_CONFIG_MISMATCH", `this target expects migration ${this.expect.migrationId}, not ${m.migrationId}`);
          }
          if (this.expect.vmUuid !== undefined && m.vmUuid !== this.expect.vmUuid) {
            throw new MigrationProtocolError("MIGRATION_CONFIG_MISMATCH", `this target expects VM ${this.expect.vmUuid}, not ${m.vmUuid}`);
          }
          this.migrationId = m.migrationId;
          this.clientNonce = m.clientNonce;
          this.helloUuid = m.vmUuid;
          this.serverNonce = this.nonce();
          this.st = "AwaitConfig";
          const proof = authProof(this.token, "target", this.migrationId, this.clientNonce, this.serverNonce);
          return {
            replies: [encodeMessage({ cmd: Command.HelloAck, protocolVersion: PROTOCOL_VERSION, engineVersion: this.engineVersion, serverNonce: this.serverNonce, proof })],
            actions: [],
          };
        }
        case Command.Config: {
          if (!verifyProof(this.token, "source", this.migrationId, this.clientNonce, this.serverNonce, m.proof)) {
            throw new MigrationProtocolError("MIGRATION_AUTH_FAILED", "the source's proof does not match this cluster's migration token");
          }
          this.checkConfig(m.config);
          this.cfg = m.config;
          this.pageCount = (m.config.memoryMiB * 1024 * 1024) / m.config.pageSize;
          this.received = new Uint8Array(this.pageCount);
          this.deviceChunks = (m.config.deviceMemory ?? []).map((size) => new Uint8Array(Math.ceil(size / DEVICE_CHUNK_BYTES)));
          this.deviceChunksMissing = this.deviceChunks.reduce((n, c) => n + c.length, 0);
          this.st = "Preparing";
          return { replies: [], actions: [{ kind: "prepare", config: m.config, pageCount: this.pageCount }] };
        }
        case Command.MemoryRoundBegin: {
          if (m.round !== this.nextRound) throw new MigrationProtocolError("MIGRATION_ROUND_MISMATCH", `MEMORY_ROUND_BEGIN for round ${m.round}; expected round ${this.nextRound}`);
          this.round = m.round;
          this.nextRound++;
          this.roundPages = 0;
          this.roundBytes = 0;
          this.st = state === "StateReceived" ? "FinalRound" : "InRound";
          return nothing();
        }
        case Command.Pages: {
          if (m.round !== this.round) throw new MigrationProtocolError("MIGRATION_ROUND_MISMATCH", `PAGES for round ${m.round} during round ${this.round}`);
          for (const p of m.pages) {
            if (p.index >= this.pageCount) {
              throw new MigrationProtocolError("MIGRATION_PAGE_OUT_OF_RANGE", `page ${p.index} is outside the VM's ${this.pageCount} pages`);
            }
            if (p.encoding === PageEncoding.Delta && this.received[p.index] === 0) {
              throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", `DELTA for page ${p.index}, which was never sent`);
            }
            if (this.received[p.index] === 0) {
              this.received[p.index] = 1;
              this.receivedCount++;
            }
            this.stats.pagesByEncoding[p.encoding]++;
          }
          this.roundPages += m.pages.length;
          this.roundBytes += frame.payload.length;
          this.stats.pages += m.pages.length;
          this.stats.bytes += frame.payload.length;
          return { replies: [], actions: [{ kind: "writePages", round: m.round, pages: m.pages, payload: frame.payload }] };
        }
        case Command.ZeroPages: {
          if (m.round !== this.round) throw new MigrationProtocolError("MIGRATION_ROUND_MISMATCH", `ZERO_PAGES for round ${m.round} during round ${this.round}`);
          if (m.firstPage + m.count > this.pageCount) {
            throw new MigrationProtocolError("MIGRATION_PAGE_OUT_OF_RANGE", `ZERO_PAGES [${m.firstPage}, ${m.firstPage + m.count}) is outside the VM's ${this.pageCount} pages`);
          }
          let n = 0;
          for (let i = 0; i < m.count; i++) {
            if ((((m.bitmap[i >> 3] ?? 0) >> (i & 7)) & 1) === 0) continue;
            n++;
            const p = m.firstPage + i;
            if (this.received[p] === 0) {
              this.received[p] = 1;
              this.receivedCount++;
            }
          }
          this.stats.pagesByEncoding[PageEncoding.Zero] += n;
          this.roundPages += n;
          this.roundBytes += frame.payload.length;
          this.stats.pages += n;
          this.stats.bytes += frame.payload.length;
          return { replies: [], actions: [{ kind: "zeroPages", round: m.round, firstPage: m.firstPage, count: m.count, bitmap: m.bitmap }] };
        }
        case Command.DeviceMemory: {
          if (m.round !== this.round) throw new MigrationProtocolError("MIGRATION_ROUND_MISMATCH", `DEVICE_MEMORY for round ${m.round} during round ${this.round}`);
          const sizes = this.cfg?.deviceMemory ?? [];
          const size = sizes[m.region];
          if (size === undefined) throw new MigrationProtocolError("MIGRATION_PAGE_OUT_OF_RANGE", `DEVICE_MEMORY for region ${m.region}; the VM's config has ${sizes.length} regions`);
          const end = m.offset + m.data.length;
          // Whole 4 KiB chunks (the last one of a region may be shorter), inside the region.
          if (m.offset % DEVICE_CHUNK_BYTES !== 0 || end > size || (m.data.length % DEVICE_CHUNK_BYTES !== 0 && end !== size)) {
            throw new MigrationProtocolError("MIGRATION_PAGE_OUT_OF_RANGE", `DEVICE_MEMORY [${m.offset}, ${end}) is not whole 4 KiB chunks of region ${m.region} (${size} bytes)`);
          }
          const chunks = this.deviceChunks[m.region]!;
          for (let c = m.offset / DEVICE_CHUNK_BYTES; c < Math.ceil(end / DEVICE_CHUNK_BYTES); c++) {
            if (chunks[c] === 0) {
              chunks[c] = 1;
              this.deviceChunksMissing--;
            }
          }
          this.roundBytes += frame.payload.length;
          this.stats.bytes += frame.payload.length;
          return { replies: [], actions: [{ kind: "writeDeviceMemory", round: m.round, region: m.region, offset: m.offset, data: m.data }] };
        }
        case Command.MemoryRoundEnd: {
          if (m.round !== this.round || m.pages !== this.roundPages || m.bytes !== this.roundBytes) {
            throw new MigrationProtocolError(
              "MIGRATION_ROUND_MISMATCH",
              `MEMORY_ROUND_END says round ${m.round}: ${m.pages} pages, ${m.bytes} bytes; received round ${this.round}: ${this.roundPages} pages, ${this.roundBytes} bytes`,
            );
          }
          this.stats.rounds++;
          this.st = state === "FinalRound" ? "FinalRoundDone" : "BetweenRounds";
          return { replies: [], actions: [{ kind: "roundComplete", round: m.round, pages: m.pages, bytes: m.bytes }] };
        }
        case Command.State: {
          if (this.receivedCount !== this.pageCount) {
            throw new MigrationProtocolError("MIGRATION_MEMORY_INCOMPLETE", `STATE arrived with ${this.pageCount - this.receivedCount} of ${this.pageCount} pages never sent`);
          }
          if (this.deviceChunksMissing > 0) {
            throw new MigrationProtocolError("MIGRATION_MEMORY_INCOMPLETE", `STATE arrived with ${this.deviceChunksMissing} 4 KiB chunks of device memory never sent`);
          }
          this.st = "StateReceived";
          return { replies: [], actions: [{ kind: "restoreState", state: m.state, guestClockMs: m.guestClockMs, pausedAtMs: m.pausedAtMs, engineClockMs: m.engineClockMs }] };
        }
        case Command.Complete:
          this.st = "Resuming";
          return { replies: [], actions: [{ kind: "resume" }] };
        default:
          throw this.unexpected(cmd);
      }
    } catch (err) {
      const e = toMigrationError(err);
      return preCommit ? this.failWith(e) : { replies: [], actions: [], error: e };
    }
  }

  /** The prepared VM exists (paused, RAM sized): returns the CONFIG_ACK reply. */
  prepared(): ReceiverStep {
    if (this.st !== "Preparing") throw new MigrationStateError(`prepared() called in state ${this.st}; only valid in Preparing`);
    this.st = "Prepared";
    return { replies: [encodeMessage({ cmd: Command.ConfigAck, pageCount: this.pageCount })], actions: [] };
  }

  /** The VM runs here now: returns the RESUMED reply (the switchover acknowledgement). */
  resumed(resumedAtMs: number, measured: { restoreMs?: number; resumeMs?: number; ramSha256?: string } = {}): ReceiverStep {
    if (this.st !== "Resuming") throw new MigrationStateError(`resumed() called in state ${this.st}; only valid in Resuming`);
    this.st = "Resumed";
    return { replies: [encodeMessage({ cmd: Command.Resumed, resumedAtMs, ...measured })], actions: [] };
  }

  /**
   * A local failure (an action threw, a decoder error, a timeout). Before Resumed (including a
   * failed resume action in Resuming): Aborted, an ERROR reply for the source and an abort
   * action; the driver must make sure the VM is stopped for good before sending the ERROR.
   * Once Resumed: returned as an error only, the VM keeps running.
   */
  fail(err: unknown): ReceiverStep {
    return this.failWith(toMigrationError(err));
  }

  /** The connection dropped. Before COMPLETE arrived, the migration is over (abort); after, the VM keeps running or resuming. */
  connectionLost(): ReceiverStep {
    if (this.st === "Aborted" || COMMITTED.has(this.st)) return nothing();
    return this.abort(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", `the migration connection dropped in state ${this.st}`), false);
  }

  /**
   * For resolving an uncertain outcome (the source asks, through the hosts, after losing the
   * connection after COMPLETE): "resumed" if the VM runs here; otherwise this migration is fenced
   * (Aborted, so a late COMPLETE can never resume it) and "aborted" is returned, with the abort
   * action. "resuming" means ask again shortly.
   */
  fence(): { outcome: "resumed" | "resuming" | "aborted"; actions: ReceiverAction[] } {
    if (this.st === "Resumed") return { outcome: "resumed", actions: [] };
    if (this.st === "Resuming") return { outcome: "resuming", actions: [] };
    if (this.st === "Aborted") return { outcome: "aborted", actions: [] };
    const step = this.abort(new MigrationAbortedError("MIGRATION_ABORTED", `fenced in state ${this.st} at the source's request`), false);
    return { outcome: "aborted", actions: step.actions };
  }

  private unexpected(cmd: number): MigrationProtocolError {
    return new MigrationProtocolError("MIGRATION_UNEXPECTED_COMMAND", `the migration target in state ${this.st} does not accept ${commandName(cmd)}`);
  }

  private failWith(err: MigrationError): ReceiverStep {
    if (this.st === "Aborted") return { replies: [], actions: [], error: err };
    if (this.st === "Resumed") return { replies: [], actions: [], error: err };
    return this.abort(err, true);
  }

  private abort(err: MigrationError, tellSource: boolean): ReceiverStep {
    this.st = "Aborted";
    this.abortError = err;
    return { replies: tellSource ? [errorFrame(err)] : [], actions: [{ kind: "abort", reason: err.message, error: err }], error: err };
  }

  private checkConfig(c: VmMigrationConfig): void {
    const e = this.expect;
    const mismatch = (what: string): never => {
      throw new MigrationProtocolError("MIGRATION_CONFIG_MISMATCH", `the source's VM config does not fit this target: ${what}`);
    };
    if (c.pageSize !== PAGE_SIZE) mismatch(`page size ${c.pageSize}, this target uses ${PAGE_SIZE}`);
    if ((c.memoryMiB * 1024 * 1024) % c.pageSize !== 0) mismatch(`memory of ${c.memoryMiB} MiB is not a whole number of pages`);
    if (e.maxMemoryMiB !== undefined && c.memoryMiB > e.maxMemoryMiB) mismatch(`memoryMiB ${c.memoryMiB} exceeds the ${e.maxMemoryMiB} MiB this target allows`);
    for (const key of ["name", "memoryMiB", "vgaMemoryKiB", "nic", "disk", "generation"] as const) {
      const want = e[key];
      if (want !== undefined && c[key] !== want) mismatch(`${key}=${String(c[key])}, expected ${String(want)}`);
    }
    if (c.uuid !== this.helloUuid) mismatch(`uuid=${c.uuid}, but HELLO named VM ${this.helloUuid}`);
    if (e.vmUuid !== undefined && c.uuid !== e.vmUuid) mismatch(`uuid=${c.uuid}, expected ${e.vmUuid}`);
  }
}
