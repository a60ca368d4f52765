import { createHash } from "node:crypto";
import { access, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { withFileLock } from "../common/lock.js";
import type { Logger } from "../common/log.js";
import { defaultCacheDir, packageRoot } from "../common/paths.js";
import { PrivateApt } from "./apt.js";
import { writeCpio, type CpioEntry } from "./cpio.js";
import { ImageBuildError, ImageToolMissingError } from "./errors.js";
import { run } from "./exec.js";
import { GUEST_MODULES, resolveModules } from "./modules.js";

/** Bump when the builder's output changes for the same inputs. */
const BUILDER_VERSION = 1;
const GUEST_DIR = join(packageRoot, "src", "image", "guest");
const TOOLS = ["hopagent", "hb", "dirty", "kvd", "kvc"];
const SCRIPTS: Record<string, string> = { "init.sh": "init" };

export interface ImageManifest {
  hash: string;
  recipeHash: string;
  kernelVersion: string;
  packages: { name: string; version: string; sha256: string }[];
  builtAt: string;
}

export interface GuestImage {
  dir: string;
  hash: string;
  kernelVersion: string;
  bzimage: string;
  initrd: string;
  bios: string;
  vgabios: string;
  manifest: ImageManifest;
}

export interface BuildProgress {
  step: string;
  done: number;
  total: number;
}

export interface EnsureImageOptions {
  cacheDir?: string;
  refresh?: boolean;
  onProgress?: (p: BuildProgress) => void;
  log?: Logger;
}

const STEPS = ["check cache", "resolve packages", "download packages", "extract", "compile guest tools", "initramfs", "done"];

function sha256(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Hash of everything the builder itself contributes (guest sources, module list, version). */
export async function recipeHash(): Promise<string> {
  const h = createHash("sha256").update(JSON.stringify({ BUILDER_VERSION, GUEST_MODULES, TOOLS, SCRIPTS }));
  for (const f of [...TOOLS.map((t) => `${t}.c`), ...Object.keys(SCRIPTS)]) h.update(f).update(await readFile(join(GUEST_DIR, f)));
  return h.digest("hex");
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(
    () => true,
    () => false,
  );
}

function imageAt(dir: string, manifest: ImageManifest): GuestImage {
  return {
    dir,
    hash: manifest.hash,
    kernelVersion: manifest.kernelVersion,
    bzimage: join(dir, "bzImage"),
    initrd: join(dir, "initrd.img"),
    bios: join(dir, "bios.bin"),
    vgabios: join(dir, "vgabios.bin"),
    manifest,
  };
}

async function findCached(imagesDir: string, recipe: string): Promise<GuestImage | undefined> {
  const names = await readdir(imagesDir).catch(() => [] as string[]);
  for (const name of names) {
    const dir = join(imagesDir, name);
    try {
      const manifest = JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")) as ImageManifest;
      if (manifest.recipeHash !== recipe) continue;
      const img = imageAt(dir, manifest);
      if ((await Promise.all([img.bzimage, img.initrd, img.bios, img.vgabios].map(exists))).every(Boolean)) return img;
    } catch {
      // not an image folder
    }
  }
  return undefined;
}

/**
 * The guest image: from the cache when one was built from the same recipe, else built from
 * Debian's packages (kernel, busybox-static, seabios) and our guest sources.
 */
export async function ensureImage(opts: EnsureImageOptions = {}): Promise<GuestImage> {
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const imagesDir = join(cacheDir, "images");
  const progress = (step: string): void => opts.onProgress?.({ step, done: STEPS.indexOf(step), total: STEPS.length - 1 });
  progress("check cache");
  const recipe = await recipeHash();
  if (opts.refresh !== true) {
    const cached = await findCached(imagesDir, recipe);
    if (cached !== undefined) {
      progress("done");
      return cached;
    }
  }
  await mkdir(cacheDir, { recursive: true });
  return withFileLock(join(cacheDir, "image-build.lock"), async () => {
    if (opts.refresh !== true) {
      const cached = await findCached(imagesDir, recipe);
      if (cached !== undefined) {
        progress("done");
        return cached;
      }
    }
    return build(cacheDir, imagesDir, recipe, progress, opts.log);
  });
}

async function build(cacheDir: string, imagesDir: string, recipe: string, progress: (s: string) => void, log?: Logger): Promise<GuestImage> {
  log?.info({ cacheDir }, "building the guest image from Debian packages");
  progress("resolve packages");
  const apt = new PrivateApt(join(cacheDir, "apt"));
  await apt.update();
  const kernelPkg = await apt.resolveKernelPackage();
  const pkgs = [kernelPkg, "busybox-static", "seabios"];
  const versions = await Promise.all(pkgs.map((p) => apt.candidateVersion(p)));

  progress("download packages");
  const debDir = join(cacheDir, "debs");
  await mkdir(debDir, { recursive: true });
  const have = await readdir(debDir);
  const debs = new Map<string, string>();
  const missing: string[] = [];
  pkgs.forEach((p, i) => {
    const v = (versions[i] ?? "").replace(/:/g, "%3a");
    const f = have.find((x) => x.startsWith(`${p}_${v}_`) && x.endsWith(".deb"));
    if (f !== undefined) debs.set(p, join(debDir, f));
    else missing.push(p);
  });
  if (missing.length > 0) for (const [p, f] of await apt.download(missing, debDir)) debs.set(p, f);

  const packages: ImageManifest["packages"] = [];
  for (const [i, p] of pkgs.entries()) {
    const file = debs.get(p);
    if (file === undefined) throw new ImageBuildError(`no .deb for ${p}`);
    packages.push({ name: p, version: versions[i] ?? "", sha256: sha256(await readFile(file)) });
  }
  const hash = sha256(JSON.stringify({ recipe, packages: packages.map((p) => p.sha256) })).slice(0, 32);
  const finalDir = join(imagesDir, hash);

  progress("extract");
  await mkdir(imagesDir, { recursive: true });
  const work = await mkdtemp(join(imagesDir, ".build-"));
  try {
    const root = join(work, "debroot");
    await mkdir(root);
    for (const file of debs.values()) await run("dpkg-deb", ["-x", file, root]);
    const kernelVersion = (await readdir(join(root, "lib", "modules")))[0];
    if (kernelVersion === undefined) throw new ImageBuildError("the kernel package has no /lib/modules");

    progress("compile guest tools");
    const binDir = join(work, "bin");
    await mkdir(binDir);
    for (const tool of TOOLS) await compile(join(GUEST_DIR, `${tool}.c`), join(binDir, tool));

    progress("initramfs");
    const modDir = join(root, "lib", "modules", kernelVersion);
    const mods = await resolveModules(modDir, GUEST_MODULES);
    const entries: CpioEntry[] = [];
    const dirs = new Set<string>();
    const dir = (d: string): void => {
      const parts = d.split("/");
      for (let i = 1; i <= parts.length; i++) {
        const sub = parts.slice(0, i).join("/");
        if (!dirs.has(sub)) {
          dirs.add(sub);
          entries.push({ name: sub, mode: 0o040755 });
        }
      }
    };
    for (const d of ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "data", "run", "root", "etc"]) dir(d);
    entries.push({ name: "dev/console", mode: 0o020600, rdev: [5, 1] });
    entries.push({ name: "bin/busybox", mode: 0o100755, data: await readFile(join(root, "bin", "busybox")) });
    entries.push({ name: "bin/sh", mode: 0o120777, data: Buffer.from("busybox") });
    entries.push({ name: "etc/passwd", mode: 0o100644, data: Buffer.from("root:x:0:0:root:/root:/bin/sh\n") });
    entries.push({ name: "etc/profile", mode: 0o100644, data: Buffer.from("export PATH=/usr/bin:/usr/sbin:/bin:/sbin\nexport PS1='\\h:\\w# '\n") });
    for (const tool of TOOLS) entries.push({ name: `usr/bin/${tool}`, mode: 0o100755, data: await readFile(join(binDir, tool)) });
    for (const [src, dest] of Object.entries(SCRIPTS)) entries.push({ name: dest, mode: 0o100755, data: await readFile(join(GUEST_DIR, src)) });
    const modBase = `lib/modules/${kernelVersion}`;
    for (const f of mods.files) {
      dir(`${modBase}/${f.split("/").slice(0, -1).join("/")}`);
      entries.push({ name: `${modBase}/${f}`, mode: 0o100644, data: await readFile(join(modDir, f)) });
    }
    entries.push({ name: `${modBase}/modules.dep`, mode: 0o100644, data: Buffer.from(mods.modulesDep) });
    const out = join(work, "out");
    await mkdir(out);
    await writeFile(join(out, "initrd.img"), gzipSync(writeCpio(entries), { level: 6 }));
    await copyFile(join(root, "boot", `vmlinuz-${kernelVersion}`), join(out, "bzImage"));
    await copyFile(join(root, "usr", "share", "seabios", "bios.bin"), join(out, "bios.bin"));
    await copyFile(join(root, "usr", "share", "seabios", "vgabios-stdvga.bin"), join(out, "vgabios.bin"));
    const manifest: ImageManifest = { hash, recipeHash: recipe, kernelVersion, packages, builtAt: new Date().toISOString() };
    await writeFile(join(out, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
    await rm(finalDir, { recursive: true, force: true });
    await rename(out, finalDir);
    progress("done");
    log?.info({ dir: finalDir, kernelVersion }, "guest image built");
    return imageAt(finalDir, manifest);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** gcc -m32 -static; installs gcc-multilib (as root) when the 32-bit C runtime is missing. */
async function compile(src: string, out: string): Promise<void> {
  const args = ["-m32", "-static", "-O2", "-s", "-Wall", "-o", out, src];
  try {
    await run("gcc", args);
  } catch (err) {
    const msg = (err as Error).message;
    const runtimeMissing = /crt1\.o|cannot find -lgcc|gnu\/stubs-32\.h|bits\/libc-header-start\.h/.test(msg);
    if (!runtimeMissing) throw err;
    if (process.getuid?.() !== 0) throw new ImageToolMissingError("gcc -m32 (32-bit C runtime)", "gcc-multilib");
    await run("apt-get", ["install", "-y", "-qq", "gcc-multilib"]);
    await run("gcc", args);
  }
}
