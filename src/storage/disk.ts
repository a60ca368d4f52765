import { closeSync, fstatSync, fsyncSync, openSync, readSync, writeSync } from "node:fs";
import { HopError } from "../common/errors.js";

export class DiskIoError extends HopError {
  constructor(step: "open" | "read" | "write" | "flush", path: string, cause: unknown) {
    super(`DISK_${step.toUpperCase()}_FAILED`, `disk ${step} failed for ${path}: ${String((cause as Error)?.message ?? cause)}`, { cause });
  }
}

/**
 * A disk image backed by the file itself, with the buffer interface v86's IDE controller
 * uses (get/set/load/get_state/set_state). Reads and writes go straight to the file: nothing
 * is held whole in memory, and the saved state carries only the size (never the contents).
 */
export class FileDisk {
  readonly path: string;
  byteLength: number;
  onload: ((e?: unknown) => void) | undefined;
  onprogress: ((e?: unknown) => void) | undefined;
  private fd: number | undefined;
  /** Called after a failed write; the guest sees the write as done, so the VM must stop. */
  onError: ((err: DiskIoError) => void) | undefined;

  constructor(path: string) {
    this.path = path;
    try {
      this.fd = openSync(path, "r+");
      this.byteLength = fstatSync(this.fd).size;
    } catch (err) {
      throw new DiskIoError("open", path, err);
    }
    if (this.byteLength % 512 !== 0 || this.byteLength === 0) {
      this.close();
      throw new HopError("DISK_INVALID_SIZE", `disk ${path} is ${this.byteLength} bytes, not a non-zero multiple of 512`);
    }
  }

  load(): void {
    this.onload?.({ buffer: undefined });
  }

  get(start: number, len: number, fn: (data: Uint8Array) => void): void {
    const out = new Uint8Array(len);
    try {
      let done = 0;
      while (done < len) {
        const n = readSync(this.requireFd(), out, done, len - done, start + done);
        if (n === 0) break; // past the end reads as zeros
        done += n;
      }
    } catch (err) {
      this.fail(new DiskIoError("read", this.path, err));
    }
    fn(out);
  }

  /** v86 reads the first sector through this before boot; there is no cache to fill. */
  get_and_cache(start: number, len: number, fn: (data: Uint8Array) => void): void {
    this.get(start, len, fn);
  }

  /** Synchronous read v86 uses for the disk geometry (first sector). */
  get_from_cache(start: number, len: number): Uint8Array {
    let out: Uint8Array = new Uint8Array(len);
    this.get(start, len, (d) => (out = d));
    return out;
  }

  set(start: number, data: Uint8Array, fn: () => void): void {
    try {
      let done = 0;
      while (done < data.length) done += writeSync(this.requireFd(), data, done, data.length - done, start + done);
    } catch (err) {
      this.fail(new DiskIoError("write", this.path, err));
    }
    fn();
  }

  get_buffer(fn: (b: ArrayBuffer | undefined) => void): void {
    fn(undefined);
  }

  /** The state holds the size only; the contents live in the file. */
  get_state(): unknown[] {
    return [this.byteLength];
  }

  set_state(_state: unknown[]): void {
    // The file is the truth: a restored state never overwrites what the disk holds.
  }

  flush(): void {
    if (this.fd === undefined) return;
    try {
      fsyncSync(this.fd);
    } catch (err) {
      throw new DiskIoError("flush", this.path, err);
    }
  }

  close(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  private requireFd(): number {
    if (this.fd === undefined) throw new Error("disk is closed");
    return this.fd;
  }

  private fail(err: DiskIoError): void {
    if (this.onError !== undefined) this.onError(err);
    else throw err;
  }
}
