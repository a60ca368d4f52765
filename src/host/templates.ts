import { createHash } from "node:crypto";
import { access, mkdir, open, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { HopError } from "../common/errors.js";
import { withFileLock } from "../common/lock.js";
import type { Logger } from "../common/log.js";
import { DEFAULT_VGA_KIB, ENGINE_VERSION } from "../engine/constants.js";
import type { NicModel } from "../engine/index.js";
import { kernelCmdline, type GuestImage } from "../image/index.js";
import { readStateHeader } from "../storage/index.js";
import type { ImagePaths, WarmupSpec } from "../vm/ipc.js";
import { VmProcessHandle } from "./vmproc.js";

/** Bump when what a template boots with changes in a way the image hash does not cover. */
const TEMPLATE_RECIPE = 1;

/** The hardware a template was booted with: a state restores only into the same hardware. */
export interface TemplateProfile {
  memoryMiB: number;
  /** Data disk size in MiB (the guest sees the size it probed at boot), or undefined: no disk. */
  diskMiB: number | undefined;
  nic: NicModel;
  vgaMemoryKiB: number;
}

export class TemplateError extends HopError {
  constructor(message: string, cause?: unknown) {
    super("TEMPLATE_BUILD_FAILED", `building the template state failed: ${message}`, { cause });
  }
}

export function imagePaths(image: GuestImage): ImagePaths {
  return { hash: image.hash, bzimage: image.bzimage, initrd: image.initrd, bios: image.bios, vgabios: image.vgabios };
}

export function defaultProfile(memoryMiB: number, diskMiB: number | undefined): TemplateProfile {
  return { memoryMiB, diskMiB, nic: "virtio", vgaMemoryKiB: DEFAULT_VGA_KIB };
}

/**
 * Templates: a guest booted once per (image, hardware profile), paused and saved. New VMs
 * restore it and get their own identity through the guest agent (an instant clone). Cached
 * in the cache directory, shared by every host agent on the machine.
 */
export class TemplateStore {
  private readonly building = new Map<string, Promise<string>>();
  private warmupPath: string | undefined;

  constructor(private readonly cacheDir: string, private readonly log: Logger) {}

  /**
   * A cached template to warm VM processes with (src/vm/warmup.ts): the newest one of this
   * image and engine without a disk, whatever its memory size; undefined while there is none.
   * Only headers are read here; the VM process checks the whole file.
   */
  async warmup(image: GuestImage): Promise<WarmupSpec | undefined> {
    if (this.warmupPath === undefined) {
      const dir = join(this.cacheDir, "templates");
      let best: { path: string; mtimeMs: number } | undefined;
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        if (!name.endsWith(".hopstate")) continue;
        const path = join(dir, name);
        try {
          const h = await readStateHeader(path);
          if (h.kind !== "template" || h.disk || h.engine !== ENGINE_VERSION || h.imageHash !== image.hash) continue;
          const { mtimeMs } = await stat(path);
          if (best === undefined || mtimeMs > best.mtimeMs) best = { path, mtimeMs };
        } catch {
          // a template being written, or a stale one: not for warming
        }
      }
      this.warmupPath = best?.path;
    }
    return this.warmupPath !== undefined ? { statePath: this.warmupPath, bios: image.bios, vgabios: image.vgabios } : undefined;
  }

  key(image: GuestImage, p: TemplateProfile): string {
    return createHash("sha256")
      .update(JSON.stringify([TEMPLATE_RECIPE, image.hash, ENGINE_VERSION, p.memoryMiB, p.diskMiB ?? 0, p.nic, p.vgaMemoryKiB]))
      .digest("hex")
      .slice(0, 24);
  }

  /** Path of the template state for this profile, booting and saving it first if needed. */
  async ensure(image: GuestImage, profile: TemplateProfile): Promise<string> {
    const key = this.key(image, profile);
    let p = this.building.get(key);
    if (p === undefined) {
      p = this.build(image, profile, key);
      this.building.set(key, p);
      p.catch(() => this.building.delete(key));
    }
    return p;
  }

  private async build(image: GuestImage, profile: TemplateProfile, key: string): Promise<string> {
    const dir = join(this.cacheDir, "templates");
    await mkdir(dir, { recursive: true });
    const statePath = join(dir, `${key}.hopstate`);
    if (await exists(statePath)) return statePath;
    return withFileLock(join(dir, `${key}.lock`), async () => {
      if (await exists(statePath)) return statePath;
      this.log.info({ key, profile }, "booting guest to save a template state (once per image and hardware profile)");
      const t0 = Date.now();
      let disk: string | undefined;
      if (profile.diskMiB !== undefined) disk = await placeholderDisk(dir, profile.diskMiB);
      const proc = new VmProcessHandle({
        t: "init",
        name: `template-${key}`,
        memoryMiB: profile.memoryMiB,
        vgaMemoryKiB: profile.vgaMemoryKiB,
        nic: profile.nic,
        image: imagePaths(image),
        ...(disk !== undefined ? { disk } : {}),
        start: { mode: "boot", cmdline: kernelCmdline({ hostname: "template" }) },
      });
      try {
        await new Promise<void>((resolve, reject) => {
          proc.once("ready", () => resolve());
          proc.once("fatal", (e: { message: string }) => reject(new TemplateError(e.message)));
          proc.once("exit", () => reject(new TemplateError(proc.fatalError?.message ?? "VM process exited during boot")));
        });
        // Let the console shell settle so the saved guest is quiet.
        await new Promise((r) => setTimeout(r, 500));
        await proc.request(
          {
            op: "saveState",
            path: statePath,
            header: { kind: "template", memoryMiB: profile.memoryMiB, vgaMemoryKiB: profile.vgaMemoryKiB, nic: profile.nic, disk: profile.diskMiB !== undefined, imageHash: image.hash },
          },
          60_000,
        );
        this.log.info({ key, ms: Date.now() - t0 }, "template state saved");
        if (profile.diskMiB === undefined) this.warmupPath = statePath;
        return statePath;
      } finally {
        if (!proc.exited) {
          await proc.request({ op: "poweroff" }, 5_000).catch(() => undefined);
          if (!(await proc.waitExit(5_000))) proc.kill();
        }
      }
    });
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * An all-zero (sparse) disk of the clone's size that the template boots with, so the guest has
 * probed an IDE disk of that capacity (libata does not re-read the capacity on a rescan).
 */
async function placeholderDisk(dir: string, sizeMiB: number): Promise<string> {
  const path = join(dir, `placeholder-${sizeMiB}m.img`);
  const fh = await open(path, "a");
  try {
    const { size } = await fh.stat();
    if (size !== sizeMiB * 1024 * 1024) await fh.truncate(sizeMiB * 1024 * 1024);
  } finally {
    await fh.close();
  }
  return path;
}
