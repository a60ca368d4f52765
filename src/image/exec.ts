import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { ImageBuildError, ImageToolMissingError } from "./errors.js";

const execFileP = promisify(execFile);

/** The Debian package that provides each program the builder runs. */
const providers: Record<string, string> = {
  "apt-get": "apt",
  "apt-cache": "apt",
  "dpkg-deb": "dpkg",
  gcc: "gcc-multilib",
};

const PATH = `${process.env["PATH"] ?? ""}:/usr/sbin:/sbin:/usr/bin:/bin`;

/** Runs a program; a missing program names its Debian package, a failure keeps stderr. */
export async function run(program: string, args: string[], opts: { cwd?: string } = {}): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileP(program, args, { maxBuffer: 64 * 1024 * 1024, env: { ...process.env, PATH, LC_ALL: "C" }, ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}) });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string; stdout?: string };
    if (e.code === "ENOENT") throw new ImageToolMissingError(program, providers[program] ?? program);
    const detail = (e.stderr ?? "").trim().split("\n").slice(-8).join("\n");
    throw new ImageBuildError(`${program} ${args.slice(0, 4).join(" ")} failed: ${detail || e.message}`, err);
  }
}
