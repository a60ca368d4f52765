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
import { open, rename, rm, readFile, mkdir } from "node:fs/promises";
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
}

export class StateFileError extends HopError {
  constructor(code: "STATEFILE_CORRUPT" | "STATEFILE_VERSION" | "STATEFILE_INCOMPATIBLE" | "STATEFILE_WRITE_FAILED" | "STATEFILE_READ_FAILED", message: string, cause?: unknown) {
    super(code, message, { cause, status: code === "STATEFILE_WRITE_FAILED" || code === "STATEFILE_READ_FAILED" ? 500 : 422 });
  }
}

export function encodeStateFile(header: StateHeader, payload: Uint8Array): Buffer[] {
  const headerBytes = Buffer.from(JSON.stringify(header), "utf8");
  const prefix = Buffer.alloc(16);
  prefix.write(STATE_MAGIC, 0, "ascii");
  prefix.writeUInt32LE(STATE_FORMAT_VERSION, 8);
  prefix.writeUInt32LE(headerBytes.length, 12);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(payload.length));
  const body = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const hash = createHash("sha256").update(prefix).update(headerBytes).update(len).update(body).digest();
  return [prefix, headerBytes, len, body, hash];
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

/** Writes atomically: a temp file is fsynced, then renamed over `path`. A full disk leaves no partial file. */
export async function writeStateFile(path: string, header: StateHeader, payload: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  try {
    await mkdir(dirname(path), { recursive: true });
    const fh = await open(tmp, "w");
    try {
      for (const part of encodeStateFile(header, payload)) await fh.write(part);
      await fh.sync();
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

/** Checks a state's header against the VM it is about to be restored into. */
export function checkCompatible(header: StateHeader, want: Pick<StateHeader, "engine" | "memoryMiB" | "vgaMemoryKiB" | "nic" | "disk">, source: string): void {
  for (const key of ["engine", "memoryMiB", "vgaMemoryKiB", "nic", "disk"] as const) {
    if (header[key] !== want[key]) {
      throw new StateFileError("STATEFILE_INCOMPATIBLE", `${source} was saved with ${key}=${String(header[key])}, but this VM has ${key}=${String(want[key])}`);
    }
  }
}
