/** Running iproute2 and friends: root checks, the Debian package of a missing program, stderr kept. */
import { execFile, spawnSync } from "node:child_process";
import { NotRootError, ToolMissingError } from "./errors.js";

/** sbin directories too: iproute2 lives in /usr/sbin, which a non-login PATH may lack. */
export const SBIN_PATH = `${process.env["PATH"] ?? ""}:/usr/sbin:/sbin:/usr/bin:/bin`;

/** The Debian package that provides each program this subsystem runs. */
export const PROVIDERS: Record<string, string> = { ip: "iproute2", bridge: "iproute2", tc: "iproute2", ping: "iputils-ping", nc: "netcat-openbsd", sysctl: "procps" };

export interface CommandResult {
  stdout: string;
  stderr: string;
}

/** A failed command: exit code or signal, and the last lines of stderr. */
export class CommandFailure extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    readonly stdout: string,
  ) {
    super(`${argv.join(" ")} failed (${exitCode === null ? "killed" : `exit ${exitCode}`})${stderr.trim() === "" ? "" : `: ${stderr.trim().split("\n").slice(-4).join(" / ")}`}`);
    this.name = "CommandFailure";
  }
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

export function requireRoot(what: string): void {
  if (!isRoot()) throw new NotRootError(what);
}

/** True when `program` is found on SBIN_PATH. */
export function hasProgram(program: string): boolean {
  return spawnSync("sh", ["-c", 'command -v "$1"', "sh", program], { env: { ...process.env, PATH: SBIN_PATH }, stdio: "ignore" }).status === 0;
}

/**
 * Runs a program (no shell). A missing program throws ToolMissingError naming its package; a
 * non-zero exit rejects with CommandFailure (callers wrap it in their step's error).
 */
export function runCommand(program: string, args: readonly string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      program,
      args,
      { env: { ...process.env, PATH: SBIN_PATH, LC_ALL: "C" }, maxBuffer: 16 * 1024 * 1024, timeout: opts.timeoutMs ?? 30_000, killSignal: "SIGKILL" },
      (err, stdout, stderr) => {
        if (err === null) {
          resolve({ stdout, stderr });
          return;
        }
        if ((err as NodeJS.ErrnoException).code === "ENOENT") {
          reject(new ToolMissingError(program, PROVIDERS[program] ?? program));
          return;
        }
        const code = typeof err.code === "number" ? err.code : null;
        reject(new CommandFailure([program, ...args], code, stderr, stdout));
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Synchronous variant for process-exit handlers (never throws; returns whether it succeeded). */
export function runCommandSync(program: string, args: readonly string[]): boolean {
  const r = spawnSync(program, args, { env: { ...process.env, PATH: SBIN_PATH, LC_ALL: "C" }, stdio: "ignore", timeout: 10_000 });
  return r.status === 0;
}
