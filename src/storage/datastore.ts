import { randomUUID } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import { HopError } from "../common/errors.js";

/**
 * A datastore is a directory owned by a host agent (or shared between hosts):
 *   vms/<name>/config.json   the VM's definition
 *   vms/<name>/disk.img      its data disk, if any
 *   states/                  saved states (suspend, quick migration)
 */
export class Datastore {
  readonly root: string;
  constructor(root: string) {
    this.root = resolve(root);
  }

  private idValue: string | undefined;

  async init(): Promise<void> {
    await mkdir(join(this.root, "vms"), { recursive: true });
    await mkdir(join(this.root, "states"), { recursive: true });
    // The datastore's identity: hosts that see the same id share it (their VMs can move without copying files).
    const file = join(this.root, "datastore.json");
    try {
      await writeFile(file, JSON.stringify({ id: randomUUID(), createdAt: new Date().toISOString() }) + "\n", { flag: "wx" });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    const parsed = JSON.parse(await readFile(file, "utf8")) as { id?: unknown };
    if (typeof parsed.id !== "string") throw new HopError("DATASTORE_CORRUPT", `${file} has no id`, { status: 500 });
    this.idValue = parsed.id;
  }

  /** The datastore's identity (after init()). */
  get id(): string {
    if (this.idValue === undefined) throw new HopError("DATASTORE_NOT_READY", "the datastore is not initialised", { status: 500 });
    return this.idValue;
  }

  vmDir(name: string): string {
    return join(this.root, "vms", name);
  }

  /** Resolves a path given relative to the datastore, refusing anything outside it. */
  resolvePath(p: string): string {
    const abs = resolve(this.root, p);
    if (abs !== this.root && !abs.startsWith(this.root + sep)) {
      throw new HopError("DATASTORE_PATH_OUTSIDE", `path ${p} is outside the datastore ${this.root}`, { status: 400 });
    }
    return abs;
  }

  /** Whether a path relative to the datastore exists. */
  async exists(p: string): Promise<boolean> {
    try {
      await stat(this.resolvePath(p));
      return true;
    } catch {
      return false;
    }
  }

  async listVmConfigs<T>(): Promise<T[]> {
    const names = await readdir(join(this.root, "vms")).catch(() => [] as string[]);
    const out: T[] = [];
    for (const name of names) {
      try {
        out.push(JSON.parse(await readFile(join(this.vmDir(name), "config.json"), "utf8")) as T);
      } catch {
        // a half-created or foreign folder: not a VM
      }
    }
    return out;
  }

  /** Writes the config atomically (temp file, then rename). */
  async saveVmConfig(name: string, config: unknown): Promise<void> {
    const dir = this.vmDir(name);
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.config.json.${process.pid}.tmp`);
    await writeFile(tmp, JSON.stringify(config, null, 2) + "\n");
    await rename(tmp, join(dir, "config.json"));
  }

  async removeVm(name: string, opts: { keepDisk: boolean }): Promise<void> {
    const dir = this.vmDir(name);
    if (!opts.keepDisk) {
      await rm(dir, { recursive: true, force: true });
      return;
    }
    await rm(join(dir, "config.json"), { force: true });
  }
}
