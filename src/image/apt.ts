import { mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { ImageBuildError } from "./errors.js";
import { run } from "./exec.js";

/**
 * Fetches i386 .debs with apt-get into a private directory, without touching the system's
 * apt configuration (lists and cache are redirected there).
 */
export class PrivateApt {
  constructor(private readonly dir: string) {}

  private opts(): string[] {
    return [
      "-o", "APT::Architecture=i386",
      "-o", "APT::Architectures=i386",
      "-o", `Dir::State::Lists=${join(this.dir, "lists")}`,
      "-o", `Dir::Cache=${join(this.dir, "cache")}`,
      "-o", "Debug::NoLocking=1",
    ];
  }

  /** apt-get update; it may exit non-zero while one index is mid-sync, so success is judged by resolving packages. */
  async update(): Promise<void> {
    await mkdir(join(this.dir, "lists", "partial"), { recursive: true });
    await mkdir(join(this.dir, "cache", "archives", "partial"), { recursive: true });
    try {
      await run("apt-get", [...this.opts(), "-qq", "update"]);
    } catch (err) {
      if ((err as { code?: string }).code === "IMAGE_TOOL_MISSING") throw err;
      // Judged below by whether the packages resolve.
    }
  }

  /** The kernel package linux-image-686 depends on (linux-image-6.1.0-NN-686). */
  async resolveKernelPackage(): Promise<string> {
    const { stdout } = await run("apt-cache", [...this.opts(), "depends", "linux-image-686"]);
    const m = /Depends:\s*(linux-image-\S+-686)/.exec(stdout);
    if (m?.[1] === undefined) throw new ImageBuildError("cannot resolve the i386 kernel package from linux-image-686 (is Debian's package index reachable?)");
    return m[1];
  }

  async candidateVersion(pkg: string): Promise<string> {
    const { stdout } = await run("apt-cache", [...this.opts(), "policy", pkg]);
    const m = /Candidate:\s*(\S+)/.exec(stdout);
    if (m?.[1] === undefined || m[1] === "(none)") throw new ImageBuildError(`package ${pkg} (i386) has no candidate version`);
    return m[1];
  }

  /** Downloads the packages into `into`; returns their .deb paths keyed by package name. */
  async download(pkgs: string[], into: string): Promise<Map<string, string>> {
    await mkdir(into, { recursive: true });
    let lastErr: Error | undefined;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await run("apt-get", [...this.opts(), "-qq", "download", ...pkgs], { cwd: into });
        lastErr = undefined;
        break;
      } catch (err) {
        lastErr = err as Error;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    if (lastErr !== undefined) throw lastErr;
    const files = await readdir(into);
    const out = new Map<string, string>();
    for (const pkg of pkgs) {
      const f = files.filter((x) => x.startsWith(`${pkg}_`) && x.endsWith(".deb")).sort().pop();
      if (f === undefined) throw new ImageBuildError(`apt-get download did not produce ${pkg}`);
      out.set(pkg, join(into, f));
    }
    return out;
  }
}
