/**
 * The live-migration wire protocol, whole, in one file (docs/migration-protocol.md).
 *
 * Frame (all integers little-endian except the magic, which reads "HP" on the wire):
 *
 *   offset 0  u16  magic 0x4850, bytes 0x48 0x50 ("HP")
 *          2  u8   command (see Command; 0 is invalid)
 *          3  u8   flags (0: no flag is defined; anything else is rejected)
 *          4  u32  payload length (at most MAX_PAYLOAD_BYTES = 64 MiB)
 *          8  u32  CRC-32 (IEEE 802.3, as zlib) over bytes 0..7 and then the payload
 *         12  ...  payload
 *
 * Control messages carry a UTF-8 JSON object; PAGES and STATE are binary (see below). The frame
 * header and HELLO/HELLO_ACK's `protocolVersion` field never change, so any two versions can at
 * least tell each other that they differ.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import * as zlib from "node:zlib";
import { z } from "zod";
import { HopError } from "../common/errors.js";

export const PROTOCOL_VERSION = 3;
export const FRAME_MAGIC = 0x4850;
export const FRAME_HEADER_BYTES = 12;
export const MAX_PAYLOAD_BYTES = 64 * 1024 * 1024;
/** Control (JSON) payloads are small; anything bigger is refused before JSON.parse. */
export const MAX_CONTROL_PAYLOAD_BYTES = 64 * 1024;
export const PAGE_SIZE = 4096;
/** Header of a PAGES payload: round u32 | page count u32. */
export const PAGES_HEADER_BYTES = 8;
/** Header of one page entry: page index u32 | encoding u8 | data length u32. */
export const PAGE_ENTRY_HEADER_BYTES = 9;
/** Header of a DEVICE_MEMORY payload: round u32 | region u32 | offset u32. */
export const DEVICE_MEMORY_HEADER_BYTES = 12;
/** Device memory travels in whole chunks of this size (the last one of a region may be shorter). */
export const DEVICE_CHUNK_BYTES = 4096;

/** Numbered commands. The numbers are the wire format: never renumber, only append. */
export const Command = {
  Invalid: 0,
  Hello: 1,
  HelloAck: 2,
  Config: 3,
  ConfigAck: 4,
  MemoryRoundBegin: 5,
  Pages: 6,
  MemoryRoundEnd: 7,
  State: 8,
  Complete: 9,
  Resumed: 10,
  Abort: 11,
  Error: 12,
  Ping: 13,
  Pong: 14,
  ZeroPages: 15,
  DeviceMemory: 16,
} as const;
export type Command = (typeof Command)[keyof typeof Command];
const MAX_COMMAND = 16;

const COMMAND_NAMES: readonly string[] = [
  "INVALID",
  "HELLO",
  "HELLO_ACK",
  "CONFIG",
  "CONFIG_ACK",
  "MEMORY_ROUND_BEGIN",
  "PAGES",
  "MEMORY_ROUND_END",
  "STATE",
  "COMPLETE",
  "RESUMED",
  "ABORT",
  "ERROR",
  "PING",
  "PONG",
  "ZERO_PAGES",
  "DEVICE_MEMORY",
];

export function commandName(command: number): string {
  return COMMAND_NAMES[command] ?? `UNKNOWN(${command})`;
}

/** How one page travels inside PAGES. */
export const PageEncoding = {
  /** All zero; no data. */
  Zero: 0,
  /** The 4096 bytes as they are. */
  Raw: 1,
  /** XOR against the copy the target already holds, zero-run-length coded (see pages.ts). */
  Delta: 2,
  /** An LZ4 block that decompresses to exactly 4096 bytes. */
  Lz4: 3,
} as const;
export type PageEncoding = (typeof PageEncoding)[keyof typeof PageEncoding];
const PAGE_ENCODING_NAMES = ["ZERO", "RAW", "DELTA", "LZ4"] as const;

export function pageEncodingName(e: number): string {
  return PAGE_ENCODING_NAMES[e] ?? `UNKNOWN(${e})`;
}

// ---------------------------------------------------------------------------------------------
// Errors

export type MigrationErrorCode =
  | "MIGRATION_CORRUPT_FRAME"
  | "MIGRATION_FRAME_TOO_LARGE"
  | "MIGRATION_UNEXPECTED_COMMAND"
  | "MIGRATION_AUTH_FAILED"
  | "MIGRATION_VERSION_MISMATCH"
  | "MIGRATION_ENGINE_MISMATCH"
  | "MIGRATION_CONFIG_MISMATCH"
  | "MIGRATION_PAGE_OUT_OF_RANGE"
  | "MIGRATION_PAGE_ENCODING"
  | "MIGRATION_ROUND_MISMATCH"
  | "MIGRATION_MEMORY_INCOMPLETE"
  | "MIGRATION_INVALID_STEP"
  | "MIGRATION_ABORTED"
  | "MIGRATION_CONNECTION_LOST"
  | "MIGRATION_OUTCOME_UNKNOWN"
  | "MIGRATION_PEER_ERROR";

const KNOWN_CODES = new Set<string>([
  "MIGRATION_CORRUPT_FRAME",
  "MIGRATION_FRAME_TOO_LARGE",
  "MIGRATION_UNEXPECTED_COMMAND",
  "MIGRATION_AUTH_FAILED",
  "MIGRATION_VERSION_MISMATCH",
  "MIGRATION_ENGINE_MISMATCH",
  "MIGRATION_CONFIG_MISMATCH",
  "MIGRATION_PAGE_OUT_OF_RANGE",
  "MIGRATION_PAGE_ENCODING",
  "MIGRATION_ROUND_MISMATCH",
  "MIGRATION_MEMORY_INCOMPLETE",
  "MIGRATION_INVALID_STEP",
  "MIGRATION_ABORTED",
  "MIGRATION_CONNECTION_LOST",
  "MIGRATION_OUTCOME_UNKNOWN",
  "MIGRATION_PEER_ERROR",
]);

function statusOf(code: MigrationErrorCode): number {
  switch (code) {
    case "MIGRATION_AUTH_FAILED":
      return 401;
    case "MIGRATION_VERSION_MISMATCH":
    case "MIGRATION_ENGINE_MISMATCH":
    case "MIGRATION_CONFIG_MISMATCH":
    case "MIGRATION_ABORTED":
    case "MIGRATION_OUTCOME_UNKNOWN":
      return 409;
    case "MIGRATION_INVALID_STEP":
      return 500;
    default:
      return 502;
  }
}

/** Base class of every migration failure; `code` is stable. */
export class MigrationError extends HopError {
  declare readonly code: MigrationErrorCode;
  constructor(code: MigrationErrorCode, message: string, cause?: unknown) {
    super(code, message, { cause, status: statusOf(code) });
  }
}

/** The peer (or the bytes between us) broke the protocol: bad frame, order, auth, versions, config, pages. */
export class MigrationProtocolError extends MigrationError {}

/** The peer reported a failure with an ERROR frame; `code` is the peer's code when it is one of ours. */
export class MigrationRemoteError extends MigrationError {
  readonly remoteCode: string;
  constructor(remoteCode: string, message: string) {
    super(KNOWN_CODES.has(remoteCode) ? (remoteCode as MigrationErrorCode) : "MIGRATION_PEER_ERROR", `peer reported ${remoteCode}: ${message}`);
    this.remoteCode = remoteCode;
  }
}

/** The migration ended without the target running: ABORT received, or the connection dropped. */
export class MigrationAbortedError extends MigrationError {
  constructor(code: "MIGRATION_ABORTED" | "MIGRATION_CONNECTION_LOST", message: string, cause?: unknown) {
    super(code, message, cause);
  }
}

/** The local code asked a state machine for a step it may not take now (a bug in the driver). */
export class MigrationStateError extends MigrationError {
  constructor(message: string) {
    super("MIGRATION_INVALID_STEP", message);
  }
}

/** After COMPLETE the source cannot know whether the target runs: it must stay paused and ask. */
export class MigrationOutcomeUnknownError extends MigrationError {
  constructor(message: string, cause?: unknown) {
    super("MIGRATION_OUTCOME_UNKNOWN", message, cause);
  }
}

function corrupt(message: string, cause?: unknown): MigrationProtocolError {
  return new MigrationProtocolError("MIGRATION_CORRUPT_FRAME", message, cause);
}

/** Wraps anything thrown into a MigrationError (unknown errors become MIGRATION_ABORTED with the cause kept). */
export function toMigrationError(err: unknown): MigrationError {
  if (err instanceof MigrationError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new MigrationAbortedError("MIGRATION_ABORTED", `migration failed: ${message}`, err);
}

// ---------------------------------------------------------------------------------------------
// CRC-32 (IEEE). zlib.crc32 exists from Node 20.15; older Node 20 uses the table below.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** Table-driven CRC-32 in JS; `crc` continues a previous result (same contract as zlib.crc32). */
export function crc32Js(data: Uint8Array, crc = 0): number {
  let c = ~crc;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

const nativeCrc32: ((data: Uint8Array, value?: number) => number) | undefined = typeof zlib.crc32 === "function" ? zlib.crc32 : undefined;

export function crc32(data: Uint8Array, crc = 0): number {
  return nativeCrc32 !== undefined ? nativeCrc32(data, crc) : crc32Js(data, crc);
}

// ---------------------------------------------------------------------------------------------
// Frames

export interface Frame {
  command: Command;
  flags: number;
  payload: Buffer;
}

const EMPTY = Buffer.alloc(0);

/** The 12-byte header of a frame carrying `payload` (magic, command, flags, length, CRC). */
export function frameHeader(command: Command, payload: Uint8Array = EMPTY, flags = 0): Buffer {
  return frameHeaderOf(command, [payload], flags);
}

/** The header of a frame whose payload is `parts` one after the other (written without joining them). */
export function frameHeaderOf(command: Command, parts: readonly Uint8Array[], flags = 0): Buffer {
  const length = parts.reduce((n, p) => n + p.length, 0);
  if (length > MAX_PAYLOAD_BYTES) {
    throw new MigrationProtocolError("MIGRATION_FRAME_TOO_LARGE", `${commandName(command)} payload is ${length} bytes; a frame carries at most ${MAX_PAYLOAD_BYTES}`);
  }
  const head = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  head[0] = FRAME_MAGIC >> 8;
  head[1] = FRAME_MAGIC & 0xff;
  head[2] = command;
  head[3] = flags;
  head.writeUInt32LE(length, 4);
  head.writeUInt32LE(parts.reduce((crc, p) => crc32(p, crc), crc32(head.subarray(0, 8))), 8);
  return head;
}

/** One complete frame (header + payload) in one Buffer. */
export function encodeFrame(command: Command, payload: Uint8Array = EMPTY, flags = 0): Buffer {
  const head = frameHeader(command, payload, flags);
  const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  head.copy(buf, 0);
  buf.set(payload, FRAME_HEADER_BYTES);
  return buf;
}

/**
 * Where a large payload may be assembled: given its length, a place for it (its bytes are
 * copied there as they arrive, and the frame's payload is that place), or undefined for the
 * default (chunks merged into a new Buffer). See FrameDecoder.payloadSink.
 */
export type PayloadSink = (length: number) => Uint8Array | undefined;

/** Payloads from this size up are offered to the payload sink. */
export const PAYLOAD_SINK_MIN_BYTES = 64 * 1024;

/**
 * Incremental frame decoder: push socket chunks, get whole frames. Chunks are kept by
 * reference (not copied) until consumed, and payloads may be views of them, unless a chunk is
 * pushed as transient (its memory is reused once push() returns): what is kept of it is copied.
 * Any corruption (bad magic, oversized length, bad CRC, unknown command, non-zero flags, bytes
 * left at `finish()`) throws MIGRATION_CORRUPT_FRAME, and the decoder then refuses all further
 * input.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failure: MigrationProtocolError | undefined;
  /** A large frame whose payload is being copied into the sink's place as chunks arrive. */
  private assembling: { head: Buffer; dest: Uint8Array; filled: number } | undefined;

  /** Largest payload accepted; lower it (e.g. to MAX_CONTROL_PAYLOAD_BYTES) until the peer is authenticated. */
  maxPayload: number;

  /**
   * Optional: a place for each payload of PAYLOAD_SINK_MIN_BYTES or more, so that it is copied
   * once, straight where it is used (the migration target gives places in the guest engine's
   * wasm memory, where its pages are applied), or read there by the kernel (see readPlace).
   * Whoever sets it owns the places: one must stay untouched until its frame has been handled.
   */
  payloadSink: PayloadSink | undefined;

  constructor(options?: { maxPayload?: number }) {
    this.maxPayload = Math.min(options?.maxPayload ?? MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES);
  }

  get bufferedBytes(): number {
    return this.buffered + (this.assembling !== undefined ? FRAME_HEADER_BYTES + this.assembling.filled : 0);
  }

  /**
   * Where the next bytes of the stream belong, when a payload is being assembled in the sink's
   * place: the rest of that payload. A reader that reads into it (and pushes that view) saves
   * the copy; the next frame's bytes never land there, as the view ends with the payload.
   */
  readPlace(): Uint8Array | undefined {
    const a = this.assembling;
    return a !== undefined && this.failure === undefined ? a.dest.subarray(a.filled) : undefined;
  }

  /** Decodes what `chunk` completes. `transient`: its memory is reused after this call (nothing may keep a view of it). */
  push(chunk: Uint8Array, transient = false): Frame[] {
    if (this.failure !== undefined) throw this.failure;
    const frames: Frame[] = [];
    try {
      let rest: Uint8Array = chunk;
      if (this.assembling !== undefined && rest.length > 0) {
        const a = this.assembling;
        const n = Math.min(rest.length, a.dest.length - a.filled);
        // Bytes read straight into their place (readPlace) are there already.
        const inPlace = rest.buffer === a.dest.buffer && rest.byteOffset === a.dest.byteOffset + a.filled;
        if (!inPlace) a.dest.set(n === rest.length ? rest : rest.subarray(0, n), a.filled);
        a.filled += n;
        rest = rest.subarray(n);
        if (a.filled === a.dest.length) {
          this.assembling = undefined;
          frames.push(checkedFrame(a.head, Buffer.from(a.dest.buffer, a.dest.byteOffset, a.dest.length)));
        }
      }
      if (rest.length > 0) {
        this.chunks.push(Buffer.isBuffer(rest) ? rest : Buffer.from(rest.buffer, rest.byteOffset, rest.byteLength));
        this.buffered += rest.length;
      }
      for (;;) {
        const f = this.next(transient ? chunk.buffer : undefined);
        if (f === undefined) break;
        frames.push(f);
      }
      // What is left of a transient chunk (the start of a frame) is copied: its memory is reused.
      if (transient) this.chunks = this.chunks.map((c) => (c.buffer === chunk.buffer ? Buffer.from(c) : c));
    } catch (err) {
      this.failure = err instanceof MigrationProtocolError ? err : corrupt(String(err), err);
      this.chunks = [];
      this.buffered = 0;
      this.assembling = undefined;
      throw this.failure;
    }
    return frames;
  }

  /** Call when the stream ends: a partial frame left over is a truncation. */
  finish(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.bufferedBytes > 0) {
      this.failure = corrupt(`stream ended inside a frame (${this.bufferedBytes} bytes left over)`);
      throw this.failure;
    }
  }

  /** The first `n` buffered bytes as one contiguous Buffer (merging chunks when needed). */
  private peek(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    let count = 0;
    let size = 0;
    while (size < n) size += this.chunks[count++]!.length;
    const merged = Buffer.concat(this.chunks.slice(0, count), size);
    this.chunks.splice(0, count, merged);
    return merged.subarray(0, n);
  }

  private take(n: number): Buffer {
    const out = this.peek(n);
    const first = this.chunks[0]!;
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return out;
  }

  private next(transient: ArrayBufferLike | undefined): Frame | undefined {
    if (this.buffered === 0 || this.assembling !== undefined) return undefined;
    const b0 = this.chunks[0]![0]!;
    if (b0 !== FRAME_MAGIC >> 8) throw corrupt(`bad frame magic (first byte 0x${b0.toString(16)})`);
    if (this.buffered < 2) return undefined;
    const head2 = this.peek(2);
    if (head2[1] !== (FRAME_MAGIC & 0xff)) throw corrupt(`bad frame magic 0x${head2.readUInt16BE(0).toString(16)}`);
    if (this.buffered < 8) return undefined;
    const length = this.peek(8).readUInt32LE(4);
    if (length > this.maxPayload) throw corrupt(`frame length ${length} exceeds the limit of ${this.maxPayload} bytes`);
    if (length >= PAYLOAD_SINK_MIN_BYTES && this.buffered >= FRAME_HEADER_BYTES && this.payloadSink !== undefined && this.startAssembling(length)) {
      const a = this.assembling!;
      if (a.filled < a.dest.length) return undefined;
      this.assembling = undefined;
      return checkedFrame(a.head, Buffer.from(a.dest.buffer, a.dest.byteOffset, a.dest.length));
    }
    if (this.buffered < FRAME_HEADER_BYTES + length) return undefined;
    const bytes = this.take(FRAME_HEADER_BYTES + length);
    // A frame in a transient chunk is copied out (one small frame: a large one went to the sink).
    const frame = bytes.buffer === transient ? Buffer.from(bytes) : bytes;
    return checkedFrame(frame.subarray(0, FRAME_HEADER_BYTES), frame.subarray(FRAME_HEADER_BYTES));
  }

  /**
   * Moves a large frame's header and buffered payload bytes (up to its length) into a place
   * from the sink, to go on there; false when the sink has none.
   */
  private startAssembling(length: number): boolean {
    const dest = this.payloadSink?.(length);
    if (dest === undefined) return false;
    if (dest.length !== length) throw new RangeError(`the payload sink gave ${dest.length} bytes for a payload of ${length}`);
    const head = Buffer.from(this.take(FRAME_HEADER_BYTES));
    let filled = 0;
    while (filled < length && this.chunks.length > 0) {
      const c = this.chunks[0]!;
      const n = Math.min(c.length, length - filled);
      dest.set(n === c.length ? c : c.subarray(0, n), filled);
      filled += n;
      this.buffered -= n;
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
    }
    this.assembling = { head, dest, filled };
    return true;
  }
}

/** Checks a frame's CRC, command and flags; returns it. */
function checkedFrame(head: Buffer, payload: Buffer): Frame {
  const want = head.readUInt32LE(8);
  const got = crc32(payload, crc32(head.subarray(0, 8)));
  if (got !== want) throw corrupt(`frame CRC mismatch (header says 0x${want.toString(16)}, data gives 0x${got.toString(16)})`);
  const command = head[2]!;
  const flags = head[3]!;
  if (command === 0 || command > MAX_COMMAND) throw corrupt(`unknown command ${command}`);
  if (flags !== 0) throw corrupt(`unknown flags 0x${flags.toString(16)} on ${commandName(command)}`);
  return { command: command as Command, flags, payload };
}

// ---------------------------------------------------------------------------------------------
// Messages

export interface VmMigrationConfig {
  name: string;
  uuid: string;
  memoryMiB: number;
  vgaMemoryKiB: number;
  nic: "virtio" | "ne2k";
  disk: boolean;
  /** The generation the target will run the VM under (granted by the manager). */
  generation: number;
  pageSize: number;
  /**
   * Sizes of the device-memory regions (the engine's VGA buffers) that travel beside RAM as
   * DEVICE_MEMORY, in order; STATE then leaves their contents out. Absent: STATE carries them.
   */
  deviceMemory?: number[] | undefined;
}

export interface PageEntry {
  index: number;
  encoding: PageEncoding;
  /** A view into the frame payload. */
  data: Buffer;
}

export type HelloMessage = {
  cmd: typeof Command.Hello;
  protocolVersion: number;
  engineVersion: string;
  migrationId: string;
  vmUuid: string;
  /** 32 random bytes, hex. */
  clientNonce: string;
};
export type HelloAckMessage = {
  cmd: typeof Command.HelloAck;
  protocolVersion: number;
  engineVersion: string;
  serverNonce: string;
  /** HMAC proving the target holds the token (see authProof). */
  proof: string;
};
export type ConfigMessage = { cmd: typeof Command.Config; proof: string; config: VmMigrationConfig };
export type ConfigAckMessage = { cmd: typeof Command.ConfigAck; pageCount: number };
export type MemoryRoundBeginMessage = { cmd: typeof Command.MemoryRoundBegin; round: number };
export type PagesMessage = { cmd: typeof Command.Pages; round: number; pages: PageEntry[] };
export type MemoryRoundEndMessage = { cmd: typeof Command.MemoryRoundEnd; round: number; pages: number; bytes: number };
export type StateMessage = {
  cmd: typeof Command.State;
  guestClockMs: number;
  pausedAtMs: number;
  /** The source engine's clock (v86's microtick) at the pause, so the target can continue it. */
  engineClockMs?: number | undefined;
  state: Buffer;
};
export type CompleteMessage = { cmd: typeof Command.Complete };
export type ResumedMessage = {
  cmd: typeof Command.Resumed;
  resumedAtMs: number;
  /** How long the target took to restore CPU and devices, and to resume (ms). */
  restoreMs?: number | undefined;
  resumeMs?: number | undefined;
  /** Test mode: sha256 of guest RAM after the restore, before the guest ran. */
  ramSha256?: string | undefined;
};
export type AbortMessage = { cmd: typeof Command.Abort; reason: string };
export type ErrorMessage = { cmd: typeof Command.Error; code: string; message: string };
export type PingMessage = { cmd: typeof Command.Ping; seq: number };
/** Pages that are all zero, as a bitmap over [firstPage, firstPage + count): bit i (LSB first) set = page firstPage + i is zero. */
export type ZeroPagesMessage = { cmd: typeof Command.ZeroPages; round: number; firstPage: number; count: number; bitmap: Buffer };
export type PongMessage = { cmd: typeof Command.Pong; seq: number };
/** Bytes [offset, offset + data.length) of device-memory region `region` (see VmMigrationConfig.deviceMemory). */
export type DeviceMemoryMessage = { cmd: typeof Command.DeviceMemory; round: number; region: number; offset: number; data: Buffer };

export type Message =
  | HelloMessage
  | HelloAckMessage
  | ConfigMessage
  | ConfigAckMessage
  | MemoryRoundBeginMessage
  | PagesMessage
  | MemoryRoundEndMessage
  | StateMessage
  | CompleteMessage
  | ResumedMessage
  | AbortMessage
  | ErrorMessage
  | PingMessage
  | PongMessage
  | ZeroPagesMessage
  | DeviceMemoryMessage;

const u32 = z.number().int().min(0).max(0xffffffff);
const hex32 = z.string().regex(/^[0-9a-f]{64}$/, "must be 32 bytes of lower-case hex");
export const migrationIdSchema = z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, "must be 1-128 characters of A-Z a-z 0-9 . _ -");

export const vmMigrationConfigSchema = z.object({
  name: z.string().min(1).max(128),
  uuid: z.string().min(1).max(128),
  memoryMiB: z
    .number()
    .int()
    .min(1)
    .max(1 << 20),
  vgaMemoryKiB: z
    .number()
    .int()
    .min(0)
    .max(1 << 20),
  nic: z.enum(["virtio", "ne2k"]),
  disk: z.boolean(),
  generation: z.number().int().min(0),
  pageSize: z.number().int().min(1),
  deviceMemory: z
    .array(
      z
        .number()
        .int()
        .min(1)
        .max(MAX_PAYLOAD_BYTES - DEVICE_MEMORY_HEADER_BYTES),
    )
    .max(16)
    .optional(),
});

const helloSchema = z.object({
  protocolVersion: z.number().int(),
  engineVersion: z.string().max(200),
  migrationId: migrationIdSchema,
  vmUuid: z.string().min(1).max(128),
  clientNonce: hex32,
});
const helloAckSchema = z.object({ protocolVersion: z.number().int(), engineVersion: z.string().max(200), serverNonce: hex32, proof: hex32 });
const configSchema = z.object({ proof: hex32, config: vmMigrationConfigSchema });
const configAckSchema = z.object({ pageCount: u32 });
const roundSchema = z.object({ round: u32 });
const roundEndSchema = z.object({ round: u32, pages: u32, bytes: z.number().int().min(0) });
const emptySchema = z.object({});
const resumedSchema = z.object({ resumedAtMs: z.number(), restoreMs: z.number().min(0).optional(), resumeMs: z.number().min(0).optional(), ramSha256: z.string().regex(/^[0-9a-f]{64}$/).optional() });
const abortSchema = z.object({ reason: z.string().max(4096) });
const errorSchema = z.object({ code: z.string().max(100), message: z.string().max(4096) });
const seqSchema = z.object({ seq: u32 });
const stateHeaderSchema = z.object({ guestClockMs: z.number(), pausedAtMs: z.number(), engineClockMs: z.number().optional() });

function json(obj: object): Buffer {
  return Buffer.from(JSON.stringify(obj), "utf8");
}

function parseJson(frame: Frame): unknown {
  if (frame.payload.length > MAX_CONTROL_PAYLOAD_BYTES) {
    throw corrupt(`${commandName(frame.command)} payload is ${frame.payload.length} bytes; control messages carry at most ${MAX_CONTROL_PAYLOAD_BYTES}`);
  }
  try {
    return JSON.parse(frame.payload.toString("utf8"));
  } catch (err) {
    throw corrupt(`${commandName(frame.command)} payload is not valid JSON`, err);
  }
}

function parseWith<S extends z.ZodType>(schema: S, value: unknown, frame: Frame): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) {
    const detail = r.error.issues.map((i) => `${i.path.map(String).join(".") || "payload"}: ${i.message}`).join("; ");
    throw corrupt(`${commandName(frame.command)} payload is malformed: ${detail}`);
  }
  return r.data;
}

/** Version check on HELLO/HELLO_ACK, done before the rest of the payload is validated. */
function checkVersion(value: unknown, frame: Frame): void {
  const v = typeof value === "object" && value !== null ? (value as { protocolVersion?: unknown }).protocolVersion : undefined;
  if (v !== PROTOCOL_VERSION) {
    throw new MigrationProtocolError(
      "MIGRATION_VERSION_MISMATCH",
      `peer speaks migration protocol version ${typeof v === "number" ? v : JSON.stringify(v) ?? "none"} in ${commandName(frame.command)}; this host speaks version ${PROTOCOL_VERSION}`,
    );
  }
}

/** The PAGES payload for `pages` (pages.ts's PageBatchWriter builds the same layout without copies). */
export function encodePagesPayload(round: number, pages: readonly { index: number; encoding: PageEncoding; data: Uint8Array }[]): Buffer {
  let size = PAGES_HEADER_BYTES;
  for (const p of pages) size += PAGE_ENTRY_HEADER_BYTES + p.data.length;
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32LE(round, 0);
  buf.writeUInt32LE(pages.length, 4);
  let off = PAGES_HEADER_BYTES;
  for (const p of pages) {
    buf.writeUInt32LE(p.index, off);
    buf[off + 4] = p.encoding;
    buf.writeUInt32LE(p.data.length, off + 5);
    buf.set(p.data, off + PAGE_ENTRY_HEADER_BYTES);
    off += PAGE_ENTRY_HEADER_BYTES + p.data.length;
  }
  return buf;
}

/** Parses a PAGES payload and checks each entry's length against its encoding. */
/** Why a PAGES entry's encoding and length do not fit together, or undefined when they do. */
function pageEntryProblem(encoding: number, len: number, pageSize: number): string | undefined {
  switch (encoding) {
    case PageEncoding.Zero:
      return len !== 0 ? `carries ${len} bytes, expected none` : undefined;
    case PageEncoding.Raw:
      return len !== pageSize ? `carries ${len} bytes, expected ${pageSize}` : undefined;
    case PageEncoding.Delta:
    case PageEncoding.Lz4:
      return len === 0 || len > pageSize ? `carries ${len} bytes, expected 1..${pageSize}` : undefined;
    default:
      return "unknown encoding";
  }
}

export function decodePagesPayload(payload: Buffer, pageSize = PAGE_SIZE): { round: number; pages: PageEntry[] } {
  if (payload.length < PAGES_HEADER_BYTES) throw corrupt(`PAGES payload of ${payload.length} bytes is shorter than its header`);
  const round = payload.readUInt32LE(0);
  const count = payload.readUInt32LE(4);
  const maxCount = Math.floor((payload.length - PAGES_HEADER_BYTES) / PAGE_ENTRY_HEADER_BYTES);
  if (count > maxCount) throw corrupt(`PAGES claims ${count} pages in ${payload.length} bytes`);
  const pages: PageEntry[] = new Array<PageEntry>(count);
  let off = PAGES_HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    if (off + PAGE_ENTRY_HEADER_BYTES > payload.length) throw corrupt(`PAGES entry ${i} runs past the payload`);
    const index = payload.readUInt32LE(off);
    const encoding = payload[off + 4]!;
    const len = payload.readUInt32LE(off + 5);
    off += PAGE_ENTRY_HEADER_BYTES;
    if (off + len > payload.length) throw corrupt(`PAGES entry ${i} (page ${index}) data runs past the payload`);
    const why = pageEntryProblem(encoding, len, pageSize);
    if (why !== undefined) throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", `PAGES entry ${i} (page ${index}, ${pageEncodingName(encoding)}): ${why}`);
    pages[i] = { index, encoding: encoding as PageEncoding, data: payload.subarray(off, off + len) };
    off += len;
  }
  if (off !== payload.length) throw corrupt(`PAGES has ${payload.length - off} bytes after its last entry`);
  return { round, pages };
}

/** ZERO_PAGES payload: u32 round | u32 firstPage | u32 count | ceil(count / 8) bytes of bitmap. */
export function encodeZeroPagesPayload(round: number, firstPage: number, count: number, bitmap: Uint8Array): Buffer {
  const bytes = Math.ceil(count / 8);
  if (bitmap.length < bytes) throw new MigrationProtocolError("MIGRATION_PAGE_ENCODING", `ZERO_PAGES bitmap has ${bitmap.length} bytes for ${count} pages`);
  const out = Buffer.allocUnsafe(12 + bytes);
  out.writeUInt32LE(round, 0);
  out.writeUInt32LE(firstPage, 4);
  out.writeUInt32LE(count, 8);
  out.set(bitmap.subarray(0, bytes), 12);
  return out;
}

function decodeZeroPagesPayload(p: Buffer): { round: number; firstPage: number; count: number; bitmap: Buffer } {
  if (p.length < 12) throw corrupt("ZERO_PAGES payload is shorter than its header");
  const count = p.readUInt32LE(8);
  if (p.length !== 12 + Math.ceil(count / 8)) throw corrupt(`ZERO_PAGES payload of ${p.length} bytes does not hold a bitmap of ${count} pages`);
  return { round: p.readUInt32LE(0), firstPage: p.readUInt32LE(4), count, bitmap: p.subarray(12) };
}

/** DEVICE_MEMORY payload: u32 round | u32 region | u32 offset | the bytes. */
export function encodeDeviceMemoryPayload(round: number, region: number, offset: number, data: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(DEVICE_MEMORY_HEADER_BYTES + data.length);
  out.writeUInt32LE(round, 0);
  out.writeUInt32LE(region, 4);
  out.writeUInt32LE(offset, 8);
  out.set(data, DEVICE_MEMORY_HEADER_BYTES);
  return out;
}

function decodeDeviceMemoryPayload(p: Buffer): { round: number; region: number; offset: number; data: Buffer } {
  if (p.length <= DEVICE_MEMORY_HEADER_BYTES) throw corrupt(`DEVICE_MEMORY payload of ${p.length} bytes carries no data`);
  return { round: p.readUInt32LE(0), region: p.readUInt32LE(4), offset: p.readUInt32LE(8), data: p.subarray(DEVICE_MEMORY_HEADER_BYTES) };
}

/** Number of set bits among the first `count` bits of `bitmap` (LSB first). */
export function bitmapPopcount(bitmap: Uint8Array, count: number): number {
  let n = 0;
  for (let i = 0; i < count; i++) if (((bitmap[i >> 3] ?? 0) >> (i & 7)) & 1) n++;
  return n;
}

/** STATE payload: header length u32 | JSON {guestClockMs, pausedAtMs, engineClockMs?} | engine state bytes. */
/** The start of a STATE payload: the header's length (u32 LE) and the header (JSON); the state follows. */
function statePayloadHead(m: StateMessage): Buffer {
  const header = json({ guestClockMs: m.guestClockMs, pausedAtMs: m.pausedAtMs, ...(m.engineClockMs !== undefined ? { engineClockMs: m.engineClockMs } : {}) });
  const head = Buffer.allocUnsafe(4 + header.length);
  head.writeUInt32LE(header.length, 0);
  header.copy(head, 4);
  return head;
}

function encodeStatePayload(m: StateMessage): Buffer {
  return Buffer.concat([statePayloadHead(m), m.state]);
}

/**
 * A STATE frame as [frame header, payload head, state]: the state (~200 KB) is written as it
 * is, not copied twice into fresh buffers in the pause (each copy page-faults its buffer in).
 */
export function encodeStateFrameParts(m: StateMessage): Buffer[] {
  const head = statePayloadHead(m);
  return [frameHeaderOf(Command.State, [head, m.state]), head, m.state];
}

export function encodeMessage(m: Message): Buffer {
  switch (m.cmd) {
    case Command.Hello:
      return encodeFrame(m.cmd, json({ protocolVersion: m.protocolVersion, engineVersion: m.engineVersion, migrationId: m.migrationId, vmUuid: m.vmUuid, clientNonce: m.clientNonce }));
    case Command.HelloAck:
      return encodeFrame(m.cmd, json({ protocolVersion: m.protocolVersion, engineVersion: m.engineVersion, serverNonce: m.serverNonce, proof: m.proof }));
    case Command.Config:
      return encodeFrame(m.cmd, json({ proof: m.proof, config: m.config }));
    case Command.ConfigAck:
      return encodeFrame(m.cmd, json({ pageCount: m.pageCount }));
    case Command.MemoryRoundBegin:
      return encodeFrame(m.cmd, json({ round: m.round }));
    case Command.Pages:
      return encodeFrame(m.cmd, encodePagesPayload(m.round, m.pages));
    case Command.ZeroPages:
      return encodeFrame(m.cmd, encodeZeroPagesPayload(m.round, m.firstPage, m.count, m.bitmap));
    case Command.DeviceMemory:
      return encodeFrame(m.cmd, encodeDeviceMemoryPayload(m.round, m.region, m.offset, m.data));
    case Command.MemoryRoundEnd:
      return encodeFrame(m.cmd, json({ round: m.round, pages: m.pages, bytes: m.bytes }));
    case Command.State:
      return encodeFrame(m.cmd, encodeStatePayload(m));
    case Command.Complete:
      return encodeFrame(m.cmd, json({}));
    case Command.Resumed: {
      const { cmd: _cmd, ...rest } = m;
      return encodeFrame(m.cmd, json(rest));
    }
    case Command.Abort:
      return encodeFrame(m.cmd, json({ reason: m.reason.slice(0, 4096) }));
    case Command.Error:
      return encodeFrame(m.cmd, json({ code: m.code.slice(0, 100), message: m.message.slice(0, 4096) }));
    case Command.Ping:
    case Command.Pong:
      return encodeFrame(m.cmd, json({ seq: m.seq }));
  }
}

/** Validates and decodes a frame's payload. Throws MigrationProtocolError (CORRUPT_FRAME, VERSION_MISMATCH, PAGE_ENCODING). */
export function decodeMessage(frame: Frame): Message {
  switch (frame.command) {
    case Command.Hello: {
      const v = parseJson(frame);
      checkVersion(v, frame);
      return { cmd: Command.Hello, ...parseWith(helloSchema, v, frame) };
    }
    case Command.HelloAck: {
      const v = parseJson(frame);
      checkVersion(v, frame);
      return { cmd: Command.HelloAck, ...parseWith(helloAckSchema, v, frame) };
    }
    case Command.Config:
      return { cmd: Command.Config, ...parseWith(configSchema, parseJson(frame), frame) };
    case Command.ConfigAck:
      return { cmd: Command.ConfigAck, ...parseWith(configAckSchema, parseJson(frame), frame) };
    case Command.MemoryRoundBegin:
      return { cmd: Command.MemoryRoundBegin, ...parseWith(roundSchema, parseJson(frame), frame) };
    case Command.Pages:
      return { cmd: Command.Pages, ...decodePagesPayload(frame.payload) };
    case Command.ZeroPages:
      return { cmd: Command.ZeroPages, ...decodeZeroPagesPayload(frame.payload) };
    case Command.DeviceMemory:
      return { cmd: Command.DeviceMemory, ...decodeDeviceMemoryPayload(frame.payload) };
    case Command.MemoryRoundEnd:
      return { cmd: Command.MemoryRoundEnd, ...parseWith(roundEndSchema, parseJson(frame), frame) };
    case Command.State: {
      const p = frame.payload;
      if (p.length < 4) throw corrupt("STATE payload is shorter than its header length");
      const headerLen = p.readUInt32LE(0);
      if (headerLen > MAX_CONTROL_PAYLOAD_BYTES || 4 + headerLen > p.length) throw corrupt(`STATE header length ${headerLen} is out of range`);
      const header = parseJson({ command: frame.command, flags: 0, payload: p.subarray(4, 4 + headerLen) });
      return { cmd: Command.State, ...parseWith(stateHeaderSchema, header, frame), state: p.subarray(4 + headerLen) };
    }
    case Command.Complete:
      parseWith(emptySchema, parseJson(frame), frame);
      return { cmd: Command.Complete };
    case Command.Resumed:
      return { cmd: Command.Resumed, ...parseWith(resumedSchema, parseJson(frame), frame) };
    case Command.Abort:
      return { cmd: Command.Abort, ...parseWith(abortSchema, parseJson(frame), frame) };
    case Command.Error:
      return { cmd: Command.Error, ...parseWith(errorSchema, parseJson(frame), frame) };
    case Command.Ping:
      return { cmd: Command.Ping, ...parseWith(seqSchema, parseJson(frame), frame) };
    case Command.Pong:
      return { cmd: Command.Pong, ...parseWith(seqSchema, parseJson(frame), frame) };
    case Command.Invalid:
      throw corrupt("command 0 is invalid");
  }
}

/** An ERROR frame for `err` (any thrown value). */
export function errorFrame(err: unknown): Buffer {
  const e = toMigrationError(err);
  return encodeMessage({ cmd: Command.Error, code: e.code, message: e.message });
}

// ---------------------------------------------------------------------------------------------
// Authentication: mutual HMAC-SHA256 challenge/response over a shared cluster token.
//
//   source -> target  HELLO      { clientNonce = 32 random bytes }
//   target -> source  HELLO_ACK  { serverNonce = 32 random bytes, proof = P("target") }
//   source -> target  CONFIG     { proof = P("source"), config }
//   P(role) = HMAC-SHA256(key = token, "hopvisor-migration/1\0" role "\0" migrationId "\0" clientNonce serverNonce)
//
// Each proof covers the other side's fresh nonce, so a recorded proof is useless later, and the
// role label keeps a target's proof from being reflected back as a source's proof.

export const NONCE_BYTES = 32;
const AUTH_LABEL = `hopvisor-migration/${PROTOCOL_VERSION}`;

export function newNonce(): string {
  return randomBytes(NONCE_BYTES).toString("hex");
}

export function authProof(token: string, role: "source" | "target", migrationId: string, clientNonce: string, serverNonce: string): string {
  return createHmac("sha256", Buffer.from(token, "utf8"))
    .update(`${AUTH_LABEL}\0${role}\0${migrationId}\0`, "utf8")
    .update(Buffer.from(clientNonce, "hex"))
    .update(Buffer.from(serverNonce, "hex"))
    .digest("hex");
}

/** Constant-time check of a peer's proof. */
export function verifyProof(token: string, role: "source" | "target", migrationId: string, clientNonce: string, serverNonce: string, proof: string): boolean {
  if (!/^[0-9a-f]{64}$/.test(proof)) return false;
  const want = Buffer.from(authProof(token, role, migrationId, clientNonce, serverNonce), "hex");
  return timingSafeEqual(want, Buffer.from(proof, "hex"));
}

export function checkToken(token: string): void {
  if (token.length < 16) throw new MigrationStateError("the migration token must be at least 16 characters");
}
