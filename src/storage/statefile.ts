/**
 * The saved-state envelope (docs/state-file-format.md): a versioned, checksummed container for
 * a v86 state (templates, suspend-to-datastore, quick migration).
 *
 *   offset 0   8 bytes  magic "HOPSTATE"
 *          8   u32 LE   format version (1)
 *         12   u32 LE   header length H
 *         16   H bytes  header, UTF-8 JSON (StateHeader)
 *       16+H   u64 LE   payload length P
 *       24+H   P bytes  payload (the engine's state buffer)
 *     24+H+P   32 bytes SHA-256 over everything before it
 */
import { createHash } from "node:crypto";
import { open, rename, rm, readFile, mkdir, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { HopError } from "../common/errors.js";

export const STATE_MAGIC = "HOPSTATE";
export const STATE_FORMAT_VERSION = 1;
const MAX_HEADER = 1 << 20;

export interface StateHeader {
  kind: "template" | "suspend" | "quick-migration";
  engine: string;
  memoryMiB: number;
  vgaMemoryKiB: number;
  nic: string;
  disk: boolean;
  imageHash: string;
  vm?: string;
  createdAt: string;
  /** Guest wall clock (unix ms) at the moment the state was saved. */
  savedAtMs: number;
  /** The engine's clock (device timers) at the save, continued on restore (absent in templates). */
  engineClockMs?: number;
  /**
   * How the payload holds RAM: "engine" (absent): the engine's own state, RAM included;
   * "pages": the engine's state without RAM, then a bitmap and the non-zero pages (see below).
   */
  ram?: "engine" | "pages";
}

/**
 * The "pages" payload: u32 LE state length S | S bytes engine state without RAM |
 * u32 LE page size | u32 LE page count N | ceil(N/8) bytes bitmap (bit i of byte i>>3, LSB first:
 * page i is non-zero) | the non-zero pages in ascending order. Saving it needs no copy of RAM
 * (the pages are written straight from the paused guest's memory).
 */
export function encodeRamPagesPayload(state: Uint8Array, ram: Uint8Array, pageSize = 4096): Buffer[] {
  if (ram.length % pageSize !== 0) throw new RangeError(`RAM of ${ram.length} bytes is not a whole number of ${pageSize}-byte pages`);
  const count = ram.length / pageSize;
  const head = Buffer.alloc(4 + state.length + 8 + Math.ceil(count / 8));
  head.writeUInt32LE(state.length, 0);
  head.set(state, 4);
  let at = 4 + state.length;
  head.writeUInt32LE(pageSize, at);
  head.writeUInt32LE(count, at + 4);
  at += 8;
  const mem = Buffer.from(ram.buffer, ram.byteOffset, ram.byteLength);
  const zero = Buffer.alloc(pageSize);
  const parts: Buffer[] = [head];
  for (let i = 0; i < count; i++) {
    const page = mem.subarray(i * pageSize, (i + 1) * pageSize);
    if (page.equals(zero)) continue;
    head[at + (i >> 3)]! |= 1 << (i & 7);
    parts.push(page);
  }
  return parts;
}

/** Writes the pages of a "pages" payload into `ram` (zero pages are left as they are) and returns the engine state. */
export function decodeRamPagesPayload(payload: Buffer, ram: Uint8Array, source = "state file"): Buffer {
  const bad = (why: string): StateFileError => new StateFileError("STATEFILE_CORRUPT", `${source}: ${why}`);
  if (payload.length < 12) throw bad("RAM payload too short");
  const stateLen = payload.readUInt32LE(0);
  let at = 4 + stateLen;
  if (at + 8 > payload.length) throw bad("engine state length out of range");
  const state = payload.subarray(4, at);
  const pageSize = payload.readUInt32LE(at);
  const count = payload.readUInt32LE(at + 4);
  at += 8;
  if (pageSize === 0 || count * pageSize !== ram.length) throw bad(`RAM of ${count} x ${pageSize} bytes does not match the VM's ${ram.length} bytes`);
  const bitmap = payload.subarray(at, at + Math.ceil(count / 8));
  at += bitmap.length;
  for (let i = 0; i < count; i++) {
    if (((bitmap[i >> 3] ?? 0) & (1 << (i & 7))) === 0) continue;
    if (at + pageSize > payload.length) throw bad("RAM pages end early");
    ram.set(payload.subarray(at, at + pageSize), i * pageSize);
    at += pageSize;
  }
  if (at !== payload.length) throw bad(`${payload.length - at} bytes after the last RAM page`);
  return state;
}

export class StateFileError extends HopError {
  constructor(code: "STATEFILE_CORRUPT" | "STATEFILE_VERSION" | "STATEFILE_INCOMPATIBLE" | "STATEFILE_WRITE_FAILED" | "STATEFILE_READ_FAILED", message: string, cause?: unknown) {
    super(code, message, { cause, status: code === "STATEFILE_WRITE_FAILED" || code === "STATEFILE_READ_FAILED" ? 500 : 422 });
  }
}

export function encodeStateFile(header: StateHeader, payload: Uint8Array | readonly Uint8Array[]): Buffer[] {
  const parts = stateFileParts(header, payload);
  const hash = createHash("sha256");
  for (const p of parts) hash.update(p);
  return [...parts, hash.digest()];
}

/** Everything a state file holds before its checksum: prefix, header, payload length, payload parts. */
function stateFileParts(header: StateHeader, payload: Uint8Array | readonly Uint8Array[]): Buffer[] {
  const headerBytes = Buffer.from(JSON.stringify(header), "utf8");
  const prefix = Buffer.alloc(16);
  prefix.write(STATE_MAGIC, 0, "ascii");
  prefix.writeUInt32LE(STATE_FORMAT_VERSION, 8);
  prefix.writeUInt32LE(headerBytes.length, 12);
  const parts = (payload instanceof Uint8Array ? [payload] : [...payload]).map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength)));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(parts.reduce((n, p) => n + p.length, 0)));
  return [prefix, headerBytes, len, ...parts];
}

export function decodeStateFile(file: Buffer, source = "state file"): { header: StateHeader; payload: Buffer } {
  if (file.length < 16 + 8 + 32 || file.toString("ascii", 0, 8) !== STATE_MAGIC) {
    throw new StateFileError("STATEFILE_CORRUPT", `${source} is not a Hopvisor state file (bad magic or too short)`);
  }
  const version = file.readUInt32LE(8);
  if (version !== STATE_FORMAT_VERSION) {
    throw new StateFileError("STATEFILE_VERSION", `${source} has format version ${version}; this build reads version ${STATE_FORMAT_VERSION}`);
  }
  const headerLen = file.readUInt32LE(12);
  if (headerLen > MAX_HEADER || 16 + headerLen + 8 + 32 > file.length) throw new StateFileError("STATEFILE_CORRUPT", `${source}: header length ${headerLen} is out of range`);
  const payloadLen = Number(file.readBigUInt64LE(16 + headerLen));
  const payloadStart = 24 + headerLen;
  if (payloadStart + payloadLen + 32 !== file.length) {
    throw new StateFileError("STATEFILE_CORRUPT", `${source}: payload length ${payloadLen} does not match the file size ${file.length} (truncated?)`);
  }
  const digest = createHash("sha256").update(file.subarray(0, payloadStart + payloadLen)).digest();
  if (!digest.equals(file.subarray(payloadStart + payloadLen))) throw new StateFileError("STATEFILE_CORRUPT", `${source}: checksum mismatch`);
  let header: StateHeader;
  try {
    header = JSON.parse(file.toString("utf8", 16, 16 + headerLen)) as StateHeader;
  } catch (err) {
    throw new StateFileError("STATEFILE_CORRUPT", `${source}: header is not valid JSON`, err);
  }
  return { header, payload: file.subarray(payloadStart, payloadStart + payloadLen) };
}

/**
 * Writes atomically: a temp file, then renamed over `path`; a full disk leaves no partial file.
 * `durable` (default true) fsyncs before the rename: a suspended VM must survive a power cut; a
 * quick migration's state only has to reach the other host and can skip the flush to disk.
 */
export async function writeStateFile(path: string, header: StateHeader, payload: Uint8Array | readonly Uint8Array[], options: { durable?: boolean } = {}): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  try {
    await mkdir(dirname(path), { recursive: true });
    const fh = await open(tmp, "w");
    try {
      // The checksum goes last: each batch is hashed here while the thread pool writes it
      // (hashing the ~50 MB of an idle 128 MiB guest first took ~35 ms of a quick migration's pause).
      const parts = stateFileParts(header, payload);
      const hash = createHash("sha256");
      const writeAll = async (batch: Buffer[], whileWriting?: () => void): Promise<void> => {
        const want = batch.reduce((n, b) => n + b.length, 0);
        const written = fh.writev(batch);
        whileWriting?.();
        const { bytesWritten } = await written;
        // A short write (rare on regular files): finish the batch buffer by buffer.
        if (bytesWritten < want) {
          let skip = bytesWritten;
          for (const b of batch) {
            if (skip >= b.length) {
              skip -= b.length;
              continue;
            }
            await fh.write(b.subarray(skip));
            skip = 0;
          }
        }
      };
      // writev takes at most IOV_MAX (1024) buffers at a time.
      for (let i = 0; i < parts.length; i += 1024) {
        const batch = parts.slice(i, i + 1024);
        await writeAll(batch, () => batch.forEach((b) => hash.update(b)));
      }
      await writeAll([hash.digest()]);
      if (options.durable !== false) await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new StateFileError("STATEFILE_WRITE_FAILED", `writing state file ${path} failed: ${(err as Error).message}`, err);
  }
}

export async function readStateFile(path: string): Promise<{ header: StateHeader; payload: Buffer }> {
  let file: Buffer;
  try {
    file = await readFile(path);
  } catch (err) {
    throw new StateFileError("STATEFILE_READ_FAILED", `reading state file ${path} failed: ${(err as Error).message}`, err);
  }
  return decodeStateFile(file, path);
}

/** Opens a state file for reading (STATEFILE_READ_FAILED if it cannot be). */
async function openStateFile(path: string): Promise<FileHandle> {
  try {
    return await open(path, "r");
  } catch (err) {
    throw new StateFileError("STATEFILE_READ_FAILED", `reading state file ${path} failed: ${(err as Error).message}`, err);
  }
}

/** Checks a file's first 16 bytes (magic, format version); returns the header length. */
function checkPrefix(prefix: Buffer, path: string): number {
  if (prefix.length < 16 || prefix.toString("ascii", 0, 8) !== STATE_MAGIC) throw new StateFileError("STATEFILE_CORRUPT", `${path} is not a Hopvisor state file (bad magic or too short)`);
  const version = prefix.readUInt32LE(8);
  if (version !== STATE_FORMAT_VERSION) throw new StateFileError("STATEFILE_VERSION", `${path} has format version ${version}; this build reads version ${STATE_FORMAT_VERSION}`);
  return prefix.readUInt32LE(12);
}

/** Bytes read at a time by readStateFileIntoRam (one buffer, reused). */
const STREAM_CHUNK_BYTES = 1 << 20;

/**
 * Reads a state file whose payload is in the "pages" layout with its pages going straight into
 * `ram`, through one reused 1 MiB buffer, checking the checksum on the way. Reading the whole
 * file into a new buffer first (readStateFile) faults in a page of memory per 4 KiB read (~50
 * MB for an idle 128 MiB guest, ~120 ms here) and then copies every page again.
 *
 * `ram` must be zero (the layout leaves zero pages out). Pages are written before the checksum
 * at the end is checked: on any error the RAM holds a partial, unusable image and the caller
 * must not run it (the VM process is discarded). Returns undefined, having written nothing,
 * for a state in the "engine" layout (RAM inside the engine's state): use readStateFile.
 * `check` sees the header before anything is written (e.g. checkCompatible).
 */
export async function readStateFileIntoRam(path: string, ram: Uint8Array, check?: (header: StateHeader) => void): Promise<{ header: StateHeader; state: Buffer } | undefined> {
  const corrupt = (why: string): StateFileError => new StateFileError("STATEFILE_CORRUPT", `${path}: ${why}`);
  const fh = await openStateFile(path);
  try {
    const size = (await fh.stat()).size;
    let pos = 0;
    /** Reads exactly into `into` from the current position. */
    const readExactly = async (into: Buffer): Promise<Buffer> => {
      let got = 0;
      while (got < into.length) {
        const { bytesRead } = await fh.read(into, got, into.length - got, pos + got);
        if (bytesRead === 0) throw corrupt("the file ends early (truncated?)");
        got += bytesRead;
      }
      pos += into.length;
      return into;
    };
    const prefix = await readExactly(Buffer.alloc(16)).catch(() => Buffer.alloc(0));
    const headerLen = checkPrefix(prefix, path);
    if (headerLen > MAX_HEADER || 16 + headerLen + 8 + 32 > size) throw corrupt(`header length ${headerLen} is out of range`);
    const headerBytes = await readExactly(Buffer.alloc(headerLen));
    const lenBytes = await readExactly(Buffer.alloc(8));
    const payloadLen = Number(lenBytes.readBigUInt64LE(0));
    if (24 + headerLen + payloadLen + 32 !== size) throw corrupt(`payload length ${payloadLen} does not match the file size ${size} (truncated?)`);
    let header: StateHeader;
    try {
      header = JSON.parse(headerBytes.toString("utf8")) as StateHeader;
    } catch (err) {
      throw new StateFileError("STATEFILE_CORRUPT", `${path}: header is not valid JSON`, err);
    }
    if (header.ram !== "pages") return undefined;
    check?.(header);
    const hash = createHash("sha256").update(prefix).update(headerBytes).update(lenBytes);

    // The payload, parsed as it streams through the chunk: fixed fields are gathered in `field`,
    // pages are copied into RAM piece by piece (a page may straddle two chunks).
    const chunk = Buffer.allocUnsafe(STREAM_CHUNK_BYTES);
    const end = pos + payloadLen;
    type Stage = "stateLen" | "state" | "ramHead" | "bitmap" | "pages";
    // (Typed wide: advance() changes it where the compiler's narrowing does not look.)
    let stage = "stateLen" as Stage;
    const inPages = (): boolean => stage === "pages";
    let field = Buffer.alloc(4);
    let filled = 0;
    let state = Buffer.alloc(0);
    let pageSize = 0;
    let count = 0;
    let bitmap = Buffer.alloc(0);
    let page = -1;
    let pageFilled = 0;
    /** The field being gathered is complete: the next one (or the pages) follows. */
    const advance = (): void => {
      filled = 0;
      if (stage === "stateLen") {
        const stateLen = field.readUInt32LE(0);
        if (4 + stateLen + 8 > payloadLen) throw corrupt("engine state length out of range");
        state = field = Buffer.alloc(stateLen);
        stage = "state";
      } else if (stage === "state") {
        field = Buffer.alloc(8);
        stage = "ramHead";
      } else if (stage === "ramHead") {
        pageSize = field.readUInt32LE(0);
        count = field.readUInt32LE(4);
        if (pageSize === 0 || count * pageSize !== ram.length) throw corrupt(`RAM of ${count} x ${pageSize} bytes does not match the VM's ${ram.length} bytes`);
        bitmap = field = Buffer.alloc(Math.ceil(count / 8));
        stage = "bitmap";
      } else {
        page = nextPage(0);
        stage = "pages";
      }
    };
    const nextPage = (from: number): number => {
      for (let i = from; i < count; i++) if (((bitmap[i >> 3] ?? 0) & (1 << (i & 7))) !== 0) return i;
      return count;
    };
    while (pos < end) {
      const n = Math.min(chunk.length, end - pos);
      const data = await readExactly(chunk.subarray(0, n));
      hash.update(data);
      let at = 0;
      while (at < n) {
        if (stage === "pages") {
          if (page >= count) throw corrupt(`${end - pos + n - at} bytes after the last RAM page`);
          const take = Math.min(pageSize - pageFilled, n - at);
          ram.set(data.subarray(at, at + take), page * pageSize + pageFilled);
          at += take;
          pageFilled += take;
          if (pageFilled === pageSize) {
            page = nextPage(page + 1);
            pageFilled = 0;
          }
          continue;
        }
        const take = Math.min(field.length - filled, n - at);
        data.copy(field, filled, at, at + take);
        at += take;
        filled += take;
        while (!inPages() && filled === field.length) advance();
      }
    }
    if (!inPages() || page < count) throw corrupt("RAM pages end early");
    const digest = await readExactly(Buffer.alloc(32));
    if (!hash.digest().equals(digest)) throw corrupt("checksum mismatch");
    return { header, state };
  } finally {
    await fh.close();
  }
}

/** Only the header of a state file (no checksum check: that needs the whole file). */
export async function readStateHeader(path: string): Promise<StateHeader> {
  const fh = await openStateFile(path);
  try {
    const prefix = Buffer.alloc(16);
    const { bytesRead } = await fh.read(prefix, 0, 16, 0);
    const headerLen = checkPrefix(bytesRead < 16 ? Buffer.alloc(0) : prefix, path);
    if (headerLen > MAX_HEADER) throw new StateFileError("STATEFILE_CORRUPT", `${path}: header length ${headerLen} is out of range`);
    const headerBytes = Buffer.alloc(headerLen);
    const r = await fh.read(headerBytes, 0, headerLen, 16);
    if (r.bytesRead < headerLen) throw new StateFileError("STATEFILE_CORRUPT", `${path}: the header is truncated`);
    try {
      return JSON.parse(headerBytes.toString("utf8")) as StateHeader;
    } catch (err) {
      throw new StateFileError("STATEFILE_CORRUPT", `${path}: header is not valid JSON`, err);
    }
  } finally {
    await fh.close();
  }
}

/** Checks a state's header against the VM it is about to be restored into. */
export function checkCompatible(header: StateHeader, want: Pick<StateHeader, "engine" | "memoryMiB" | "vgaMemoryKiB" | "nic" | "disk">, source: string): void {
  for (const key of ["engine", "memoryMiB", "vgaMemoryKiB", "nic", "disk"] as const) {
    if (header[key] !== want[key]) {
      throw new StateFileError("STATEFILE_INCOMPATIBLE", `${source} was saved with ${key}=${String(header[key])}, but this VM has ${key}=${String(want[key])}`);
    }
  }
}
