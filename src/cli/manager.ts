/** `hop manager serve`: run the cluster manager (inventory, tasks, HA, DRS; HTTP/WS API) in the foreground. */
import { mkdir, readFile, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { InvalidArgumentError, Option, type Command } from "commander";
import { HopError } from "../common/errors.js";
import { createLogger } from "../common/log.js";
import { intOption, writeFileAtomic } from "./common.js";
import { runUntilSignal, serveToken } from "./serve.js";

/** Hosts and users present the cluster token; shorter ones are refused. */
export const MIN_TOKEN_LENGTH = 16;

export interface ManagerServeCliOptions {
  listen: string;
  db: string;
  token?: string;
  tokenFile?: string;
  heartbeatMs?: number;
  leaseMs?: number;
  graceMs?: number;
  drs?: "off" | "manual" | "auto";
  drsIntervalMs?: number;
  drsThreshold?: number;
  maxMigrationsPerHost: number;
  maxMigrationsPerCluster: number;
  urlFile?: string;
  json?: boolean;
}

/** The cluster token: --token, --token-file, or <dir of the db>/cluster-token (generated when absent). */
export function clusterToken(opts: Pick<ManagerServeCliOptions, "token" | "tokenFile" | "db">): Promise<{ token: string; note?: string }> {
  return serveToken(opts, join(dirname(resolve(opts.db)), "cluster-token"), "cluster token", MIN_TOKEN_LENGTH);
}

/** A commander argument parser for a number in (0, 1]. */
export function parseFraction(value: string): number {
  const n = Number(value);
  if (!/^(0?\.\d+|1(\.0*)?)$/.test(value.trim()) || n <= 0 || n > 1) throw new InvalidArgumentError("must be a number in (0, 1], e.g. 0.2");
  return n;
}

export function register(program: Command): void {
  const manager = program.command("manager").description("run the cluster manager");

  manager
    .command("serve")
    .description("run the cluster manager in the foreground (SIGINT/SIGTERM stop it); host agents join it with `hop host serve --manager URL`")
    .requiredOption("--db <file>", "SQLite file holding the inventory (created if absent)")
    .option("--listen <addr>", "address to listen on: HOST:PORT or :PORT (port 0: any free port)", "127.0.0.1:7400")
    .addOption(new Option("--token <token>", `cluster token for hosts and users, at least ${MIN_TOKEN_LENGTH} characters (default: <dir of --db>/cluster-token, generated if absent)`).conflicts("tokenFile"))
    .option("--token-file <file>", "read the cluster token from this file")
    .option("--heartbeat-ms <ms>", "how often hosts heartbeat (default 1000)", intOption(50, 600_000))
    .option("--lease-ms <ms>", "how long a host's lease lasts; a host that cannot renew it powers its VMs off (default 5000)", intOption(100, 3_600_000))
    .option("--grace-ms <ms>", "after this long without heartbeats a host is down and HA restarts its VMs elsewhere (default 8000; > lease + heartbeat)", intOption(100, 3_600_000))
    .addOption(new Option("--drs <mode>", "load balancing: off, manual (recommend only) or auto (migrate) (default: the manager's)").choices(["off", "manual", "auto"]))
    .option("--drs-interval-ms <ms>", "how often DRS looks at the load (auto)", intOption(1000, 86_400_000))
    .option("--drs-threshold <spread>", "load-score spread (0..1) DRS tolerates (default 0.2)", parseFraction)
    .option("--max-migrations-per-host <n>", "concurrent migrations into or out of one host", intOption(1, 64), 4)
    .option("--max-migrations-per-cluster <n>", "concurrent migrations in the cluster", intOption(1, 1024), 8)
    .option("--url-file <file>", "write the manager's URL to this file once it listens (for a parent that started it on port 0)")
    .option("--json", "print {url, managerId} as one JSON line once listening")
    .action(async (opts: ManagerServeCliOptions) => {
      if (opts.drs === undefined && (opts.drsIntervalMs !== undefined || opts.drsThreshold !== undefined)) {
        throw new HopError("USAGE", "--drs-interval-ms and --drs-threshold need --drs off|manual|auto", { status: 400 });
      }
      const db = resolve(opts.db);
      await mkdir(dirname(db), { recursive: true });
      const { token, note } = await clusterToken({ ...opts, db });
      if (note !== undefined) process.stderr.write(`${note}\n`);
      const log = createLogger("manager");
      // Loaded here so that the other commands do not pull in the store and its SQLite driver.
      const { serveManager } = await import("../cluster/index.js");
      const handle = await serveManager({
        listen: opts.listen,
        db,
        token,
        ...(opts.heartbeatMs !== undefined ? { heartbeatMs: opts.heartbeatMs } : {}),
        ...(opts.leaseMs !== undefined ? { leaseMs: opts.leaseMs } : {}),
        ...(opts.graceMs !== undefined ? { graceMs: opts.graceMs } : {}),
        ...(opts.drs !== undefined
          ? {
              drs: {
                mode: opts.drs,
                ...(opts.drsIntervalMs !== undefined ? { intervalMs: opts.drsIntervalMs } : {}),
                ...(opts.drsThreshold !== undefined ? { threshold: opts.drsThreshold } : {}),
              },
            }
          : {}),
        maxMigrationsPerHost: opts.maxMigrationsPerHost,
        maxMigrationsPerCluster: opts.maxMigrationsPerCluster,
        log,
      });
      const urlFile = opts.urlFile !== undefined ? resolve(opts.urlFile) : undefined;
      try {
        if (urlFile !== undefined) await writeFileAtomic(urlFile, `${handle.url}\n`);
      } catch (err) {
        await handle.close().catch(() => undefined);
        throw new HopError("URL_FILE_UNWRITABLE", `cannot write --url-file ${urlFile}: ${(err as Error).message}`, { cause: err });
      }
      process.stdout.write(opts.json === true ? `${JSON.stringify({ url: handle.url, managerId: handle.managerId })}\n` : `manager ${handle.managerId} listening on ${handle.url}\n`);

      await runUntilSignal(log, "manager", async () => {
        // Forget the URL only if it is still ours (another manager may have taken the file over).
        if (urlFile !== undefined) {
          const current = await readFile(urlFile, "utf8").catch(() => "");
          if (current.trim() === handle.url) await rm(urlFile, { force: true });
        }
        await handle.close();
      });
    });
}
