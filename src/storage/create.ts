import { execFile } from "node:child_process";
import { open, rm, mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { promisify } from "node:util";
import { HopError } from "../common/errors.js";

const run = promisify(execFile);

export class DiskCreateError extends HopError {
  constructor(path: string, message: string, cause?: unknown) {
    super("DISK_CREATE_FAILED", `creating disk ${path} failed: ${message}`, { cause, status: 500 });
  }
}

/**
 * Creates a sparse disk image of `sizeMiB` holding an empty ext2 filesystem (mke2fs from
 * Debian's e2fsprogs), which the guest mounts on /data. Refuses to overwrite a file.
 */
export async function createDataDisk(path: string, sizeMiB: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  let fh;
  try {
    fh = await open(path, "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") throw new HopError("DISK_EXISTS", `disk ${path} already exists`, { status: 409 });
    throw new DiskCreateError(path, (err as Error).message, err);
  }
  try {
    await fh.truncate(sizeMiB * 1024 * 1024);
  } catch (err) {
    await fh.close();
    await rm(path, { force: true });
    throw new DiskCreateError(path, `cannot size it (disk full?): ${(err as Error).message}`, err);
  }
  await fh.close();
  try {
    await run("mke2fs", ["-F", "-q", "-t", "ext2", "-m", "0", "-L", "hopdata", path], {
      env: { ...process.env, PATH: `${process.env["PATH"] ?? ""}:/usr/sbin:/sbin` },
    });
  } catch (err) {
    await rm(path, { force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === "ENOENT") throw new DiskCreateError(path, "mke2fs is missing: install Debian's e2fsprogs", err);
    throw new DiskCreateError(path, `mke2fs: ${e.stderr?.trim() ?? e.message}`, err);
  }
}
