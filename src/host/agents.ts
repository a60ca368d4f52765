/**
 * Host agents as child processes (`hop host serve`), for the demo, the multi-host tests and the
 * benchmarks: start one (optionally inside a network namespace, through a spawn function such as
 * NetnsHarness.spawn), wait until it listens, stop it (SIGTERM, then SIGKILL).
 */
import { spawn as spawnChild, type ChildProcess, type SpawnOptions } from "node:child_process";
import { closeSync, openSync, writeSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { HopError } from "../common/errors.js";
import { packageRoot } from "../common/paths.js";
import { AGENT_NODE_FLAGS } from "./flags.js";

export interface AgentOptions {
  name: string;
  datastore: string;
  token: string;
  /** HOST:PORT to listen on (default 127.0.0.1:0). */
  listen?: string;
  /** Where to accept migrations (default: the listen host, any port). */
  migrationListen?: string;
  /** NAME=URL of other agents. */
  peers?: string[];
  /** This host's VXLAN underlay address ("ADDR" or "ADDR:PORT"). */
  underlay?: string;
  vxlanRemotes?: string[];
  /** NAME:VNI:SUBNET[:GATEWAY] */
  networks?: string[];
  hostAccess?: string[];
  /** The cluster manager to join (its URL). */
  manager?: string;
  /** Memory the host offers to VMs (the manager's admission control). */
  capacityMiB?: number;
  /** Run it in its own process group, so one signal to -pid stops it and its VMs (kill -9 tests). */
  detached?: boolean;
  /** Log level of the agent (default: HOP_LOG_LEVEL or "warn"). */
  logLevel?: string;
  /** Pipe the agent's stderr (its log) to ours (default true). */
  inheritStderr?: boolean;
  /** How to start the process (default child_process.spawn); e.g. a harness's spawn into a namespace. */
  spawn?: (argv: readonly string[], opts: SpawnOptions) => ChildProcess;
  /** How long to wait for "listening" (default 60 s). */
  timeoutMs?: number;
}

export interface AgentProcess {
  name: string;
  proc: ChildProcess;
  url: string;
  /** Its VXLAN endpoint, when it has an underlay. */
  vtep?: string;
  /** Everything the agent wrote to stderr (its log), for failure reports. */
  stderr(): string;
  /** SIGTERM (its VMs are stopped, host access removed), SIGKILL after `graceMs` (default 20 s). */
  stop(graceMs?: number): Promise<void>;
}

/** Starts `hop host serve` and resolves once it listens. */
export function startAgent(o: AgentOptions): Promise<AgentProcess> {
  const listen = o.listen ?? "127.0.0.1:0";
  const args = [hopScript(), "host", "serve", "--name", o.name, "--listen", listen, "--datastore", o.datastore, "--token", o.token];
  args.push("--migration-listen", o.migrationListen ?? `${listen.slice(0, listen.lastIndexOf(":"))}:0`);
  for (const p of o.peers ?? []) args.push("--peer", p);
  if (o.underlay !== undefined) args.push("--underlay", o.underlay);
  for (const r of o.vxlanRemotes ?? []) args.push("--vxlan-remote", r);
  for (const n of o.networks ?? []) args.push("--network", n);
  for (const n of o.hostAccess ?? []) args.push("--host-access", n);
  if (o.manager !== undefined) args.push("--manager", o.manager);
  if (o.capacityMiB !== undefined) args.push("--capacity-mib", String(o.capacityMiB));
  const argv = [process.execPath, ...AGENT_NODE_FLAGS, ...args];
  const opts: SpawnOptions = {
    stdio: ["ignore", "pipe", "pipe"],
    ...(o.detached === true ? { detached: true } : {}),
    env: { ...process.env, HOP_LOG_LEVEL: o.logLevel ?? process.env["HOP_LOG_LEVEL"] ?? "warn" },
  };
  const proc = o.spawn !== undefined ? o.spawn(argv, opts) : spawnChild(argv[0]!, argv.slice(1), opts);
  let log = "";
  proc.stderr?.on("data", (d: Buffer) => {
    log += d.toString("utf8");
    if (log.length > 1_000_000) log = log.slice(-500_000);
    if (o.inheritStderr !== false) process.stderr.write(d);
  });
  const stop = async (graceMs = 20_000): Promise<void> => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once("exit", r));
    proc.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGKILL");
      await exited;
    }
  };
  return new Promise((resolve, reject) => {
    let vtep: string | undefined;
    const timer = setTimeout(() => {
      void stop(2_000);
      reject(new HopError("AGENT_START_TIMEOUT", `host agent ${o.name} did not listen within ${o.timeoutMs ?? 60_000} ms: ${log.slice(-2000)}`));
    }, o.timeoutMs ?? 60_000);
    const rl = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
    rl.on("line", (line) => {
      const v = /vxlan endpoint (\S+)/.exec(line);
      if (v?.[1] !== undefined) vtep = v[1];
      const m = /listening on (\S+)/.exec(line);
      if (m?.[1] !== undefined) {
        clearTimeout(timer);
        resolve({ name: o.name, proc, url: m[1], ...(vtep !== undefined ? { vtep } : {}), stderr: () => log, stop });
      }
    });
    proc.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new HopError("AGENT_FAILED", `host agent ${o.name} exited (${signal ?? `code ${String(code)}`}) before listening: ${log.slice(-2000)}`));
    });
  });
}

/** The `hop` CLI script. */
export function hopScript(): string {
  return join(packageRoot, "bin", "hop.js");
}

/**
 * Starts `hop <args>` in its own process group (one signal to -pid reaches it and its VMs),
 * stdout and stderr appended to `logFile` after a line naming the command.
 */
export function spawnHopDetached(args: readonly string[], logFile: string, env: NodeJS.ProcessEnv = process.env): ChildProcess {
  const fd = openSync(logFile, "a", 0o600);
  try {
    writeSync(fd, `--- ${new Date().toISOString()} hop ${args.join(" ")}\n`);
    const child = spawnChild(process.execPath, [...AGENT_NODE_FLAGS, hopScript(), ...args], { stdio: ["ignore", fd, fd], detached: true, env });
    child.on("error", () => undefined);
    return child;
  } finally {
    closeSync(fd);
  }
}

/** A port that was free a moment ago (bound on port 0, then released). */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr !== null ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}
