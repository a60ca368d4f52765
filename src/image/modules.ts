import { readdir, readFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { ImageBuildError } from "./errors.js";

/** Kernel modules the guest loads: NICs (virtio, ne2k fallback), the IDE data disk and its filesystem. */
export const GUEST_MODULES = ["virtio_pci", "virtio_net", "ne2k-pci", "ata_piix", "ata_generic", "sd_mod", "crc32c_generic", "ext4"];

function modName(path: string): string {
  const base = path.split("/").pop() ?? path;
  return base.replace(/\.ko(\.xz|\.zst|\.gz)?$/, "").replace(/-/g, "_");
}

async function walk(dir: string, out: string[] = []): Promise<string[]> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) await walk(p, out);
    else if (e.name.endsWith(".ko")) out.push(p);
  }
  return out;
}

/** The `depends=` entry of a module's .modinfo section (NUL-separated key=value strings). */
function dependsOf(ko: Buffer): string[] {
  const at = ko.indexOf("\0depends=");
  if (at < 0) return [];
  const end = ko.indexOf(0, at + 1);
  const value = ko.toString("latin1", at + 9, end);
  return value === "" ? [] : value.split(",").map((d) => d.replace(/-/g, "_"));
}

/**
 * The module files (relative to /lib/modules/<kver>/) for `wanted` and everything they depend
 * on (read from each module's modinfo, since Debian's package ships no modules.dep; depmod
 * runs at install time), plus a modules.dep for busybox modprobe.
 */
export async function resolveModules(modDir: string, wanted: string[]): Promise<{ files: string[]; modulesDep: string }> {
  const byName = new Map<string, string>();
  for (const p of await walk(join(modDir, "kernel"))) byName.set(modName(p), relative(modDir, p));
  const deps = new Map<string, string[]>();
  const order: string[] = [];
  const visit = async (name: string, from: string): Promise<void> => {
    if (deps.has(name)) return;
    const rel = byName.get(name);
    if (rel === undefined) throw new ImageBuildError(`kernel module ${name} (needed by ${from}) is not in the kernel package`);
    const d = dependsOf(await readFile(join(modDir, rel)));
    deps.set(name, d);
    for (const x of d) await visit(x, name);
    order.push(name);
  };
  for (const w of wanted) await visit(w.replace(/-/g, "_"), "the guest");
  // modules.dep lists every transitive dependency, in load order reversed (as depmod writes it).
  const closure = (name: string, acc: string[] = []): string[] => {
    for (const d of deps.get(name) ?? []) {
      if (!acc.includes(d)) {
        closure(d, acc);
        acc.push(d);
      }
    }
    return acc;
  };
  const file = (n: string): string => byName.get(n) ?? n;
  const modulesDep = order.map((n) => `${file(n)}: ${closure(n).reverse().map(file).join(" ")}`.trimEnd()).join("\n") + "\n";
  return { files: order.map(file).sort(), modulesDep };
}
